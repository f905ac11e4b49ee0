"""ComfyUI's HyperTile calls on a GPU: q in tiles, (B * tiles, S / tiles, C), beside whole k and v, (B, S, C), which
every ComfyUI attention function reads by q's batch. Until the twenty-second session arcattn handed these calls
back to the host; now it serves them. Per shape: the host's function (ComfyUI's attention_pytorch where
ARCATTN_COMFYUI_ROOT points to a checkout, else the same reading through torch SDPA) against arcattn's wrapper with
the router's measured choice, each checked against a float64 reference, and timed side by side in CUDA graphs.

    python bench/gpu_hypertile.py

First run on an H100 in the twenty-fourth session's visit (`bench/results/gpu_tests_visit94_h100/hypertile.txt`,
one timing each); since then each method is timed in ROUNDS rounds, the order alternating, with the spread printed.
A dry run on the CPU: `main("cpu", [("tiny", 16, 64, 4, 2)])` (no timings there).
"""
from __future__ import annotations

import os
import statistics
import sys
from typing import Optional

import torch

import arcattn
from arcattn.bench import graph_us, host_sdpa
from arcattn.env import describe
from arcattn.hosts.common import HostAttention
from arcattn.hosts.comfyui import settle_sdpa_order
from arcattn.reference import attention_reference, rel_error

# (name, latent side, channels, heads, tiles per side), each at batch 1 and 2: HyperTile's default 256 px tiles
# are 32 latent tokens a side; SD1.5's first level (D 40) at 768, 1024 and 1536 px; SDXL's second level (D 64) at
# 1024 px with max_depth 1
SHAPES = [
    ("sd15 768px in1 self", 96, 320, 8, 3),
    ("sd15 1024px in1 self", 128, 320, 8, 4),
    ("sd15 1536px in1 self", 192, 320, 8, 6),
    ("sdxl 1024px in2 self", 64, 640, 10, 2),
]


ROUNDS = 4  # graph timings per method and shape, the order alternating


def host_function(device: torch.device):
    root = os.environ.get("ARCATTN_COMFYUI_ROOT")
    if not root:
        return "host_sdpa (ComfyUI's reading through torch SDPA)", host_sdpa
    sys.argv = [sys.argv[0]] + (["--cpu"] if device.type == "cpu" else [])
    sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.ldm.modules.attention as attention
    return f"ComfyUI attention_pytorch ({root})", attention.attention_pytorch


def side_by_side(host, ours, device: torch.device, rounds: Optional[int] = None) -> tuple:
    """Median GPU time of each over `rounds` rounds, the order swapped every round so that neither gains from
    going second, and the larger of the two spreads ((max - min) / median): what 'beyond noise' means here."""
    times: dict = {"host": [], "ours": []}
    for r in range(rounds or ROUNDS):
        pair = [("host", host), ("ours", ours)]
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            t = graph_us(fn, device)
            if t is not None:
                times[name].append(t)
    med = {n: statistics.median(ts) if ts else None for n, ts in times.items()}
    spread = max(((max(ts) - min(ts)) / med[n] for n, ts in times.items() if ts), default=float("nan"))
    return med["host"], med["ours"], spread


def main(device: str = "cuda", shapes: list = SHAPES) -> int:
    dev = torch.device(device)
    print(describe(dev))
    name, host = host_function(dev)
    settle_sdpa_order()  # as the node package does at load, before ComfyUI's first SDPA call can fix flash first
    print("host function:", name)
    ours = HostAttention(host, "comfyui")
    g = torch.Generator(device=dev).manual_seed(20261207)
    print(f"{'shape':<22} {'B':>2} {'q':>18} {'k':>16} {'host us':>9} {'arcattn us':>10} {'ratio':>6} "
          f"{'spread':>6} {'err host':>9} {'err ours':>9}  backend")
    for label, side, C, H, n in shapes:
        for B in (1, 2):
            S = side * side
            q = torch.randn(B * n * n, S // (n * n), C, device=dev, generator=g, dtype=torch.float16)
            k, v = (torch.randn(B, S, C, device=dev, generator=g, dtype=torch.float16) for _ in range(2))
            ref, _ = attention_reference(*(t.double().reshape(q.shape[0], -1, H, C // H).transpose(1, 2)
                                           for t in (q, k, v)))
            ref = ref.transpose(1, 2).flatten(2)
            arcattn.reset_telemetry()
            with torch.no_grad():
                out_host = host(q, k, v, H)
                out_ours = ours(q, k, v, H)  # the first call of this signature: the router measures and decides
                served = {b: t["served"] for b, t in arcattn.telemetry().items() if t.get("served")}
                t_host, t_ours, spread = side_by_side(lambda: host(q, k, v, H), lambda: ours(q, k, v, H), dev)
            ratio = t_host / t_ours if t_host and t_ours else float("nan")
            print(f"{label:<22} {B:>2} {str(tuple(q.shape)):>18} {str(tuple(k.shape)):>16} {t_host or 0:9.1f} "
                  f"{t_ours or 0:10.1f} {ratio:6.2f} {spread:6.1%} {rel_error(out_host, ref):9.1e} "
                  f"{rel_error(out_ours, ref):9.1e}"
                  f"  {served or dict(ours.fallbacks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
