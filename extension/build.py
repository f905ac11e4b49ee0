"""Build arcattn's native module, arcattn._xmx.

    python extension/build.py                      SYCL/ESIMD kernel for Xe2 (icpx, ahead of time for bmg-g21)
                                                   -> arcattn/_native/_xmx.sycl<N><python suffix>
    python extension/build.py --cpu-reference      the same binding around the plain C++ reference body (g++)
                                                   -> extension/build/cpu-reference/_xmx<python suffix>

<N> is the major version of the SYCL runtime the compiler builds against (__LIBSYCL_MAJOR_VERSION in its
sycl/version.hpp: libsycl.so.<N> on Linux, sycl<N>.dll on Windows; 8 for oneAPI 2025.x, 9 for 2026.x). The module
runs on torch's SYCL queue, so it must share torch's SYCL runtime: binaries for several runtimes can sit side by
side in arcattn/_native/ and the loader takes the one matching torch. On Windows the SYCL build needs the Ninja
generator (pip install ninja): with Visual Studio's, the device code would be silently left out.

Both skip the work when nothing that went into the output changed (a stamp holds a hash of the sources, the
command, the compiler and the Python), so a second run costs milliseconds. Importable: `main(argv) -> int`
(install.py --build-native calls it). Exit codes: 0 built or up to date, 1 build failed, 2 a tool is missing (the
message says which and how to get it).

The CPU reference build goes under extension/build/ (git-ignored, never packaged) and is only ever loaded when a
caller allows it explicitly (tests); the SYCL build goes into the package, where arcattn's loader looks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
EXT_DIR = ROOT / "extension"
SRC = EXT_DIR / "src"
KERNEL = ROOT / "kernel"
MODULE = "_xmx"
DEFAULT_AOT_DEVICES = "bmg-g21"
NATIVE_DIR = ROOT / "arcattn" / "_native"
SYCL_BUILD_DIR = EXT_DIR / "build" / "sycl"  # CMake trees (cmake-sycl<N>/) and the stamps of the package's binaries
IS_WINDOWS = os.name == "nt"
NINJA_HINT = ("the SYCL build on Windows needs the Ninja generator and ninja was not found: pip install ninja "
              "(with Visual Studio's generator, link.exe drops the SYCL device link and the module would have no "
              "device code), then run this again")
ONEAPI_HINT = ("Intel oneAPI DPC++/C++ compiler not found. It is only needed to build the native XMX kernel "
               "yourself (arcattn works without it: Triton and SDPA serve every call). Install the Intel oneAPI "
               "Base Toolkit of the release your torch XPU build uses (2025.x up to torch 2.12, 2026.x for torch 2.13; "
               "torch.version.xpu and docs/native.md tell), then activate it: "
               "`source /opt/intel/oneapi/setvars.sh` (Linux) or "
               "`\"C:\\Program Files (x86)\\Intel\\oneAPI\\setvars.bat\"` (Windows), and run this again.")


def ext_suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or (".pyd" if os.name == "nt" else ".so")


def cpu_reference_output() -> Path:
    """Where --cpu-reference puts the module (tests load it from here)."""
    return EXT_DIR / "build" / "cpu-reference" / (MODULE + ext_suffix())


def sycl_output(sycl_major: int, out_dir: Optional[Path] = None) -> Path:
    """Where the SYCL build for SYCL runtime `sycl_major` goes: _xmx.sycl<N><python suffix>."""
    return Path(out_dir or NATIVE_DIR) / f"{MODULE}.sycl{int(sycl_major)}{ext_suffix()}"


def sources() -> list:
    return sorted([*SRC.rglob("*.cpp"), *SRC.rglob("*.hpp"), *KERNEL.glob("*.hpp"), EXT_DIR / "CMakeLists.txt"])


class ToolMissing(Exception):
    """A compiler or package needed for the build is not installed; the message says how to get it."""


def _say(quiet: bool, *msg) -> None:
    if not quiet:
        print("[arcattn build]", *msg, flush=True)


def _tool_version(exe: str) -> str:
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).splitlines()[0] if (r.stdout or r.stderr) else exe
    except (OSError, subprocess.SubprocessError):
        return exe


def _stamp(command: Sequence[str], compiler_version: str) -> str:
    h = hashlib.sha256()
    for p in sources():
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    h.update(json.dumps([list(command), compiler_version, sys.version, ext_suffix()]).encode())
    return h.hexdigest()


def stamp_file(out: Path) -> Path:
    """The stamp of a build output: next to it for the CPU reference (already in the git-ignored build dir),
    in extension/build/sycl/ for the package's SYCL modules (nothing but the binary goes into the package)."""
    if out.name.startswith(MODULE + ".sycl"):
        return SYCL_BUILD_DIR / (out.name + ".stamp")
    return out.with_name(out.name + ".stamp")


def _up_to_date(out: Path, stamp: str) -> bool:
    try:
        return out.is_file() and json.loads(stamp_file(out).read_text())["stamp"] == stamp
    except (OSError, ValueError, KeyError):
        return False


def _write_stamp(out: Path, stamp: str, info: dict) -> None:
    sf = stamp_file(out)
    sf.parent.mkdir(parents=True, exist_ok=True)
    sf.write_text(json.dumps({"stamp": stamp, **info}, indent=1))


# -- CPU reference (g++ / clang++, no CMake needed) -------------------------------------------------------------
def _find_cxx() -> str:
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    raise ToolMissing("no C++ compiler found for the CPU reference build: install g++ (or set CXX)")


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError:
        raise ToolMissing("pybind11 is not installed: pip install pybind11") from None
    return pybind11.get_include()


def cpu_reference_command(out: Path, cxx: Optional[str] = None) -> list:
    """The compile-and-link command of the CPU reference module (one translation unit)."""
    if IS_WINDOWS:
        raise ToolMissing("the CPU reference build is driven by g++/clang++; on Windows configure "
                          "extension/CMakeLists.txt with -DARCATTN_CPU_REFERENCE=ON instead")
    cxx = cxx or _find_cxx()
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-DARCATTN_CPU_REFERENCE=1",
           "-DARCATTN_KERNEL_HOST_MODEL=1", "-I", str(SRC / "host_model"), "-I", _pybind11_include(),
           "-I", sysconfig.get_paths()["include"], "-I", str(SRC), "-I", str(KERNEL),
           str(SRC / "binding.cpp"), "-o", str(out)]
    if platform.system() == "Darwin":
        cmd[1:1] = ["-undefined", "dynamic_lookup"]
    return cmd


def build_cpu_reference(out: Optional[Path] = None, force: bool = False, quiet: bool = False) -> Path:
    out = Path(out) if out else cpu_reference_output()
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = cpu_reference_command(out)
    stamp = _stamp(cmd, _tool_version(cmd[0]))
    if not force and _up_to_date(out, stamp):
        _say(quiet, f"CPU reference up to date: {out}")
        return out
    # compile to a temporary name and rename: a reader never sees half a module
    fd, tmp = tempfile.mkstemp(prefix=MODULE + ".", suffix=".tmp" + ext_suffix(), dir=out.parent)
    os.close(fd)
    tmp_cmd = cpu_reference_command(Path(tmp), cmd[0])
    _say(quiet, "compiling CPU reference:", " ".join(tmp_cmd))
    try:
        r = subprocess.run(tmp_cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, tmp_cmd, r.stdout, r.stderr)
        os.chmod(tmp, 0o755)  # mkstemp made it 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _write_stamp(out, stamp, {"kind": "cpu-reference", "command": cmd})
    _say(quiet, f"built {out}")
    return out


# -- SYCL / ESIMD (icpx through CMake) --------------------------------------------------------------------------
def find_sycl_compiler() -> str:
    """icpx (Linux) / icx (Windows) from an activated oneAPI environment, or ToolMissing with instructions."""
    names = ("icx", "icpx") if IS_WINDOWS else ("icpx",)
    for n in (os.environ.get("ARCATTN_SYCL_CXX"), *names):
        if n and shutil.which(n):
            return shutil.which(n)
    hint = ONEAPI_HINT
    for root in (os.environ.get("ONEAPI_ROOT"), "/opt/intel/oneapi", r"C:\Program Files (x86)\Intel\oneAPI"):
        if root and Path(root, "compiler").is_dir():
            hint += f" (oneAPI seems installed at {root} but is not activated in this shell.)"
            break
    raise ToolMissing(hint)


def sycl_version_headers(compiler: str) -> list:
    """Where the compiler's sycl/version.hpp may be: <root>/include/sycl/ next to <root>/bin/icpx (oneAPI 2023 and
    later; <root>/linux/include before), and $CMPLR_ROOT, which setvars exports."""
    bins = []
    for p in (Path(compiler), Path(compiler).resolve()):
        if p.parent not in bins:
            bins.append(p.parent)
    heads = [b.parent / sub / "sycl" / "version.hpp" for b in bins for sub in ("include", Path("linux", "include"))]
    if os.environ.get("CMPLR_ROOT"):
        heads.append(Path(os.environ["CMPLR_ROOT"], "include", "sycl", "version.hpp"))
    return heads


def sycl_major_of(compiler: str) -> Optional[int]:
    """__LIBSYCL_MAJOR_VERSION of the compiler's SYCL headers, or None when no header could be read. The
    SYCL translation unit static_asserts the same value, so a wrong header here fails the build, not a user."""
    for h in sycl_version_headers(compiler):
        try:
            m = re.search(r"#define\s+__LIBSYCL_MAJOR_VERSION\s+(\d+)", h.read_text(errors="replace"))
        except OSError:
            continue
        if m:
            return int(m.group(1))
    return None


def find_ninja() -> Optional[str]:
    found = shutil.which("ninja")
    if found:
        return found
    try:  # pip install ninja puts the executable in the package; its Scripts/ dir is not always on PATH
        import ninja
        cand = Path(ninja.BIN_DIR, "ninja.exe" if IS_WINDOWS else "ninja")
        return str(cand) if cand.is_file() else None
    except (ImportError, AttributeError):
        return None


def sycl_configure_command(build_dir: Path, out_dir: Path, compiler: str, devices: str, sycl_major: int,
                           ninja: Optional[str] = None) -> list:
    try:
        import pybind11
    except ImportError:
        raise ToolMissing("pybind11 is not installed: pip install pybind11") from None
    cmd = ["cmake", "-S", str(EXT_DIR), "-B", str(build_dir), f"-DCMAKE_CXX_COMPILER={compiler}",
           "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
           f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DARCATTN_OUTPUT_DIR={out_dir}",
           f"-DARCATTN_XMX_AOT_DEVICES={devices}", f"-DARCATTN_SYCL_MAJOR={int(sycl_major)}"]
    if ninja:
        cmd += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    return cmd


def _cached_generator(build_dir: Path) -> Optional[str]:
    try:
        text = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^CMAKE_GENERATOR:INTERNAL=(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def build_sycl(devices: str = DEFAULT_AOT_DEVICES, force: bool = False, quiet: bool = False,
               jobs: Optional[int] = None, sycl_major: Optional[int] = None,
               out_dir: "Optional[Path]" = None) -> Path:
    compiler = find_sycl_compiler()
    if not shutil.which("cmake"):
        raise ToolMissing("cmake not found: pip install cmake (and ninja), then run this again")
    ninja = find_ninja()
    if ninja is None and IS_WINDOWS:
        raise ToolMissing(NINJA_HINT)
    major = sycl_major if sycl_major is not None else sycl_major_of(compiler)
    if major is None:
        tried = ", ".join(str(h) for h in sycl_version_headers(compiler))
        raise RuntimeError(f"cannot tell which SYCL runtime {compiler} builds against: no __LIBSYCL_MAJOR_VERSION "
                           f"in {tried}; pass --sycl-major N (the N of the compiler's libsycl.so.N / syclN.dll)")
    out = sycl_output(major, out_dir)
    build_dir = SYCL_BUILD_DIR / f"cmake-sycl{major}"
    configure = sycl_configure_command(build_dir, out.parent, compiler, devices, major, ninja)
    stamp = _stamp(configure, _tool_version(compiler))
    if not force and _up_to_date(out, stamp):
        _say(quiet, f"native XMX module up to date: {out}")
        return out
    if ninja and _cached_generator(build_dir) not in (None, "Ninja"):
        # CMake refuses to switch generators in an existing tree; this one is ours, start it afresh
        shutil.rmtree(build_dir, ignore_errors=True)
    _say(quiet, f"SYCL runtime {major} (libsycl.so.{major} / sycl{major}.dll) -> {out.name}")
    _say(quiet, "configuring:", " ".join(configure))
    subprocess.run(configure, check=True, capture_output=quiet)
    build = ["cmake", "--build", str(build_dir), "--config", "Release", "--parallel", str(jobs or os.cpu_count() or 2)]
    _say(quiet, "building (ahead-of-time device compile; takes minutes):", " ".join(build))
    subprocess.run(build, check=True, capture_output=quiet)
    if not out.is_file():
        raise RuntimeError(f"the build finished but {out} is missing")
    _write_stamp(out, stamp, {"kind": "sycl-esimd", "devices": devices, "sycl_major": major,
                              "compiler": _tool_version(compiler)})
    _say(quiet, f"built {out}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="extension/build.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-reference", action="store_true",
                    help="build the plain C++ reference body with g++ (tests; never used for real calls)")
    ap.add_argument("--devices", default=os.environ.get("ARCATTN_XMX_AOT_DEVICES", DEFAULT_AOT_DEVICES),
                    help="ahead-of-time targets for ocloc (-Xs -device ...), default bmg-g21")
    ap.add_argument("--sycl-major", type=int, default=None,
                    help="SYCL runtime major the compiler builds against (default: read from its sycl/version.hpp)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--quiet", action="store_true", help="print nothing unless something fails")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        if args.cpu_reference:
            build_cpu_reference(force=args.force, quiet=args.quiet)
        else:
            build_sycl(devices=args.devices, force=args.force, quiet=args.quiet, jobs=args.jobs,
                       sycl_major=args.sycl_major)
    except ToolMissing as e:
        print(f"[arcattn build] {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"[arcattn build] build failed (exit {e.returncode}): {' '.join(map(str, e.cmd))}", file=sys.stderr)
        for stream in (e.stdout, e.stderr):
            if stream:
                print(stream if isinstance(stream, str) else stream.decode(errors="replace"), file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as e:
        print(f"[arcattn build] build failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
