"""torch.nn.functional.scaled_dot_product_attention: the backend that serves everything.

On Intel XPU, torch's math path materialises the (B, H, Sq, Sk) score matrix, and Arc cannot make a single
allocation over 4 GB (sd15 at 1024 px: 8 heads x 16384^2 fp16 = 4.3 GB). So there the query dimension is cut
into chunks whose score matrix fits `max_alloc_bytes`. Chunking a call that torch would have served with a
fused kernel costs little (each chunk is still large), so the rule is simply "the score matrix would not fit".
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ..call import AttentionCall
from .base import Backend

log = logging.getLogger("arcattn")

DEFAULT_MAX_ALLOC = 1 << 30  # well under Arc's 4 GB: the math path holds scores and their softmax at once


class SDPABackend(Backend):
    name = "sdpa"
    description = "torch scaled_dot_product_attention (universal fallback; query-chunked on XPU)"
    is_fallback = True
    device_types = ("cpu", "cuda", "xpu", "mps")
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    max_head_dim = 1 << 30
    supports_mask = supports_causal = supports_lse = supports_dv_ne_d = supports_grad = True

    def __init__(self, max_alloc_bytes: Optional[int] = None, chunk_devices: tuple = ("xpu",)):
        if max_alloc_bytes is None:
            max_alloc_bytes = _budget_from_env()
        self.max_alloc_bytes = max(1, int(max_alloc_bytes))
        self.chunk_devices = tuple(chunk_devices)

    def unsupported_reasons(self, call: AttentionCall) -> list:
        return []  # the fallback takes every valid call

    def chunk_rows(self, call: AttentionCall) -> Optional[int]:
        """Query rows per chunk, or None when the whole score matrix fits the budget."""
        if call.device.type not in self.chunk_devices and not call.want_lse:
            return None
        row_bytes = call.B * call.H * call.Sk * max(4, call.q.element_size())
        if row_bytes * call.Sq <= self.max_alloc_bytes:
            return None
        return max(1, self.max_alloc_bytes // row_bytes)

    def run(self, call: AttentionCall):
        if call.mask is None and not call.causal and not call.want_lse and call.device.type not in self.chunk_devices:
            # the common host call, kept to as few Python steps as the host's own attention function takes:
            # on a slow host CPU every extra call here shows up in a CPU-bound UNet step
            q4, k4, v4 = call.views4()
            o = F.scaled_dot_product_attention(q4, k4, v4, scale=None if call.default_scale else call.scale)
            if call.device.type == "cpu":
                o = _propagate_query_nan(q4, o)
            return call.to_caller(o)
        rows = self.chunk_rows(call)
        if call.want_lse:
            return self._run_with_lse(call, rows or call.Sq)
        q4, k4, v4 = call.views4()
        mask = _mask_for(call)
        scale = None if call.default_scale else call.scale  # as hosts call it: torch fills in its default
        if rows is None:
            o = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, is_causal=call.causal and mask is None,
                                               scale=scale)
            if call.device.type == "cpu":
                o = _propagate_query_nan(q4, o)
            return call.to_caller(o)
        out, out4 = call.empty_out()
        for i in range(0, call.Sq, rows):
            j = min(i + rows, call.Sq)
            o = F.scaled_dot_product_attention(q4[:, :, i:j], k4, v4, attn_mask=_rows(call, mask, i, j),
                                               scale=scale)
            out4[:, :, i:j] = _propagate_query_nan(q4[:, :, i:j], o) if call.device.type == "cpu" else o
        return out

    def _run_with_lse(self, call: AttentionCall, rows: int):
        # torch's SDPA does not return the log-sum-exp, so compute it explicitly, chunk by chunk, in fp32
        q4, k4, v4 = call.q4, call.k4, call.v4
        acc = torch.float64 if call.dtype == torch.float64 else torch.float32
        kt, vf = k4.to(acc).transpose(-1, -2), v4.to(acc)
        mask = _mask_for(call)
        out, out4 = call.empty_out()
        lse = torch.empty((call.B, call.H, call.Sq), dtype=torch.float32, device=call.device)
        for i in range(0, call.Sq, rows):
            j = min(i + rows, call.Sq)
            s = (q4[:, :, i:j].to(acc) @ kt) * call.scale
            m = _rows(call, mask, i, j)
            if m is not None:
                s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.to(acc)
            l = torch.logsumexp(s, dim=-1)
            # a row masked out entirely (l = -inf) gives zeros, as without the log-sum-exp, not exp(-inf + inf)
            out4[:, :, i:j] = (torch.exp(s - l.clamp_min(torch.finfo(acc).min)[..., None]) @ vf).to(call.dtype)
            lse[:, :, i:j] = l
        return out, lse


def _budget_from_env() -> int:
    env = os.environ.get("ARCATTN_SDPA_MAX_ALLOC_MB", "").strip()
    if not env:
        return DEFAULT_MAX_ALLOC
    try:
        mb = float(env)
        if not mb > 0:
            raise ValueError("not positive")
        return int(mb * (1 << 20))
    except ValueError:
        log.warning("ARCATTN_SDPA_MAX_ALLOC_MB=%r is not a positive number of MB; using %d MB", env,
                    DEFAULT_MAX_ALLOC >> 20)
        return DEFAULT_MAX_ALLOC


def _propagate_query_nan(q4, o):
    # torch's CPU flash kernel returns 0 for a query row holding NaN (k/v NaN do propagate); NaN in must give NaN
    # out, never a plausible-looking row. On the CPU this O(S*D) check is noise next to the O(S^2*D) product.
    if not bool(q4.sum().isnan()):  # one cheap reduction first (inf - inf also lands here; then nothing changes)
        return o
    bad = torch.isnan(q4).any(dim=-1, keepdim=True)
    return o.masked_fill(bad, float("nan"))


def _mask_for(call: AttentionCall) -> Optional[torch.Tensor]:
    """The call's mask in a form SDPA takes, with causal folded in when both are set. SDPA takes bool, float32 or
    q's dtype; a float mask of another dtype goes to float32 with half or float32 q (as the hosts pass it: casting
    it down would turn finfo(float32).min into -inf and a fully masked row into zeros instead of the hosts' uniform
    average), to float64 with float64 q (torch's CPU SDPA, 2.12 and 2.13, gives wrong values for float64 q with a
    float32 mask). Causal with a scale <= 0 becomes a mask too: torch's CPU SDPA gives NaN for is_causal there."""
    mask = call.mask
    if mask is not None and mask.dtype not in (torch.bool, call.dtype):
        if call.dtype == torch.float64:
            mask = mask.to(torch.float64)
        elif mask.dtype != torch.float32:  # float64, or the other half type: float32 keeps finfo(float32).min
            mask = mask.to(torch.float32)
    if call.causal and (mask is not None or not call.scale > 0):
        keep = torch.ones(call.Sq, call.Sk, dtype=torch.bool, device=call.device).tril()
        if mask is None:
            mask = keep
        else:
            mask = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))
    return mask


def _rows(call: AttentionCall, mask: Optional[torch.Tensor], i: int, j: int) -> Optional[torch.Tensor]:
    """Mask for query rows i:j (causal included when the call has no mask of its own)."""
    if mask is not None:
        return mask if mask.shape[-2] == 1 else mask[..., i:j, :]
    if call.causal:
        r = torch.arange(i, j, device=call.device)[:, None]
        return torch.arange(call.Sk, device=call.device)[None, :] <= r
    return None
