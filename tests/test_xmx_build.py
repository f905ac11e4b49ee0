"""extension/build.py and the contracts between the native sources and the Python loader."""
from __future__ import annotations

import json
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
def build(extension_build):
    return extension_build


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
    assert build.stamp_file(build.sycl_output(8)).parent == ROOT / "extension" / "build" / "sycl"
    assert {p.name for p in build.sources()} >= {"binding.cpp", "abi.hpp", "cpu_reference.hpp", "schedule.hpp",
                                                "xmx_attention_esimd.hpp", "sycl_forward.cpp", "sycl_backend.hpp",
                                                "kernel_instances.hpp", "CMakeLists.txt"}


def test_sycl_outputs_are_named_after_their_sycl_runtime(build):
    suffix = build.ext_suffix()
    assert build.sycl_output(8) == ROOT / "arcattn" / "_native" / f"_xmx.sycl8{suffix}"
    assert build.sycl_output(9, Path("/o")) == Path("/o") / f"_xmx.sycl9{suffix}"
    assert xmx_mod.binary_sycl_tag(build.sycl_output(9)) == 9  # the loader reads the same name
    assert build.stamp_file(build.sycl_output(8)) != build.stamp_file(build.sycl_output(9))


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
    cmd = build.sycl_configure_command(Path("/b"), Path("/out"), "/opt/intel/oneapi/bin/icpx", "bmg-g21", 8)
    assert cmd[:5] == ["cmake", "-S", str(ROOT / "extension"), "-B", "/b"]
    assert "-DCMAKE_CXX_COMPILER=/opt/intel/oneapi/bin/icpx" in cmd and "-DARCATTN_SYCL_MAJOR=8" in cmd
    assert "-DARCATTN_XMX_AOT_DEVICES=bmg-g21" in cmd and "-DARCATTN_OUTPUT_DIR=/out" in cmd
    assert "-G" not in cmd  # no ninja: CMake's default generator (Linux only; see the Windows test)
    cmd = build.sycl_configure_command(Path("/b"), Path("/out"), "icx", "bmg-g21", 9, ninja="/n/ninja")
    assert cmd[-3:] == ["-G", "Ninja", "-DCMAKE_MAKE_PROGRAM=/n/ninja"] and "-DARCATTN_SYCL_MAJOR=9" in cmd
    cmake = (ROOT / "extension" / "CMakeLists.txt").read_text()
    assert "-fsycl-targets=spir64_gen" in cmake and '-device ${_devices}' in cmake
    assert "-static-intel" in cmake and 'OUTPUT_NAME "_xmx.sycl${ARCATTN_SYCL_MAJOR}"' in cmake
    assert 'WIN32 AND NOT CMAKE_GENERATOR MATCHES "Ninja"' in cmake


def _fake_oneapi(tmp_path: Path, major="8", layout="include") -> Path:
    """compiler/2025.3/bin/icpx (a do-nothing script) with compiler/2025.3/<layout>/sycl/version.hpp."""
    root = tmp_path / "oneapi" / "compiler" / "2025.3"
    (root / "bin").mkdir(parents=True)
    icpx = root / "bin" / "icpx"
    icpx.write_text("#!/bin/sh\necho 'Intel(R) oneAPI DPC++/C++ Compiler 2025.3.0'\n")
    icpx.chmod(0o755)
    if major is not None:
        hdr = root / layout / "sycl" / "version.hpp"
        hdr.parent.mkdir(parents=True)
        hdr.write_text(f"#define __SYCL_COMPILER_VERSION 20250903\n#define __LIBSYCL_MAJOR_VERSION {major}\n"
                       f"#define __LIBSYCL_MINOR_VERSION 1\n#define __LIBSYCL_PATCH_VERSION 0\n")
    return icpx


@pytest.mark.skipif(os.name == "nt", reason="shell-script stand-ins")
def test_sycl_major_is_read_from_the_compilers_headers(build, tmp_path, monkeypatch):
    monkeypatch.delenv("CMPLR_ROOT", raising=False)
    assert build.sycl_major_of(str(_fake_oneapi(tmp_path / "a", "8"))) == 8
    assert build.sycl_major_of(str(_fake_oneapi(tmp_path / "b", "9", layout="linux/include"))) == 9
    # through a symlink, as /opt/intel/oneapi/2025.3/bin/icpx -> compiler/2025.3/bin/icpx
    link_dir = tmp_path / "c" / "bin"
    link_dir.mkdir(parents=True)
    (link_dir / "icpx").symlink_to(_fake_oneapi(tmp_path / "c2", "8"))
    assert build.sycl_major_of(str(link_dir / "icpx")) == 8
    bare = _fake_oneapi(tmp_path / "d", None)
    assert build.sycl_major_of(str(bare)) is None
    monkeypatch.setenv("CMPLR_ROOT", str(_fake_oneapi(tmp_path / "e", "9").parents[1]))
    assert build.sycl_major_of(str(bare)) == 9  # setvars' CMPLR_ROOT


def _tool(dirpath: Path, name: str, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    p = dirpath / name
    p.write_text(body)
    p.chmod(0o755)
    return p


@pytest.mark.skipif(os.name == "nt", reason="shell-script stand-ins")
def test_windows_sycl_build_needs_ninja(build, monkeypatch, tmp_path, capsys):
    _no_tools(monkeypatch, tmp_path)
    monkeypatch.setattr(build, "IS_WINDOWS", True)
    monkeypatch.setitem(sys.modules, "ninja", None)  # no pip-installed ninja either
    _tool(tmp_path, "icx")
    _tool(tmp_path, "cmake")
    assert build.main(["--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Ninja" in err and "pip install ninja" in err and "device code" in err


@pytest.mark.skipif(os.name == "nt", reason="shell-script stand-ins")
def test_unknown_sycl_major_is_a_message(build, monkeypatch, tmp_path, capsys):
    _no_tools(monkeypatch, tmp_path)
    _tool(tmp_path, "icpx")  # no sycl/version.hpp anywhere near it
    _tool(tmp_path, "cmake")
    assert build.main(["--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--sycl-major" in err and "__LIBSYCL_MAJOR_VERSION" in err and "Traceback" not in err


FAKE_CMAKE = """#!{python}
# Records the configure call; on --build, writes the module file where the configure call said it would go.
import json, pathlib, sys
args = sys.argv[1:]
if args[0] == "--build":
    cfg = json.loads((pathlib.Path(args[1]) / "configure.json").read_text())
    d = dict(a[2:].split("=", 1) for a in cfg if a.startswith("-D"))
    out = pathlib.Path(d["ARCATTN_OUTPUT_DIR"]) / ("_xmx.sycl" + d["ARCATTN_SYCL_MAJOR"] + {suffix!r})
    out.write_bytes(b"not really a module")
else:
    b = pathlib.Path(args[args.index("-B") + 1])
    b.mkdir(parents=True, exist_ok=True)
    (b / "configure.json").write_text(json.dumps(args))
    (b / "CMakeCache.txt").write_text("CMAKE_GENERATOR:INTERNAL=" + ("Ninja" if "-G" in args else "Unix Makefiles"))
"""


@pytest.mark.skipif(os.name == "nt", reason="shell-script stand-ins")
def test_sycl_build_flow(build, monkeypatch, tmp_path):
    """build_sycl end to end with stand-ins for icpx and cmake: the output is named after the compiler's SYCL
    runtime, the build tree is per runtime, a second run is up to date, and a tree configured with another
    generator is started afresh when Ninja is available."""
    tools = tmp_path / "tools"
    tools.mkdir()
    icpx = _fake_oneapi(tmp_path, "8")
    _tool(tools, "cmake", FAKE_CMAKE.format(python=sys.executable, suffix=build.ext_suffix()))
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{icpx.parent}")
    monkeypatch.delenv("ARCATTN_SYCL_CXX", raising=False)
    monkeypatch.setitem(sys.modules, "ninja", None)
    monkeypatch.setattr(build, "SYCL_BUILD_DIR", tmp_path / "build")
    out_dir = tmp_path / "native"
    out_dir.mkdir()
    out = build.build_sycl(quiet=True, out_dir=out_dir)
    assert out == out_dir / f"_xmx.sycl8{build.ext_suffix()}" and out.is_file()
    tree = tmp_path / "build" / "cmake-sycl8"
    cfg = json.loads((tree / "configure.json").read_text())
    assert "-DARCATTN_SYCL_MAJOR=8" in cfg and "-G" not in cfg
    stamp = json.loads(build.stamp_file(out).read_text())
    assert stamp["sycl_major"] == 8 and stamp["kind"] == "sycl-esimd"
    mtime = out.stat().st_mtime_ns
    assert build.build_sycl(quiet=True, out_dir=out_dir) == out and out.stat().st_mtime_ns == mtime  # up to date
    # now with ninja: the Makefiles tree is removed before configuring with -G Ninja
    ninja = _tool(tools, "ninja")
    (tree / "stale").write_text("x")
    build.build_sycl(quiet=True, out_dir=out_dir)
    cfg = json.loads((tree / "configure.json").read_text())
    assert cfg[-3:] == ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] and not (tree / "stale").exists()
    # an explicit --sycl-major wins over the headers (and names the output)
    assert build.build_sycl(quiet=True, out_dir=out_dir, sycl_major=9).name == f"_xmx.sycl9{build.ext_suffix()}"


@pytest.mark.skipif(not shutil.which("cmake") or os.name == "nt", reason="needs cmake")
def test_cmake_sycl_branch_reads_the_sycl_major(tmp_path):
    """The SYCL branch of CMakeLists.txt, configured (not built) with g++ standing in for icpx: without
    -DARCATTN_SYCL_MAJOR it reads __LIBSYCL_MAJOR_VERSION from $CMPLR_ROOT/include/sycl/version.hpp and names the
    module _xmx.sycl<N>; with it, it uses the value given."""
    import pybind11
    root = _fake_oneapi(tmp_path, "9").parents[1]
    cxx = shutil.which("g++") or shutil.which("c++")
    if not cxx:
        pytest.skip("no C++ compiler")
    for extra, want in (([], "9"), (["-DARCATTN_SYCL_MAJOR=8"], "8")):
        b = tmp_path / f"b{want}"
        cfg = ["cmake", "-S", str(ROOT / "extension"), "-B", str(b), f"-DCMAKE_CXX_COMPILER={cxx}",
               f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
               f"-DARCATTN_OUTPUT_DIR={tmp_path / 'out'}", *extra]
        r = subprocess.run(cfg, capture_output=True, text=True, env={**os.environ, "CMPLR_ROOT": str(root)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"SYCL runtime major {want} -> _xmx.sycl{want}" in r.stdout


@pytest.mark.parametrize("defines", [[], ["-DARCATTN_XMX_TARGET_LNL_M=1", '-DARCATTN_XMX_AOT_DEVICES="bmg-g21,lnl-m"'],
                                     ["-DARCATTN_SYCL_MAJOR=0"]])  # the host model's __LIBSYCL_MAJOR_VERSION
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


def test_sycl_translation_unit_refuses_a_mismatched_sycl_major(build):
    """The build names the binary after the SYCL major it read; the SYCL translation unit checks it against the
    headers it is really compiled with."""
    src = ROOT / "extension" / "src"
    cmd = [build._find_cxx(), "-std=c++17", "-fsyntax-only", "-Wno-unknown-pragmas", "-DARCATTN_SYCL_MAJOR=9",
           "-I", str(src / "host_model"), "-I", str(src), "-I", str(ROOT / "kernel"), str(src / "sycl_forward.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and "ARCATTN_SYCL_MAJOR" in r.stderr


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


# -- extension/check_binary.py: what CI asserts about a SYCL binary ----------------------------------------------
@pytest.fixture(scope="module")
def checker(repo_module):
    return repo_module("arcattn_check_binary", "extension/check_binary.py")


READELF = """
Dynamic section at offset 0x2d9e8 contains 30 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libsycl.so.8]
 0x0000000000000001 (NEEDED)             Shared library: [libstdc++.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [libm.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [_xmx.sycl8.cpython-311-x86_64-linux-gnu.so]
"""
DUMPBIN = """
Dump of file arcattn\\_native\\_xmx.sycl9.cp311-win_amd64.pyd

File Type: DLL

  Image has the following dependencies:

    sycl9.dll
    python311.dll
    libmmd.dll
    KERNEL32.dll
    VCRUNTIME140.dll
    api-ms-win-crt-runtime-l1-1-0.dll

  Summary
"""


def test_checker_parses_and_judges_dependencies(checker):
    needed = checker.needed_from_readelf(READELF)
    assert needed == ["libsycl.so.8", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6"]
    assert checker.dependency_problems(needed, 8, windows=False) == ([], [])
    problems, _ = checker.dependency_problems(needed, 9, windows=False)
    assert problems == ["needs SYCL runtime(s) [8], expected exactly 9"]
    problems, _ = checker.dependency_problems(needed + ["libintlc.so.5", "libsycl.so.9"], 8, windows=False)
    assert "expected exactly 8" in problems[0] and "libintlc.so.5" in problems[1] and "-static-intel" in problems[1]
    dlls = checker.needed_from_dumpbin(DUMPBIN)
    assert dlls[0] == "sycl9.dll" and len(dlls) == 6
    problems, notes = checker.dependency_problems(dlls, 9, windows=True)
    assert problems == [] and "libmmd.dll" in notes[0] and "KERNEL32" not in notes[0]
    assert checker.symbol_floor("0 DF *UND* (GLIBC_2.2.5) a\n0 DF *UND* (GLIBC_2.34) b\n0 (GLIBCXX_3.4.29) c\n"
                                "0 (GLIBC_2.4) d") == {"GLIBC": "2.34", "GLIBCXX": "3.4.29"}
    assert checker.ABI_VERSION == xmx_mod.ABI_VERSION


@pytest.mark.skipif(not shutil.which("readelf"), reason="needs readelf")
def test_checker_on_the_cpu_reference(checker, cpu_binary, capsys):
    """The CPU reference is no SYCL binary: every SYCL-specific check fails, and nothing else is complained of
    (its C/C++ runtime dependencies are the allowed ones)."""
    assert checker.main([str(cpu_binary), "--sycl-major", "8", "--deps", "--import"]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL: needs SYCL runtime(s) none, expected exactly 8",
                     "FAIL: kind 'cpu-reference', expected 'sycl-esimd'",
                     "FAIL: built against SYCL runtime None (None), expected 8"]
    assert checker.main([str(cpu_binary.parent), "--sycl-major", "8", "--import"]) == 1  # dir: _xmx.sycl8<sfx> absent
    assert "does not exist" in capsys.readouterr().out


def test_checker_reports_a_binary_that_cannot_load(checker, tmp_path, capsys):
    """A module whose shared-library load fails (here: not an ELF file) is a FAIL line, not a traceback."""
    bad = tmp_path / f"_xmx.sycl8{xmx_mod._suffixes()[0]}"
    bad.write_text("not a shared object")
    assert checker.main([str(tmp_path), "--sycl-major", "8", "--import"]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "does not import here: ImportError" in fails[0]
