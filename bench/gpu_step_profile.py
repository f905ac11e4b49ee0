"""Where a UNet step's host time goes: cProfile of a few SDXL steps (B=1, fp16) with diffusers' stock processor
and with arcattn's processor forced to SDPA (the same kernels: only the host path differs)."""
import cProfile
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, "bench")
import unet as U  # noqa: E402

from arcattn.env import describe  # noqa: E402


def main():
    device, dtype = torch.device("cuda"), torch.float16
    print(describe(device))
    model = U.build("sdxl", device, dtype)
    x, t, ctx, kw = U.inputs("sdxl", 1, device, dtype)
    procs = U.variant_processors(["stock", "sdpa"])
    switch = U.Switch()
    model.set_attn_processor(switch)
    step = lambda: model(x, t, encoder_hidden_states=ctx, **kw).sample  # noqa: E731
    times = {v: [] for v in procs}
    with torch.no_grad():
        for v in procs:
            switch.current = procs[v]
            step()
            step()
        for r in range(8):
            for v in procs:
                switch.current = procs[v]
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times[v].append((time.perf_counter() - t0) * 1e3)
        for v in procs:
            print(f"{v}: step {statistics.median(times[v]):.2f} ms (min {min(times[v]):.2f})")
        for v in procs:
            switch.current = procs[v]
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            prof.disable()
            print(f"--- {v}: 3 steps, by total time")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
