"""Stand-in for comfy/ldm/modules/attention.py: signatures and hook semantics only, in two versions chosen at import
by ARCATTN_STANDIN_COMFYUI:
- "0.3.64" (the default): ComfyUI 0.3.64's conventions;
- "later": later ComfyUI's, read from stored versions of its source up to 0.38. CrossAttention hands q, k and v
  over in single-use containers and passes its `preferred_attention` module; wrap_attn pops `preferred_attention`
  (its `.function`, when set, serves the call), hands containers to a `container_function` where the override or
  the function has one, and otherwise unpacks them first; the functions honour `scale=` and `enable_gqa=` given
  in **kwargs (0.3.64 ignores both)."""
import functools
import os
from typing import Any, Callable

import torch

LATER = os.environ.get("ARCATTN_STANDIN_COMFYUI", "0.3.64") == "later"
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


class AttentionTensorContainer:
    """(later) One tensor, handed over once: the caller drops its own reference, so the input can be freed early."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def take(self) -> torch.Tensor:
        if self.tensor is None:
            raise RuntimeError("attention tensor container already taken")
        t, self.tensor = self.tensor, None
        return t


class ComfyAttention(torch.nn.Module):
    """(later) A model's own attention choice, set from checkpoint metadata; `function` None: no preference."""

    def __init__(self):
        super().__init__()
        self.function = None


def _unpack(args):
    return tuple(a.take() for a in args[:3]) + tuple(args[3:])


def wrap_attn(func):
    """The host's hook: transformer_options["optimized_attention_override"](func, *args, **kwargs), once per call."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        preferred = kwargs.pop("preferred_attention", None) if LATER else None
        packed = LATER and len(args) >= 3 and isinstance(args[0], AttentionTensorContainer)
        if packed and not all(isinstance(a, AttentionTensorContainer) for a in args[:3]):
            raise TypeError("q, k and v must all be containers")
        if "_inside_attn_wrapper" in kwargs:
            return func(*(_unpack(args) if packed else args), **kwargs)
        kwargs["_inside_attn_wrapper"] = True
        try:
            topts = kwargs.get("transformer_options")
            if topts is not None and "optimized_attention_override" in topts:
                override = topts["optimized_attention_override"]
                if packed:
                    if hasattr(override, "container_function"):
                        return override.container_function(*args, **kwargs)
                    args = _unpack(args)
                return override(func, *args, **kwargs)
            if preferred is not None and preferred.function is not None:
                return preferred.function(*args, **kwargs)
            if packed:
                if wrapper.container_function is not None:
                    return wrapper.container_function(*args, **kwargs)
                args = _unpack(args)
            return func(*args, **kwargs)
        finally:
            kwargs.pop("_inside_attn_wrapper", None)
    wrapper.container_function = None
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
        q, k, v = (t.reshape(b, -1, t.shape[-1] // d, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        while mask.ndim < 4:
            mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    extra = {name: kwargs[name] for name in ("scale", "enable_gqa") if LATER and name in kwargs}
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, heads * d)


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention
register_attention_function("pytorch", attention_pytorch)


class CrossAttention(torch.nn.Module):
    """Looks up the module attribute at call time, like the host's CrossAttention.forward (later: q, k and v in
    containers, with the module's preferred attention)."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.comfy_attention = ComfyAttention()
        self.to_q = torch.nn.Linear(query_dim, inner, bias=False)
        self.to_k = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_v = torch.nn.Linear(context_dim, inner, bias=False)
        self.to_out = torch.nn.Linear(inner, query_dim)

    def forward(self, x, context=None, mask=None, transformer_options={}):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        kw = {"transformer_options": transformer_options}
        if LATER:
            q, k, v = (AttentionTensorContainer(t) for t in (q, k, v))
            kw["preferred_attention"] = self.comfy_attention
        if mask is None:
            out = optimized_attention(q, k, v, self.heads, **kw)
        else:
            out = optimized_attention_masked(q, k, v, self.heads, mask, **kw)
        return self.to_out(out)
