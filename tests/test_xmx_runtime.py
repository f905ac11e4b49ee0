"""The native module's host code against Intel's real SYCL runtime, from the pip wheels (extension/host_only.py).

A host-only build is the real module minus its device code. With only the pip runtime it must import, describe
itself, and list none of its kernels; extension/check_binary.py and arcattn's loader must then refuse it for that
reason and no other. Slow (about 700 MB of wheels per release, once, and a build): ARCATTN_SLOW_TESTS=1, Linux,
clang++ and PyPI, else skipped with the reason.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("ARCATTN_SLOW_TESTS"), reason="set ARCATTN_SLOW_TESTS=1 (700 MB of "
                       "wheels per SYCL release, once, and a host-only build)"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the host-only build is Linux only"),
]

_spec = importlib.util.spec_from_file_location("arcattn_host_only", ROOT / "extension" / "host_only.py")
host_only = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_only)
MAJORS = {"2025.3.3": 8, "2026.0.0": 9}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{major: (module path, runtime lib dir)}, both runtimes' modules in one directory."""
    out = tmp_path_factory.mktemp("host_only")
    try:
        mods = {MAJORS[v]: (host_only.build(v, out), host_only.runtime_venv(v) / "lib") for v in MAJORS}
    except host_only.Missing as e:
        pytest.skip(f"host-only build not possible here: {e}")
    assert sorted(p.name.split(".")[1] for p, _ in mods.values()) == ["sycl8", "sycl9"]
    return mods


def _run(args, lib_dir=None):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}  # nothing of oneAPI, like the workflow
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.parametrize("major", [8, 9])
def test_check_binary_refuses_it_for_missing_device_code_only(built, major):
    path, lib_dir = built[major]
    r = _run(["extension/check_binary.py", str(path.parent), "--sycl-major", str(major), "--deps", "--import"],
             lib_dir)
    fails = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL:")]
    assert r.returncode == 1, r.stdout + r.stderr
    assert fails == ["FAIL: 0 kernels registered with the SYCL runtime, expected 10 (device code missing or "
                     "incomplete)"], r.stdout
    assert "'kind': 'sycl-esimd'" in r.stdout and f"'sycl_major': {major}" in r.stdout
    assert f"needs: libsycl.so.{major}, libstdc++.so.6" in r.stdout


def test_check_binary_reports_a_missing_runtime_without_a_traceback(built):
    path, _ = built[8]
    r = _run(["extension/check_binary.py", str(path), "--sycl-major", "8", "--import"])  # no LD_LIBRARY_PATH
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert "does not import here: ImportError: libsycl.so.8" in r.stdout


LOADER = textwrap.dedent("""
    import ctypes, sys
    from arcattn.backends import xmx
    # what torch's XPU build does at import: the SYCL runtime is in the process before arcattn looks
    ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
    xmx._has_xpu = lambda: True  # no Intel GPU here: the loader is let past its device check
    b = xmx.XMXBackend(path=sys.argv[2])
    reason = b.unavailable_reason()
    print("RUNTIME", b.sycl_runtime.major, b.sycl_runtime.source)
    print("REASON", reason)
    # the binary (loaded by the probe, if it got that far) must bind to the runtime already there, not a second one
    print("SYCL_LIBS", [p for p in xmx.loaded_library_paths() if xmx.sycl_major_of_library(p.rsplit("/", 1)[-1])])
""")


def test_loader_binds_the_matching_binary_and_refuses_it_for_missing_device_code(built):
    path, lib_dir = built[8]
    r = _run(["-c", LOADER, str(lib_dir / "libsycl.so.8"), str(path.parent)], lib_dir)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "RUNTIME 8" in out and "libsycl.so.8 is loaded in this process" in out
    assert f"native binary {path} has 0 of its 10 kernels (ArcattnXmxAttention) registered" in out
    assert f"SYCL_LIBS ['{lib_dir.resolve() / 'libsycl.so.8'}']" in out  # loaded the module, no second runtime


def test_loader_refuses_a_binary_for_the_other_runtime_before_loading_it(built, tmp_path):
    path9, _ = built[9]
    only9 = tmp_path / path9.name
    only9.symlink_to(path9)
    _, lib8 = built[8]
    r = _run(["-c", LOADER, str(lib8 / "libsycl.so.8"), str(tmp_path)], lib8)
    assert r.returncode == 0, r.stderr
    assert "RUNTIME 8" in r.stdout and "other SYCL runtimes than torch's" in r.stdout


def test_loader_explains_a_runtime_older_than_the_binary(built):
    """torch 2.7-2.9's XPU builds pin oneAPI 2025.0-2025.2: their libsycl.so.8 lacks calls that a binary built with
    2025.3 makes, so the import fails on an undefined symbol and the loader says why."""
    path, _ = built[8]
    try:
        old = host_only.runtime_venv("2025.2.2") / "lib"
    except host_only.Missing as e:
        pytest.skip(f"no 2025.2.2 runtime: {e}")
    r = _run(["-c", LOADER, str(old / "libsycl.so.8"), str(path.parent)], old)
    assert r.returncode == 0, r.stderr
    assert "RUNTIME 8" in r.stdout and "failed to load: ImportError" in r.stdout and "undefined symbol" in r.stdout
    assert "built with a newer oneAPI than torch's SYCL runtime" in r.stdout
