"""Check a built arcattn._xmx SYCL binary: what it needs from the system, and what it says about itself.

    python extension/check_binary.py PATH --sycl-major N [--deps] [--import] [--dll-dir DIR]

PATH is the binary, or a directory holding _xmx.sycl<N><this Python's extension suffix>.
  --deps     its dynamic dependencies are the SYCL runtime it was built for (libsycl.so.N / syclN.dll) and the
             C/C++ runtime, nothing else: Intel's compiler runtime must be linked in (-static-intel), since a
             user's machine has only what torch's XPU wheel brings. Linux: readelf -d; Windows: dumpbin /dependents
             (a Visual Studio prompt), where Intel runtime DLLs are reported, not failed (no static form there).
             Also prints the newest glibc / libstdc++ symbol versions it needs (the oldest Linux it can run on).
  --import   it imports into this process and describes itself: kind "sycl-esimd", sycl_major == N, and every
             kernel instance registered with the SYCL runtime (device_info()["kernels"] == head dims x dtypes).
             Needs no GPU. Run it once with oneAPI activated and once without (only the pip runtime wheels).
  --dll-dir  (Windows) a directory to add to the DLL search path first, e.g. <venv>\\Library\\bin of intel-sycl-rt.
Exit status 0 when every check asked for passes, 1 otherwise; each problem is printed. Used by
.github/workflows/native.yml; never imported by arcattn.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Optional, Sequence

ABI_VERSION = 2  # arcattn/backends/xmx.py ABI_VERSION (the tests check they agree)
LINUX_ALLOWED = {"libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2"}
WINDOWS_SYSTEM = re.compile(r"^(kernel32|ucrtbase|vcruntime140(_1)?|msvcp140(_\d+)?|python3\d*|api-ms-win-.*)\.dll$",
                            re.IGNORECASE)
SYCL_LIB = re.compile(r"^(?:libsycl\.so\.(\d+)|sycl(\d+)\.dll)$", re.IGNORECASE)


def find(path: Path, major: int) -> Path:
    if path.is_dir():
        return path / f"_xmx.sycl{major}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    return path


def needed_from_readelf(text: str) -> list:
    """The NEEDED entries of `readelf -d` output."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)


def needed_from_dumpbin(text: str) -> list:
    """The DLL names of `dumpbin /dependents` output."""
    return [line.strip() for line in text.splitlines() if line.strip().lower().endswith(".dll")]


def sycl_majors(names: Sequence[str]) -> set:
    out = set()
    for n in names:
        m = SYCL_LIB.match(n)
        if m:
            out.add(int(m.group(1) or m.group(2)))
    return out


def dependency_problems(needed: Sequence[str], major: int, windows: bool) -> tuple:
    """(problems, notes) for the dependency list of a binary built for SYCL runtime `major`."""
    problems, notes = [], []
    majors = sycl_majors(needed)
    if majors != {major}:
        problems.append(f"needs SYCL runtime(s) {sorted(majors) or 'none'}, expected exactly {major}")
    others = [n for n in needed if not SYCL_LIB.match(n)]
    if windows:
        intel = [n for n in others if not WINDOWS_SYSTEM.match(n)]
        if intel:
            notes.append(f"also needs {', '.join(intel)} (Intel's compiler runtime DLLs come with the "
                         f"intel-cmplr-lib-rt wheel torch's XPU build installs; the clean import test checks them)")
    else:
        extra = sorted(set(others) - LINUX_ALLOWED)
        if extra:
            problems.append(f"needs {', '.join(extra)}, which a machine with only torch's XPU wheels may lack "
                            f"(link Intel's runtime statically: -static-intel)")
    return problems, notes


def symbol_floor(text: str) -> dict:
    """The newest GLIBC_/GLIBCXX_/CXXABI_ version named in `objdump -T` output, per family."""
    best: dict = {}
    for fam, ver in re.findall(r"\b(GLIBCXX|GLIBC|CXXABI)_(\d+(?:\.\d+)*)\b", text):
        key = tuple(int(x) for x in ver.split("."))
        if fam not in best or key > best[fam][0]:
            best[fam] = (key, ver)
    return {fam: ver for fam, (_, ver) in best.items()}


def _run(cmd: list) -> Optional[str]:
    if not shutil.which(cmd[0]):
        return None
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def check_deps(path: Path, major: int) -> list:
    windows = path.suffix.lower() == ".pyd"
    text = _run(["dumpbin", "/dependents", str(path)] if windows else ["readelf", "-d", str(path)])
    if text is None:
        return [f"cannot list the dependencies of {path} ({'dumpbin' if windows else 'readelf'} missing or failed)"]
    needed = needed_from_dumpbin(text) if windows else needed_from_readelf(text)
    print(f"{path.name} needs: {', '.join(needed)}")
    problems, notes = dependency_problems(needed, major, windows)
    for n in notes:
        print("note:", n)
    if not windows:
        syms = _run(["objdump", "-T", str(path)])
        if syms:
            floor = sorted(symbol_floor(syms).items())
            print("newest symbol versions needed:", ", ".join(f"{k}_{v}" for k, v in floor))
    return problems


def check_import(path: Path, major: int) -> list:
    spec = importlib.util.spec_from_file_location("_xmx", str(path))
    try:
        mod = importlib.util.module_from_spec(spec)  # an extension module is loaded (dlopen) here already
        spec.loader.exec_module(mod)
        abi, info = mod.abi_version(), dict(mod.device_info())
    except Exception as e:  # noqa: BLE001 - the message is the result
        return [f"{path} does not import here: {type(e).__name__}: {e}"]
    print(f"{path.name}: abi {abi}, {info}")
    problems = []
    if abi != ABI_VERSION:
        problems.append(f"ABI {abi}, expected {ABI_VERSION}")
    if info.get("kind") != "sycl-esimd":
        problems.append(f"kind {info.get('kind')!r}, expected 'sycl-esimd'")
    if info.get("sycl_major") != major:
        problems.append(f"built against SYCL runtime {info.get('sycl_major')!r} ({info.get('sycl_version')}), "
                        f"expected {major}")
    expected = len(info.get("head_dims", ())) * len(info.get("dtypes", ()))
    if info.get("kernels") != expected or not expected:
        problems.append(f"{info.get('kernels')!r} kernels registered with the SYCL runtime, expected {expected} "
                        f"(device code missing or incomplete)")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="extension/check_binary.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--sycl-major", type=int, required=True)
    ap.add_argument("--deps", action="store_true")
    ap.add_argument("--import", dest="do_import", action="store_true")
    ap.add_argument("--dll-dir", action="append", default=[])
    args = ap.parse_args(argv)
    path = find(args.path, args.sycl_major)
    if not path.is_file():
        print(f"FAIL: {path} does not exist (was the binary built for SYCL runtime {args.sycl_major}?)")
        return 1
    for d in args.dll_dir:
        os.add_dll_directory(d)  # Windows only; Python does not search PATH for an extension's DLLs
    problems = []
    if args.deps:
        problems += check_deps(path, args.sycl_major)
    if args.do_import:
        problems += check_import(path, args.sycl_major)
    for p in problems:
        print("FAIL:", p)
    if not problems:
        print(f"OK: {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
