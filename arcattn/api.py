"""The public entry point: arcattn.attention(...)."""
from __future__ import annotations

from typing import Optional

import torch

from .backends import create_backends
from .call import make_call
from .dispatch import Router, preferred

_router: Optional[Router] = None


def get_router() -> Router:
    """The process-wide router (created on first use, so importing arcattn probes nothing)."""
    global _router
    if _router is None:
        from .tune import MeasuredChooser, policy_from_env
        _router = Router(create_backends(), chooser=MeasuredChooser() if policy_from_env() == "auto" else None)
    return _router


def set_router(router: Optional[Router]) -> None:
    """Replace the process-wide router (tests, or a host that wants its own settings); None recreates it."""
    global _router
    _router = router


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, heads: Optional[int] = None,
              layout: Optional[str] = None, out_layout: Optional[str] = None,
              mask: Optional[torch.Tensor] = None, scale: Optional[float] = None, causal: bool = False,
              return_lse: bool = False, backend: Optional[str] = None):
    """softmax(q k^T * scale + mask) v, served by the fastest backend that can.

    Layouts: "bsd" = (B, S, H*D) with `heads` (ComfyUI/Forge/diffusers style), "bhsd" = (B, H, S, D),
    "bshd" = (B, S, H, D). Default: "bsd" for 3-D inputs, "bhsd" for 4-D. The output comes in `out_layout`
    (default: the input layout). `mask`: bool (True = attend) or float (added to the scores), (Sq, Sk),
    (B, Sq, Sk) (first dim = batch, as ComfyUI reads it) or 4-D, broadcastable to (B, H, Sq, Sk); a row masked out
    entirely gives zeros. `causal` is top-left aligned. `return_lse` also returns the fp32
    log-sum-exp, shape (B, H, Sq). `backend` forces one backend and raises if it cannot serve the call
    ("auto" or None: the router's choice, with its fallback). Inputs that need gradients go to a backend with a
    backward (sdpa).
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a backend's name or None, got {type(backend).__name__}")
    call = make_call(q, k, v, heads=heads, layout=layout, out_layout=out_layout, mask=mask, scale=scale,
                     causal=causal, want_lse=return_lse)
    return get_router().run(call, prefer=backend, strict=preferred(backend) is not None)


def telemetry() -> dict:
    """Calls served and passed on per backend, with reasons (see Router.telemetry)."""
    return get_router().telemetry()


def reset_telemetry() -> None:
    get_router().reset()
