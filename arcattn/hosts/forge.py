"""Forge adapter: put arcattn behind Forge's UNet attention, switchable per generation.

Two layouts are handled, whichever the running host has:

* Forge (2024+ `backend/`), and Forge Neo (the same layout): `backend.attention.attention_function` is chosen
  once at import, and `backend.nn.unet` / `backend.nn.flux` / `backend.nn.chroma` took their own copy of it with
  `from backend.attention import attention_function`. Every module attribute named `attention_function`
  that *is* the host's function gets rebound, except in the text encoders (`backend.nn.t5`, and Neo's
  `backend.nn.llm.*`, bind `attention_pytorch` under that name on purpose, whatever the user's choice).
* reForge / Forge classic (`ldm_patched/`): `ldm_patched.ldm.modules.attention.optimized_attention` and
  `optimized_attention_masked`, and every module that copied them with `from ... import optimized_attention`.

One wrapper is made per distinct host function (a `HostAttention`, shared by every site that held that
function); the originals are kept, `uninstall()` puts them back wherever a wrapper still sits, including in
modules imported after `install()` (they copied the wrapper).

Per generation, `set_generation(enabled, backend)` flips every wrapper: disabled wrappers hand each call to the
host's original untouched. `GenerationCounter` tells which backend served a generation's calls (router
telemetry deltas, plus the calls the host's original served through HostAttention's fallback).

Memory estimate: Forge's `backend/modules/k_model.py` picks its inference-memory factor by *identity* of
`attention.attention_function` (pytorch/xformers 1.28, anything else 1.65). arcattn's backends need no more
memory than SDPA (flash kernels never hold the score matrix; the SDPA fallback is torch's SDPA, chunked on XPU),
so the wrapper compares equal to the function it wraps: Forge keeps the estimate it made for its own choice
instead of reserving ~30% more and offloading earlier.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from typing import Iterable, Optional

from ..backends import NAMES
from .common import HostAttention, loaded_module_dicts

log = logging.getLogger("arcattn")

AUTO = "auto"
BACKEND_CHOICES = (AUTO,) + tuple(NAMES)
HOST = "host"  # infotext label for calls that the host's own function served after a fallback

# (layout, module that owns the function, attribute names to rebind everywhere, modules (and their submodules)
# never to touch)
_FORGE = ("forge", "backend.attention", ("attention_function",), ("backend.nn.t5", "backend.nn.llm"))
_LDM = ("ldm_patched", "ldm_patched.ldm.modules.attention", ("optimized_attention", "optimized_attention_masked"), ())
LAYOUTS = (_FORGE, _LDM)

# How each host function reads a 3-D mask's first dim (HostAttention's mask3d), from the hosts' source. Forge's
# SDPA-based functions hand the mask to SDPA as it is, so that dim runs over heads; its sliced ones
# (attention_sub_quad, the CPU default, attention_split, attention_basic) read it as (B, Sq, Sk), as ComfyUI does.
# In ldm_patched, reForge's functions (ComfyUI's newer ones, with skip_reshape) read it as (B, Sq, Sk); Forge
# classic's older ones differ among themselves (over heads in attention_pytorch, over B * H in the sliced ones),
# so the host serves such masks there. Forge Neo's functions (ComfyUI v0.7's, with skip_output_reshape) all read
# it as (B, Sq, Sk), its attention_pytorch included.
_FORGE_MASK3D = {"attention_pytorch": "heads", "attention_xformers": "heads", "attention_sub_quad": "batch",
                 "attention_split": "batch", "attention_basic": "batch"}


def _mask3d(layout: str, fn) -> Optional[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if layout == "forge" and "skip_output_reshape" not in params:
        return _FORGE_MASK3D.get(getattr(fn, "__name__", ""))
    return "batch" if "skip_reshape" in params else None


class ForgeAttention(HostAttention):
    """HostAttention that compares equal to the host function it wraps (see the module doc: k_model's memory
    estimate picks its factor with `attention_function in [attention_pytorch, attention_xformers]`)."""

    def __eq__(self, other):
        return other is self or other is self.original

    def __hash__(self):
        return hash(self.original)


class _State:
    def __init__(self):
        self.wrappers: dict = {}  # id(original) -> ForgeAttention
        self.sites: list = []  # (module name, attribute) rebound by install
        self.layouts: list = []
        self.enabled = True
        self.backend: Optional[str] = None


_state = _State()


# -- finding the host ---------------------------------------------------------------------------------------
def _owner_module(name: str):
    """The module that owns the host's attention function, imported if the host has it, else None."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    top = name.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)  # does not execute the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    rel = name.split(".")[1:]
    if not any(os.path.isfile(os.path.join(loc, *rel[:-1], rel[-1] + ".py")) for loc in spec.submodule_search_locations):
        return None  # a package of that name that is not the host's
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - a host that cannot import its own module is not ours to fix
        log.error("arcattn: %s exists but failed to import (%s: %s); Forge attention left as it is",
                  name, type(e).__name__, e)
        return None


# -- install / uninstall ------------------------------------------------------------------------------------
def install(*, enabled: Optional[bool] = None, backend: Optional[str] = None) -> list:
    """Route the host's UNet attention through arcattn. Idempotent: a second call only picks up modules that
    copied the host's function since. Returns the sites rebound by this call ("module.attribute").
    Returns [] (and logs at info level) when neither Forge layout is importable."""
    if enabled is not None or backend is not None:
        set_generation(_state.enabled if enabled is None else enabled, backend if backend is not None else _state.backend)
    changed = []
    for layout, owner, names, skip in LAYOUTS:
        mod = _owner_module(owner)
        if mod is None:
            continue
        originals = []
        for attr in names:
            fn = getattr(mod, attr, None)
            if fn is None:
                continue
            if any(fn is w for w in _state.wrappers.values()):
                fn = fn.original  # installed already: the host's function is behind our wrapper
            if callable(fn) and all(fn is not o for o in originals):
                originals.append(fn)
        if not originals:
            log.warning("arcattn: %s has none of %s; nothing to route", owner, ", ".join(names))
            continue
        for fn in originals:
            if id(fn) not in _state.wrappers:
                _state.wrappers[id(fn)] = ForgeAttention(fn, "forge", prefer=_state.backend, enabled=_state.enabled,
                                                         mask3d=_mask3d(layout, fn))
        if layout not in _state.layouts:
            _state.layouts.append(layout)
        changed += _rebind(names, skip)
    if changed:
        log.info("arcattn: Forge attention routed through arcattn at %s", ", ".join(changed))
    elif not _state.layouts:
        log.info("arcattn: no Forge attention module found (backend.attention or ldm_patched); nothing installed")
    return changed


def _rebind(names: Iterable[str], skip: Iterable[str]) -> list:
    by_original = {id(w.original): w for w in _state.wrappers.values()}
    skip = tuple(skip)
    changed = []
    for mname, _, d in loaded_module_dicts():
        if any(mname == s or mname.startswith(s + ".") for s in skip):
            continue
        for attr in names:
            fn = d.get(attr)
            w = by_original.get(id(fn)) if fn is not None else None
            if w is not None and w.original is fn:
                d[attr] = w
                changed.append(f"{mname}.{attr}")
                if (mname, attr) not in _state.sites:
                    _state.sites.append((mname, attr))
    return changed


def uninstall() -> list:
    """Put the host's original functions back wherever a wrapper of ours sits. Returns the sites restored."""
    ours = {id(w): w for w in _state.wrappers.values()}
    names = {a for _, _, attrs, _ in LAYOUTS for a in attrs}
    restored = []
    for mname, _, d in loaded_module_dicts():
        for attr in names:
            w = ours.get(id(d.get(attr)))
            if w is not None:
                d[attr] = w.original
                restored.append(f"{mname}.{attr}")
    _state.wrappers.clear()
    _state.sites.clear()
    _state.layouts.clear()
    if restored:
        log.info("arcattn: Forge attention restored at %s", ", ".join(restored))
    return restored


def installed() -> bool:
    return bool(_state.wrappers)


def wrappers() -> list:
    return list(_state.wrappers.values())


def layouts() -> list:
    """The host layouts found by install(): "forge" and/or "ldm_patched"."""
    return list(_state.layouts)


def sites() -> list:
    return [f"{m}.{a}" for m, a in _state.sites]


# -- the per-generation switch ------------------------------------------------------------------------------
def normalize_backend(backend: Optional[str]) -> Optional[str]:
    """None for "auto"/empty/unknown names (an unknown name is logged once and ignored), else the backend name."""
    if backend is None:
        return None
    name = str(backend).strip().lower()
    if name in ("", AUTO):
        return None
    if name not in NAMES:
        if name not in _unknown_logged:
            _unknown_logged.add(name)
            log.warning("arcattn: unknown backend %r (known: %s); using auto", backend, ", ".join(BACKEND_CHOICES))
        return None
    return name


_unknown_logged: set = set()


def set_generation(enabled: bool, backend: Optional[str] = None) -> None:
    """Settings for the calls from now on: `enabled=False` hands every call to the host's function; `backend`
    names the backend to try first ("auto"/None: the router's choice; one that cannot serve a call falls back)."""
    _state.enabled = bool(enabled)
    _state.backend = normalize_backend(backend)
    for w in _state.wrappers.values():
        w.enabled = _state.enabled
        w.prefer = _state.backend


def generation_settings() -> tuple:
    """(enabled, backend or None) as the wrappers use them now."""
    return _state.enabled, _state.backend


# -- which backend served a generation ----------------------------------------------------------------------
def _served_now(router) -> dict:
    counts = {name: v["served"] for name, v in router.telemetry().items()}
    counts[HOST] = sum(sum(w.fallbacks.values()) for w in _state.wrappers.values())
    return counts


class GenerationCounter:
    """Calls served per backend since `start()` (router telemetry deltas + host-original fallbacks)."""

    def __init__(self):
        self._router = None
        self._base: dict = {}

    def start(self) -> None:
        from ..api import get_router
        self._router = get_router()
        self._base = _served_now(self._router)

    def counts(self) -> dict:
        from ..api import get_router
        router = get_router()
        now = _served_now(router)
        base = self._base if router is self._router else {HOST: self._base.get(HOST, 0)}  # router replaced: all new
        out = {k: n - base.get(k, 0) for k, n in now.items()}
        return {k: n for k, n in out.items() if n > 0}

    def label(self, enabled: bool = True) -> str:
        """Infotext value: "off" when disabled, the backend with the most calls, "host" when the host's own
        function served most (arcattn fell back), "unused" when no call reached arcattn."""
        if not enabled:
            return "off"
        counts = self.counts()
        if not counts:
            return "unused"
        order = {name: i for i, name in enumerate((*NAMES, HOST))}
        return max(counts.items(), key=lambda kv: (kv[1], -order.get(kv[0], 99)))[0]


def status_lines() -> list:
    """One line per backend: available or why not (for the UI's status text)."""
    from ..api import get_router
    lines = []
    for b in get_router().backends:
        why = b.unavailable_reason()
        lines.append(f"{b.name}: available" if why is None else f"{b.name}: unavailable ({why})")
    return lines

