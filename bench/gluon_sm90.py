"""Experiment (issue 5, not part of the plugin): a Hopper-only flash-attention forward in Gluon, Triton 3.6's
explicit layer, timed beside cuDNN and arcattn's Triton kernel.

    OUT=... python3 bench/gluon_sm90.py        (sm_90; each variant in its own process)

The question: can wgmmas scheduled by hand beat cuDNN on SD's big self-attentions, where arcattn's Triton
kernel trails it? (bench/NOTES_triton.md, visits 57-61: no; results in bench/results/gluon_visit5*_h100.)

What Gluon lets this kernel do that the Triton kernel cannot:
- the scores of key block j and the P @ V product of block j - 1 are issued back to back, asynchronously,
  and the softmax of block j waits for the first only, so the second can run under the softmax (FA3's
  intra-warpgroup overlap, with the waits placed by hand; OVERLAP=False waits for both, for comparison);
- K and V tiles arrive by TMA into a ring of STAGES slots, each with its own barrier; a slot is refilled as
  soon as the product that read it has retired.
What it found (H100, Triton 3.6's ptxas): with P in registers ptxas moves the wait for P @ V up to the start of
the softmax, so the overlap is mostly lost (serial vs overlapped: 0-2 %); with P through shared memory
(P_SMEM) the softmax does run under P @ V, but the round trip costs more than that gains (5-15 % slower).
Register tensors must have power-of-two shapes, so a 40-wide head pads to 64 (the Triton kernel uses 32 + 16).

The head is padded to DP columns by loading a DP-wide box: q's columns past D are zeroed once in shared memory,
so k's and v's extra columns (the next head's, or TMA's zero fill past the last head) add nothing to the scores,
and the output's extra columns are never stored. Inputs: contiguous (B, S, H, D) fp16/bf16 CUDA tensors.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from arcattn.bench import graph_us, sample_us  # noqa: E402


@gluon.jit
def _softmax_block(s, m_i, l_i, j, Sk, qk_scale, s_layout: gl.constexpr, BN: gl.constexpr, EVEN_K: gl.constexpr):
    if not EVEN_K:
        cols = j * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        s = gl.where(gl.expand_dims(cols < Sk, 0), s, -float("inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _as_operand(p, p_op: gl.constexpr, DT: gl.constexpr):
    return gl.convert_layout(p.to(DT), p_op)


@gluon.jit
def _load_kv(k_desc, v_desc, k_smem, v_smem, bars, slot, row, col, pred):
    bar = bars.index(slot)
    mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(k_desc, [row, col], bar, k_smem.index(slot), pred=pred)
    tma.async_copy_global_to_shared(v_desc, [row, col], bar, v_smem.index(slot), pred=pred)


@gluon.jit
def _attn_fwd_sm90(q_desc, k_desc, v_desc, O, s_ob, s_os, s_oh, Sq, Sk, H, qk_scale,
                   D: gl.constexpr, DP: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                   STAGES: gl.constexpr, EVEN_K: gl.constexpr, P_SMEM: gl.constexpr, OVERLAP: gl.constexpr,
                   num_warps: gl.constexpr):
    DT: gl.constexpr = q_desc.dtype
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    q_row = b * Sq + pid_m * BM
    k_row = b * Sk
    col = h * D

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BN, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, DP, 16])
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    q_smem = gl.allocate_shared_memory(DT, [BM, DP], q_desc.layout)
    k_smem = gl.allocate_shared_memory(DT, [STAGES, BN, DP], k_desc.layout)
    v_smem = gl.allocate_shared_memory(DT, [STAGES, BN, DP], v_desc.layout)
    if P_SMEM:  # P @ V reads P from shared memory (two buffers: one being read, one being written)
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BN], DT)
        p_smem = gl.allocate_shared_memory(DT, [2, BM, BN], p_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_bars.index(i), count=1)

    n_blocks = gl.cdiv(Sk, BN)
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, col], q_bar, q_smem)
    for i in gl.static_range(STAGES):
        _load_kv(k_desc, v_desc, k_smem, v_smem, kv_bars, i, k_row + i * BN, col, i < n_blocks)

    mbarrier.wait(q_bar, 0)
    if DP > D:  # zero q's columns past the head once: k's extra columns then count for nothing
        q_blk: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [num_warps, 1], [1, 0])
        qv = q_smem.load(q_blk)
        dcol = gl.arange(0, DP, layout=gl.SliceLayout(0, q_blk))
        qv = gl.where(gl.expand_dims(dcol < D, 0), qv, gl.zeros_like(qv))
        gl.thread_barrier()
        q_smem.store(qv)
        fence_async_shared()
        gl.thread_barrier()

    m_i = gl.full([BM], -float("inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.full([BM], 0.0, gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BM, DP], gl.float32, o_layout)
    s_zero = gl.zeros([BM, BN], gl.float32, s_layout)

    mbarrier.wait(kv_bars.index(0), 0)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s, ))
    p, m_i, l_i, alpha = _softmax_block(s, m_i, l_i, 0, Sk, qk_scale, s_layout, BN, EVEN_K)
    if P_SMEM:
        p_smem.index(0).store(p.to(DT))
        fence_async_shared()
        gl.thread_barrier()
        p = gl.zeros([BM, BN], DT, p_op)  # unused placeholder, keeps the loop's values uniform
    else:
        p = _as_operand(p, p_op, DT)
    for j in range(1, n_blocks):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(kv_bars.index(slot), (j // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        if P_SMEM:
            acc = warpgroup_mma(p_smem.index((j - 1) % 2), v_smem.index(prev), acc, is_async=True)
        else:
            acc = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
        if OVERLAP:
            s = warpgroup_mma_wait(1, deps=(s, ))  # the scores only: P @ V runs on under this block's softmax
        else:
            acc, s = warpgroup_mma_wait(0, deps=(acc, s))
        p_new, m_i, l_i, alpha = _softmax_block(s, m_i, l_i, j, Sk, qk_scale, s_layout, BN, EVEN_K)
        if P_SMEM:
            p_smem.index(j % 2).store(p_new.to(DT))
        # p_new and l_i pass through the wait, and P is packed to 16 bits only after it, to keep the wait
        # behind the softmax; ptxas (Triton 3.6) still places it at the softmax's start when P @ V reads P
        # from registers, and after the softmax only when it reads P from shared memory (visit 59).
        acc, p, p_new, l_i = warpgroup_mma_wait(0, deps=(acc, p, p_new, l_i))
        nxt = j - 1 + STAGES
        _load_kv(k_desc, v_desc, k_smem, v_smem, kv_bars, prev, k_row + nxt * BN, col, nxt < n_blocks)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
        if P_SMEM:
            fence_async_shared()
            gl.thread_barrier()
        else:
            p = _as_operand(p_new, p_op, DT)
    if P_SMEM:
        acc = warpgroup_mma(p_smem.index((n_blocks - 1) % 2), v_smem.index((n_blocks - 1) % STAGES), acc,
                            is_async=True)
    else:
        acc = warpgroup_mma(p, v_smem.index((n_blocks - 1) % STAGES), acc, is_async=True)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    acc = acc / gl.expand_dims(gl.convert_layout(l_i, row_o), 1)

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(kv_bars.index(i))

    out_l: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [num_warps, 1], [1, 0])
    o = gl.convert_layout(acc.to(DT), out_l)
    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, out_l))
    dcol = gl.arange(0, DP, layout=gl.SliceLayout(0, out_l))
    ptrs = O + b * s_ob + h * s_oh + gl.expand_dims(rows, 1) * s_os + gl.expand_dims(dcol, 0)
    gl.store(ptrs, o, mask=gl.expand_dims(rows < Sq, 1) & gl.expand_dims(dcol < D, 0))


_GL_DT = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def pad_dim(D: int) -> int:
    """Register tensors need power-of-two shapes: 40 -> 64, 80 -> 128."""
    return max(16, 1 << (D - 1).bit_length())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              BM: int = 64, BN: int = 128, STAGES: int = 3, DP: int | None = None, num_warps: int = 4,
              p_smem: bool = False, overlap: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for contiguous (B, S, H, D) fp16/bf16 CUDA tensors on sm_90."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    for t in (q, k, v):
        if not t.is_contiguous() or t.dtype not in _GL_DT:
            raise ValueError("attention: contiguous (B, S, H, D) fp16/bf16 tensors only")
    DP = DP or pad_dim(D)
    dt = _GL_DT[q.dtype]
    q2, k2, v2 = (t.view(t.shape[0] * t.shape[1], H * D) for t in (q, k, v))
    ql = gl.NVMMASharedLayout.get_default_for([BM, DP], dt)
    kl = gl.NVMMASharedLayout.get_default_for([BN, DP], dt)
    qd = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [BM, DP], ql)
    kd = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [BN, DP], kl)
    vd = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [BN, DP], kl)
    o = torch.empty_like(q) if out is None else out
    qk_scale = (scale if scale is not None else 1.0 / math.sqrt(D)) * 1.4426950408889634
    grid = (-(-Sq // BM), B * H)
    _attn_fwd_sm90[grid](qd, kd, vd, o, o.stride(0), o.stride(1), o.stride(2), Sq, Sk, H, qk_scale,
                         D=D, DP=DP, BM=BM, BN=BN, STAGES=STAGES, EVEN_K=(Sk % BN == 0), P_SMEM=p_smem,
                         OVERLAP=overlap, num_warps=num_warps)
    return o


# ---- one GPU visit: correctness against float64 and kernel time beside cuDNN, flash and arcattn's Triton ----
SHAPES = {  # name: (B, S, H, D)
    "sd15 in1 self B2": (2, 4096, 8, 40), "sd15 in1 self B1": (1, 4096, 8, 40),
    "sdxl in2 self B2": (2, 4096, 10, 64), "sdxl in3 self B2": (2, 1024, 20, 64),
    "sdxl in3 self B1": (1, 1024, 20, 64), "sdxl in2 self B1": (1, 4096, 10, 64),
    "odd keys 1000x1000": (1, 1000, 4, 64),  # a partial key block and a partial query tile
}
VARIANTS = {  # name: (BM, BN, STAGES, num_warps, P through shared memory, P @ V overlapped with the softmax)
    "m64n128s3w4": (64, 128, 3, 4, False, True), "m64n64s3w4": (64, 64, 3, 4, False, True),
    "m128n64s3w8": (128, 64, 3, 8, False, True), "m64n64s3w4-serial": (64, 64, 3, 4, False, False),
    "m64n64s3w4-psmem": (64, 64, 3, 4, True, True), "m64n64s2w4-psmem": (64, 64, 2, 4, True, True),
    "m64n64s4w4-psmem": (64, 64, 4, 4, True, True), "m64n128s2w4-psmem": (64, 128, 2, 4, True, True),
    "m128n64s3w8-psmem": (128, 64, 3, 8, True, True), "m128n64s2w8-psmem": (128, 64, 2, 8, True, True),
}


def _time(fn, reps: int = 50, rounds: int = 3) -> float:
    """Per-call device time: `reps` calls in one CUDA graph, median of `rounds` replays (no host cost); eager
    back-to-back calls where capture fails."""
    dev = torch.device("cuda")
    us = graph_us(fn, dev, calls=reps, replays=rounds)
    if us is None:
        us = statistics.median(sample_us(lambda i: fn(), dev, reps, warm=3) for _ in range(rounds))
    return us


def _inputs(shape, seed=0):
    B, S, H, D = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, S, H, D, device="cuda", dtype=torch.float16, generator=g) for _ in range(3)]


def _rel_err(out, q, k, v):
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    return ((out.double() - ref).norm() / ref.norm()).item()


def _child(which: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for name, shape in SHAPES.items():
        q, k, v = _inputs(shape)
        row = {"variant": which, "shape": name}
        try:
            if which in VARIANTS:
                BM, BN, ST, W, PS, OV = VARIANTS[which]
                kw = dict(BM=BM, BN=BN, STAGES=ST, num_warps=W, p_smem=PS, overlap=OV)
                o = torch.full_like(q, float("nan"))
                attention(q, k, v, out=o, **kw)
                torch.cuda.synchronize()
                row["err"] = _rel_err(o, q, k, v)
                row["us"] = _time(lambda: attention(q, k, v, out=o, **kw))
            elif which in ("cudnn", "flash"):
                be = SDPBackend.CUDNN_ATTENTION if which == "cudnn" else SDPBackend.FLASH_ATTENTION
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                with sdpa_kernel([be]):
                    f = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)  # noqa: E731
                    o = f()
                    row["us"] = _time(f)
                row["err"] = _rel_err(o.transpose(1, 2), q, k, v)
            elif which == "triton":
                from arcattn.kernels import flash
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                o4 = torch.full_like(qt, float("nan"))
                f = lambda: flash.flash_attention(qt, kt, vt, out4=o4)  # noqa: E731
                f()
                row["err"] = _rel_err(o4.transpose(1, 2), q, k, v)
                row["us"] = _time(f)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        print("ROW " + json.dumps(row), flush=True)


def main() -> None:
    import triton
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
          "cudnn", torch.backends.cudnn.version(), flush=True)
    order = ["cudnn", "triton"] + list(VARIANTS) + ["cudnn", "triton"]
    rows = []
    for which in order:
        r = subprocess.run([sys.executable, __file__, "--child", which], capture_output=True, text=True,
                           timeout=240)
        got = [json.loads(x[4:]) for x in r.stdout.splitlines() if x.startswith("ROW ")]
        if r.returncode:
            print(which, "rc", r.returncode, r.stderr[-1500:], flush=True)
        for g in got:
            print(f"{g['shape']:18s} {which:14s} " + (f"{g['us']:8.1f} us  err {g['err']:.2e}" if "us" in g
                                                     else g.get("error", "?")), flush=True)
        rows += got
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gluon.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        main()
