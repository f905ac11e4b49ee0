"""Stand-in for Forge's backend/attention.py: the attention implementations with Forge's signature
f(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False), chosen once at import into
`attention_function`. Output is always (B, Nq, heads*dim_head), also with skip_reshape (Forge has no
skip_output_reshape). ARCATTN_STANDIN_FORGE_ATTENTION=basic selects the non-SDPA implementation."""
import os

import torch
import torch.nn.functional as F


def _heads_first(t, heads, skip_reshape):
    if skip_reshape:
        return t  # already (B, H, N, D)
    b, n, hd = t.shape
    return t.view(b, n, heads, hd // heads).transpose(1, 2)


def _merge(o):
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


def attention_basic(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    acc = torch.float32 if attn_precision == torch.float32 else qh.dtype
    s = torch.matmul(qh.to(acc), kh.to(acc).transpose(-1, -2)) * qh.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(acc)
    o = torch.matmul(s.softmax(-1).to(vh.dtype), vh)
    return _merge(o)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    return _merge(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask))


def attention_xformers(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    raise RuntimeError("xformers is not part of the stand-in")


if os.environ.get("ARCATTN_STANDIN_FORGE_ATTENTION") == "basic":
    attention_function = attention_basic
else:
    attention_function = attention_pytorch
