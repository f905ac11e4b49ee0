"""Attention over a short key sequence (a 77-token text context): every key at once, several query tiles per program.

Why a second kernel: in SD's cross-attention the keys are few (77, or 154 for a long prompt) and the queries many
(4096 per head at 512 px). The flash kernel gives each program one query tile: load it, walk two key blocks, store,
exit; the whole call is a chain of DRAM latencies with little to overlap them, and it pads 77 keys to 128.
Here one program loads its (batch, head)'s keys and values once and keeps them on chip, then streams Q_TILES query
tiles through them, so that Triton's pipeliner loads tile t + 1 while tile t is in the products and the softmax.
With every key in one pass there is no online softmax: one row maximum, one row sum, no rescaling.

The keys are split by flash.head_split, the same rule as the head dim: a power-of-two block N0 plus a
power-of-two tail N1 (>= 16), 77 = 64 + 16, so a row computes 80 scores instead of 128. The head split (D0/D1, E0/E1), the aligned-
stride hint AL, the loads and the output store are flash.py's own helpers; tensor descriptors (XPU) serve the
query and output tiles, which carry the traffic, while the keys and values load once through pointers.
Launched by flash.launch when a flash.Plan holds a configuration with q_tiles > 0 (configs.TileConfig).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .flash import _finish, _load, _mma


@triton.jit
def _scores(q0, q1, k0, k1, n0, Sk, qk_scale, D1: tl.constexpr, BLOCK_M: tl.constexpr, N: tl.constexpr,
            MASKED: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Scaled base-2 scores of keys n0..n0+N (keys >= Sk: -inf when MASKED)."""
    s = _mma(q0, tl.trans(k0), tl.zeros([BLOCK_M, N], tl.float32), IEEE, UPCAST)
    if D1 > 0:
        s = _mma(q1, tl.trans(k1), s, IEEE, UPCAST)
    s = s * qk_scale  # before the mask, so that a negative scale keeps masked keys at -inf
    if MASKED:
        s = tl.where((n0 + tl.arange(0, N))[None, :] < Sk, s, float("-inf"))
    return s


@triton.jit(do_not_specialize=["qk_scale", "H", "Sq", "Sk", "Q_TILES"])
def _attn_short_fwd(Q, K, V, O, LSE, qk_scale, H, Sq, Sk, Q_TILES,
                    s_qb, s_qh, s_qs, s_qd, s_kb, s_kh, s_ks, s_kd, s_vb, s_vh, s_vs, s_vd, s_ob, s_oh, s_os, s_od,
                    D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, C1: tl.constexpr,
                    E0: tl.constexpr, E1: tl.constexpr, F1: tl.constexpr, N0: tl.constexpr, N1: tl.constexpr,
                    MASK0: tl.constexpr, BLOCK_M: tl.constexpr, WRITE_LSE: tl.constexpr, IEEE: tl.constexpr,
                    UPCAST: tl.constexpr, USE_DESC: tl.constexpr, AL: tl.constexpr):
    s_qb, s_qh, s_qs = s_qb * AL, s_qh * AL, s_qs * AL  # see flash._attn_fwd: provably aligned rows
    s_kb, s_kh, s_ks = s_kb * AL, s_kh * AL, s_ks * AL
    s_vb, s_vh, s_vs = s_vb * AL, s_vh * AL, s_vs * AL
    s_ob, s_oh, s_os = s_ob * AL, s_oh * AL, s_os * AL
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_base = Q + b * s_qb + h * s_qh
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    o_base = O + b * s_ob + h * s_oh
    q0d, q1d, o0d, o1d = q_base, q_base, o_base, o_base
    if USE_DESC:
        q0d = tl.make_tensor_descriptor(q_base, shape=[Sq, D], strides=[s_qs, 1], block_shape=[BLOCK_M, D0])
        o0d = tl.make_tensor_descriptor(o_base, shape=[Sq, D], strides=[s_os, 1], block_shape=[BLOCK_M, E0])
        if D1 > 0:
            q1d = tl.make_tensor_descriptor(q_base, shape=[Sq, D], strides=[s_qs, 1], block_shape=[BLOCK_M, D1])
        if E1 > 0:
            o1d = tl.make_tensor_descriptor(o_base, shape=[Sq, D], strides=[s_os, 1], block_shape=[BLOCK_M, E1])

    # Keys and values, once per program: block 0 (rows 0..N0) and the tail block 1 (rows N0..N0+N1); the
    # k1x / v1x stand-ins are never used when the head or the keys have no tail.
    k00 = _load(k_base, k_base, 0, Sk, s_ks, s_kd, N0, D0, 0, D, MASK0, False)
    v00 = _load(v_base, v_base, 0, Sk, s_vs, s_vd, N0, E0, 0, D, MASK0, False)
    k01, v01, k10, k11, v10, v11 = k00, v00, k00, k00, v00, v00
    if D1 > 0:
        k01 = _load(k_base, k_base, 0, Sk, s_ks, s_kd, N0, D1, C1, D, MASK0, False)
    if E1 > 0:
        v01 = _load(v_base, v_base, 0, Sk, s_vs, s_vd, N0, E1, F1, D, MASK0, False)
    if N1 > 0:
        k10 = _load(k_base, k_base, N0, Sk, s_ks, s_kd, N1, D0, 0, D, True, False)
        v10 = _load(v_base, v_base, N0, Sk, s_vs, s_vd, N1, E0, 0, D, True, False)
        if D1 > 0:
            k11 = _load(k_base, k_base, N0, Sk, s_ks, s_kd, N1, D1, C1, D, True, False)
        if E1 > 0:
            v11 = _load(v_base, v_base, N0, Sk, s_vs, s_vd, N1, E1, F1, D, True, False)

    t_lo = tl.program_id(0) * Q_TILES
    t_hi = tl.minimum(t_lo + Q_TILES, tl.cdiv(Sq, BLOCK_M))
    for t in range(t_lo, t_hi):
        row0 = t * BLOCK_M
        q0 = _load(q_base, q0d, row0, Sq, s_qs, s_qd, BLOCK_M, D0, 0, D, True, USE_DESC)
        q1 = q0
        if D1 > 0:
            q1 = _load(q_base, q1d, row0, Sq, s_qs, s_qd, BLOCK_M, D1, C1, D, True, USE_DESC)
            if C1 < D0:  # the tail window overlaps the first part: count those columns once
                q1 = tl.where((C1 + tl.arange(0, D1))[None, :] >= D0, q1, 0.0)
        s0 = _scores(q0, q1, k00, k01, 0, Sk, qk_scale, D1, BLOCK_M, N0, MASK0, IEEE, UPCAST)
        m = tl.max(s0, 1)
        if N1 > 0:
            s1 = _scores(q0, q1, k10, k11, N0, Sk, qk_scale, D1, BLOCK_M, N1, True, IEEE, UPCAST)
            m = tl.maximum(m, tl.max(s1, 1))
        p = tl.math.exp2(s0 - m[:, None])
        l = tl.sum(p, 1)
        p = p.to(v00.dtype)
        acc0 = _mma(p, v00, tl.zeros([BLOCK_M, E0], tl.float32), IEEE, UPCAST)
        acc1 = acc0
        if E1 > 0:
            acc1 = _mma(p, v01, tl.zeros([BLOCK_M, E1], tl.float32), IEEE, UPCAST)
        if N1 > 0:
            p = tl.math.exp2(s1 - m[:, None])
            l += tl.sum(p, 1)
            p = p.to(v00.dtype)
            acc0 = _mma(p, v10, acc0, IEEE, UPCAST)
            if E1 > 0:
                acc1 = _mma(p, v11, acc1, IEEE, UPCAST)
        _finish(o_base, o0d, o1d, LSE, acc0, acc1, m, l, bh, row0, Sq, s_os, s_od,
                D, E0, E1, F1, BLOCK_M, WRITE_LSE, USE_DESC)


# the kernel's constexpr parameters, in order (flash.launch's direct launches pass them positionally)
CONSTS = ("D", "D0", "D1", "C1", "E0", "E1", "F1", "N0", "N1", "MASK0", "BLOCK_M", "WRITE_LSE", "IEEE", "UPCAST",
          "USE_DESC", "AL")
