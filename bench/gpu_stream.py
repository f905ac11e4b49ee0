"""One GPU visit: where a host-style call's time goes in a stream of calls (the bench's measurement), per method.

    PYTHONUNBUFFERED=1 python3 bench/gpu_stream.py

For sd15-512 in1 self and sdxl-1024 in2 self (fp16, B = 1 and 2), with the bench's rotating input sets: per-call
microseconds of n back-to-back calls bracketed by CUDA events (arcattn.bench.sample_us) for n = 4, 16, 64, for
the direct kernel launch, backend.run, arcattn.attention(backend=...), and host-style torch SDPA; the same
calls' CPU time alone; and the kernel time from a CUDA graph.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

import arcattn  # noqa: E402
from arcattn.bench import graph_us, host_sdpa, sample_us  # noqa: E402
from arcattn.call import make_call  # noqa: E402
from bench.gpu_variants import SHAPES, inputs  # noqa: E402


def main():
    from arcattn import env
    print(env.describe(), flush=True)
    dev = torch.device("cuda")
    router = arcattn.get_router()
    tri, sd = router.backend("triton"), router.backend("sdpa")
    for name in ("sd15-512 in1 self", "sdxl-1024 in2 self"):
        s = SHAPES[name]
        H = s["H"]
        for B in (1, 2):
            sets = [inputs(s, B, torch.float16, i) for i in range(16)]
            calls = [make_call(*x, heads=H) for x in sets]
            methods = {
                "backend.run triton": lambda i: tri.run(calls[i % 16]),
                "attention(triton)": lambda i: arcattn.attention(*sets[i % 16], heads=H, backend="triton"),
                "backend.run sdpa": lambda i: sd.run(calls[i % 16]),
                "attention(sdpa)": lambda i: arcattn.attention(*sets[i % 16], heads=H, backend="sdpa"),
                "host sdpa": lambda i: host_sdpa(*sets[i % 16], H),
            }
            for m, fn in methods.items():
                for i in range(20):
                    fn(i)
                torch.cuda.synchronize()
                line = []
                for n in (4, 16, 64):
                    line.append(f"n={n}: {statistics.median(sample_us(fn, dev, n) for _ in range(9)):6.1f}")
                t0 = time.perf_counter()
                for i in range(200):
                    fn(i)
                cpu = (time.perf_counter() - t0) * 1e6 / 200
                torch.cuda.synchronize()
                g = graph_us(lambda: fn(0), dev)
                print(f"{name} B={B} {m:20s} stream us {'  '.join(line)}   cpu/call {cpu:5.1f}   graph {g or 0:6.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
