"""What arcattn itself costs per attention call, kernel excluded.

A null backend returns a preallocated tensor, so everything measured is arcattn's Python: the router alone
(`Router.run` on a prepared call), the public API (argument checks + call + router), and the ComfyUI-style host
wrapper. Prints medians in microseconds; the issue's bar is the router under 10 us median on these CPUs.

    python bench/router_overhead.py [--n 20000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import arcattn
from arcattn.backends.base import Backend
from arcattn.backends.sdpa import SDPABackend
from arcattn.call import make_call
from arcattn.dispatch import Router
from arcattn.env import describe
from arcattn.hosts.common import HostAttention


class NullBackend(Backend):
    name = "null"
    device_types = ("cpu", "cuda", "xpu", "meta")

    def __init__(self, out):
        self.out = out

    def run(self, call):
        return self.out


def per_call_us(fn, n: int, repeats: int = 7) -> float:
    """Median over `repeats` batches of the mean per-call time of a batch of n calls (timer cost amortised)."""
    for _ in range(min(n, 2000)):
        fn()
    batches = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter_ns() - t0) / n / 1e3)
    return statistics.median(batches)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    args = p.parse_args(argv)

    B, S, H, D = 2, 4096, 8, 40  # sd15-512 in1 self; the sizes don't matter to a null backend
    q = torch.empty(B, S, H * D, )
    ctx = torch.empty(B, 77, H * D, )
    null = NullBackend(torch.empty(B, S, H * D, ))
    arcattn.set_router(Router([null, SDPABackend()], disabled=(), prefer=""))
    router = arcattn.get_router()
    call = make_call(q, q, q, heads=H)
    host = HostAttention(lambda *a, **k: None, "bench")

    rows = [
        ("null backend alone (baseline)", per_call_us(lambda: null.run(call), args.n)),
        ("router.run(call)", per_call_us(lambda: router.run(call), args.n)),
        ("make_call(...) (checks, cached)", per_call_us(lambda: make_call(q, q, q, heads=H), args.n)),
        ("arcattn.attention(q,k,v,heads=8)", per_call_us(lambda: arcattn.attention(q, q, q, heads=H), args.n)),
        ("host wrapper, self-attention", per_call_us(lambda: host(q, q, q, H, transformer_options={}), args.n)),
        ("host wrapper, cross-attention", per_call_us(lambda: host(q, ctx, ctx, H, transformer_options={}), args.n)),
    ]
    base = rows[0][1]
    print(describe(torch.device("cpu")))
    print(f"{'path':<36} {'median us/call':>14} {'minus baseline':>15}")
    for name, us in rows:
        print(f"{name:<36} {us:>14.2f} {us - base:>15.2f}")
    router_us = rows[1][1] - base
    print(f"router overhead: {router_us:.2f} us median per call ({'under' if router_us < 10 else 'OVER'} the 10 us bar)")
    return 0 if router_us < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
