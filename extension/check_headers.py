"""Check the SYCL/ESIMD kernel source against Intel's own SYCL headers, with clang and no SYCL compiler.

    python extension/check_headers.py                        the headers of oneAPI 2025.3.3 and 2026.0.0
    python extension/check_headers.py --version 2026.2.0     another release's headers
    python extension/check_headers.py --include DIR          headers you have (a oneAPI install's include/)

What it checks: clang++ -fsyntax-only (the host pass of a SYCL compile) of src/header_check.cpp, which includes
sycl_forward.cpp and uses every (dtype, head dim) instance of the kernel. Every ESIMD name, template
argument and type the kernel uses is then checked against the real headers, with their static_asserts on 2-D
block sizes and DPAS operands. A control compile adds one 2-D load that breaks a documented size limit and must
fail; if it compiles, the headers' checks are not live and the check fails. What it cannot check: the device pass
(SPIR-V, IGC, register spills), the build scripts, or the hardware.

Where the headers come from: PyPI's intel-sycl-rt wheel of that release carries the SYCL include/ tree of its
oneAPI release. `pip download --no-deps` fetches it once (110-160 MB) and only include/ is kept (about 7 MB) in
ARCATTN_SYCL_HEADERS_DIR, else <arcattn's cache dir>/sycl-headers/<version>/. The two default releases are the
ones the release binaries are built with (SYCL runtimes 8 and 9, docs/native.md).

clang: clang++ on PATH, else the newest clang++-N. The headers of oneAPI 2026.2 need clang 17 or newer
(they rely on static_assert(false) in a discarded branch, C++23's P2593). Exit codes: 0 every check passed, 1 a
check failed, 2 clang or the headers are missing (the message says how to get them), or the source lacks the
control's mark.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "extension" / "src"
KERNEL = ROOT / "kernel"
DEFAULT_VERSIONS = ("2025.3.3", "2026.0.0")
WHEEL = "intel-sycl-rt"
# no colour: the control is judged by matching clang's plain "error:" and "note:" text
FLAGS = ("-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-fno-color-diagnostics",
         "-DSYCL_DISABLE_FSYCL_SYCLHPP_WARNING")


class Missing(Exception):
    """A tool or the headers are not there (exit code 2)."""


def cache_root(environ=None) -> Path:
    """arcattn's cache folder (ARCATTN_CACHE_DIR, else the user's cache dir)."""
    # arcattn/install_check.py imports without torch; loaded by path like install.py does
    spec = importlib.util.spec_from_file_location("arcattn_install_check", ROOT / "arcattn" / "install_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return Path(mod.cache_dir(environ))


def headers_root(environ=None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("ARCATTN_SYCL_HEADERS_DIR"):
        return Path(environ["ARCATTN_SYCL_HEADERS_DIR"])
    return cache_root(environ) / "sycl-headers"


def find_clang() -> str:
    exe = shutil.which("clang++")
    if exe:
        return exe
    found = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        for p in glob.glob(os.path.join(d, "clang++-[0-9]*")):
            m = re.fullmatch(r"clang\+\+-(\d+)", os.path.basename(p))
            if m and os.access(p, os.X_OK):
                found.append((int(m.group(1)), p))
    if not found:
        raise Missing("clang++ not found: install clang (Debian/Ubuntu: apt install clang) and run this again")
    return max(found)[1]


def _complete(dest: Path) -> bool:
    return (dest / "include" / "sycl" / "ext" / "intel" / "esimd.hpp").is_file()


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # made by another user of a shared cache: flock needs no write access
        return os.open(path, os.O_RDONLY)


def _lock(fd: int) -> bool:
    """Take an exclusive lock on fd, waiting for another fetch to release it. False where the file system has no
    locks (some NFS, FUSE and SMB mounts): the fetch then goes on unlocked, as it did before there was a lock."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise
    if msvcrt is not None:
        for _ in range(3000):  # up to 5 minutes
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EDEADLK):
                    return False
                time.sleep(0.1)
        raise Missing("another fetch has been putting its headers in place for 5 minutes; run this again")
    return False


@contextlib.contextmanager
def _placing_lock(dest: Path):
    """Held while a fetch looks at dest and puts its tree there, so that two fetches of one release never interleave
    their checks and renames. Readers take no lock: they only use a complete tree, and no fetch moves one."""
    fd = _open_lock_file(dest.parent / f".{dest.name}.lock")
    try:
        locked = _lock(fd)
        try:
            yield
        finally:
            if locked and fcntl is None and msvcrt is not None:
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
                except OSError:
                    pass  # closing the file releases it too
    finally:
        os.close(fd)  # releases flock's lock


def _rename(src: Path, dst: Path) -> None:
    # Windows: an indexer or a virus scanner holding a file just extracted fails a folder's rename for a moment
    for attempt in range(3):
        try:
            src.rename(dst)
            return
        except PermissionError:
            if attempt == 2:
                raise
            time.sleep(0.5)


def _put_in_place(staging: Path, dest: Path) -> None:
    """Move a complete staging tree to dest by rename, so that a reader sees no tree or a whole one. A whole tree
    already there (another process's fetch) is kept, never deleted under its user; only an incomplete leftover (an
    interrupted older fetch) is moved aside and replaced."""
    try:
        with _placing_lock(dest):
            if _complete(dest):
                return
            if dest.exists() or dest.is_symlink():
                aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}-stale-", dir=dest.parent))
                try:
                    _rename(dest, aside / "tree")
                finally:
                    shutil.rmtree(aside, ignore_errors=True)
            _rename(staging, dest)
    except OSError as e:
        raise Missing(f"could not put the headers in place at {dest} ({type(e).__name__}: {e})") from None


def fetch_headers(version: str, root: Optional[Path] = None) -> Path:
    """The include/ directory of intel-sycl-rt==version, fetched into the cache on first use."""
    dest = (root or headers_root()) / version
    include = dest / "include"
    if _complete(dest):
        return include
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", tmp, f"{WHEEL}=={version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise Missing(f"could not download {WHEEL}=={version} ({last[0]}); pass --include DIR instead")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=dest.parent))  # same file system: rename
        except OSError as e:
            raise Missing(f"cannot write the header cache {dest.parent} ({type(e).__name__}: {e}); set "
                          "ARCATTN_SYCL_HEADERS_DIR to a writable folder, or pass --include DIR") from None
        try:
            try:
                with zipfile.ZipFile(wheels[0]) as z:
                    # members look like intel_sycl_rt-<v>.data/data/include/sycl/...
                    for name in z.namelist():
                        _, sep, rel = name.partition("/data/include/")
                        if sep and not name.endswith("/"):
                            target = staging / "include" / rel
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(z.read(name))
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as e:
                raise Missing(f"the downloaded {WHEEL}=={version} wheel cannot be read ({type(e).__name__}: {e}); "
                              "run this again, or pass --include DIR") from None
            if not _complete(staging):
                raise Missing(f"{WHEEL}=={version} carries no SYCL ESIMD headers (the 2025.0 wheels lack some)")
            _put_in_place(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return include


def compile_commands(clang: str, include: Path, src: Path = SRC, kernel: Path = KERNEL,
                     control: bool = True) -> dict:
    """name -> (command, must_pass). `src` and `kernel`: the source folders (tests pass altered copies)."""
    base = [clang, *FLAGS, "-isystem", str(include), "-I", str(src), "-I", str(kernel), str(src / "header_check.cpp")]
    # with the Lunar Lake target on, so that the architecture check's optional branch is compiled too
    cmds = {"kernel instances and sycl_forward.cpp": (base + ["-DARCATTN_XMX_TARGET_LNL_M=1"], True)}
    if control:
        cmds["control (a 2-D load over its documented size)"] = (base + ["-DARCATTN_HEADER_CHECK_CONTROL=1"], False)
    return cmds


def sycl_version(include: Path) -> str:
    text = (include / "sycl" / "version.hpp").read_text(errors="replace")
    parts = [re.search(rf"#define __LIBSYCL_{k}_VERSION (\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) if m else "?" for m in parts)


def control_line(src: Path = SRC) -> int:
    """The line of header_check.cpp holding the control's out-of-limits 2-D load (marked in the source)."""
    path = src / "header_check.cpp"
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise Missing(f"cannot read {path} ({type(e).__name__})") from None
    for n, line in enumerate(lines, 1):
        if "ARCATTN_CONTROL_LOAD" in line and "load_2d" in line:
            return n
    raise Missing(f"{path} has no load_2d line marked ARCATTN_CONTROL_LOAD, so the control cannot be judged")


# clang 16 and newer say "static assertion failed", clang 15 and older "static_assert failed"
_STATIC_ASSERT = re.compile(r"\berror: static(_assert| assertion) failed")
_DIAGNOSTIC = re.compile(r"\b(error|warning): ")


def rejected_by_the_control(returncode: int, stderr: str, src: Path = SRC) -> bool:
    """The control compile failed the way it must: a static_assert of the headers, instantiated from the control's
    own load. Any other failure (a static_assert elsewhere, a missing header) says nothing about the headers'
    checks, and counts as the control not being rejected."""
    if returncode == 0:
        return False
    where = f"header_check.cpp:{control_line(src)}:"
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if not _STATIC_ASSERT.search(line):
            continue
        # clang's notes for this error follow it, up to the next error or warning
        for note in lines[i + 1:]:
            if _DIAGNOSTIC.search(note):
                break
            if where in note and " note: " in note:
                return True
    return False


def check(include: Path, clang: str, label: str, src: Path = SRC, kernel: Path = KERNEL,
          control: bool = True) -> list:
    """Failures (empty: all passed) for one include tree; prints one line per compile."""
    failures = []
    if control:
        control_line(src)  # a source without the control's mark is Missing before anything compiles
    cmds = compile_commands(clang, include, src, kernel, control)
    with ThreadPoolExecutor(max_workers=len(cmds)) as pool:
        runs = dict(zip(cmds, pool.map(lambda c: subprocess.run(c[0], capture_output=True, text=True),
                                       cmds.values())))
    for name, (cmd, must_pass) in cmds.items():
        r = runs[name]
        diagnostics = [ln for ln in r.stderr.splitlines() if re.search(r"\b(error|warning):", ln)]
        passed = r.returncode == 0 and not diagnostics
        if must_pass and not passed:
            failures.append(f"{label}: {name}: " + ("; ".join(diagnostics[:3]) or f"exit {r.returncode}"))
            print(f"{label}: {name}: FAILED\n{r.stderr.strip()}")
        elif not must_pass and not rejected_by_the_control(r.returncode, r.stderr, src):
            failures.append(f"{label}: {name}: not rejected by the headers' static_assert on the control's 2-D "
                            "load, so their checks are not live in this pass")
            print(f"{label}: {name}: FAILED (not rejected at the control's load)\n{r.stderr.strip()[-2000:]}")
        else:
            why = "rejected as it must be" if not must_pass else "clean (no error, no warning)"
            print(f"{label}: {name}: {why}")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="extension/check_headers.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", action="append", dest="versions", metavar="V",
                    help=f"an intel-sycl-rt release whose headers to check against (repeatable; default "
                         f"{' and '.join(DEFAULT_VERSIONS)})")
    ap.add_argument("--include", action="append", default=[], metavar="DIR",
                    help="a SYCL include directory (holding sycl/sycl.hpp) instead of a fetched one (repeatable)")
    ap.add_argument("--clang", default=None, help="the clang++ to use (default: clang++, else the newest clang++-N)")
    args = ap.parse_args(argv)
    try:
        clang = args.clang or find_clang()
        if shutil.which(clang) is None:
            raise Missing(f"--clang {clang}: no such program (or not executable)")
        targets = [(Path(d), None) for d in args.include]
        if not args.include or args.versions:
            targets += [(None, v) for v in (args.versions or DEFAULT_VERSIONS)]
        version_line = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout.splitlines()
        print(f"compiler: {clang} ({version_line[0] if version_line else 'version unknown'})")
        failures = []
        for include, version in targets:
            include = include if include is not None else fetch_headers(version)
            if not (include / "sycl" / "sycl.hpp").is_file():
                raise Missing(f"{include} holds no sycl/sycl.hpp")
            label = f"SYCL {sycl_version(include)}" + (f" (intel-sycl-rt {version})" if version else f" ({include})")
            failures += check(include, clang, label)
    except Missing as e:
        print(f"check_headers: {e}", file=sys.stderr)
        return 2
    if failures:
        print(f"check_headers: {len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("check_headers: the kernel source compiles against every header set given (host pass only; the device "
          "pass, IGC and the hardware are not checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
