"""The host-side wrapper shared by ComfyUI and Forge, whose attention functions share one signature:

    f(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs)

q/k/v are (B, N, heads*dim_head), or (B, heads, N, dim_head) with skip_reshape; the output is (B, Nq, heads*dim_head)
unless skip_output_reshape. Whatever goes wrong inside arcattn, the host's original function serves the call:
a generation is never lost because of the plugin.
"""
from __future__ import annotations

import inspect
import logging
import math
import sys
from collections import Counter
from typing import Callable, Iterator, Optional

from ..api import get_router
from ..call import make_call
from ..dispatch import CONTROL_FLOW, one_line

log = logging.getLogger("arcattn")

# (host, reason) pairs already logged: once per process, however many wrappers a node builds per run
_warned: set = set()


def loaded_module_dicts() -> Iterator[tuple]:
    """(name, module, its namespace dict) for every loaded module, to find the copies of a host function that other
    modules took. The dict is read past any __getattribute__ or __getattr__ of the module's class: reading an
    attribute of a lazily loaded module (importlib.util.LazyLoader) runs its deferred import, which may fail or be
    slow. Entries that are not modules, or whose dict cannot be read so, are skipped."""
    for name, mod in list(sys.modules.items()):
        if not issubclass(type(mod), type(sys)):  # type(): a proxy's __class__ hook is never run
            continue
        try:
            d = object.__getattribute__(mod, "__dict__")
        except Exception:  # noqa: BLE001
            continue
        if isinstance(d, dict):
            yield name, mod, d


class HostAttention:
    """A drop-in for a host's attention function. `prefer` names a backend (None = router's choice);
    `enabled=False` passes every call to `original` untouched."""

    def __init__(self, original: Callable, host: str, *, prefer: Optional[str] = None, enabled: bool = True,
                 mask3d: Optional[str] = "batch"):
        self.original = original
        # How the wrapped function reads a 3-D mask's first dim: "batch" (ComfyUI, reForge, Forge's sliced
        # functions: (B, Sq, Sk)), "heads" (Forge's attention_pytorch hands it to SDPA as it is, which broadcasts
        # it against (B, H, Sq, Sk)), or None (not known: the host's own function serves such a mask when that
        # dim is not 1)
        if mask3d not in ("batch", "heads", None):
            raise ValueError(f"mask3d must be 'batch', 'heads' or None, got {mask3d!r}")
        self.mask3d = mask3d
        # `scale=` only where the function names it. Hidden in **kwargs it is ignored by ComfyUI 0.3.64 and Forge
        # and honoured by later ComfyUI: there arcattn serves only the default scale, which both readings share,
        # and hands any other back (the answer must not depend on which path served it)
        try:
            self.takes_scale = "scale" in inspect.signature(original).parameters
        except (TypeError, ValueError):
            self.takes_scale = False
        self.host = host
        self.prefer = prefer
        self.enabled = enabled
        self.fallbacks: Counter = Counter()  # reason -> calls the host's original served
        self.__name__ = f"arcattn_{host}_attention"
        self.__qualname__ = self.__name__
        self.__doc__ = f"arcattn attention for {host} (falls back to {getattr(original, '__name__', original)})"

    def setting(self) -> tuple:
        """(enabled, preferred backend) for the call being made; hosts with a per-model setting override this."""
        return self.enabled, self.prefer

    def __call__(self, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        enabled, prefer = self.setting()
        if not enabled:
            return self._original(q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape, kwargs)
        try:
            if kwargs.get("low_precision_attention") is False:
                prefer = "sdpa"  # the host asked for no low-precision kernel: plain SDPA
            layout = "bhsd" if skip_reshape else "bsd"
            if kwargs.get("enable_gqa"):
                raise ValueError("grouped-query attention (enable_gqa) is not served")
            scale = kwargs.get("scale")
            if scale is not None and not self.takes_scale:
                d = q.shape[-1] if skip_reshape else q.shape[-1] // heads
                if not math.isclose(scale, d ** -0.5, rel_tol=1e-6):
                    raise ValueError("a scale other than 1/sqrt(head dim), where the host's function takes it in "
                                     "**kwargs: whether it honours it depends on the host's version")
                scale = None
            kk, vv = k, v
            if not skip_reshape and q.dim() == 3 and (k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]):
                # The hosts' functions read every tensor by q's batch (t.view or t.reshape(b, -1, heads, dim_head),
                # b from q). ComfyUI's and reForge's HyperTile rely on it: q in tiles, (B * tiles, S / tiles, C),
                # beside k and v of (B, S, C). Read the same way, or the answer would depend on who serves the call
                kk, vv = (t.reshape(q.shape[0], -1, t.shape[-1]) for t in (k, v))
            m = mask
            if mask is not None and mask.dim() == 3 and self.mask3d != "batch":
                if self.mask3d == "heads":
                    m = mask[None]
                elif mask.shape[0] != 1:
                    raise ValueError("a 3-D mask whose first dim is not 1: how this host function reads that "
                                     "dim is not known")
            call = make_call(q, kk, vv, heads=heads, layout=layout,
                             out_layout="bhsd" if skip_output_reshape else "bsd",
                             mask=m, scale=scale)
            return get_router().run(call, prefer=prefer)
        except CONTROL_FLOW:
            raise
        except Exception as e:  # noqa: BLE001 - the host's own function takes over
            return self._fallback(e, q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape, kwargs)

    def _fallback(self, e, q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape, kwargs):
        reason = one_line(e)
        if (self.host, reason) not in _warned:
            if len(_warned) > 1000:
                _warned.clear()
            _warned.add((self.host, reason))
            log.warning("%s attention: arcattn could not serve a call (%s); the host's %s serves it",
                        self.host, reason, getattr(self.original, "__name__", "original"))
        self.fallbacks[reason] += 1
        return self._original(q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape, kwargs)

    def _original(self, q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape, kwargs):
        # Only what the caller set goes on as a keyword: Forge's signature has no skip_output_reshape, and a
        # replacement another extension installed may take no more than (q, k, v, heads, mask)
        if attn_precision is not None:
            kwargs["attn_precision"] = attn_precision
        if skip_reshape:
            kwargs["skip_reshape"] = True
        if skip_output_reshape:
            kwargs["skip_output_reshape"] = True
        return self.original(q, k, v, heads, mask, **kwargs)
