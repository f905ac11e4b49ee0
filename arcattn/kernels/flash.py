"""Flash attention (forward) in Triton: softmax(q k^T * scale) v without ever holding the score matrix.

One program owns BLOCK_M query rows of one (batch, head). It keeps those rows of q in registers and walks the
keys BLOCK_N at a time: scores for the block, a running row maximum and row sum (the online softmax, in base 2
so that exp is a single exp2), and the output accumulator rescaled whenever the maximum grows. Memory is O(S):
nothing of size Sq x Sk exists anywhere, only per-row statistics and the output.

What is particular to this kernel:
- Head dims that are not powers of two (SD1.5's 40/80/160, 72, ...) are split into a power-of-two part D0 and
  a small tail D1 (>= 16, the smallest dot), so a 40-wide head costs 32 + 16 = 48 lanes instead of 64, 80 costs
  64 + 16 and 160 costs 128 + 32: two dots per product instead of one wasteful one. When D0 + D1 > D the tail
  window is the *last* D1 columns of the head (24..39 for D = 40), overlapping the first part; q's overlap
  columns are zeroed so the scores count each column once, and the tail's output is stored from column D0 on.
  So no load needs a column mask, and nothing outside the head is ever read or written.
- v and the output may take their own split (E0, E1): on Hopper one P @ V product over a v padded to 64 lanes
  (columns past D read as zero, never stored) beat two narrow ones for D = 40 (configs.value_head).
- Any layout: every tensor is addressed through its (batch, head, seq, dim) strides. The batch/head/row strides
  arrive divided by their common 16-byte alignment (AL) and are multiplied back by that constant, so the
  compiler can prove aligned rows and emit 16-byte / cp.async loads even for a head stride of 40; Triton's own
  argument specialisation only recognises multiples of 16. (Without it a D = 40 head ran on scalar loads at half
  speed, and on Hopper with Triton 3.6 a head with a tail part, fed by such unaligned loads, computed wrong
  results; calls whose strides really are unaligned therefore use one power-of-two part on CUDA, flash.Plan.)
  So (B, S, H*D), (B, H, S, D), (B, S, H, D) and non-contiguous views are read in place and the output is
  written straight into the caller's layout.
- Keys are processed in two loops: whole blocks that need no mask, then the partial / causal-diagonal blocks.
- Occupancy: when batch x heads x query tiles cannot fill the device, the key range can be split over SPLITS
  programs per tile (grid axis 2). Each writes a partial result and its log-sum-exp to a small workspace, then
  takes a ticket from a per-tile counter; the program that arrives last merges the partials and resets the
  counter. One launch, no second kernel.
- Or, for a wide head on a small grid (SD1.5's D = 160 at 256 queries or fewer), the output's columns can be
  split over VPARTS programs per tile (same grid axis): each recomputes the scores and writes one window of v's
  columns. Three 64-wide windows instead of one 160-wide accumulator: three times the programs at half the
  registers, 5-40 % faster on those shapes (H100, torch 2.11, Triton 3.6; bench/NOTES_triton.md).
- On Intel XPU the tiles are read through tensor descriptors, which Triton-XPU lowers to 2-D block loads.
- Short key sequences (cross-attention's 77 text tokens) go to a second kernel, short_keys.py, built from this
  file's helpers: a Plan whose configuration has q_tiles > 0 launches it (configs.choose decides).
- Launch cost: Triton's launcher spends ~25 us of Python per call (Triton 3.6); `launch` calls the cached
  compiled kernel directly (~10 us) once it has checked that doing so writes the same bits.

The launcher (`Plan`, `launch`, `flash_attention`) is below the kernel.
"""
from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import Optional

import torch
import triton
import triton.language as tl

from ..env import env_flag
from . import configs

try:  # the interpreter (TRITON_INTERPRET=1) replaces @triton.jit functions by InterpretedFunction
    from triton.runtime.interpreter import InterpretedFunction
except Exception:  # noqa: BLE001
    InterpretedFunction = ()

LOG2E = 1.4426950408889634
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b. IEEE: exact fp32 products for fp32 inputs. UPCAST: the 3.9 interpreter multiplies bf16's
    raw bits, so there bf16 operands (already rounded to bf16) are multiplied as fp32."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _load(base, desc, r0, nrows, s_row, s_col, R: tl.constexpr, C: tl.constexpr, C0: tl.constexpr,
          D: tl.constexpr, CHECK_ROWS: tl.constexpr, USE_DESC: tl.constexpr):
    """Rows r0..r0+R, head-dim columns C0..C0+C of one (batch, head) matrix; rows >= nrows and columns >= D
    read as zero. Masks are emitted only where a constexpr says they can matter."""
    if USE_DESC:
        x = desc.load([r0, C0])  # out-of-bounds rows and columns come back as zero
    else:
        rows = r0 + tl.arange(0, R)
        cols = C0 + tl.arange(0, C)
        ptrs = base + rows[:, None] * s_row + cols[None, :] * s_col
        if CHECK_ROWS:
            if C0 + C > D:
                x = tl.load(ptrs, mask=(rows[:, None] < nrows) & (cols[None, :] < D), other=0.0)
            else:
                x = tl.load(ptrs, mask=rows[:, None] < nrows, other=0.0)
        else:
            if C0 + C > D:
                x = tl.load(ptrs, mask=cols[None, :] < D, other=0.0)
            else:
                x = tl.load(ptrs)
    return x


@triton.jit
def _store(base, desc, x, r0, nrows, s_row, s_col, R: tl.constexpr, C: tl.constexpr, C0: tl.constexpr,
           D: tl.constexpr, LO: tl.constexpr, USE_DESC: tl.constexpr):
    """Write an (R, C) tile at rows r0.., columns C0..; rows >= nrows and columns outside [LO, D) are left
    alone (LO > C0: the overlapping head of a tail tile, which the first part already stores)."""
    if USE_DESC and LO == C0:
        desc.store([r0, C0], x)
    else:
        rows = r0 + tl.arange(0, R)
        cols = C0 + tl.arange(0, C)
        ptrs = base + rows[:, None] * s_row + cols[None, :] * s_col
        if C0 + C > D:
            tl.store(ptrs, x, mask=(rows[:, None] < nrows) & (cols[None, :] < D))
        elif LO > C0:
            tl.store(ptrs, x, mask=(rows[:, None] < nrows) & (cols[None, :] >= LO))
        else:
            tl.store(ptrs, x, mask=rows[:, None] < nrows)


@triton.jit
def _scores(q0, q1, k_base, k0d, k1d, n0, Sk, s_ks, s_kd,
            D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, C1: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
            USE_DESC: tl.constexpr):
    """q k^T for keys n0..n0+BLOCK_N (unscaled, fp32); MASKED: keys >= Sk read as zero."""
    k0 = _load(k_base, k0d, n0, Sk, s_ks, s_kd, BLOCK_N, D0, 0, D, MASKED, USE_DESC)
    qk = _mma(q0, tl.trans(k0), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE, UPCAST)
    if D1 > 0:
        k1 = _load(k_base, k1d, n0, Sk, s_ks, s_kd, BLOCK_N, D1, C1, D, MASKED, USE_DESC)
        qk = _mma(q1, tl.trans(k1), qk, IEEE, UPCAST)
    return qk


@triton.jit
def _fold(acc0, acc1, m_i, l_i, qk, v_base, v0d, v1d, n0, row0, Sk, s_vs, s_vd, qk_scale,
          D: tl.constexpr, E0: tl.constexpr, E1: tl.constexpr, F1: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          MASKED: tl.constexpr, CAUSAL: tl.constexpr, SCALE_FIRST: tl.constexpr, EMPTY_ROWS: tl.constexpr,
          IEEE: tl.constexpr, UPCAST: tl.constexpr, USE_DESC: tl.constexpr):
    """Fold the scores qk of keys n0..n0+BLOCK_N into the running state. m_i is the running row maximum of
    the scaled scores in base 2, l_i the row sum of exp2(score - m_i). E0/E1/F1: the split of v's head."""
    if SCALE_FIRST:  # scale <= 0: scale before masking, so masked scores stay -inf
        qk = qk * qk_scale
    if MASKED:
        keys = n0 + tl.arange(0, BLOCK_N)
        keep = keys[None, :] < Sk
        if CAUSAL:
            keep = keep & (keys[None, :] <= (row0 + tl.arange(0, BLOCK_M))[:, None])
        qk = tl.where(keep, qk, float("-inf"))
    if SCALE_FIRST:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
    else:  # scale > 0: max(qk) * scale == max(qk * scale), and the scaling fuses into one FMA below
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    m_use = m_new
    if EMPTY_ROWS:  # a row that has seen only masked keys so far keeps max -inf: avoid -inf - -inf
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    if SCALE_FIRST:
        x = qk - m_use[:, None]
    else:
        x = qk * qk_scale - m_use[:, None]
    p = tl.math.exp2(x)
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    v0 = _load(v_base, v0d, n0, Sk, s_vs, s_vd, BLOCK_N, E0, 0, D, MASKED, USE_DESC)
    p = p.to(v0.dtype)
    acc0 = _mma(p, v0, acc0 * alpha[:, None], IEEE, UPCAST)
    if E1 > 0:
        v1 = _load(v_base, v1d, n0, Sk, s_vs, s_vd, BLOCK_N, E1, F1, D, MASKED, USE_DESC)
        acc1 = _mma(p, v1, acc1 * alpha[:, None], IEEE, UPCAST)
    return acc0, acc1, m_new, l_i


@triton.jit
def _attn_keys(acc0, acc1, m_i, l_i, q0, q1, k_base, v_base, k0d, k1d, v0d, v1d, lo, hi, row0, Sk,
               s_ks, s_kd, s_vs, s_vd, qk_scale,
               D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, C1: tl.constexpr,
               E0: tl.constexpr, E1: tl.constexpr, F1: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, SCALE_FIRST: tl.constexpr, EMPTY_ROWS: tl.constexpr,
               IEEE: tl.constexpr, UPCAST: tl.constexpr, USE_DESC: tl.constexpr):
    """Fold keys lo..hi (a multiple of BLOCK_N apart, except a final partial block) into the running state."""
    for n0 in range(lo, hi, BLOCK_N):
        qk = _scores(q0, q1, k_base, k0d, k1d, n0, Sk, s_ks, s_kd, D, D0, D1, C1, BLOCK_M, BLOCK_N, MASKED,
                     IEEE, UPCAST, USE_DESC)
        acc0, acc1, m_i, l_i = _fold(acc0, acc1, m_i, l_i, qk, v_base, v0d, v1d, n0, row0, Sk, s_vs, s_vd,
                                     qk_scale, D, E0, E1, F1, BLOCK_M, BLOCK_N, MASKED, CAUSAL, SCALE_FIRST,
                                     EMPTY_ROWS, IEEE, UPCAST, USE_DESC)
    return acc0, acc1, m_i, l_i


@triton.jit
def _finish(o_base, o0d, o1d, LSE, a0, a1, m, l, bh, row0, Sq, s_os, s_od,
            D: tl.constexpr, E0: tl.constexpr, E1: tl.constexpr, F1: tl.constexpr, BLOCK_M: tl.constexpr,
            WRITE_LSE: tl.constexpr, USE_DESC: tl.constexpr):
    """Store the rows' output a / l (both parts of v's split) in the caller's dtype, and their natural-log
    log-sum-exp from the base-2 maximum m and sum l."""
    inv = 1.0 / l
    _store(o_base, o0d, (a0 * inv[:, None]).to(o_base.dtype.element_ty), row0, Sq, s_os, s_od,
           BLOCK_M, E0, 0, D, 0, USE_DESC)
    if E1 > 0:
        _store(o_base, o1d, (a1 * inv[:, None]).to(o_base.dtype.element_ty), row0, Sq, s_os, s_od,
               BLOCK_M, E1, F1, D, E0, USE_DESC)
    if WRITE_LSE:
        offs_m = row0 + tl.arange(0, BLOCK_M)
        tl.store(LSE + bh.to(tl.int64) * Sq + offs_m, (m + tl.math.log2(l)) * _LN2, mask=offs_m < Sq)


@triton.jit(do_not_specialize=["qk_scale", "H", "Sq", "Sk"])
def _attn_fwd(Q, K, V, O, LSE, WS, WSL, LOCKS, qk_scale, H, Sq, Sk,
              s_qb, s_qh, s_qs, s_qd, s_kb, s_kh, s_ks, s_kd, s_vb, s_vh, s_vs, s_vd, s_ob, s_oh, s_os, s_od,
              D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, C1: tl.constexpr,
              E0: tl.constexpr, E1: tl.constexpr, F1: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WRITE_LSE: tl.constexpr,
              SPLITS: tl.constexpr, SCALE_FIRST: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
              USE_DESC: tl.constexpr, AL: tl.constexpr, VPARTS: tl.constexpr):
    # The launcher divides every batch/head/row stride by AL (their common alignment, 16 bytes' worth of
    # elements when it divides them all). Multiplying back by a constant lets the compiler prove that tile rows
    # start 16-byte aligned, so it emits vector / cp.async loads: a head stride of 40 or a row stride of 360
    # is not divisible by 16, which is all Triton's argument specialisation looks at.
    s_qb, s_qh, s_qs = s_qb * AL, s_qh * AL, s_qs * AL
    s_kb, s_kh, s_ks = s_kb * AL, s_kh * AL, s_ks * AL
    s_vb, s_vh, s_vs = s_vb * AL, s_vh * AL, s_vs * AL
    s_ob, s_oh, s_os = s_ob * AL, s_oh * AL, s_os * AL
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row0 = tile * BLOCK_M
    q_base = Q + b * s_qb + h * s_qh
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    o_base = O + b * s_ob + h * s_oh
    if VPARTS > 1:
        # This program writes output columns voff..voff+E0 only (grid axis 2 picks the window; the last one
        # overlaps the one before and writes the same values there). Each part recomputes the scores and the
        # softmax: on grids that leave SMs idle, a narrower accumulator is worth more than that work.
        voff = tl.minimum(split * E0, D - E0)
        v_base += voff * s_vd
        o_base += voff * s_od

    # Tensor descriptors (XPU: 2-D block loads). The pointer path passes the bases as unused stand-ins.
    q0d, q1d, k0d, k1d, v0d, v1d, o0d, o1d = q_base, q_base, k_base, k_base, v_base, v_base, o_base, o_base
    if USE_DESC:
        q0d = tl.make_tensor_descriptor(q_base, shape=[Sq, D], strides=[s_qs, 1], block_shape=[BLOCK_M, D0])
        k0d = tl.make_tensor_descriptor(k_base, shape=[Sk, D], strides=[s_ks, 1], block_shape=[BLOCK_N, D0])
        v0d = tl.make_tensor_descriptor(v_base, shape=[Sk, D], strides=[s_vs, 1], block_shape=[BLOCK_N, E0])
        o0d = tl.make_tensor_descriptor(o_base, shape=[Sq, D], strides=[s_os, 1], block_shape=[BLOCK_M, E0])
        if D1 > 0:
            q1d = tl.make_tensor_descriptor(q_base, shape=[Sq, D], strides=[s_qs, 1], block_shape=[BLOCK_M, D1])
            k1d = tl.make_tensor_descriptor(k_base, shape=[Sk, D], strides=[s_ks, 1], block_shape=[BLOCK_N, D1])
        if E1 > 0:
            v1d = tl.make_tensor_descriptor(v_base, shape=[Sk, D], strides=[s_vs, 1], block_shape=[BLOCK_N, E1])
            o1d = tl.make_tensor_descriptor(o_base, shape=[Sq, D], strides=[s_os, 1], block_shape=[BLOCK_M, E1])

    # The keys this program folds in: all (causal: up to the tile's last row), or its split's share.
    hi = Sk
    if CAUSAL:
        hi = tl.minimum(Sk, row0 + BLOCK_M)
    lo = 0
    if SPLITS > 1:
        per = tl.cdiv(tl.cdiv(hi, BLOCK_N), SPLITS) * BLOCK_N
        lo = tl.minimum(split * per, hi)
        hi = tl.minimum(lo + per, hi)
    # keys below `mid` need no mask: inside the sequence and (causal) visible to every row of the tile
    full_end = hi
    if CAUSAL:
        full_end = tl.minimum(hi, row0 + 1)
    mid = lo + tl.maximum(full_end - lo, 0) // BLOCK_N * BLOCK_N

    q0 = _load(q_base, q0d, row0, Sq, s_qs, s_qd, BLOCK_M, D0, 0, D, True, USE_DESC)
    acc0 = tl.zeros([BLOCK_M, E0], tl.float32)
    q1 = q0  # stand-ins when the head has no tail
    acc1 = acc0
    if D1 > 0:
        q1 = _load(q_base, q1d, row0, Sq, s_qs, s_qd, BLOCK_M, D1, C1, D, True, USE_DESC)
        if C1 < D0:  # the tail window overlaps the first part: count those columns once in the scores
            q1 = tl.where((C1 + tl.arange(0, D1))[None, :] >= D0, q1, 0.0)
    if E1 > 0:
        acc1 = tl.zeros([BLOCK_M, E1], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)

    acc0, acc1, m_i, l_i = _attn_keys(acc0, acc1, m_i, l_i, q0, q1, k_base, v_base, k0d, k1d, v0d, v1d,
                                      lo, mid, row0, Sk, s_ks, s_kd, s_vs, s_vd, qk_scale,
                                      D, D0, D1, C1, E0, E1, F1, BLOCK_M, BLOCK_N, False, CAUSAL, SCALE_FIRST,
                                      SPLITS > 1, IEEE, UPCAST, USE_DESC)
    acc0, acc1, m_i, l_i = _attn_keys(acc0, acc1, m_i, l_i, q0, q1, k_base, v_base, k0d, k1d, v0d, v1d,
                                      mid, hi, row0, Sk, s_ks, s_kd, s_vs, s_vd, qk_scale,
                                      D, D0, D1, C1, E0, E1, F1, BLOCK_M, BLOCK_N, True, CAUSAL, SCALE_FIRST,
                                      SPLITS > 1, IEEE, UPCAST, USE_DESC)

    offs_m = row0 + tl.arange(0, BLOCK_M)
    if SPLITS == 1:
        _finish(o_base, o0d, o1d, LSE, acc0, acc1, m_i, l_i, bh, row0, Sq, s_os, s_od,
                D, E0, E1, F1, BLOCK_M, WRITE_LSE, USE_DESC)
    else:
        # Partial result of this split: normalised output and its log2-sum-exp (-inf for a split with no keys).
        rmask = offs_m < Sq
        ws_row = (split * tl.num_programs(1) + bh).to(tl.int64) * Sq + offs_m
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        tl.store(WS + ws_row[:, None] * (E0 + E1) + tl.arange(0, E0)[None, :], acc0 / l_safe[:, None],
                 mask=rmask[:, None])
        if E1 > 0:
            tl.store(WS + ws_row[:, None] * (E0 + E1) + E0 + tl.arange(0, E1)[None, :], acc1 / l_safe[:, None],
                     mask=rmask[:, None])
        tl.store(WSL + ws_row, m_i + tl.math.log2(l_i), mask=rmask)
        # Everyone's partial is stored before the ticket is taken (barrier, then a release/acquire atomic).
        tl.debug_barrier()
        lock = LOCKS + bh * tl.num_programs(0) + tile
        ticket = tl.atomic_add(lock, 1, sem="acq_rel")
        if ticket == SPLITS - 1:  # the last split of this tile merges all partials
            row_s = bh.to(tl.int64) * Sq + offs_m
            stride_s = tl.num_programs(1).to(tl.int64) * Sq
            m = tl.full([BLOCK_M], float("-inf"), tl.float32)
            for s in tl.static_range(SPLITS):
                m = tl.maximum(m, tl.load(WSL + s * stride_s + row_s, mask=rmask, other=float("-inf"),
                                          volatile=True))
            m = tl.where(m == float("-inf"), 0.0, m)
            den = tl.zeros([BLOCK_M], tl.float32)
            o0 = tl.zeros([BLOCK_M, E0], tl.float32)
            o1 = o0
            if E1 > 0:
                o1 = tl.zeros([BLOCK_M, E1], tl.float32)
            for s in tl.static_range(SPLITS):
                rows = s * stride_s + row_s
                w = tl.math.exp2(tl.load(WSL + rows, mask=rmask, other=float("-inf"), volatile=True) - m)
                den += w
                o0 += w[:, None] * tl.load(WS + rows[:, None] * (E0 + E1) + tl.arange(0, E0)[None, :],
                                           mask=rmask[:, None], other=0.0, volatile=True)
                if E1 > 0:
                    o1 += w[:, None] * tl.load(WS + rows[:, None] * (E0 + E1) + E0 + tl.arange(0, E1)[None, :],
                                               mask=rmask[:, None], other=0.0, volatile=True)
            _finish(o_base, o0d, o1d, LSE, o0, o1, m, den, bh, row0, Sq, s_os, s_od,
                    D, E0, E1, F1, BLOCK_M, WRITE_LSE, USE_DESC)
            tl.atomic_xchg(lock, 0)  # ready for the next launch


# ------------------------------------------------------------------------------------------------- launcher

def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 when this module loaded)."""
    return bool(InterpretedFunction) and isinstance(_attn_fwd, InterpretedFunction)


def head_split(D: int, irregular: bool = True) -> tuple:
    """(D0, D1): a power of two plus a small power-of-two tail (0 = none) covering D with the fewest lanes.
    (The short-keys kernel splits its key count the same way: 77 keys -> 64 + 16, 154 -> 128 + 32.)
    irregular=False allows only tails that end exactly at D (48 = 32+16, 80 = 64+16, 160 = 128+32); others
    (40, 72) are padded to a power of two instead."""
    full = max(16, 1 << (D - 1).bit_length())
    if D <= 16:
        return 16, 0
    d0 = 1 << (D.bit_length() - 1)
    rest = D - d0
    if rest == 0:
        return d0, 0
    d1 = max(16, 1 << (rest - 1).bit_length())
    if d0 + d1 >= full or (not irregular and d0 + d1 != D):
        return full, 0
    return d0, d1


def _heads(head: tuple, D: int) -> tuple:
    """(D0, D1, E0, E1) from a head spec: (D0, D1) splits q/k and v/out alike; (D0, D1, E0, E1) gives v and the
    output their own (a padded single part for v can beat two narrow products on Hopper). Each pair must be a
    power of two >= 16 plus a power-of-two tail >= 16 (or 0) no wider than D, together covering D."""
    head = tuple(int(x) for x in head)
    if len(head) not in (2, 4):
        raise ValueError(f"head split {head}: give (D0, D1) or (D0, D1, E0, E1)")
    full = head if len(head) == 4 else head + head
    for a, b in (full[:2], full[2:]):
        pow2 = lambda x: x >= 16 and x & (x - 1) == 0  # noqa: E731
        if not pow2(a) or not (b == 0 or (pow2(b) and b <= D)) or a + b < D:
            raise ValueError(f"head split {head} does not cover head dim {D} with power-of-two parts >= 16")
    return full


class Plan:
    """Everything about a launch that depends only on the call's signature, computed once."""

    __slots__ = ("grid", "kwargs", "kwargs_scale_first", "kwargs_al", "kwargs_al_scale_first", "align", "config",
                 "splits", "D0", "D1", "E0", "E1", "ws_shape", "lock_n", "device", "device_index", "fast", "verified",
                 "vparts", "short", "q_tiles", "kernel", "consts")

    def __init__(self, device: torch.device, dtype: torch.dtype, B: int, H: int, Sq: int, Sk: int, D: int, *,
                 causal: bool, want_lse: bool, config: Optional[configs.TileConfig] = None,
                 splits: Optional[int] = None, use_descriptors: Optional[bool] = None, head: Optional[tuple] = None):
        info = configs.device_info(device.type, device.index or 0, interpreted())
        # `head` overrides the split: (D0, D1) for q/k and v/out alike, or (D0, D1, E0, E1) with v/out's own
        explicit = head is not None
        if head is None:
            d = head_split(D, configs.irregular_tail(info))
            head = d + configs.value_head(info, D, d)
        self.D0, self.D1, self.E0, self.E1 = _heads(head, D)
        # Calls whose strides are not 16-byte aligned get their own variant: on CUDA one power-of-two part and no
        # tail (Triton 3.6 miscompiled tail dots fed by unaligned loads on Hopper; bench/NOTES_triton.md).
        d0u, d1u = (max(16, 1 << (D - 1).bit_length()), 0) if info.family in ("sm90", "cuda") else (self.D0, self.D1)
        if config is None:
            config, auto_splits, tuned_head = configs.choose(
                info, head_pad=max(self.D0 + self.D1, self.E0 + self.E1), BH=B * H, Sq=Sq, Sk=Sk, causal=causal, D=D)
            splits = auto_splits if splits is None else splits
            if tuned_head is not None and not explicit:
                self.D0, self.D1, self.E0, self.E1 = _heads(tuned_head, D)
        splits = max(1, int(splits or 1))
        use_desc = info.use_descriptors if use_descriptors is None else use_descriptors
        # the short-keys kernel (kernels/short_keys.py): every key at once, q_tiles query tiles per program
        self.short = config.q_tiles > 0 and not causal and 1 <= Sk <= configs.SHORT_KEYS_MAX
        self.q_tiles = config.q_tiles if self.short else 0
        if self.short:
            splits = 1
        # output column windows per (tile, batch, head): config.value_parts, not with key splits or descriptors
        vparts, window = 1, 0
        if config.value_parts > 1 and splits == 1 and not use_desc and not self.short:
            window = max(16, 1 << (-(-D // config.value_parts) - 1).bit_length())
            vparts = -(-D // window) if window < D else 1
        if vparts > 1:
            self.E0, self.E1 = window, 0
        self.config, self.splits, self.vparts, self.device = config, splits, vparts, device
        self.grid = (triton.cdiv(Sq, config.block_m), B * H, splits * vparts)
        if self.short:
            self.grid = (triton.cdiv(self.grid[0], self.q_tiles), B * H, 1)
        self.ws_shape = (splits, B * H, Sq, max(self.E0 + self.E1, d0u + d1u)) if splits > 1 else None
        self.lock_n = self.grid[0] * self.grid[1]
        interp = interpreted()
        def tail_start(d0, d1):
            # the tail window: the last d1 columns of the head when d0 + d1 > D (no column masks), else after d0
            return D - d1 if (d1 and d0 + d1 > D) else d0
        common = dict(D=D, BLOCK_M=config.block_m, WRITE_LSE=bool(want_lse), IEEE=dtype == torch.float32,
                      UPCAST=interp and dtype == torch.bfloat16, USE_DESC=bool(use_desc),
                      **({} if interp else config.options()))
        if self.short:
            from . import short_keys
            n0, n1 = head_split(Sk)  # the keys split like a head: 77 -> 64 + 16 score columns
            common.update(N0=n0, N1=n1, MASK0=n1 == 0 and n0 > Sk)
            self.kernel, self.consts, scale_first = short_keys._attn_short_fwd, short_keys.CONSTS, {}
        else:
            common.update(BLOCK_N=config.block_n, CAUSAL=bool(causal), VPARTS=vparts, SPLITS=splits, SCALE_FIRST=False)
            self.kernel, self.consts, scale_first = _attn_fwd, _CONSTS, {"SCALE_FIRST": True}
        # unaligned strides: AL = 1
        eu = (window, 0) if vparts > 1 else (d0u, d1u)
        self.kwargs = dict(common, D0=d0u, D1=d1u, C1=tail_start(d0u, d1u), E0=eu[0], E1=eu[1],
                           F1=tail_start(*eu), AL=1)
        self.kwargs_scale_first = dict(self.kwargs, **scale_first)
        # strides that are all multiples of 16 bytes' worth of elements are passed divided (see the kernel)
        self.align = 16 // torch.tensor([], dtype=dtype).element_size()
        self.kwargs_al = dict(common, D0=self.D0, D1=self.D1, C1=tail_start(self.D0, self.D1), E0=self.E0,
                              E1=self.E1, F1=tail_start(self.E0, self.E1), AL=self.align)
        self.kwargs_al_scale_first = dict(self.kwargs_al, **scale_first)
        # direct launches of the cached compiled kernel (not in the interpreter, not for tensor-descriptor
        # kernels, whose global scratch only Triton's launcher allocates; ARCATTN_TRITON_FAST_LAUNCH=0: off)
        self.fast = (None if interp or use_desc or not env_flag("ARCATTN_TRITON_FAST_LAUNCH", True)
                     else {})
        self.device_index = device.index if device.index is not None else 0
        self.verified = False

    @property
    def heads(self) -> tuple:
        """(D0, D1, E0, E1): the head split of this plan's aligned-stride kernel."""
        return self.D0, self.D1, self.E0, self.E1

    def describe(self) -> str:
        return (f"{replace(self.config, q_tiles=self.q_tiles).short()} splits={self.splits} head={self.D0}+{self.D1}"
                + (f" v={self.E0}+{self.E1}" if (self.E0, self.E1) != (self.D0, self.D1) else "")
                + (f" vparts={self.vparts}" if self.vparts > 1 else "")
                + (" desc" if self.kwargs["USE_DESC"] else ""))


_locks: dict = {}
_locks_guard = threading.Lock()


def _lock_buffer(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed per-tile counters for split launches; each launch leaves them at zero again. One buffer per
    (device, stream), so that launches on different streams never share counters."""
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device).cuda_stream
    elif device.type == "xpu":
        stream = torch.xpu.current_stream(device).sycl_queue
    else:
        stream = 0
    key = (device, stream)
    buf = _locks.get(key)
    if buf is None or buf.numel() < n:
        with _locks_guard:
            buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
            _locks[key] = buf
    return buf


def _aligned(al: int, sq: tuple, sk: tuple, sv: tuple, so: tuple) -> bool:
    return not any(x % al for x in (sq[0], sq[1], sq[2], sk[0], sk[1], sk[2], sv[0], sv[1], sv[2], so[0], so[1], so[2]))


def launch(plan: Plan, q, k, v, out, lse, sq: tuple, sk: tuple, sv: tuple, so: tuple, scale: float,
           H: int, Sq: int, Sk: int) -> None:
    """Run the kernel. q/k/v/out are the caller's tensors, sq..so their (batch, head, seq, dim) strides."""
    al = plan.align
    if al > 1 and _aligned(al, sq, sk, sv, so):
        kw = plan.kwargs_al if scale > 0 else plan.kwargs_al_scale_first
        sq = (sq[0] // al, sq[1] // al, sq[2] // al, sq[3])
        sk = (sk[0] // al, sk[1] // al, sk[2] // al, sk[3])
        sv = (sv[0] // al, sv[1] // al, sv[2] // al, sv[3])
        so = (so[0] // al, so[1] // al, so[2] // al, so[3])
    else:
        kw = plan.kwargs if scale > 0 else plan.kwargs_scale_first
    if plan.splits > 1:
        ws = torch.empty(plan.ws_shape, dtype=torch.float32, device=out.device)
        wsl = torch.empty(plan.ws_shape[:3], dtype=torch.float32, device=out.device)
        locks = _lock_buffer(out.device, plan.lock_n)
    else:
        ws = wsl = locks = out
    if plan.short:
        args = (q, k, v, out, out if lse is None else lse, scale * LOG2E, H, Sq, Sk, plan.q_tiles,
                *sq, *sk, *sv, *so)
    else:
        args = (q, k, v, out, out if lse is None else lse, ws, wsl, locks, scale * LOG2E, H, Sq, Sk,
                *sq, *sk, *sv, *so)
    if kw["USE_DESC"] and not interpreted():
        _ensure_allocator(out.device)
    fast = plan.fast
    if fast is not None:
        # Triton specialises on pointer alignment and on strides (== 1, % 16): same strides and alignments,
        # same compiled kernel, which can then be called without Triton's per-launch argument processing
        key = (id(kw), sq, sk, sv, so, q.data_ptr() & 15, k.data_ptr() & 15, v.data_ptr() & 15, out.data_ptr() & 15)
        entry = fast.get(key)
        if entry is not None:
            ck, consts = entry
            ck.run(plan.grid[0], plan.grid[1], plan.grid[2], _stream(plan.device_index), ck.function,
                   ck.packed_metadata, None, None, None, *args, *consts)
            return
        ck = plan.kernel[plan.grid](*args, **kw)
        _remember_fast(plan, key, ck, kw, args, out)
        return
    plan.kernel[plan.grid](*args, **kw)


def _ensure_allocator(device: torch.device) -> None:
    """Tensor descriptors can need a global scratch buffer, which Triton takes from the allocator set for the
    current thread (a ContextVar: a host's sampling thread starts without one). Install a torch-backed one where
    none is set; never replace one that someone else set."""
    try:
        from triton.runtime import _allocation
        if _allocation._allocator.get() is not _allocation._NULL_ALLOCATOR:
            return
    except Exception:  # noqa: BLE001 - private API moved: set ours once per thread
        if getattr(_alloc_local, "done", False):
            return
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device))
    _alloc_local.done = True


_alloc_local = threading.local()

_CONSTS = ("D", "D0", "D1", "C1", "E0", "E1", "F1", "BLOCK_M", "BLOCK_N", "CAUSAL", "WRITE_LSE", "SPLITS",
           "SCALE_FIRST", "IEEE", "UPCAST", "USE_DESC", "AL", "VPARTS")  # the kernel's constexpr parameters, in order
_fast_launch_ok: Optional[bool] = None  # None: not checked yet in this process


def _stream(index: int):
    from triton.runtime import driver
    return driver.active.get_current_stream(index)


def _hooks_set() -> bool:
    """A profiler's launch hooks need Triton's own launch path. (Triton 3.6 keeps empty HookChains there.)"""
    try:
        from triton import knobs
        hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    except Exception:  # noqa: BLE001
        return True
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


def _remember_fast(plan: "Plan", key: tuple, ck, kw: dict, args: tuple, out: torch.Tensor) -> None:
    """Keep the compiled kernel for direct launches, after checking once per process that a direct launch
    writes exactly what the standard one wrote (any doubt: stay on the standard path)."""
    global _fast_launch_ok
    if ck is None or _hooks_set() or len(plan.fast) > 64 or _fast_launch_ok is False:
        return
    consts = tuple(kw[n] for n in plan.consts)
    if _fast_launch_ok is None and plan.splits == 1:
        try:
            ref = out.clone()
            scratch = torch.full_like(out, float("nan"))
            args2 = args[:3] + (scratch,) + args[4:]
            ck.run(plan.grid[0], plan.grid[1], plan.grid[2], _stream(plan.device_index), ck.function,
                   ck.packed_metadata, None, None, None, *args2, *consts)
            _fast_launch_ok = bool(torch.equal(scratch, ref))
        except Exception:  # noqa: BLE001 - another Triton's launcher: use the standard path
            _fast_launch_ok = False
        if not _fast_launch_ok:
            import logging
            logging.getLogger("arcattn").info("triton: direct kernel launch unavailable here; using Triton's launcher")
            return
    if _fast_launch_ok:
        plan.fast[key] = (ck, consts)


def descriptors_ok(tensors_and_strides, element_size: int) -> bool:
    """Tensor descriptors need a contiguous head dim and 16-byte aligned bases and row/head/batch strides."""
    for t, s in tensors_and_strides:
        if s[3] != 1 or t.data_ptr() % 16:
            return False
        if any((x * element_size) % 16 for x in s[:3]):
            return False
    return True


def flash_attention(q4: torch.Tensor, k4: torch.Tensor, v4: torch.Tensor, *, scale: Optional[float] = None,
                    causal: bool = False, return_lse: bool = False, out4: Optional[torch.Tensor] = None,
                    config: Optional[configs.TileConfig] = None, splits: Optional[int] = None,
                    use_descriptors: Optional[bool] = None, head: Optional[tuple] = None):
    """Attention on (B, H, S, D) tensors of any strides (tests, benchmarks). Writes into `out4` when given.
    Returns out4, or (out4, lse) with lse fp32 (B, H, Sq)."""
    B, H, Sq, D = q4.shape
    Sk = k4.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if out4 is None:
        out4 = torch.empty((B, H, Sq, v4.shape[3]), dtype=q4.dtype, device=q4.device)
    lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q4.device) if return_lse else None
    if use_descriptors is None:
        info = configs.device_info(q4.device.type, q4.device.index or 0, interpreted())
        use_descriptors = info.use_descriptors and descriptors_ok(
            [(t, t.stride()) for t in (q4, k4, v4, out4)], q4.element_size())
    plan = Plan(q4.device, q4.dtype, B, H, Sq, Sk, D, causal=causal, want_lse=return_lse, config=config,
                splits=splits, use_descriptors=use_descriptors, head=head)
    launch(plan, q4, k4, v4, out4, lse, q4.stride(), k4.stride(), v4.stride(), out4.stride(), float(scale),
           H, Sq, Sk)
    return (out4, lse) if return_lse else out4
