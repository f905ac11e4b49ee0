"""Stand-in for Forge's backend/attention.py: the attention implementations with Forge's signature
f(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False), chosen once at import into
`attention_function`. Output is always (B, Nq, heads*dim_head), also with skip_reshape (Forge has no
skip_output_reshape). ARCATTN_STANDIN_FORGE_ATTENTION=basic or sub_quad selects a non-SDPA implementation."""
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


def _batch_first(mask, b, heads):
    """Forge's sliced functions read a float mask's leading dims as (B or 1, ...): (B, Sq, Sk) for a 3-D one."""
    bs = 1 if mask.dim() == 2 else mask.shape[0]
    return mask.reshape(bs, -1, mask.shape[-2], mask.shape[-1]).expand(b, heads, -1, -1)


def attention_basic(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    acc = torch.float32 if attn_precision == torch.float32 else qh.dtype
    s = torch.matmul(qh.to(acc), kh.to(acc).transpose(-1, -2)) * qh.shape[-1] ** -0.5
    if mask is not None:
        s = (s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
             else s + _batch_first(mask, qh.shape[0], heads).to(acc))
    o = torch.matmul(s.softmax(-1).to(vh.dtype), vh)
    return _merge(o)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    return _merge(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask))


def attention_sub_quad(query, key, value, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Forge's CPU default. Like Forge's, it reads a 3-D float mask as (B, Sq, Sk), where attention_pytorch's SDPA
    call broadcasts the same tensor's first dim over heads (one chunk here: the slicing does not change values)."""
    qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (query, key, value))
    s = torch.matmul(qh.float(), kh.float().transpose(-1, -2)) * qh.shape[-1] ** -0.5
    if mask is not None:
        s = s + _batch_first(mask, qh.shape[0], heads).float()
    return _merge(torch.matmul(s.softmax(-1), vh.float()).to(vh.dtype))


def attention_xformers(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    raise RuntimeError("xformers is not part of the stand-in")


if os.environ.get("ARCATTN_STANDIN_FORGE_ATTENTION") == "basic":
    attention_function = attention_basic
elif os.environ.get("ARCATTN_STANDIN_FORGE_ATTENTION") == "sub_quad":
    attention_function = attention_sub_quad
else:
    attention_function = attention_pytorch
