"""Stand-in for Forge's backend/attention.py: the attention implementations with Forge's signature
f(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False), chosen once at import into
`attention_function`. Output is always (B, Nq, heads*dim_head), also with skip_reshape (Forge has no
skip_output_reshape). ARCATTN_STANDIN_FORGE_ATTENTION=basic or sub_quad selects a non-SDPA implementation.

ARCATTN_STANDIN_FORGE=neo gives Forge Neo's version instead (the "neo" branch of Haoming02/sd-webui-forge-classic,
read from its stored source: functions taken from ComfyUI v0.7): f(q, k, v, heads, mask=None, attn_precision=None,
skip_reshape=False, skip_output_reshape=False, **kwargs), a 3-D mask read as (B, Sq, Sk) by every function, and no
attention_sub_quad."""
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


if os.environ.get("ARCATTN_STANDIN_FORGE") == "neo":
    def _out(o, skip_output_reshape):
        return o if skip_output_reshape else _merge(o)

    def attention_basic(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,  # noqa: F811
                        skip_output_reshape=False, **kwargs):
        qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
        s = torch.matmul(qh, kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5
        if mask is not None:
            s = s + _batch_first(mask, qh.shape[0], heads)
        return _out(torch.matmul(s.softmax(-1), vh), skip_output_reshape)

    def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,  # noqa: F811
                          skip_output_reshape=False, **kwargs):
        qh, kh, vh = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
        if mask is not None and mask.dim() == 2:
            mask = mask[None]
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, Sq, Sk) -> (B, 1, Sq, Sk): the first dim runs over the batch
        return _out(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask), skip_output_reshape)

    def attention_xformers(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,  # noqa: F811
                           skip_output_reshape=False, **kwargs):
        raise RuntimeError("xformers is not part of the stand-in")

    del attention_sub_quad
    attention_function = attention_basic if os.environ.get("ARCATTN_STANDIN_FORGE_ATTENTION") == "basic" \
        else attention_pytorch
elif os.environ.get("ARCATTN_STANDIN_FORGE_ATTENTION") == "basic":
    attention_function = attention_basic
elif os.environ.get("ARCATTN_STANDIN_FORGE_ATTENTION") == "sub_quad":
    attention_function = attention_sub_quad
else:
    attention_function = attention_pytorch
