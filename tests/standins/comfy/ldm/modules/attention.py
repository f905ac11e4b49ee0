"""Stand-in for comfy/ldm/modules/attention.py (ComfyUI 0.3.64): signatures and hook semantics only."""
import functools
from typing import Any, Callable

import torch

REGISTERED_ATTENTION_FUNCTIONS = {}


def register_attention_function(name: str, func: Callable):
    if name not in REGISTERED_ATTENTION_FUNCTIONS:  # first registration wins
        REGISTERED_ATTENTION_FUNCTIONS[name] = func


def get_attention_function(name: str, default: Any = ...):
    if name == "optimized":
        return optimized_attention
    if name in REGISTERED_ATTENTION_FUNCTIONS:
        return REGISTERED_ATTENTION_FUNCTIONS[name]
    if default is ...:
        raise KeyError(name)
    return default


def wrap_attn(func):
    """The host's hook: transformer_options["optimized_attention_override"](func, *args, **kwargs), once per call."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "_inside_attn_wrapper" in kwargs:
            return func(*args, **kwargs)
        kwargs["_inside_attn_wrapper"] = True
        try:
            topts = kwargs.get("transformer_options")
            if topts is not None and "optimized_attention_override" in topts:
                return topts["optimized_attention_override"](func, *args, **kwargs)
            return func(*args, **kwargs)
        finally:
            kwargs.pop("_inside_attn_wrapper", None)
    return wrapper


CALLS = []  # names of the host implementations that actually ran


@wrap_attn
def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs):
    CALLS.append("attention_pytorch")
    if skip_reshape:
        b, _, _, d = q.shape
    else:
        b, _, hd = q.shape
        d = hd // heads
        q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        while mask.ndim < 4:
            mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, heads * d)


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention
register_attention_function("pytorch", attention_pytorch)


class CrossAttention(torch.nn.Module):
    """Looks up the module attribute at call time, like the host's CrossAttention.forward."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = torch.nn.Linear(query_dim, inner, bias=False)
        self.to_k = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_v = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_out = torch.nn.Linear(inner, query_dim)

    def forward(self, x, context=None, mask=None, transformer_options={}):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if mask is None:
            out = optimized_attention(q, k, v, self.heads, transformer_options=transformer_options)
        else:
            out = optimized_attention_masked(q, k, v, self.heads, mask, transformer_options=transformer_options)
        return self.to_out(out)
