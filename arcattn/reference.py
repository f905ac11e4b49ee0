"""Float64 reference attention: the yardstick every backend is measured against."""
from __future__ import annotations

from typing import Optional

import torch


def attention_reference(q4: torch.Tensor, k4: torch.Tensor, v4: torch.Tensor, *,
                        mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                        causal: bool = False) -> tuple:
    """Plain softmax(q k^T * scale + mask) v in float64 on (B, H, S, D) tensors. Returns (out, lse).

    Bool masks mean True = attend; float masks are added to the scores. Causal is top-left aligned
    (query i sees keys 0..i), as in torch's scaled_dot_product_attention.
    """
    q, k, v = q4.double(), k4.double(), v4.double()
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = s + mask.double()
    if causal:
        Sq, Sk = s.shape[-2:]
        keep = torch.ones(Sq, Sk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.softmax(s, dim=-1) @ v
    return out, lse


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in `out` gives inf, so it can never pass."""
    out = out.detach().double()
    ref = ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))
