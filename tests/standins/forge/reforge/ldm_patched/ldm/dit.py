"""Stand-in for an ldm_patched DiT module that copied optimized_attention at import (as flux/math.py-style
modules do) and calls it with (B, H, N, D) inputs."""
from ldm_patched.ldm.modules.attention import optimized_attention


def attention(q, k, v):
    return optimized_attention(q, k, v, q.shape[1], skip_reshape=True)
