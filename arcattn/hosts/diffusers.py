"""diffusers adapter: an attention processor for `UNet2DConditionModel.set_attn_processor`.

SD1.x/SD2/SDXL UNets run every `Attention` module through a processor; diffusers' newer attention dispatcher does
not reach them, so arcattn supplies its own processor. It follows the stock SDPA processor step for step (norms,
projections, mask preparation, output projection, residual, rescale) and hands the (B, S, H*D) projections to
arcattn without any reshaping of its own. A call arcattn cannot serve goes, whole, to the processor diffusers
would have used for that module, so it gives that processor's answer, or raises its error.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..api import get_router
from ..call import make_call
from ..dispatch import CONTROL_FLOW, Router, one_line, preferred

log = logging.getLogger("arcattn")

_ORIGINALS_ATTR = "_arcattn_original_processors"


class _Unserved(Exception):
    """arcattn could not serve this call's attention product."""


def _stock_processor(attn):
    # what diffusers' Attention picks by default: the SDPA processor, or the classic one where scale_qk is off
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    return AttnProcessor2_0() if getattr(attn, "scale_qk", True) else AttnProcessor()


class ArcAttnProcessor:
    """Attention processor that routes the attention product through arcattn (the stock processor if arcattn
    cannot serve a call)."""

    def __init__(self, backend: Optional[str] = None, router: Optional[Router] = None):
        self.backend = preferred(backend)
        self.router = router  # None: the process-wide router
        self._warned: set = set()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        try:
            return self._forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        except _Unserved as e:
            what = one_line(e.__cause__)
            if what not in self._warned:
                self._warned.add(what)
                log.warning("diffusers attention: arcattn could not serve a call (%s); the stock processor serves "
                            "it", what)
            return _stock_processor(attn)(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                          *args, **kwargs)

    def _forward(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            b, c, h, w = image_shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, context_len = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        heads = attn.heads
        if attn.norm_q is not None or attn.norm_k is not None:
            # per-head norms need (B, H, S, D); hand arcattn that layout and take (B, S, H*D) back
            d = key.shape[-1] // heads
            query, key, value = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in (query, key, value))
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            layout = "bhsd"
        else:
            layout = "bsd"

        # the scale the module's default processor applies: SDPA's own (1/sqrt of the projections' head dim), or
        # attn.scale in the classic processor that diffusers picks where scale_qk is off
        scale = None if getattr(attn, "scale_qk", True) else attn.scale
        out = self._attention(query, key, value, heads, layout, attention_mask, scale)
        out = out.to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if image_shape is not None:
            out = out.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _attention(self, q, k, v, heads, layout, mask, scale):
        try:
            call = make_call(q, k, v, heads=heads, layout=layout, out_layout="bsd", mask=mask, scale=scale)
            return (self.router or get_router()).run(call, prefer=self.backend)
        except CONTROL_FLOW:
            raise
        except Exception as e:  # noqa: BLE001 - a generation is never lost because of arcattn
            raise _Unserved() from e


def _replaceable(processor) -> bool:
    # Only the plain self/cross-attention processors: added-KV, IP-adapter, LoRA-style processors keep theirs.
    return type(processor).__name__ in ("AttnProcessor2_0", "AttnProcessor", "ArcAttnProcessor")


def enable(unet, backend: Optional[str] = None) -> int:
    """Put arcattn's processor on every plain attention module of `unet`; returns how many. Undo with disable()."""
    current = unet.attn_processors
    if not hasattr(unet, _ORIGINALS_ATTR):
        setattr(unet, _ORIGINALS_ATTR, dict(current))
    proc = ArcAttnProcessor(backend)
    new = {name: (proc if _replaceable(p) else p) for name, p in current.items()}
    n, total = sum(1 for p in new.values() if p is proc), len(new)
    unet.set_attn_processor(new)  # consumes the dict
    log.info("diffusers: arcattn serves %d of %d attention modules", n, total)
    return n


def disable(unet) -> None:
    """Restore the processors `enable` replaced where ours still sit; processors set since (an IP-Adapter loaded
    after enable(), say) stay."""
    originals = getattr(unet, _ORIGINALS_ATTR, None)
    if originals is None:
        return
    from diffusers.models.attention_processor import AttnProcessor2_0
    unet.set_attn_processor({name: (originals.get(name) or AttnProcessor2_0()) if isinstance(p, ArcAttnProcessor) else p
                             for name, p in unet.attn_processors.items()})
    delattr(unet, _ORIGINALS_ATTR)
