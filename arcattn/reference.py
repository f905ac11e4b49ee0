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


def attention_reference_chunked(q4: torch.Tensor, k4: torch.Tensor, v4: torch.Tensor, *,
                                scale: Optional[float] = None, causal: bool = False,
                                budget_bytes: int = 1 << 29) -> tuple:
    """attention_reference for full-size shapes: a few query rows of one (batch, head) at a time, so no score
    block is larger than budget_bytes of float64. Returns (out, lse) in float64, (B, H, Sq, Dv) and (B, H, Sq)."""
    B, H, Sq, _ = q4.shape
    Sk = k4.shape[2]
    out = torch.empty(B, H, Sq, v4.shape[3], dtype=torch.float64, device=q4.device)
    lse = torch.empty(B, H, Sq, dtype=torch.float64, device=q4.device)
    rows = max(1, min(Sq, budget_bytes // (Sk * 8)))
    keys = torch.arange(Sk, device=q4.device)
    for b in range(B):
        for h in range(H):
            for i in range(0, Sq, rows):
                j = min(Sq, i + rows)
                mask = None
                if causal:  # top-left aligned, as attention_reference: query i sees keys 0..i
                    mask = (keys[None, :] <= torch.arange(i, j, device=q4.device)[:, None])[None, None]
                o, m = attention_reference(q4[b:b + 1, h:h + 1, i:j], k4[b:b + 1, h:h + 1], v4[b:b + 1, h:h + 1],
                                           mask=mask, scale=scale)
                out[b, h, i:j] = o[0, 0]
                lse[b, h, i:j] = m[0, 0]
    return out, lse


# Bounds on rel_error, per dtype (tests keep their own literal bounds, so that loosening these fails them).
# Against the float64 reference: a correct kernel stays well inside (worst measured on an H200: fp16 2.9e-4,
# bf16 2.4e-3, fp32 5.2e-7; bench/RESULTS.md).
REFERENCE_TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-12}
# Between two backends that both round (a candidate against SDPA on the same inputs): their errors can add up,
# so looser than the reference bound.
AGREEMENT_TOL = {torch.float16: 5e-3, torch.bfloat16: 2e-2, torch.float32: 1e-3, torch.float64: 1e-6}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in `out` gives inf, so it can never pass."""
    out = out.detach().double()
    ref = ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))
