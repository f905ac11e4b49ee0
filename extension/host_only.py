"""A host-only build of arcattn._xmx against Intel's pip SYCL runtime: the loader's real-runtime paths, no oneAPI.

    python extension/host_only.py OUT_DIR [--version 2025.3.3] [--version 2026.0.0]

For each release: the binding (SYCL mode) and sycl_forward.cpp compiled by clang's host pass against that
release's headers (extension/check_headers.py fetches them) and linked to the libsycl.so.N of its intel-sycl-rt
wheel, which is installed with the runtime wheels it pins into a venv under <cache>/sycl-runtime/<version>/.
The result, OUT_DIR/_xmx.sycl<N><suffix>, is the real module minus its device code: it imports with only the pip
runtime (LD_LIBRARY_PATH=<venv>/lib, as with torch's XPU wheels), describes itself, and its SYCL runtime lists
none of its kernels. So it exercises extension/check_binary.py and arcattn's loader against the real runtime
up to the point where device code would be needed, and both must refuse it for that reason.

Linux only; needs clang++, g++-compatible pybind11 headers (pip install pybind11) and PyPI (about 700 MB of
wheels per release, once). Exit codes: 0 built, 1 a build step failed, 2 a tool or a download is missing.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "extension" / "src"
KERNEL = ROOT / "kernel"



def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check_headers = _load("arcattn_check_headers", ROOT / "extension" / "check_headers.py")
build_py = _load("arcattn_extension_build", ROOT / "extension" / "build.py")  # its suffix and pybind11 lookup
Missing = check_headers.Missing


def runtime_venv(version: str, root: Optional[Path] = None) -> Path:
    """A venv holding intel-sycl-rt==version and what it pins (libsycl.so.N and its Intel dependencies in lib/)."""
    where = (root or check_headers.cache_root() / "sycl-runtime") / version
    done = where / ".complete"
    if done.is_file():
        return where
    try:
        venv.create(where, with_pip=True, clear=True)
    except (OSError, subprocess.CalledProcessError) as e:  # e.g. a Python without ensurepip
        raise Missing(f"could not create a venv at {where} ({type(e).__name__}: {e})") from e
    r = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"{check_headers.WHEEL}=={version}"], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["pip failed"]
        raise Missing(f"could not install {check_headers.WHEEL}=={version} and its runtime wheels ({last[0]})")
    done.write_text(version)
    return where


def sycl_library(runtime: Path) -> Path:
    libs = sorted(p for p in (runtime / "lib").glob("libsycl.so.*") if p.name.count(".") == 2)  # libsycl.so.N
    if len(libs) != 1:
        raise Missing(f"{runtime / 'lib'} holds {len(libs)} libsycl.so.N (expected one)")
    return libs[0]


def build(version: str, out_dir: Path, clang: Optional[str] = None) -> Path:
    """OUT_DIR/_xmx.sycl<N><suffix> for `version`; returns its path."""
    try:
        pybind11_include = build_py._pybind11_include()
    except build_py.ToolMissing as e:
        raise Missing(str(e)) from e
    clang = clang or check_headers.find_clang()
    include = check_headers.fetch_headers(version)
    runtime = runtime_venv(version)
    lib = sycl_library(runtime)
    major = int(lib.name.rsplit(".", 1)[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    out = build_py.sycl_output(major, out_dir)
    obj = out_dir / f"sycl_forward.sycl{major}.o"
    common = ["-std=c++17", "-fPIC", "-O1", "-DSYCL_DISABLE_FSYCL_SYCLHPP_WARNING", f"-DARCATTN_SYCL_MAJOR={major}",
              "-I", str(SRC), "-I", str(KERNEL)]
    steps = [
        [clang, *common, "-isystem", str(include), "-c", str(SRC / "sycl_forward.cpp"), "-o", str(obj)],
        [clang, *common, "-shared", "-fvisibility=hidden", "-I", pybind11_include,
         "-I", sysconfig.get_paths()["include"], str(SRC / "binding.cpp"), str(obj), str(lib), "-o", str(out)],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} ... failed:\n{r.stderr.strip()[-3000:]}")
    obj.unlink()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="extension/host_only.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--version", action="append", dest="versions", metavar="V",
                    help=f"intel-sycl-rt release (repeatable; default {' and '.join(check_headers.DEFAULT_VERSIONS)})")
    args = ap.parse_args(argv)
    try:
        for version in args.versions or check_headers.DEFAULT_VERSIONS:
            out = build(version, args.out_dir)
            print(f"{out} (host code only; run it with LD_LIBRARY_PATH={runtime_venv(version) / 'lib'})")
    except Missing as e:
        print(f"host_only: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"host_only: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
