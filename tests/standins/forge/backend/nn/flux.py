"""Stand-in for Forge's backend/nn/flux.py: its own copy of attention_function, called with (B, H, N, D) inputs,
heads = q.shape[1] and skip_reshape=True, after rotary embedding of q and k."""
import torch

from backend.attention import attention_function


def apply_rope(xq, xk, freqs_cis):
    # freqs_cis: (..., N, D/2, 2, 2) rotation matrices, applied to (x_even, x_odd) pairs
    def rot(x):
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        out = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
        return out.reshape(*x.shape).type_as(x)
    return rot(xq), rot(xk)


def rope_freqs(n, dim, theta=10000.0):
    pos = torch.arange(n, dtype=torch.float64)
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = pos[:, None] * omega[None]
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack([c, -s, s, c], dim=-1).reshape(n, dim // 2, 2, 2).float()[None, None]


def attention(q, k, v, pe):
    q, k = apply_rope(q, k, pe)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True)
