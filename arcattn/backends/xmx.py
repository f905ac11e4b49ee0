"""Native XMX backend: the prebuilt SYCL/ESIMD attention kernel for Intel Xe2 (Arc B570/B580).

The binary is the pybind11 module `_xmx` (built from kernel/ and extension/), in a file named after the SYCL
runtime it was compiled against: `_xmx.sycl<N><python suffix>` (N = the libsycl.so.N / syclN.dll major; 8 for
oneAPI 2025.x, 9 for 2026.x), so binaries for several runtimes can sit side by side. It is looked for at
ARCATTN_XMX_PATH (a file, or a directory), else inside the package in arcattn/_native/. Before it serves anything
the loader checks, in order, and the first failure becomes `unavailable_reason()` (shown by `doctor`):
  1. which SYCL runtime torch loaded (`torch_sycl_runtime()`: the libsycl.so.N / syclN.dll mapped into this
     process, else torch/lib, else the intel-sycl-rt wheel); a binary for this Python and that runtime exists
     (`_xmx.sycl<N>...`; an untagged `_xmx<suffix>` is also taken, its runtime checked in step 4) and imports;
  2. its ABI (`abi_version()`) is the one this arcattn speaks (ABI_VERSION);
  3. what it is (`device_info()["kind"]`): the "cpu-reference" build (tests) is refused unless explicitly allowed
     (allow_cpu_reference=True or ARCATTN_XMX_ALLOW_CPU_REFERENCE=1), so that a user's machine can never route
     real calls to it by accident;
  4. for the real "sycl-esimd" build: an XPU; the SYCL runtime major it was compiled against
     (`device_info()["sycl_major"]`) equals torch's, because it works on torch's sycl::queue and a queue of one
     runtime handed to another is memory corruption, not an exception (when torch's runtime cannot be
     determined this is said once in the log and in the details, and not held against the binary); all its
     kernels are registered with the SYCL runtime (`device_info()["kernels"]`: a build whose device code was lost
     has none); the device reports DPAS and 2-D block I/O and the binary itself accepts it
     (`check_device(queue)`: the architecture it was compiled for, BMG-G21);
  5. a self-test against SDPA (fp32) on small random inputs covering every head dim and dtype it claims, with a
     key tail and a query tail, the row-shifted 2-D block surface path, output poisoned with NaN first.

Per call it declines, each with a reason: masks, causal, LSE, Dv != D, head dims it was not compiled for, dtypes
other than fp16/bf16, a head-dim stride != 1, and by default batch > 1 or sequence > 2048 (the design card's
device-lost guard; ARCATTN_XMX_MAX_BATCH / ARCATTN_XMX_MAX_SEQ change it, 0 = no limit). Pointer and stride
rules that depend on more than the call signature (2-D block surfaces: rows 16-byte pitched, heads 4-byte
aligned) are checked by the binary on every call; a violation raises ValueError, which the router turns into a
logged fallback.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..call import AttentionCall, make_call
from ..env import env_flag
from ..reference import rel_error
from .base import Backend

log = logging.getLogger("arcattn")

ABI_VERSION = 2  # must equal ARCATTN_XMX_ABI in extension/src/abi.hpp
MODULE_NAME = "_xmx"
NATIVE_DIR = Path(__file__).resolve().parent.parent / "_native"
ENV_PATH = "ARCATTN_XMX_PATH"
ENV_ALLOW_CPU_REFERENCE = "ARCATTN_XMX_ALLOW_CPU_REFERENCE"
ENV_MAX_BATCH = "ARCATTN_XMX_MAX_BATCH"
ENV_MAX_SEQ = "ARCATTN_XMX_MAX_SEQ"
DEFAULT_MAX_BATCH = 1
DEFAULT_MAX_SEQ = 2048
DEFAULT_HEAD_DIMS = (40, 64, 80, 128, 160)
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1}
# Self-test tolerances vs fp32 SDPA (||out - ref|| / ||ref||). The CPU reference measures ~3e-4 (fp16) and
# ~2e-3 (bf16); any layout or indexing mistake gives errors of order 1.
SELFTEST_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 3e-2}
SELFTEST_SHAPE = dict(B=1, H=2, Sq=37, Sk=77)  # 37: a query tail for every rows-per-thread; 77: a key tail
# Besides every head dim in "bsd" (the second in "bhsd" instead): D = 40 in "bhsd". Contiguous (B, H, S, 40) rows
# are 80 bytes, so head 1 of k/v (77 rows) and of q/out (37 rows) starts 16 bytes past a 64-byte boundary and its
# 2-D block surface is moved back one row (y0 = 1 in kernel/schedule.hpp head_surface). No other self-test input
# takes that path; "bsd" rows are H*D*2 bytes long and never need the shift. (Assumes 64-byte aligned tensor
# storage, which torch's CPU and XPU allocators give.)
SELFTEST_ROW_SHIFTED = ("bhsd", 40)

# oneAPI release year -> SYCL runtime major (libsycl.so.N / syclN.dll): 2024.x ships 7, 2025.x 8, 2026.x 9. Only
# used when nothing better is known (the intel-sycl-rt wheel's version, when its file list names no library).
SYCL_MAJOR_BY_ONEAPI_YEAR = {2024: 7, 2025: 8, 2026: 9}
# A binary's SYCL calls missing from torch's libsycl of the same major: torch's runtime is older than the oneAPI the
# binary was built with (measured: host code built with 2025.3 needs 5 symbols that 2025.0-2025.2 lack).
OLDER_RUNTIME_HINT = ("the binary was built with a newer oneAPI than torch's SYCL runtime (the prebuilt SYCL 8 "
                      "binaries need oneAPI 2025.3's, as in torch 2.10-2.12 XPU builds): update torch, or build the "
                      "binary with torch's oneAPI release (python install.py --build-native, docs/native.md)")
SYCL_RUNTIME_DIST = "intel-sycl-rt"  # the wheel torch's XPU builds depend on for libsycl
_SYCL_LIB_NAMES = (re.compile(r"^libsycl\.so\.(\d+)(?:\.\d+)*$"), re.compile(r"^sycl(\d+)\.dll$", re.IGNORECASE))
_TAGGED_BINARY = re.compile(r"^" + re.escape(MODULE_NAME) + r"\.sycl(\d+)\.")
_unknown_runtime_logged: set = set()  # "log it once": the reasons already logged in this process


def _limit(n: int) -> Optional[int]:
    return int(n) if n and int(n) > 0 else None


def _env_limit(name: str, default: int) -> Optional[int]:
    """A positive int from the environment; 0 or negative means no limit; junk is ignored with a warning."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r (not an integer); using %d", name, raw, default)
        return default
    return _limit(n)


def _has_xpu() -> bool:
    xpu = getattr(torch, "xpu", None)
    try:
        return bool(xpu is not None and xpu.is_available())
    except Exception:  # noqa: BLE001
        return False


def _suffixes() -> list:
    return list(importlib.machinery.EXTENSION_SUFFIXES)


# -- which SYCL runtime torch uses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyclRuntime:
    """torch's SYCL runtime major (None when it could not be determined) and where that came from, or why not."""
    major: Optional[int]
    source: str


def sycl_major_of_library(name: str) -> Optional[int]:
    """N for a file named libsycl.so.N[.x.y] or syclN.dll, else None."""
    for pattern in _SYCL_LIB_NAMES:
        m = pattern.match(name)
        if m:
            return int(m.group(1))
    return None


def binary_sycl_tag(path: "str | os.PathLike") -> Optional[int]:
    """The N of a binary named _xmx.sycl<N>..., or None for an untagged name."""
    m = _TAGGED_BINARY.match(Path(path).name)
    return int(m.group(1)) if m else None


def _windows_module_paths() -> list:
    """Full paths of the DLLs loaded in this process (psapi EnumProcessModules)."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    psapi = ctypes.WinDLL("psapi", use_last_error=True)
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.GetModuleFileNameW.argtypes = [wintypes.HMODULE, wintypes.LPWSTR, wintypes.DWORD]
    kernel32.GetModuleFileNameW.restype = wintypes.DWORD
    psapi.EnumProcessModules.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.HMODULE), wintypes.DWORD,
                                         ctypes.POINTER(wintypes.DWORD)]
    psapi.EnumProcessModules.restype = wintypes.BOOL
    process = kernel32.GetCurrentProcess()
    count = 1024
    while True:
        modules = (wintypes.HMODULE * count)()
        needed = wintypes.DWORD()
        if not psapi.EnumProcessModules(process, modules, ctypes.sizeof(modules), ctypes.byref(needed)):
            return []
        n = needed.value // ctypes.sizeof(wintypes.HMODULE)
        if n <= count:
            break
        count = n  # more modules than room: ask again with enough
    buf = ctypes.create_unicode_buffer(32768)
    return [buf.value for h in modules[:n] if kernel32.GetModuleFileNameW(h, buf, len(buf))]


def loaded_library_paths() -> list:
    """Paths of the shared libraries mapped into this process: /proc/self/maps on Linux, the module list on
    Windows; [] elsewhere or when they cannot be read."""
    try:
        if sys.platform.startswith("linux"):
            paths = []
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].startswith("/"):
                        paths.append(parts[5].rstrip("\n"))
            return list(dict.fromkeys(paths))
        if sys.platform == "win32":
            return _windows_module_paths()
    except Exception as e:  # noqa: BLE001 - only a hint source; the callers say when nothing was found
        log.debug("xmx: cannot list the loaded libraries: %s: %s", type(e).__name__, e)
    return []


def _majors_in(names) -> dict:
    """{major: first name} for the SYCL runtime libraries among `names` (paths or file names)."""
    found: dict = {}
    for name in names:
        major = sycl_major_of_library(Path(str(name)).name)
        if major is not None:
            found.setdefault(major, str(name))
    return found


def torch_sycl_runtime() -> SyclRuntime:
    """Which SYCL runtime major torch uses, read without building or loading anything. In order of trust:
    the libsycl.so.N / syclN.dll already mapped into this process (torch's XPU libraries load it at import), the
    runtime bundled in torch/lib, the file list of the intel-sycl-rt wheel torch's XPU builds depend on, that
    wheel's version (release year -> major)."""
    tried = []
    loaded = _majors_in(loaded_library_paths())
    if len(loaded) == 1:
        major, where = next(iter(loaded.items()))
        return SyclRuntime(major, f"{where} is loaded in this process")
    tried.append("SYCL runtimes {} are all loaded in this process".format(sorted(loaded)) if loaded
                 else "no libsycl.so.N / syclN.dll is loaded in this process")
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    bundled = _majors_in(p.name for p in torch_lib.glob("*sycl*")) if torch_lib.is_dir() else {}
    if len(bundled) == 1:
        major, name = next(iter(bundled.items()))
        return SyclRuntime(major, f"torch bundles {torch_lib / name}")
    tried.append(f"torch/lib holds {'several' if bundled else 'no'} SYCL runtimes")
    try:
        dist_version = importlib.metadata.version(SYCL_RUNTIME_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist_version = None
        tried.append(f"{SYCL_RUNTIME_DIST} is not installed")
    if dist_version is not None:
        files = _majors_in(str(f) for f in (importlib.metadata.files(SYCL_RUNTIME_DIST) or ()))
        if len(files) == 1:
            major, name = next(iter(files.items()))
            return SyclRuntime(major, f"{SYCL_RUNTIME_DIST} {dist_version} installs {Path(name).name}")
        m = re.match(r"(\d{4})\.", dist_version)
        if m and int(m.group(1)) in SYCL_MAJOR_BY_ONEAPI_YEAR:
            return SyclRuntime(SYCL_MAJOR_BY_ONEAPI_YEAR[int(m.group(1))],
                               f"{SYCL_RUNTIME_DIST} {dist_version} is installed (oneAPI {m.group(1)})")
        tried.append(f"{SYCL_RUNTIME_DIST} {dist_version} names no known SYCL runtime")
    xpu_version = getattr(getattr(torch, "version", None), "xpu", None)
    return SyclRuntime(None, "; ".join(tried) + f" (torch.version.xpu = {xpu_version})")


# -- finding the binary -----------------------------------------------------------------------------------------
def find_binary(path: "Optional[str | os.PathLike]" = None, sycl_major: Optional[int] = None) -> tuple:
    """(path of the module to load, None) or (None, why nothing was found). In a directory, the binary for this
    Python and SYCL runtime `sycl_major` (torch's; None = unknown) is `_xmx.sycl<N><suffix>`; an untagged
    `_xmx<suffix>` is taken when there is none (its runtime is checked once it is imported)."""
    explicit = path if path is not None else (os.environ.get(ENV_PATH) or None)
    where = Path(explicit) if explicit is not None else NATIVE_DIR
    if explicit is not None and not where.exists():
        return None, f"{ENV_PATH if path is None else 'path'} points to {where}, which does not exist"
    if where.is_file():
        return where, None
    tagged: dict = {}
    untagged = None
    for suffix in _suffixes():
        for cand in where.glob(f"{MODULE_NAME}.sycl*{suffix}"):
            n = binary_sycl_tag(cand)
            if n is not None and cand.name == f"{MODULE_NAME}.sycl{n}{suffix}" and cand.is_file():
                tagged.setdefault(n, cand)
        cand = where / (MODULE_NAME + suffix)
        if untagged is None and cand.is_file():
            untagged = cand
    if sycl_major is not None and sycl_major in tagged:
        return tagged[sycl_major], None
    if untagged is not None:
        return untagged, None
    if tagged:
        names = ", ".join(p.name for _, p in sorted(tagged.items()))
        if sycl_major is not None:
            return None, (f"the native binaries in {where} ({names}) are for other SYCL runtimes than torch's "
                          f"(SYCL runtime {sycl_major}): get or build {MODULE_NAME}.sycl{sycl_major}{_suffixes()[0]} "
                          f"(oneAPI release matching torch.version.xpu)")
        if len(tagged) == 1:
            return next(iter(tagged.values())), None
        return None, (f"several native binaries for different SYCL runtimes in {where} ({names}) and torch's SYCL "
                      f"runtime could not be determined; set {ENV_PATH} to the one matching torch.version.xpu")
    others = sorted(p.name for p in where.glob(MODULE_NAME + ".*") if not p.name.endswith((".stamp", ".json")))
    if others:
        return None, (f"no native binary for this Python in {where} (found {', '.join(others)}; "
                      f"need {MODULE_NAME}.sycl<N>{_suffixes()[0]})")
    return None, (f"no native binary ({MODULE_NAME}.sycl<N>{_suffixes()[0]}) in {where}: build it with "
                  f"`python extension/build.py` (needs oneAPI) or install a release that ships it")


def sycl_mismatch_reason(path, binary_major: int, runtime: SyclRuntime) -> str:
    return (f"native binary {path} was built against SYCL runtime {binary_major} (libsycl.so.{binary_major} / "
            f"sycl{binary_major}.dll) but torch uses SYCL runtime {runtime.major} ({runtime.source}); it works on "
            f"torch's SYCL queue, which only the same runtime may touch: use {MODULE_NAME}.sycl{runtime.major}"
            f"{_suffixes()[0]}, built with the oneAPI release matching torch.version.xpu")


def load_module(path: Path):
    """Import the module at `path` without registering it in sys.modules (a binary can be retried or replaced)."""
    spec = importlib.util.spec_from_file_location(f"arcattn._native.{MODULE_NAME}", str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} (not a Python module)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def selftest_cases(head_dims) -> list:
    """(layout, head dim) pairs the self-test runs: every head dim in "bsd" except the second, which runs in
    "bhsd", plus SELFTEST_ROW_SHIFTED when its head dim is compiled."""
    cases = [("bhsd" if i == 1 else "bsd", int(D)) for i, D in enumerate(head_dims)]
    if SELFTEST_ROW_SHIFTED[1] in head_dims and SELFTEST_ROW_SHIFTED not in cases:
        cases.append(SELFTEST_ROW_SHIFTED)
    return cases


class XMXBackend(Backend):
    name = "xmx"
    description = "native SYCL/ESIMD XMX kernel for Intel Xe2 (Arc B570/B580), prebuilt"
    device_types = ("xpu",)
    dtypes = (torch.float16, torch.bfloat16)
    max_head_dim = max(DEFAULT_HEAD_DIMS)

    def __init__(self, path: "Optional[str | os.PathLike]" = None, *, allow_cpu_reference: Optional[bool] = None,
                 max_batch: Optional[int] = None, max_seq: Optional[int] = None):
        """`path`: the binary (or its directory); default ARCATTN_XMX_PATH, then arcattn/_native/.
        `allow_cpu_reference`: accept the CPU reference build (tests); default ARCATTN_XMX_ALLOW_CPU_REFERENCE.
        `max_batch` / `max_seq`: declined above these (0 = no limit); default from the environment, else 1 / 2048.
        """
        self.path_arg = path
        self.allow_cpu_reference = (env_flag(ENV_ALLOW_CPU_REFERENCE, False)
                                    if allow_cpu_reference is None else bool(allow_cpu_reference))
        self.max_batch = _env_limit(ENV_MAX_BATCH, DEFAULT_MAX_BATCH) if max_batch is None else _limit(max_batch)
        self.max_seq = _env_limit(ENV_MAX_SEQ, DEFAULT_MAX_SEQ) if max_seq is None else _limit(max_seq)
        self.head_dims = DEFAULT_HEAD_DIMS
        self.path: Optional[Path] = None
        self.info: dict = {}
        self.kind: Optional[str] = None
        self.sycl_runtime: Optional[SyclRuntime] = None
        self.sycl_note: Optional[str] = None
        self._mod = None

    # -- availability ---------------------------------------------------------------------------------------
    def probe(self) -> Optional[str]:
        # torch.xpu.is_available() first: it brings up torch's SYCL runtime if torch loads it lazily, so that the
        # binary binds to the libsycl already in the process. Then torch's runtime is read before anything of ours
        # is loaded (afterwards our own libsycl would be among the loaded libraries too).
        _has_xpu()
        runtime = self.sycl_runtime = torch_sycl_runtime()
        path, why = find_binary(self.path_arg, runtime.major)
        if path is None:
            mismatch = runtime.major is not None and "other SYCL runtimes" in why
            return self._failed(why) if mismatch else why
        self.path = path
        tag = binary_sycl_tag(path)
        if tag is not None and runtime.major is not None and tag != runtime.major:
            return self._failed(sycl_mismatch_reason(path, tag, runtime))  # refused before it is even loaded
        try:
            mod = load_module(path)
        except Exception as e:  # noqa: BLE001 - a broken binary (missing libsycl, wrong arch) must not escape
            why = f"native binary {path} failed to load: {type(e).__name__}: {e}"
            if runtime.major is not None and "sycl" in str(e).lower():
                why += f" (torch uses SYCL runtime {runtime.major}: {runtime.source})"
            missing = re.search(r"undefined symbol: (\S+)", str(e))
            if missing and "sycl" in missing.group(1).lower():  # the symbol, not the path (_xmx.sycl8...)
                why += f"; {OLDER_RUNTIME_HINT}"
            # without an XPU a SYCL binary cannot load (no SYCL runtime) and does not matter: no warning then
            return self._failed(why) if _has_xpu() else why
        try:
            abi = int(mod.abi_version())
        except Exception as e:  # noqa: BLE001
            return self._failed(f"native binary {path} has no usable abi_version(): {type(e).__name__}: {e}")
        if abi != ABI_VERSION:
            return self._failed(f"native binary {path} has ABI {abi}, this arcattn needs ABI {ABI_VERSION} "
                                f"(rebuild it with `python extension/build.py` or install the matching release)")
        try:
            info = dict(mod.device_info())
        except Exception as e:  # noqa: BLE001
            return self._failed(f"native binary {path}: device_info() failed: {type(e).__name__}: {e}")
        kind = info.get("kind")
        head_dims = tuple(int(d) for d in info.get("head_dims", DEFAULT_HEAD_DIMS))
        names = set(info.get("dtypes", ("float16", "bfloat16")))
        dtypes = tuple(d for d in DTYPE_CODES if str(d).replace("torch.", "") in names)
        if kind == "cpu-reference":
            if not self.allow_cpu_reference:
                return (f"native binary {path} is the CPU reference build (for tests, not for use); "
                        f"set {ENV_ALLOW_CPU_REFERENCE}=1 to allow it")
            why = self._kernels_problem(path, info, len(head_dims) * len(dtypes), required=False)
            if why:
                return self._failed(why)
            device_types = ("cpu",)
        elif kind == "sycl-esimd":
            if not _has_xpu():
                return "no Intel XPU device (torch.xpu is not available)"
            why = (self._sycl_runtime_problem(path, info, runtime)
                   or self._kernels_problem(path, info, len(head_dims) * len(dtypes), required=True))
            if why:
                return self._failed(why)
            why = self._check_xpu(mod)
            if why:
                return self._noted(why)
            device_types = ("xpu",)
        else:
            return self._failed(f"native binary {path} is of unknown kind {kind!r}")
        self.device_types = device_types
        self.kind, self.info = kind, info
        self.head_dims, self.dtypes = head_dims, dtypes
        self.max_head_dim = max(self.head_dims, default=0)
        self._mod = mod
        why = self.self_test()
        if why:
            self._mod = None
            return self._failed(self._noted(why))
        log.info("xmx: native kernel ready (%s, %s, head dims %s%s)", path, kind, list(self.head_dims),
                 f", SYCL runtime {info.get('sycl_version')}" if info.get("sycl_version") else "")
        return None

    def _failed(self, why: str) -> str:
        log.warning("xmx backend unavailable: %s", why)
        return why

    def _noted(self, why: str) -> str:
        """`why`, plus the SYCL runtime note when the runtime check could not be made (doctor shows reasons)."""
        return f"{why} [note: {self.sycl_note}]" if self.sycl_note else why

    def _sycl_runtime_problem(self, path: Path, info: dict, runtime: SyclRuntime) -> Optional[str]:
        """Why the binary's SYCL runtime rules it out, or None. An undeterminable torch runtime is noted (log once,
        details(), description, any later reason) but does not rule the binary out."""
        major = info.get("sycl_major")
        if not isinstance(major, int) or isinstance(major, bool):
            return (f"native binary {path} does not say which SYCL runtime it was built against "
                    f"(device_info()['sycl_major'] = {major!r}); rebuild it with `python extension/build.py`")
        if runtime.major is None:
            self.sycl_note = (f"torch's SYCL runtime could not be determined ({runtime.source}); the binary was "
                              f"built against SYCL runtime {major} and is used unchecked")
            self.description = f"{type(self).description} [{self.sycl_note}]"
            if self.sycl_note not in _unknown_runtime_logged:
                _unknown_runtime_logged.add(self.sycl_note)
                log.warning("xmx: %s", self.sycl_note)
            return None
        if major != runtime.major:
            return sycl_mismatch_reason(path, major, runtime)
        return None

    def _kernels_problem(self, path: Path, info: dict, expected: int, required: bool) -> Optional[str]:
        """Why the binary's registered kernels rule it out (device code missing or incomplete), or None."""
        n = info.get("kernels")
        if n is None and not required:
            return None
        if n == -1:
            return f"native binary {path}: the SYCL runtime failed to list its kernels"
        if not isinstance(n, int) or isinstance(n, bool) or n != expected:
            name = info.get("kernel_name", "?")
            return (f"native binary {path} has {n!r} of its {expected} kernels ({name}) registered with the SYCL "
                    f"runtime: its device code is missing or incomplete (a Windows build without the Ninja "
                    f"generator links none); rebuild it")
        return None

    def _check_xpu(self, mod) -> Optional[str]:
        xpu = torch.xpu
        props = xpu.get_device_properties()
        for attr, what in (("has_subgroup_matrix_multiply_accumulate", "XMX (DPAS)"),
                           ("has_subgroup_2d_block_io", "2-D block I/O")):
            if getattr(props, attr, True) is False:
                return f"XPU device {props.name!r} has no {what}: not an Xe2 GPU"
        why = mod.check_device(int(xpu.current_stream().sycl_queue))
        if why:
            return f"the native kernel cannot run on this device: {why}"
        return None

    def self_test(self) -> Optional[str]:
        """None when the loaded binary matches SDPA on small random inputs, else what went wrong."""
        device = torch.device("cpu") if self.kind == "cpu-reference" else torch.device("xpu", torch.xpu.current_device())
        gen = torch.Generator().manual_seed(0x5E1F)
        B, H, Sq, Sk = (SELFTEST_SHAPE[k] for k in ("B", "H", "Sq", "Sk"))
        for dtype in self.dtypes:
            for layout, D in selftest_cases(self.head_dims):
                shape = (lambda S: (B, H, S, D)) if layout == "bhsd" else (lambda S: (B, S, H * D))
                q, k, v = (torch.randn(shape(S), generator=gen).to(device=device, dtype=dtype) for S in (Sq, Sk, Sk))
                try:
                    call = make_call(q, k, v, heads=H, layout=layout)
                    out, out4 = call.empty_out()
                    out.fill_(float("nan"))
                    self._forward(call, out4)
                    ref = F.scaled_dot_product_attention(call.q4.float(), call.k4.float(), call.v4.float(),
                                                         scale=call.scale)
                    err = rel_error(out4.cpu(), ref.cpu())
                except Exception as e:  # noqa: BLE001
                    return f"self-test raised {type(e).__name__}: {e} (D={D}, {dtype}, {layout})"
                if not err <= SELFTEST_TOLERANCE[dtype]:
                    return (f"self-test failed: relative error {err:.3g} > {SELFTEST_TOLERANCE[dtype]:g} vs SDPA "
                            f"(D={D}, {str(dtype).replace('torch.', '')}, {layout}, Sq={Sq}, Sk={Sk})")
        return None

    # -- per call -------------------------------------------------------------------------------------------
    def extra_reasons(self, call: AttentionCall) -> list:
        reasons = []
        if call.D not in self.head_dims:
            reasons.append(f"head dim {call.D} not compiled into the native kernel (have {list(self.head_dims)})")
        if self.max_batch is not None and call.B > self.max_batch:
            reasons.append(f"batch {call.B} > {self.max_batch} (device-lost guard; {ENV_MAX_BATCH})")
        seq = max(call.Sq, call.Sk)
        if self.max_seq is not None and seq > self.max_seq:
            reasons.append(f"sequence {seq} > {self.max_seq} (device-lost guard; {ENV_MAX_SEQ})")
        if not call.unit_stride:
            reasons.append("q, k, v need a unit stride in the head dim")
        return reasons

    def run(self, call: AttentionCall):
        out, out4 = call.empty_out()
        self._forward(call, out4)
        return out

    def _forward(self, call: AttentionCall, out4: torch.Tensor) -> None:
        mod = self._mod
        if mod is None:
            raise RuntimeError(f"xmx backend is not loaded: {self.unavailable_reason()}")
        queue = 0 if call.device.type == "cpu" else int(torch.xpu.current_stream(call.device).sycl_queue)
        mod.forward(call.q.data_ptr(), call.k.data_ptr(), call.v.data_ptr(), out4.data_ptr(), DTYPE_CODES[call.dtype],
                    call.B, call.H, call.Sq, call.Sk, call.D, tuple(call.strides4(call.q)),
                    tuple(call.strides4(call.k)), tuple(call.strides4(call.v)), tuple(out4.stride()),
                    float(call.scale), queue)

    def details(self) -> dict:
        """For doctor: where the binary is, what it says it is, and the limits in force."""
        rt = self.sycl_runtime
        return {"path": str(self.path) if self.path else None, "kind": self.kind, "info": self.info,
                "max_batch": self.max_batch, "max_seq": self.max_seq,
                "allow_cpu_reference": self.allow_cpu_reference,
                "sycl_runtime": {"torch": rt.major if rt else None, "source": rt.source if rt else None,
                                 "binary": self.info.get("sycl_major"), "note": self.sycl_note}}
