"""install.py and arcattn/install_check.py: packaging metadata, the pieces in-process, and whole runs of
install.py in fresh virtual environments (created without pip in ~50 ms; the one "with torch" reuses the test
interpreter's site-packages through a .pth line, so no torch is ever downloaded or installed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time

import pytest
import torch

import arcattn
from arcattn import install_check as ic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_PY = os.path.join(ROOT, "install.py")


# -- packaging ----------------------------------------------------------------------------------------------
def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_version_is_one_number_everywhere():
    py = _pyproject()["project"]["version"]
    assert arcattn.__version__ == py, f"arcattn/_version.py says {arcattn.__version__}, pyproject.toml {py}"
    assert ic.read_version(ROOT) == py


def test_registry_metadata():
    data = _pyproject()
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert "Icon" in comfy
    classifiers = data["project"]["classifiers"]
    assert "Environment :: GPU :: Intel Arc" in classifiers
    # ComfyUI's registry keeps the accelerator list only if every "Environment ::" entry is one it knows
    known = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
    envs = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment :: ")]
    assert envs and set(envs) <= known, envs
    oses = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    assert all(o.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for o in oses)
    assert data["project"]["dependencies"] == []  # torch comes from the host, never from us


# -- pieces -------------------------------------------------------------------------------------------------
def test_parse_requirements_leaves_out_the_hosts_packages(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\n--index-url https://example.invalid/simple\n-r other.txt\ntorch>=2.5\n"
                   "TorchVision\npytorch-triton-xpu==3.3.0\ntriton\neinops>=0.7 # inline\n"
                   "git+https://example.invalid/x.git\n\nsome_pkg[extra]==1.0\n")
    assert ic.parse_requirements(str(req)) == [("einops>=0.7", "einops"), ("some_pkg[extra]==1.0", "some-pkg")]
    assert ic.parse_requirements(str(tmp_path / "absent.txt")) == []


def test_missing_requirements():
    assert ic.missing_requirements([("pytest", "pytest")]) == []
    assert ic.missing_requirements([("arcattn-no-such-dist", "arcattn-no-such-dist")]) == ["arcattn-no-such-dist"]
    if ic._packaging() is not None:
        assert ic.missing_requirements([("pytest<1", "pytest")]) == ["pytest<1"]


FAKE_PIP = r'''import os, sys
args = sys.argv[1:]
log = os.environ["FAKE_PIP_LOG"]
with open(log, "w") as f:
    f.write(" ".join(args) + "\n")
    if "-c" in args:
        f.write(open(args[args.index("-c") + 1]).read())
def deep(n):
    if n == 0:
        raise ConnectionError("simulated: pip cannot reach the index")
    deep(n - 1)
deep(30)
'''


def test_pip_failure_is_one_line_and_pins_the_torch_family(tmp_path):
    fake = tmp_path / "fakepython.py"
    fake.write_text(FAKE_PIP)
    wrapper = tmp_path / "fakepython"
    wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{fake}' \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, FAKE_PIP_LOG=str(tmp_path / "log"))
    ok, msg = ic.pip_install(["einops>=0.7"], python=str(wrapper), environ=env)
    assert not ok and "\n" not in msg and "Traceback" not in msg
    assert msg.startswith("pip could not install einops>=0.7: ") and "simulated" in msg
    logged = (tmp_path / "log").read_text()
    assert logged.startswith("-m pip install ") and "einops>=0.7" in logged
    torch_version = ic.dist_version("torch")
    if torch_version:
        assert f"torch=={torch_version}" in logged  # pip may not move torch to satisfy anything


def test_pip_that_cannot_start_is_one_line(tmp_path):
    ok, msg = ic.pip_install(["einops"], python=str(tmp_path / "no-python-here"))
    assert not ok and "\n" not in msg and msg.startswith("pip could not install einops: cannot run")


def test_pip_reason():
    out = "Collecting x\n  WARNING: Retrying ... NewConnectionError(...)\nERROR: Could not find a version that " \
          "satisfies the requirement x (from versions: none)\nERROR: No matching distribution found for x\n"
    assert ic._pip_reason(out, 1) == "No matching distribution found for x (no network?)"
    assert ic._pip_reason("/usr/bin/python: No module named pip\n", 1) == "this Python has no pip"
    assert ic._pip_reason("", 3) == "exit status 3"


def test_detect_host(tmp_path):
    comfy = tmp_path / "ComfyUI" / "custom_nodes" / "arcattn"
    forge = tmp_path / "webui" / "extensions" / "arcattn"
    for d in (comfy, forge):
        d.mkdir(parents=True)
    assert ic.detect_host(str(comfy), {}) == "comfyui"
    assert ic.detect_host(str(forge), {}) == "forge"
    webui = tmp_path / "webui2"
    (webui / "modules").mkdir(parents=True)
    (webui / "launch.py").write_text("")
    elsewhere = tmp_path / "somewhere" / "arcattn"
    elsewhere.mkdir(parents=True)
    assert ic.detect_host(str(elsewhere), {"PYTHONPATH": str(webui)}) == "forge"
    assert ic.detect_host(str(elsewhere), {}) == "manual"


def test_state_key_follows_files_versions_and_settings(tmp_path):
    root = tmp_path / "node"
    (root / "arcattn").mkdir(parents=True)
    f = root / "arcattn" / "x.py"
    f.write_text("a = 1\n")
    env = {"ARCATTN_CACHE_DIR": str(tmp_path)}
    k1 = ic.state_key(str(root), env)
    assert ic.state_key(str(root), dict(env, ARCATTN_CACHE_DIR="elsewhere")) == k1
    assert ic.state_key(str(root), dict(env, ARCATTN_DISABLE="triton")) != k1
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ic.state_key(str(root), env) != k1
    (root / "arcattn" / "__pycache__").mkdir()
    k2 = ic.state_key(str(root), env)
    (root / "arcattn" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert ic.state_key(str(root), env) == k2  # bytecode caches are not arcattn's files


def test_build_native_entry(tmp_path, capsys):
    root = tmp_path / "node"
    root.mkdir()
    assert ic.build_native(str(root), []) == (2, False)
    assert "no native build in this copy" in capsys.readouterr().out
    (root / "extension").mkdir()
    build = root / "extension" / "build.py"
    build.write_text("X = 1\n")
    assert ic.build_native(str(root), []) == (2, False)
    assert "has no main(argv) yet" in capsys.readouterr().out
    build.write_text("seen = []\ndef main(argv):\n    seen.append(argv)\n    print('built', argv)\n    return 0\n")
    assert ic.build_native(str(root), ["--cpu-reference"]) == (0, True)
    assert "built ['--cpu-reference']" in capsys.readouterr().out
    build.write_text("import argparse\ndef main(argv):\n    argparse.ArgumentParser().parse_args(argv)\n    return 0\n")
    assert ic.build_native(str(root), ["--help"]) == (0, False)  # help printed: no check after it
    assert ic.build_native(str(root), ["--bogus"]) == (2, False)
    capsys.readouterr()
    build.write_text("def main(argv):\n    raise RuntimeError('icpx not found\\nmore')\n")
    assert ic.build_native(str(root), []) == (1, False)
    assert capsys.readouterr().out.strip() == "arcattn: the native build failed (RuntimeError: icpx not found)"


def test_summarize_selftest():
    per = ic.summarize_selftest([
        {"backend": "xmx", "ok": None, "rel_error": None, "reason": "no XPU"},
        {"backend": "triton", "ok": True, "rel_error": 1e-4, "reason": None},
        {"backend": "triton", "ok": False, "rel_error": 0.5, "reason": "relative error 5.0e-01"},
        {"backend": "sdpa", "ok": True, "rel_error": 2e-7, "reason": None},
        {"backend": "router->sdpa", "ok": True, "rel_error": 3e-7, "reason": None},
    ])
    assert per["xmx"] == {"state": "n/a", "err": None, "reason": "no XPU"}
    assert per["triton"]["state"] == "FAIL"
    assert per["sdpa"]["state"] == "pass" and per["sdpa"]["err"] == 3e-7


def test_triton_problems_on_xpu(monkeypatch):
    dists = {"triton": "3.4.0", "pytorch-triton-xpu": "3.3.0", "torch": "2.7.0+xpu"}
    monkeypatch.setattr(ic, "dist_version", lambda name: dists.get(name))
    monkeypatch.setattr(ic, "_torch_declared_triton", lambda: ("pytorch-triton-xpu", "3.3.1"))
    facts = ic.triton_facts("xpu")
    text = "\n".join(facts["problems"])
    assert "installed next to pytorch-triton-xpu" in text and "uninstall -y triton" in text
    assert "requires pytorch-triton-xpu==3.3.1, installed: 3.3.0" in text and "--no-deps" in text
    assert ic.triton_facts("cpu")["problems"] == []


def test_device_advice():
    assert ic.device_advice({"device": "xpu", "build": "XPU"}) is None
    assert "sees no Intel GPU" in ic.device_advice({"device": "cpu", "build": "XPU"})
    assert "sees no NVIDIA GPU" in ic.device_advice({"device": "cpu", "build": "CUDA"})


def test_old_torch_note(monkeypatch, capsys):
    """torch before 2.5 (the oldest the suite passes on; 2.3.1's SDPA refuses a float32 mask with fp16 q and gives
    NaN for a fully masked row) gets one note in install.py's check and in doctor; versions compare as numbers."""
    for old in ("2.3.1+cu121", "2.4.0", "1.13.1+cpu"):
        assert "older than 2.5" in ic.old_torch_note(old)
    for new in ("2.5.1+xpu", "2.10.0", "2.13.0+cpu", "3.0.0", "nightly"):
        assert ic.old_torch_note(new) is None
    from arcattn.__main__ import main
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    assert main(["doctor", "--no-selftest"]) == 0
    assert "note: torch" not in capsys.readouterr().out
    monkeypatch.setattr(torch, "__version__", "2.3.1+cu121")
    assert main(["doctor", "--no-selftest"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note: torch 2.3.1+cu121")]
    assert len(notes) == 1


# -- whole runs of install.py in fresh virtual environments -------------------------------------------------
def _make_venv(path, with_torch: bool) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    bindir = "Scripts" if os.name == "nt" else "bin"
    py = os.path.join(str(path), bindir, "python.exe" if os.name == "nt" else "python")
    if with_torch:
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        with open(os.path.join(site, "reuse-test-interpreter.pth"), "w") as f:
            f.write("\n".join(sorted(ours)) + "\n")
    return py


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    base = tmp_path_factory.mktemp("venvs")
    return {"torch": _make_venv(base / "with-torch", True), "bare": _make_venv(base / "no-torch", False)}


def _env(cache, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PIP_")}
    env.update(ARCATTN_CACHE_DIR=str(cache), **extra)
    return env


def _run(py, script, env, cwd, *args):
    t = time.perf_counter()
    r = subprocess.run([py, script, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    return r, time.perf_counter() - t


def _node_copy(tmp_path, requirements: str) -> str:
    """install.py + arcattn/ + requirements.txt in a folder of their own, as a host would hold them."""
    node = tmp_path / "node"
    shutil.copytree(os.path.join(ROOT, "arcattn"), node / "arcattn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(INSTALL_PY, node / "install.py")
    (node / "requirements.txt").write_text(requirements)
    return str(node)


def test_first_and_second_run(venvs, tmp_path):
    # a copy of the folder, as a host holds it (and safe from edits to the work tree while the test runs)
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        node = _node_copy(tmp_path, f.read())
    script = os.path.join(node, "install.py")
    env = _env(tmp_path / "cache")
    r, first = _run(venvs["torch"], script, env, node)
    out = r.stdout + r.stderr
    print(out, f"first run: {first:.2f} s wall", sep="\n")
    assert r.returncode == 0, out
    assert "torch " in out and "self-test:" in out and "sdpa pass" in out and "Traceback" not in out
    assert re.search(r"arcattn \S+ ready.*\(checked in [0-9.]+ s\)", out)

    # second run: nothing changed, so it must not even import torch (a poisoned torch sits first on the path)
    poison = tmp_path / "poison"
    (poison / "torch").mkdir(parents=True)
    (poison / "torch" / "__init__.py").write_text("raise ImportError('install.py imported torch on the fast path')\n")
    r, second = _run(venvs["torch"], script, dict(env, PYTHONPATH=str(poison)), node)
    out = r.stdout + r.stderr
    print(out, f"second run: {second:.2f} s wall (install.py's own figure is in its line)", sep="\n")
    assert r.returncode == 0, out
    assert "unchanged since the check of" in out and len(out.strip().splitlines()) == 1
    assert re.search(r"\(([0-9.]+) s; python install.py --force checks again\)", out)

    # --force checks again (and now meets the poisoned torch: a clear line, not a traceback)
    r, _ = _run(venvs["torch"], script, dict(env, PYTHONPATH=str(poison)), node, "--force")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "torch fails to import" in out and "Traceback" not in out, out


BROKEN_PIP = '''def _crash(depth):
    if depth == 0:
        raise RuntimeError("simulated broken pip")
    _crash(depth - 1)
_crash(40)
'''


def test_broken_pip_gives_one_line(venvs, tmp_path):
    node = _node_copy(tmp_path, "arcattn-test-absent-package==1.0\n")
    fake = tmp_path / "fakepip" / "pip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(BROKEN_PIP)
    env = _env(tmp_path / "cache", PYTHONPATH=str(fake.parent))
    r, wall = _run(venvs["torch"], os.path.join(node, "install.py"), env, node)
    out = r.stdout + r.stderr
    print(out, f"({wall:.2f} s wall)", sep="\n")
    assert r.returncode == 0, out  # the plugin still works: a missing optional requirement is reported only
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "arcattn-test-absent-package" in ln]
    assert len(lines) == 1 and "pip could not install arcattn-test-absent-package==1.0: " in lines[0]
    assert "simulated broken pip" in lines[0]
    # a failed install is not remembered: the next run tries again instead of claiming "unchanged"
    r, _ = _run(venvs["torch"], os.path.join(node, "install.py"), env, node)
    assert "unchanged since" not in r.stdout


def test_offline_pip_gives_one_line(venvs, tmp_path):
    node = _node_copy(tmp_path, "arcattn-test-absent-package==1.0\n")
    env = _env(tmp_path / "cache", PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    r, wall = _run(venvs["torch"], os.path.join(node, "install.py"), env, node)
    out = r.stdout + r.stderr
    print(out, f"({wall:.2f} s wall)", sep="\n")
    assert r.returncode == 0 and "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if "arcattn-test-absent-package" in ln]
    assert len(lines) == 1 and "pip could not install" in lines[0]


def test_torch_missing_is_a_clear_failure(venvs, tmp_path):
    env = _env(tmp_path / "cache")
    for _ in range(2):  # and the failure is not cached
        r, wall = _run(venvs["bare"], INSTALL_PY, env, ROOT)
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "torch is not installed in this Python" in out and "never installs it" in out
        assert "Traceback" not in out
    print(out, f"({wall:.2f} s wall)", sep="\n")


def test_usage_errors(venvs, tmp_path):
    r, _ = _run(venvs["bare"], INSTALL_PY, _env(tmp_path), ROOT, "--no-such-flag")
    assert r.returncode == 2 and "usage: python install.py" in r.stdout


# -- the verdict, with the machine faked (an Arc GPU seen through torch, self-test results chosen) ----------
@pytest.fixture
def arc_machine(monkeypatch):
    monkeypatch.setattr(ic, "torch_facts", lambda: {"version": "2.9.0+xpu", "build": "XPU", "device": "xpu",
                                                    "device_name": "Intel(R) Arc(TM) B580 Graphics",
                                                    "extra": " SYCL 20250101"})
    monkeypatch.setattr(ic, "missing_requirements", lambda reqs: [])

    def use(results):
        if isinstance(results, Exception):
            def crash(device):
                raise results
            monkeypatch.setattr(ic, "run_selftest", crash)
        else:
            monkeypatch.setattr(ic, "run_selftest", lambda device: results)
    return use


def _verdict(capsys):
    rc, headline, cacheable = ic.full_check(ROOT, "manual", "9.9.9", ic._Args(), time.perf_counter(), {})
    return rc, headline, cacheable, capsys.readouterr().out


def _entry(backend, ok, err=None, reason=None):
    return {"backend": backend, "ok": ok, "rel_error": err, "reason": reason}


def test_verdict_fast_backend_ready(arc_machine, capsys):
    arc_machine([_entry("xmx", None, reason="no binary"), _entry("triton", True, 4e-4), _entry("sdpa", True, 3e-4)])
    rc, headline, cacheable, out = _verdict(capsys)
    assert rc == 0 and cacheable and headline == "ready: triton with sdpa as fallback", out
    assert "device: xpu (Intel(R) Arc(TM) B580 Graphics)" in out
    assert "native XMX kernel: not in use" in out and "--build-native" in out
    assert "self-test: xmx n/a; triton pass (err 4.0e-04); sdpa pass (err 3.0e-04)" in out


def test_verdict_notes_an_old_torch(arc_machine, capsys, monkeypatch):
    arc_machine([_entry("sdpa", True, 3e-4)])
    assert "note: torch" not in _verdict(capsys)[3]
    monkeypatch.setattr(ic, "torch_facts", lambda: {"version": "2.3.1+cxx11.abi", "build": "CPU", "device": "cpu",
                                                    "device_name": "", "extra": ""})
    rc, headline, cacheable, out = _verdict(capsys)
    assert rc == 0 and "  note: torch 2.3.1+cxx11.abi is older than 2.5" in out, out


def test_verdict_wrong_fast_backend_warns_and_is_not_remembered(arc_machine, capsys):
    arc_machine([_entry("triton", False, 0.3, "relative error 3.0e-01"), _entry("sdpa", True, 3e-4)])
    rc, headline, cacheable, out = _verdict(capsys)
    assert rc == 0 and not cacheable and "sdpa only" in headline
    assert "WARNING: backend triton gives wrong results here; set ARCATTN_DISABLE=triton" in out


def test_verdict_cannot_work(arc_machine, capsys):
    arc_machine([_entry("triton", True, 4e-4), _entry("sdpa", False, 0.5, "relative error 5.0e-01")])
    rc, _, cacheable, out = _verdict(capsys)
    assert rc == 1 and not cacheable
    assert out.strip().splitlines()[-1].startswith("arcattn cannot work here: its sdpa fallback failed")
    arc_machine(RuntimeError("UR error: device lost\nmore"))
    rc, _, _, out = _verdict(capsys)
    assert rc == 1 and "the self-test crashed (RuntimeError: UR error: device lost)" in out


def test_selftest_fails_a_wrong_or_crashing_backend():
    """The self-test that doctor and install.py trust: a backend off by 1 % or one that raises is FAIL, and
    then the whole run has not passed; correct backends alone pass."""
    from arcattn.backends.sdpa import SDPABackend
    from arcattn.dispatch import Router
    from arcattn.selftest import format_results, passed, run_selftest

    class Wrong(SDPABackend):
        name, is_fallback = "triton", False

        def run(self, call):
            return super().run(call) * 1.01

    class Crashing(SDPABackend):
        name, is_fallback = "xmx", False

        def run(self, call):
            raise RuntimeError("device lost (simulated)")
    arcattn.set_router(Router([Crashing(), Wrong(), SDPABackend()], disabled=(), prefer=""))
    results = run_selftest(torch.device("cpu"))
    state = {(r["backend"], r["case"]): r["ok"] for r in results}
    assert {b for (b, _), ok in state.items() if ok is False} == {"xmx", "triton"}  # (the router: sdpa after xmx)
    assert all(ok for (b, _), ok in state.items() if b == "sdpa")
    assert not passed(results) and "FAIL xmx" in format_results(results)
    arcattn.set_router(Router([SDPABackend()], disabled=(), prefer=""))
    assert passed(run_selftest(torch.device("cpu")))
