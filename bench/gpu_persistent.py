"""Go / no-go probe (visit 64): persistent programs, with and without the next tile's loads pipelined into the
current tile's key loop.

Visit 62 timed the 1024^2 D 64 self-attention over 12-74 heads: with at most 2 programs per SM it took 14.4 us, with
3 per SM 18.8 us, so each program beside another adds ~4.4 us and one alone would take ~10 us for its 16 key blocks
(extrapolated, not measured). So each of SDXL's 1024^2 calls at B = 2 (640 programs of 64 rows, 4.85 per SM, 31 us)
seems to pay a start-up (the query tile's load, the first key blocks' loads, the store) per program that its
neighbours only partly hide. A persistent program loops over
tiles; with `tl.range(..., flatten=True)` Triton fuses the tile loop and the key loop into one and can pipeline
the next tile's first loads under the current tile's last blocks.

A minimal kernel (contiguous (B*H, S, 64) fp16, no masks, S a multiple of the tile) runs one tile per program (the
control, as the production kernel's grid does), and persistent grids of 1-4 programs per SM, plain or flattened,
beside torch's SDPA and the production kernel. Each variant's output is poisoned with NaN, must be finite
everywhere, and is checked on its first two and last two (batch, head)s against a float64 reference.

    PYTHONUNBUFFERED=1 python3 bench/gpu_persistent.py > $OUT/persistent.txt 2>&1
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT") or "/tmp/arcattn_out")


@triton.jit
def _persistent_fwd(Q, K, V, O, S, n_tiles, qk_scale, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                    FLAT: tl.constexpr):
    """Tiles pid, pid + P, ... of (B*H) x (S / BM); with a grid of n_tiles programs, one tile each."""
    tiles_per_head = S // BM
    cols = tl.arange(0, D)
    for t in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), flatten=FLAT):
        base = (t // tiles_per_head).to(tl.int64) * S * D
        rows = (t % tiles_per_head) * BM + tl.arange(0, BM)
        q = tl.load(Q + base + rows[:, None] * D + cols[None, :])
        acc = tl.zeros([BM, D], tl.float32)
        m = tl.full([BM], float("-inf"), tl.float32)
        l = tl.zeros([BM], tl.float32)
        for n0 in range(0, S, BN):
            keys = n0 + tl.arange(0, BN)
            s = tl.dot(q, tl.trans(tl.load(K + base + keys[:, None] * D + cols[None, :])))
            m_new = tl.maximum(m, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(V + base + keys[:, None] * D + cols[None, :])
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
            m = m_new
        tl.store(O + base + rows[:, None] * D + cols[None, :], (acc / l[:, None]).to(O.dtype.element_ty))


def persistent(q, k, v, out, bm, bn, warps, stages, per_sm, flat):
    """per_sm = 0: one program per tile (the control); else per_sm x SMs programs looping over the tiles."""
    BH, S, D = q.shape
    n_tiles = BH * (S // bm)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    grid = n_tiles if per_sm == 0 else min(n_tiles, per_sm * sms)
    _persistent_fwd[(grid,)](q, k, v, out, S, n_tiles, D ** -0.5 * 1.4426950408889634, BM=bm, BN=bn, D=D,
                             FLAT=flat, num_warps=warps, num_stages=stages)


# (BM, BN, warps, stages, programs per SM (0: one per tile), flattened). Persistent programs must all be resident
# (a program that starts late runs its whole share after the others): the flattened loop double-buffers the query
# tile, 80 KB of shared memory at 64 x 64 with 3 stages (2 per SM), 56 KB with 2 stages (3 per SM); 128 x 64 with 8
# warps: 64 KB plain (2 per SM), 112 KB flattened with 3 stages (1 per SM), 80 KB with 2 (2 per SM). Registers
# (111-124 per thread) allow these counts; sm_90 compiles checked here with Triton 3.6 and 3.9.
VARIANTS = [(64, 64, 4, 3, 0, False), (64, 64, 4, 3, 3, False), (64, 64, 4, 3, 2, True), (64, 64, 4, 2, 3, True),
            (64, 64, 4, 2, 2, True), (128, 64, 8, 3, 0, False), (128, 64, 8, 3, 2, False), (128, 64, 8, 3, 1, True),
            (128, 64, 8, 2, 2, True)]
# (name, H, B, S): SDXL's 1024^2 self-attention at B = 1 and 2, its 4096^2 one at B = 2, SD1.5's D 40 4096^2 one at
# B = 2 with the head padded to 64 (the work of the production kernel's padded part)
SHAPES = [("sdxl-1024 in3 self", 20, 1, 1024), ("sdxl-1024 in3 self", 20, 2, 1024), ("sdxl-1024 in2 self", 10, 2, 4096),
          ("sd15-512 in1 self, D 64", 8, 2, 4096)]


def main():
    from arcattn.env import describe
    from arcattn.kernels import flash
    from arcattn.reference import attention_reference_chunked, rel_error
    from bench.gpu_halves import check_variant, time_and_report
    import torch.nn.functional as F
    print(describe(), flush=True)
    rows = []
    for name, H, B, S in SHAPES:
        BH = B * H
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(BH, S, 64, device="cuda", generator=g, dtype=torch.float16) for _ in range(3))
        picks = [0, 1, BH - 2, BH - 1]
        ref = attention_reference_chunked(q[picks, None], k[picks, None], v[picks, None], scale=64 ** -0.5,
                                          budget_bytes=1 << 28)[0][:, 0]
        q4, k4, v4 = (x.view(1, BH, S, 64) for x in (q, k, v))
        o4 = torch.empty(1, BH, S, 64, device="cuda", dtype=torch.float16)
        fns = {"sdpa default": lambda: F.scaled_dot_product_attention(q4, k4, v4),
               "arcattn kernel": lambda: flash.flash_attention(q4, k4, v4, out4=o4)}
        errs = {}
        # every tile written (the output is poisoned with NaN), and right on the first and last (batch, head)s
        err_of = lambda out: rel_error(out[picks], ref) if torch.isfinite(out).all() else float("nan")  # noqa: E731
        for var in VARIANTS:
            label = "%dx%d w%d s%d " % var[:4] + ("one tile per program" if var[4] == 0 else
                                                   f"{var[4]}/SM" + (" flat" if var[5] else " plain"))
            check_variant(label, lambda out, var=var: persistent(q, k, v, out, *var), torch.full_like(q, float("nan")),
                          err_of, errs, fns)
        control = "64x64 w4 s3 one tile per program" if S == 1024 else "128x64 w8 s3 one tile per program"
        time_and_report(name, B, fns, errs, rows, ref_label=control, rounds=3, ref_name="one tile per program")
    OUT.mkdir(parents=True, exist_ok=True)
    json.dump(rows, open(OUT / "persistent.json", "w"), indent=1)


if __name__ == "__main__":
    main()
