"""Stand-in for reForge / Forge classic ldm_patched/ldm/modules/attention.py: ComfyUI-style signature
f(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False), chosen once
into optimized_attention, optimized_attention_masked aliasing it, CrossAttention looking both up at call time."""
import torch.nn.functional as F
from torch import nn


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
    if not skip_reshape:
        b, n, hd = q.shape
        q, k, v = (t.view(b, -1, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 2:
        mask = mask[None]
    if mask is not None and mask.ndim == 3:
        mask = mask[:, None]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return o
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, attn_precision=None,
                 dtype=None, device=None, operations=None):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.attn_precision = attn_precision
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, value=None, mask=None):
        context = x if context is None else context
        q, k = self.to_q(x), self.to_k(context)
        v = self.to_v(context if value is None else value)
        if mask is None:
            out = optimized_attention(q, k, v, self.heads, attn_precision=self.attn_precision)
        else:
            out = optimized_attention_masked(q, k, v, self.heads, mask, attn_precision=self.attn_precision)
        return self.to_out(out)
