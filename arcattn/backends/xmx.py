"""Native XMX backend: the prebuilt SYCL/ESIMD attention kernel for Intel Xe2 (Arc B570/B580).

The binary is the pybind11 module `_xmx` (built from kernel/ and extension/). It is looked for at
ARCATTN_XMX_PATH (a file, or a directory holding `_xmx<python suffix>`), else inside the package in
arcattn/_native/. Before it serves anything the loader checks, in order, and the first failure becomes
`unavailable_reason()` (shown by `doctor`):
  1. a binary for this Python exists and imports;
  2. its ABI (`abi_version()`) is the one this arcattn speaks (ABI_VERSION);
  3. what it is (`device_info()["kind"]`): the real "sycl-esimd" build needs an XPU whose torch properties
     report DPAS and 2-D block I/O and whose SYCL device the binary itself accepts (`check_device(queue)`: the
     architecture it was compiled for, BMG-G21); the "cpu-reference" build (tests) is refused unless explicitly
     allowed (allow_cpu_reference=True or ARCATTN_XMX_ALLOW_CPU_REFERENCE=1), so that a user's machine can never
     route real calls to it by accident;
  4. a self-test against SDPA (fp32) on small random inputs covering every head dim and dtype it claims, with a
     key tail and a query tail, output poisoned with NaN first.

Per call it declines, each with a reason: masks, causal, LSE, Dv != D, head dims it was not compiled for, dtypes
other than fp16/bf16, a head-dim stride != 1, and by default batch > 1 or sequence > 2048 (the design card's
device-lost guard; ARCATTN_XMX_MAX_BATCH / ARCATTN_XMX_MAX_SEQ change it, 0 = no limit). Pointer and stride
rules that depend on more than the call signature (2-D block surfaces: rows 16-byte pitched, heads 4-byte
aligned) are checked by the binary on every call; a violation raises ValueError, which the router turns into a
logged fallback.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..call import AttentionCall, make_call
from ..reference import rel_error
from .base import Backend

log = logging.getLogger("arcattn")

ABI_VERSION = 1  # must equal ARCATTN_XMX_ABI in extension/src/abi.hpp
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


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


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


def find_binary(path: "Optional[str | os.PathLike]" = None) -> tuple:
    """(path of the module to load, None) or (None, why nothing was found)."""
    explicit = path if path is not None else (os.environ.get(ENV_PATH) or None)
    where = Path(explicit) if explicit is not None else NATIVE_DIR
    if explicit is not None and not where.exists():
        return None, f"{ENV_PATH if path is None else 'path'} points to {where}, which does not exist"
    if where.is_file():
        return where, None
    for suffix in _suffixes():
        cand = where / (MODULE_NAME + suffix)
        if cand.is_file():
            return cand, None
    others = sorted(p.name for p in where.glob(MODULE_NAME + ".*") if not p.name.endswith((".stamp", ".json")))
    if others:
        return None, (f"no native binary for this Python in {where} (found {', '.join(others)}; "
                      f"need {MODULE_NAME}{_suffixes()[0]})")
    return None, (f"no native binary ({MODULE_NAME}{_suffixes()[0]}) in {where}: build it with "
                  f"`python extension/build.py` (needs oneAPI) or install a release that ships it")


def load_module(path: Path):
    """Import the module at `path` without registering it in sys.modules (a binary can be retried or replaced)."""
    spec = importlib.util.spec_from_file_location(f"arcattn._native.{MODULE_NAME}", str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} (not a Python module)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
        self.allow_cpu_reference = (_truthy(os.environ.get(ENV_ALLOW_CPU_REFERENCE))
                                    if allow_cpu_reference is None else bool(allow_cpu_reference))
        self.max_batch = _env_limit(ENV_MAX_BATCH, DEFAULT_MAX_BATCH) if max_batch is None else _limit(max_batch)
        self.max_seq = _env_limit(ENV_MAX_SEQ, DEFAULT_MAX_SEQ) if max_seq is None else _limit(max_seq)
        self.head_dims = DEFAULT_HEAD_DIMS
        self.path: Optional[Path] = None
        self.info: dict = {}
        self.kind: Optional[str] = None
        self._mod = None

    # -- availability ---------------------------------------------------------------------------------------
    def probe(self) -> Optional[str]:
        path, why = find_binary(self.path_arg)
        if path is None:
            return why
        self.path = path
        try:
            mod = load_module(path)
        except Exception as e:  # noqa: BLE001 - a broken binary (missing libsycl, wrong arch) must not escape
            why = f"native binary {path} failed to load: {type(e).__name__}: {e}"
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
        if kind == "cpu-reference":
            if not self.allow_cpu_reference:
                return (f"native binary {path} is the CPU reference build (for tests, not for use); "
                        f"set {ENV_ALLOW_CPU_REFERENCE}=1 to allow it")
            device_types = ("cpu",)
        elif kind == "sycl-esimd":
            why = self._check_xpu(mod)
            if why:
                return why
            device_types = ("xpu",)
        else:
            return self._failed(f"native binary {path} is of unknown kind {kind!r}")
        self.device_types = device_types
        self.kind, self.info = kind, info
        self.head_dims = tuple(int(d) for d in info.get("head_dims", DEFAULT_HEAD_DIMS))
        names = set(info.get("dtypes", ("float16", "bfloat16")))
        self.dtypes = tuple(d for d in DTYPE_CODES if str(d).replace("torch.", "") in names)
        self.max_head_dim = max(self.head_dims, default=0)
        self._mod = mod
        why = self.self_test()
        if why:
            self._mod = None
            return self._failed(why)
        log.info("xmx: native kernel ready (%s, %s, head dims %s)", path, kind, list(self.head_dims))
        return None

    def _failed(self, why: str) -> str:
        log.warning("xmx backend unavailable: %s", why)
        return why

    def _check_xpu(self, mod) -> Optional[str]:
        if not _has_xpu():
            return "no Intel XPU device (torch.xpu is not available)"
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
            for i, D in enumerate(self.head_dims):
                layout = "bhsd" if i == 1 else "bsd"
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
        if not (call.q.stride(-1) == 1 and call.k.stride(-1) == 1 and call.v.stride(-1) == 1):
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
        return {"path": str(self.path) if self.path else None, "kind": self.kind, "info": self.info,
                "max_batch": self.max_batch, "max_seq": self.max_seq,
                "allow_cpu_reference": self.allow_cpu_reference}
