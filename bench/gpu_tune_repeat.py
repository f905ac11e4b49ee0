"""How often does measured dispatch pick each backend? The chooser's measurement repeated on SD1.5's and
SDXL's main shapes: each backend timed one after the other (the chooser before the fifth session), in
interleaved rounds, or on the device (interleaved, the host's share hidden: the chooser since visit 45), each
decided by the median and by the minimum of a backend's samples, on a quiet
host and on a busy one (a Python thread holding the interpreter a third of the time, as a host's UI or a data
loader can). A decision that flips between runs where the backends differ by 10 % is a mis-pick.

    python bench/gpu_tune_repeat.py [--repeats 12] [--batch 1,2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter

import torch

import arcattn
from arcattn.call import make_call
from arcattn.env import default_device, describe
from arcattn.tune import MeasuredChooser, device_samples_us, interleaved_samples_us, stream_samples_us

SHAPES = [("in1 self", 8, 40, 4096, 4096), ("in1 cross", 8, 40, 4096, 77), ("in2 self", 8, 80, 1024, 1024),
          ("in3 self", 8, 160, 256, 256), ("xl in2 self", 10, 64, 4096, 4096), ("xl in3 self", 20, 64, 1024, 1024)]


def one_by_one(runs: dict, device) -> dict:
    """Samples as the chooser took them before interleaving: each backend's batches in turn, in eligible order."""
    return {n: stream_samples_us(fn, device, warmup=2, reps=5, batch=10) for n, (_, fn) in runs.items()}


def interleaved(runs: dict, device) -> dict:
    return interleaved_samples_us({n: fn for n, (_, fn) in runs.items()}, device, warmup=2, reps=5, batch=10)


def on_device(runs: dict, device) -> dict:
    """The chooser's timing since visit 45: GPU time per call, the host's share hidden behind a sleep kernel."""
    return device_samples_us({n: fn for n, (_, fn) in runs.items()}, device, warmup=2, reps=5, batch=10)


ESTIMATORS = {"median": statistics.median, "min": min}


class BusyHost:
    """A thread that takes the interpreter for about 1 ms in every 3 while the measurement runs."""

    def __enter__(self):
        self.stop = False

        def spin():
            x = 0
            while not self.stop:
                t_end = time.perf_counter() + 1e-3
                while time.perf_counter() < t_end:
                    x += 1
                time.sleep(2e-3)
        self.t = threading.Thread(target=spin, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--batch", default="1,2")
    args = p.parse_args(argv)
    device = default_device()
    print(describe(device), flush=True)
    router = arcattn.get_router()
    for B in (int(b) for b in args.batch.split(",")):
        for name, H, D, Sq, Sk in SHAPES:
            q = torch.randn(B, Sq, H * D, device=device, dtype=torch.float16)
            kv = torch.randn(B, Sk, H * D, device=device, dtype=torch.float16)
            call = make_call(q, kv, kv, heads=H)
            eligible = [b for b in router.backends if b.available() and not b.unsupported_reasons(call)]
            if len(eligible) < 2:
                print(f"  {name} B={B}: one eligible backend")
                continue
            for host in ("quiet", "busy"):
                for mode, sampler in (("one-by-one", one_by_one), ("interleaved", interleaved),
                                      ("device", on_device)):
                    picks = {e: Counter() for e in ESTIMATORS}
                    per = {}
                    for _ in range(args.repeats):
                        taken = {}

                        def timer(runs, dev, sampler=sampler, taken=taken):
                            taken.update(sampler(runs, dev))
                            return {n: statistics.median(t) for n, t in taken.items()}
                        chooser = MeasuredChooser(timer=timer)
                        if host == "busy":
                            with BusyHost():
                                chooser.measure(call, eligible)
                        else:
                            chooser.measure(call, eligible)
                        for e, f in ESTIMATORS.items():
                            est = {n: f(t) for n, t in taken.items()}
                            picks[e][min(est, key=est.get)] += 1
                            for n, t in est.items():
                                per.setdefault((e, n), []).append(t)
                    for e in ESTIMATORS:
                        times = ", ".join(f"{n} {statistics.median(per[(e, n)]):.1f} "
                                          f"[{min(per[(e, n)]):.1f}-{max(per[(e, n)]):.1f}] us"
                                          for n in taken)
                        print(f"  {name:<9} B={B} {host:<5} {mode:<11} {e:<6} picks {dict(picks[e])}  {times}",
                              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
