"""extension/build.py and the contracts between the native sources and the Python loader."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arcattn.backends import xmx as xmx_mod
from arcattn.backends.xmx import XMXBackend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("arcattn_extension_build", ROOT / "extension" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cpu_binary(build):
    return build.build_cpu_reference(quiet=True)


def test_abi_version_agrees_everywhere(cpu_binary):
    header = (ROOT / "extension" / "src" / "abi.hpp").read_text()
    abi = int(re.search(r"#define ARCATTN_XMX_ABI (\d+)", header).group(1))
    assert abi == xmx_mod.ABI_VERSION == xmx_mod.load_module(cpu_binary).abi_version()


def test_head_dims_agree_everywhere(cpu_binary):
    header = (ROOT / "kernel" / "schedule.hpp").read_text()
    dims = tuple(int(d) for d in re.search(r"kHeadDims\[\] = \{([^}]*)\}", header).group(1).split(","))
    info = xmx_mod.load_module(cpu_binary).device_info()
    assert dims == xmx_mod.DEFAULT_HEAD_DIMS == tuple(info["head_dims"])
    assert info["kind"] == "cpu-reference" and info["abi"] == xmx_mod.ABI_VERSION


def test_cpu_reference_goes_where_git_ignores_it(build):
    out = build.cpu_reference_output()
    assert out.parent == ROOT / "extension" / "build" / "cpu-reference"
    assert "arcattn" not in out.relative_to(ROOT).parts  # never inside the package
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    r = subprocess.run(["git", "check-ignore", "-q", str(out)], cwd=ROOT)
    if r.returncode not in (0, 1):
        pytest.skip("not a git checkout")
    assert r.returncode == 0, f"{out} is not git-ignored"


def test_second_run_is_up_to_date(build, cpu_binary, capsys):
    before = (cpu_binary.stat().st_mtime_ns, build.stamp_file(cpu_binary).read_text())
    assert build.main(["--cpu-reference"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert build.main(["--cpu-reference", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    after = (cpu_binary.stat().st_mtime_ns, build.stamp_file(cpu_binary).read_text())
    assert before == after


def test_stamp_covers_the_command(build):
    assert build._stamp(["g++", "-O2"], "g++ 12") != build._stamp(["g++", "-O3"], "g++ 12")
    assert build._stamp(["g++", "-O2"], "g++ 12") != build._stamp(["g++", "-O2"], "g++ 13")
    assert build.stamp_file(build.sycl_output()).parent == ROOT / "extension" / "build" / "sycl"
    assert {p.name for p in build.sources()} >= {"binding.cpp", "abi.hpp", "cpu_reference.hpp", "schedule.hpp",
                                                "xmx_attention_esimd.hpp", "sycl_forward.cpp", "sycl_backend.hpp",
                                                "CMakeLists.txt"}


def _no_tools(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for name in ("ARCATTN_SYCL_CXX", "ONEAPI_ROOT", "CXX"):
        monkeypatch.delenv(name, raising=False)


def test_missing_oneapi_is_a_message_not_a_traceback(build, monkeypatch, tmp_path, capsys):
    _no_tools(monkeypatch, tmp_path)
    assert build.main([]) == 2
    err = capsys.readouterr().err
    assert "oneAPI" in err and "setvars" in err and "Traceback" not in err


def test_missing_cmake_is_a_message(build, monkeypatch, tmp_path, capsys):
    _no_tools(monkeypatch, tmp_path)
    icpx = tmp_path / "icpx"
    icpx.write_text("#!/bin/sh\nexit 0\n")
    icpx.chmod(0o755)
    assert build.main(["--quiet"]) == 2
    assert "cmake not found" in capsys.readouterr().err


def test_missing_compiler_for_cpu_reference(build, monkeypatch, tmp_path, capsys):
    _no_tools(monkeypatch, tmp_path)
    assert build.main(["--cpu-reference", "--force"]) == 2
    assert "no C++ compiler" in capsys.readouterr().err


def test_missing_pybind11(build, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pybind11", None)  # import pybind11 -> ImportError
    assert build.main(["--cpu-reference", "--force", "--quiet"]) == 2
    assert "pip install pybind11" in capsys.readouterr().err


def test_sycl_configure_command(build):
    cmd = build.sycl_configure_command(Path("/b"), Path("/out"), "/opt/intel/oneapi/bin/icpx", "bmg-g21")
    assert cmd[:5] == ["cmake", "-S", str(ROOT / "extension"), "-B", "/b"]
    assert "-DCMAKE_CXX_COMPILER=/opt/intel/oneapi/bin/icpx" in cmd
    assert "-DARCATTN_XMX_AOT_DEVICES=bmg-g21" in cmd and "-DARCATTN_OUTPUT_DIR=/out" in cmd
    cmake = (ROOT / "extension" / "CMakeLists.txt").read_text()
    assert "-fsycl-targets=spir64_gen" in cmake and '-device ${_devices}' in cmake


@pytest.mark.parametrize("defines", [[], ["-DARCATTN_XMX_TARGET_LNL_M=1", '-DARCATTN_XMX_AOT_DEVICES="bmg-g21,lnl-m"']])
def test_sycl_translation_unit_type_checks_against_the_host_model(build, defines):
    """sycl_forward.cpp (the -fsycl translation unit) is at least valid C++ against our model of the SYCL API it
    uses: a typo or a wrong signature fails here rather than on a user's first build. Intel's real headers may
    still differ from the model."""
    import pybind11  # noqa: F401 - the same toolchain as the CPU build
    src = ROOT / "extension" / "src"
    cmd = [build._find_cxx(), "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-unknown-pragmas", *defines,
           "-I", str(src / "host_model"), "-I", str(src), "-I", str(ROOT / "kernel"), str(src / "sycl_forward.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_sycl_mode_binding_type_checks(build):
    """binding.cpp as the SYCL build compiles it (no CPU reference, no SYCL headers: it only sees
    sycl_backend.hpp) is valid C++ with pybind11."""
    import sysconfig

    import pybind11
    src = ROOT / "extension" / "src"
    cmd = [build._find_cxx(), "-std=c++17", "-fsyntax-only", "-Wall", "-I", pybind11.get_include(),
           "-I", sysconfig.get_paths()["include"], "-I", str(src), "-I", str(ROOT / "kernel"), str(src / "binding.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ARCATTN_SLOW_TESTS"), reason="set ARCATTN_SLOW_TESTS=1 (a 10-20 s build)")
@pytest.mark.skipif(not shutil.which("cmake") or os.name == "nt", reason="needs cmake")
def test_cmake_route_builds_a_loadable_cpu_reference(tmp_path):
    """The CMakeLists.txt the SYCL build uses, configured for the CPU reference: it must produce a module the
    loader accepts (this checks the pybind11/CMake plumbing, not the SYCL flags)."""
    import pybind11
    out = tmp_path / "out"
    cfg = ["cmake", "-S", str(ROOT / "extension"), "-B", str(tmp_path / "b"), "-DARCATTN_CPU_REFERENCE=ON",
           f"-DARCATTN_OUTPUT_DIR={out}", f"-DPython_EXECUTABLE={sys.executable}",
           f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DCMAKE_BUILD_TYPE=Release"]
    subprocess.run(cfg, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(tmp_path / "b"), "--parallel", "2"], check=True, capture_output=True)
    b = XMXBackend(out, allow_cpu_reference=True)
    assert b.unavailable_reason() is None and b.kind == "cpu-reference"
