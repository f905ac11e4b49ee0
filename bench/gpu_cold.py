"""One GPU visit: how much of a kernel's time is cold L2, Triton against cuDNN, from CUDA-graph replays.

    PYTHONUNBUFFERED=1 python3 bench/gpu_cold.py > $OUT/cold.txt 2>&1

`python -m arcattn bench` rotates its inputs over enough sets to exceed 3x the L2 (a UNet's attention inputs
come from the projections just before, not from a warm cache), while the kernel-only numbers of
bench/gpu_variants.py replay one set. Here both, per method, kernel time only (no host cost): a graph of 16 calls
on one set ("warm") and on 16 sets of fresh tensors ("rotating"), with Triton's tile configuration and pipeline
depth varied.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from arcattn.bench import graph_us  # noqa: E402
from bench.gpu_variants import SHAPES, inputs  # noqa: E402

DEV = torch.device("cuda")

N = 16
CASES = [("sd15-512 in1 self", (1, 2), [None, (128, 64, 8, 4), (128, 64, 8, 2)]),
         ("sdxl-1024 in2 self", (1, 2), [None, (64, 64, 4, 4), (128, 64, 8, 4)]),
         ("sd15-512 in2 self", (1,), [None])]


def triton_call(s, B, q, k, v, cfg):
    from arcattn.call import make_call
    from arcattn.kernels import configs, flash
    call = make_call(q, k, v, heads=s["H"])
    out, out4 = call.empty_out()
    plan = flash.Plan(q.device, q.dtype, B, s["H"], s["Sq"], s["Sk"], s["D"], causal=False, want_lse=False,
                      config=configs.TileConfig(*cfg) if cfg else None, splits=1 if cfg else None)
    st = (call.strides4(q), call.strides4(k), call.strides4(v), tuple(out4.stride()))
    return lambda: flash.launch(plan, q, k, v, out, None, *st, call.scale, s["H"], s["Sq"], s["Sk"])


def cudnn_call(s, B, q, k, v):
    H, D = s["H"], s["D"]
    v4 = lambda x: x.view(B, -1, H, D).transpose(1, 2)  # noqa: E731

    def fn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(v4(q), v4(k), v4(v))
    return fn


def main():
    from arcattn import env
    print(env.describe(), flush=True)
    for name, batches, cfgs in CASES:
        s = SHAPES[name]
        for B in batches:
            sets = [inputs(s, B, torch.float16, i) for i in range(N)]
            methods = {"cudnn": lambda q, k, v: cudnn_call(s, B, q, k, v)}
            for cfg in cfgs:
                methods[f"triton {cfg or 'default'}"] = lambda q, k, v, cfg=cfg: triton_call(s, B, q, k, v, cfg)
            res = {m: [] for m in methods}
            for _ in range(2):  # two interleaved rounds, the minimum of each
                for m, make in methods.items():
                    rot = [make(*x) for x in sets]
                    res[m].append((graph_us(make(*sets[0]), DEV, calls=N),
                                   graph_us(lambda rot=rot: [c() for c in rot], DEV, calls=1) / N))
            for m, r in res.items():
                w, c = min(x[0] for x in r), min(x[1] for x in r)
                print(f"{name} B={B} {m:28s} warm {w:8.1f} us  rotating {c:8.1f} us  (+{c - w:.1f})", flush=True)


if __name__ == "__main__":
    t0 = time.time()
    os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/triton_cache")
    main()
    print(f"done in {time.time() - t0:.0f} s")
