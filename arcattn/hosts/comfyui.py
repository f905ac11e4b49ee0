"""ComfyUI adapter.

Two ways in, both undoable:
- Global patch (at node-package import): rebinds `comfy.ldm.modules.attention.optimized_attention` and
  `optimized_attention_masked`, which `CrossAttention.forward` (SD1.x/SD2/SDXL UNet) looks up at call time, plus
  any already-imported module that copied them (comfy's model modules, and custom nodes loaded before this one,
  such as IP-Adapter nodes whose attn2 replacement calls their own copy), and registers "arcattn" in the host's attention registry.
  `ARCATTN_COMFYUI_PATCH=0` skips the rebinding.
- Per model (the "Arc Attention" node): `transformer_options["optimized_attention_override"]`, which the host's
  `wrap_attn` consults on every attention call, so it works with or without the global patch. With the global
  patch on, the node also wraps the model's sampling steps (a ComfyUI model wrapper) so that its setting holds for
  the calls that carry no transformer_options, such as an IP-Adapter node's through its own copy of the function
  or a ControlNet's, on the sampling thread and on later ComfyUI's multi-GPU worker threads.
"""
from __future__ import annotations

import contextvars
import importlib
import importlib.util
import logging
import sys
import threading
from typing import Callable, Optional

import torch

from ..dispatch import preferred
from ..env import env_flag
from .common import HostAttention, loaded_module_dicts

log = logging.getLogger("arcattn")

ATTENTION_MODULE = "comfy.ldm.modules.attention"
ENV_PATCH = "ARCATTN_COMFYUI_PATCH"
ATTRS = ("optimized_attention", "optimized_attention_masked")  # the functions patched, wherever bound
REGISTRY_NAME = "arcattn"

_state: dict = {}  # "module", "originals": {(module, attr): original}, "registered": bool
# (enabled, preferred backend) of the Arc Attention node of the model running now, set by its model wrapper
_model_setting: contextvars.ContextVar = contextvars.ContextVar("arcattn_comfyui_model_setting", default=None)
# The same for the threads that do a step's work without that ContextVar: later ComfyUI's multi-GPU sampling runs it
# on the persistent worker threads of model_options["multigpu_thread_pool"]. Thread ident -> settings, newest last.
_worker_settings: dict = {}
MODEL_WRAPPER_KEY = "arcattn"


class ComfyAttention(HostAttention):
    """The global patch's function. Inside a model that the Arc Attention node set, that node's setting holds for
    every call, also for those made without the model's transformer_options (which the node's override needs)."""

    def setting(self) -> tuple:
        s = _model_setting.get()
        if s is None and _worker_settings:
            try:
                s = _worker_settings[threading.get_ident()][-1]
            except (KeyError, IndexError):  # not a worker of a step running now (or its step just ended)
                s = None
        return s if s is not None else (self.enabled, self.prefer)


def _attention_module(module=None):
    return module if module is not None else importlib.import_module(ATTENTION_MODULE)


def is_patched() -> bool:
    return bool(_state.get("originals"))


def _wrap(mod, fn: Callable) -> Callable:
    # Keep the host's override hook working on our function too (per-model nodes, other plugins).
    wrap_attn = getattr(mod, "wrap_attn", None)
    return wrap_attn(fn) if callable(wrap_attn) else fn


def patch(module=None) -> bool:
    """Rebind the host's attention functions to arcattn. All or nothing: on any error nothing is changed."""
    if is_patched():
        return True
    mod = _attention_module(module)
    orig = mod.optimized_attention
    orig_masked = getattr(mod, "optimized_attention_masked", orig)
    new = _wrap(mod, ComfyAttention(orig, "comfyui"))
    new_masked = new if orig_masked is orig else _wrap(mod, ComfyAttention(orig_masked, "comfyui"))
    swaps = list(zip(ATTRS, (orig, orig_masked), (new, new_masked)))  # (attribute, host's function, ours)
    targets = [(mod, attr, o, n) for attr, o, n in swaps]
    # Modules that did `from comfy.ldm.modules.attention import optimized_attention` hold their own copy: comfy's
    # model modules, and custom nodes that ComfyUI loaded before this one (its folder order is the file system's).
    for _, other, d in loaded_module_dicts():
        if other is mod:
            continue
        for attr, o, n in swaps:
            if d.get(attr) is o:
                targets.append((other, attr, o, n))
    done = []
    try:
        for target, attr, o, n in targets:
            setattr(target, attr, n)
            done.append((target, attr, o))
    except Exception:
        for target, attr, o in done:
            setattr(target, attr, o)
        raise
    _state["module"] = mod
    _state["originals"] = {(t, a): o for t, a, o in done}
    _state["ours"] = {id(n): (n, o) for _, o, n in swaps}
    log.info("ComfyUI attention patched: %d bindings now route through arcattn (was %s)",
             len(done), getattr(orig, "__name__", orig))
    return True


def unpatch() -> None:
    """Restore every binding `patch` changed, and every copy of our functions that comfy modules imported after
    it (e.g. a model module loaded for the first workflow that uses it, or a custom node loaded after this one).
    A binding that another plugin has changed since (its own attention function) is left as that plugin set it."""
    ours = _state.pop("ours", {})

    def host_function_behind(fn):  # None unless fn is one of the patch's functions
        hit = ours.get(id(fn))
        return hit[1] if hit is not None and hit[0] is fn else None

    sites = [(target, attr, getattr(target, attr, None)) for target, attr in _state.pop("originals", {})]
    sites += [(other, attr, d.get(attr)) for _, other, d in loaded_module_dicts() for attr in ATTRS]
    for target, attr, now in sites:
        original = host_function_behind(now)
        if original is not None:
            setattr(target, attr, original)
    _state.pop("module", None)


def register(module=None) -> bool:
    """Register "arcattn" in the host's attention registry (hosts that have one)."""
    mod = _attention_module(module)
    reg = getattr(mod, "register_attention_function", None)
    if not callable(reg) or REGISTRY_NAME in getattr(mod, "REGISTERED_ATTENTION_FUNCTIONS", {}):
        return False
    base = _state.get("originals", {}).get((mod, "optimized_attention"), mod.optimized_attention)
    reg(REGISTRY_NAME, _wrap(mod, ComfyAttention(_unwrap_ours(base), "comfyui")))
    _state["registered"] = True
    return True


def unregister(module=None) -> None:
    if _state.pop("registered", False):
        getattr(_attention_module(module), "REGISTERED_ATTENTION_FUNCTIONS", {}).pop(REGISTRY_NAME, None)


class _UnknownDevice(LookupError):
    """ComfyUI is loaded but its device cannot be read (a half-initialised or changed model_management)."""


def _host_device() -> Optional[torch.device]:
    """ComfyUI's own torch device (cpu under --cpu), or None outside a running ComfyUI. Raises _UnknownDevice when
    ComfyUI's model_management is loaded but does not give its device."""
    mm = sys.modules.get("comfy.model_management")
    if mm is None:
        return None
    try:
        return torch.device(mm.get_torch_device())
    except Exception as e:  # noqa: BLE001 - reported as one type
        raise _UnknownDevice(f"{type(e).__name__}: {e}") from None


def sdpa_order() -> str:
    """torch's SDPA backend priority order as it stands, for logs and benchmarks ("?" on a torch without it)."""
    order = getattr(torch._C, "_get_sdp_priority_order", None)
    return str(order()) if callable(order) else "?"


def settle_sdpa_order() -> None:
    """Have torch choose its SDPA backend order now, before ComfyUI's first attention call can capture it.

    torch picks its default order at the first SDPA call of a process (on Hopper, torch 2.11: cuDNN first).
    ComfyUI 0.3.64 (comfy/ops.py) runs each of its SDPA calls inside sdpa_kernel(..., set_priority=True) whenever
    torch.cuda.is_available() and sdpa_kernel takes set_priority (under --cpu too, where it is harmless); later
    versions do so for q of 128 K elements or more (some only on Windows), smaller calls running bare. On exit
    that restores the order it found; on the very first call that is the order torch has not chosen yet (flash
    first), and from then on every SDPA call outside ComfyUI's own function (arcattn's included) runs flash
    attention: 142 against 81 us for SD1.5's D = 40 4096^2 call on an H200 (session 11). Asking torch for its
    choice once on a tiny input makes it settle the order as its first real call would. Only where ComfyUI runs on
    a CUDA device (NVIDIA, or AMD through ROCm, whose torch also says cuda): elsewhere no CUDA kernel runs, and
    under --cpu a CUDA context would be made for nothing. When ComfyUI is loaded but its device cannot be read,
    nothing is done either."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None or not torch.cuda.is_available():
        return
    try:
        device = _host_device()
    except _UnknownDevice as e:
        log.debug("ComfyUI's device cannot be read (%s): torch's SDPA order left as it is", e)
        return
    if device is not None and device.type != "cuda":
        log.debug("ComfyUI runs on %s: torch's SDPA order left as it is", device)
        return
    try:
        t = torch.zeros(1, 1, 8, 64, device=device or "cuda", dtype=torch.float16)
        choose(t, t, t)
        log.debug("torch's SDPA backend order settled before ComfyUI's first call: %s", sdpa_order())
    except Exception as e:  # noqa: BLE001 - an optimisation only
        log.debug("could not settle torch's SDPA backend order (%s: %s)", type(e).__name__, e)


def load(module=None) -> bool:
    """What importing the node package does. Never raises: on failure ComfyUI stays as it was, one error logged."""
    if module is None and "comfy" not in sys.modules and importlib.util.find_spec("comfy") is None:
        log.debug("not running inside ComfyUI: nothing to patch")
        return False
    try:
        settle_sdpa_order()
        if env_flag(ENV_PATCH, True):
            patch(module)
        else:
            log.info("%s=0: ComfyUI attention left as it is (the Arc Attention node still works per model)",
                     ENV_PATCH)
        register(module)
        return True
    except Exception as e:  # noqa: BLE001 - ComfyUI must always start
        try:
            unpatch()
        except Exception:  # noqa: BLE001
            pass
        log.error("arcattn could not patch ComfyUI attention (%s: %s); ComfyUI runs unchanged", type(e).__name__, e)
        return False


def _unwrap_ours(fn: Callable) -> Callable:
    """The host's own function behind our wrapper (or `fn` itself when it is not ours)."""
    inner = getattr(fn, "__wrapped__", fn)
    return inner.original if isinstance(inner, HostAttention) else fn


def make_override(enabled: bool = True, backend: Optional[str] = None) -> Callable:
    """An `optimized_attention_override(func, *args, **kwargs)` for transformer_options.

    `func` is whatever attention function the model called (ours when the global patch is on). Disabled means the
    host's own function, not ours; enabled routes through arcattn with `backend` preferred.
    """
    prefer = preferred(backend)
    wrappers: dict = {}

    def arcattn_override(func, *args, **kwargs):
        base = _unwrap_ours(func)
        if not enabled:
            return base(*args, **kwargs)
        w = wrappers.get(base)
        if w is None:
            w = wrappers[base] = HostAttention(base, "comfyui", prefer=prefer)
        return w(*args, **kwargs)

    arcattn_override.arcattn = {"enabled": enabled, "backend": backend or "auto"}
    return arcattn_override


def make_model_wrapper(enabled: bool = True, backend: Optional[str] = None) -> Callable:
    """A ComfyUI model wrapper (`wrapper(executor, *args, **kwargs)`, for WrappersMP.CALC_COND_BATCH: one sampling
    step of the model, its ControlNets included) under which the global patch's function follows this setting.

    Only where autograd is off, as in ComfyUI's sampling (inference mode): a backward pass runs after the wrapper
    has returned, and a checkpointed block recomputed then must take the same path as its forward did.

    The setting also holds on the step's multi-GPU worker threads (later ComfyUI runs the model's work there, in
    persistent threads of `model_options["multigpu_thread_pool"]` that do not inherit the sampling thread's
    ContextVar); other threads keep the global patch's setting."""
    setting = (enabled, preferred(backend))

    def arcattn_model_wrapper(executor, *args, **kwargs):
        if torch.is_grad_enabled():
            return executor(*args, **kwargs)
        token = _model_setting.set(setting)
        workers = _pool_threads(kwargs.get("model_options", args[4] if len(args) > 4 else None))
        for ident in workers:
            _worker_settings.setdefault(ident, []).append(setting)
        try:
            return executor(*args, **kwargs)
        finally:
            for ident in workers:
                stack = _worker_settings.get(ident)
                if stack:
                    stack.pop()
                if not stack:
                    _worker_settings.pop(ident, None)
            _model_setting.reset(token)

    return arcattn_model_wrapper


def _pool_threads(model_options) -> list:
    """Idents of the worker threads of a step's multi-GPU pool (CALC_COND_BATCH's arguments are model, conds, x_in,
    timestep, model_options); none where there is no pool or it is not laid out as read from ComfyUI's source."""
    pool = model_options.get("multigpu_thread_pool") if isinstance(model_options, dict) else None
    threads = getattr(pool, "_workers", None)
    if not isinstance(threads, (list, tuple)):
        return []
    return [t.ident for t in threads if isinstance(t, threading.Thread) and t.ident is not None]


def set_model_setting(patcher, enabled: bool = True, backend: Optional[str] = None) -> None:
    """Give a (cloned) ModelPatcher the node's setting: the override in its transformer_options, and, where the host
    has model wrappers, the wrapper above in place of any earlier node's."""
    opts = patcher.model_options.setdefault("transformer_options", {})
    opts = patcher.model_options["transformer_options"] = dict(opts)  # never share the dict with the source model
    earlier = opts.get("optimized_attention_override")
    if earlier is not None and not hasattr(earlier, "arcattn"):  # the host keeps one override per model
        log.info("Arc Attention replaces the attention override another node set on this model (%s)",
                 getattr(earlier, "__qualname__", type(earlier).__name__))
    opts["optimized_attention_override"] = make_override(enabled=enabled, backend=backend)
    add = getattr(patcher, "add_wrapper_with_key", None)
    if not callable(add):
        return  # a ComfyUI before model wrappers: the override alone
    try:
        from comfy.patcher_extension import WrappersMP
        kind = getattr(WrappersMP, "CALC_COND_BATCH", None) or WrappersMP.APPLY_MODEL
    except Exception:  # noqa: BLE001
        return
    remove = getattr(patcher, "remove_wrappers_with_key", None)
    if callable(remove):
        remove(kind, MODEL_WRAPPER_KEY)
    add(kind, MODEL_WRAPPER_KEY, make_model_wrapper(enabled=enabled, backend=backend))
