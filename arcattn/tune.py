"""Measured dispatch (policy "auto"): time every eligible backend on a call's shape, keep the fastest correct one.

The first time the router meets a call signature with more than one eligible backend, each is run on random
inputs of that exact shape, dtype, layout and strides, checked against `sdpa` on the same inputs, and timed in
interleaved rounds, each backend's fastest round counting: on CUDA the GPU time per call (the host's share hidden
behind a sleep kernel), elsewhere the time per call in a stream of back-to-back calls, as a UNet makes them
(max(host, device); no sync per call, which would add a round trip to every call). The fastest within tolerance
wins, unless the fixed-priority policy's own choice is within KEEP_MARGIN of it: then that stays. Results are
kept on disk, keyed by device, driver and torch/Triton/arcattn versions, with sequence lengths bucketed
(half-octaves) so that a new resolution does not re-tune everything. A cache that is corrupt or from another
setup is ignored with one log line.

Policy: ARCATTN_POLICY=auto (default on GPUs) | priority (fixed order). ARCATTN_TUNE=0 turns measuring off.
On the CPU "auto" is "priority": there is nothing to gain, and CI never tunes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Callable, Optional

import torch

from .call import AttentionCall, make_call
from .dispatch import one_line
from .env import env_flag, synchronize, versions
from .install_check import cache_dir
from .reference import AGREEMENT_TOL, rel_error

log = logging.getLogger("arcattn")

CACHE_VERSION = 4  # 2: times are per call in a stream of calls; 3: device times on CUDA, priority kept within 10 %;
#                   4: the Triton backend gained the short-keys kernel (its times changed)
KEEP_MARGIN = 0.10  # another backend must be this much faster to replace the fixed-priority policy's choice


def policy_from_env() -> str:
    if not env_flag("ARCATTN_TUNE", True):
        return "priority"
    p = os.environ.get("ARCATTN_POLICY", "auto").strip().lower()
    return p if p in ("auto", "priority") else "auto"


def bucket(n: int) -> str:
    """Half-octave bucket of a sequence length, e.g. "2^12" for 3650..5160 (exact below 64, where the best
    tiling changes fastest)."""
    return str(n) if n < 64 else f"2^{round(2 * math.log2(n)) / 2:g}"


def bucket_key(call: AttentionCall) -> str:
    mask = "none" if call.mask is None else ("bool" if call.mask.dtype == torch.bool else "float")
    return (f"B{call.B} H{call.H} Sq~{bucket(call.Sq)} Sk~{bucket(call.Sk)} D{call.D} Dv{call.Dv} "
            f"{str(call.dtype).replace('torch.', '')} {call.layout}>{call.out_layout} mask:{mask}"
            f"{' causal' if call.causal else ''}{' lse' if call.want_lse else ''}")


def rotated(seq: list, r: int) -> list:
    """seq starting at position r (mod its length): round r's order, so that no contender always goes first."""
    k = r % len(seq) if seq else 0
    return seq[k:] + seq[:k]


def stream_samples_us(fn: Callable, device: torch.device, *, warmup: int, reps: int, batch: int,
                      host_only: bool = False, clock: Callable[[], float] = time.perf_counter) -> list:
    """Microseconds per call of fn(), one sample per batch of `batch` back-to-back calls, synchronised only
    around each batch (after `warmup` untimed calls). host_only: the clock stops before the synchronisation, so
    a sample is the host's time to issue the calls, not the device's to run them."""
    return interleaved_samples_us({"": fn}, device, warmup=warmup, reps=reps, batch=batch, host_only=host_only,
                                  clock=clock)[""]


def interleaved_samples_us(fns: dict, device: torch.device, *, warmup: int, reps: int, batch: int,
                           host_only: bool = False, clock: Callable[[], float] = time.perf_counter) -> dict:
    """name -> `reps` samples (microseconds per call) for each fn of `fns`, as stream_samples_us takes them, but
    in rounds: round r times one batch of every fn, starting at position r (mod their number). A slow spell of
    the host or the device clocks then lands on every fn alike instead of on whichever was being timed."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    names = list(fns)
    samples: dict = {n: [] for n in names}
    for r in range(reps):
        for n in rotated(names, r):
            fn = fns[n]
            t0 = clock()
            for _ in range(batch):
                fn()
            if host_only:
                samples[n].append((clock() - t0) * 1e6 / batch)
            synchronize(device)
            if not host_only:
                samples[n].append((clock() - t0) * 1e6 / batch)
    return samples


def device_samples_us(fns: dict, device: torch.device, *, warmup: int, reps: int, batch: int) -> Optional[dict]:
    """name -> `reps` samples of GPU time per call for each fn of `fns`, in interleaved rounds, with the host's
    share taken out: every timed batch waits in the queue behind a sleep kernel that outlasts the host's
    enqueueing of it, so CUDA events around the batch see only the device's work. CUDA only (torch.cuda._sleep);
    None elsewhere or when that private helper is missing."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if device.type != "cuda" or sleep is None:
        return None
    try:
        with torch.cuda.device(device):
            sleep(1)
    except Exception:  # noqa: BLE001 - a build without it (or without events): stream times instead
        return None
    enqueue_us = 0.0  # the host's time to issue one batch, the slowest fn's, measured on the warm-up calls
    for fn in fns.values():
        for _ in range(max(0, warmup - 1)):
            fn()
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        enqueue_us = max(enqueue_us, (time.perf_counter() - t0) * 1e6)
    synchronize(device)
    # three times the enqueueing, in cycles of a 2 GHz clock (a faster clock still leaves 2x); at most 50 ms
    cycles = int(min(3 * enqueue_us + 200, 50_000) * 2_000)
    names = list(fns)
    marks = []
    with torch.cuda.device(device):
        for r in range(reps):
            for n in rotated(names, r):
                fn = fns[n]
                sleep(cycles)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(batch):
                    fn()
                end.record()
                marks.append((n, start, end))
        torch.cuda.synchronize(device)
    samples: dict = {n: [] for n in names}
    for n, start, end in marks:
        samples[n].append(start.elapsed_time(end) * 1e3 / batch)
    return samples


def _like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fresh random values with t's shape, strides, dtype and device (never zeros). On a GPU they are drawn there,
    from a seed drawn from gen: drawing SD's largest inputs on the host took ~0.2 s of the 2 s a tuning run may
    take (H100 host, cProfile, visit 52)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    if t.device.type == "cpu":
        return out.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype))
    on_device = torch.Generator(device=t.device).manual_seed(int(torch.randint(1 << 62, (1,), generator=gen)))
    return out.copy_(torch.randn(t.shape, generator=on_device, device=t.device, dtype=t.dtype))


def synthetic_call(call: AttentionCall, gen: torch.Generator) -> AttentionCall:
    """A call of the same signature with fresh random inputs."""
    q, k, v = _like(call.q, gen), _like(call.k, gen), _like(call.v, gen)
    return make_call(q, k, v, heads=call.H, layout=call.layout, out_layout=call.out_layout, mask=call.mask,
                     scale=call.scale, causal=call.causal, want_lse=call.want_lse)


class TuneCache:
    """The on-disk record of measured choices for one setup (device, driver, versions)."""

    def __init__(self, device: torch.device, directory: Optional[str] = None):
        self.env = {k: v for k, v in versions(device).items() if k != "python"}
        digest = hashlib.sha1(json.dumps(self.env, sort_keys=True).encode()).hexdigest()[:12]
        self.path = os.path.join(directory or cache_dir(), f"tune-{digest}.json")
        self.entries: dict = {}
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") != CACHE_VERSION or data.get("env") != self.env:
                raise ValueError("written for another setup or cache version")
            entries = data["entries"]
            if not all(isinstance(e, dict) and isinstance(e.get("backend"), str) for e in entries.values()):
                raise ValueError("malformed entries")
            self.entries = entries
        except Exception as e:  # noqa: BLE001 - a bad cache is never trusted, never fatal
            log.warning("ignoring tuning cache %s (%s: %s); backends will be measured again",
                        self.path, type(e).__name__, e)
            self.entries = {}

    def get(self, key: str) -> Optional[dict]:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "env": self.env, "entries": self.entries}, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("could not write tuning cache %s (%s); measuring again next process", self.path, e)


class MeasuredChooser:
    """A Router chooser: fastest eligible backend within tolerance of sdpa, measured once per bucket."""

    def __init__(self, directory: Optional[str] = None, *, reps: int = 5, batch: int = 10,
                 measure_cpu: bool = False, timer: Optional[Callable] = None):
        self.directory = directory
        self.reps = reps
        self.batch = batch
        # timer({name: (backend, fn)}, device) -> {name: microseconds per call}; tests inject a deterministic one
        self.timer = timer or self._interleaved
        self.measure_cpu = measure_cpu  # tests only: on a real CPU setup there is nothing to choose
        self._caches: dict = {}

    def cache(self, device: torch.device) -> TuneCache:
        key = (device.type, device.index)
        if key not in self._caches:
            self._caches[key] = TuneCache(device, self.directory)
        return self._caches[key]

    def __call__(self, call: AttentionCall, eligible: list):
        if call.device.type == "cpu" and not self.measure_cpu:
            return eligible[0]
        cache = self.cache(call.device)
        key = bucket_key(call)
        entry = cache.get(key)
        if entry is not None:
            for b in eligible:
                if b.name == entry["backend"]:
                    return b
        entry = self.measure(call, eligible)
        cache.put(key, entry)
        return next(b for b in eligible if b.name == entry["backend"])

    def _interleaved(self, runs: dict, device: torch.device) -> dict:
        """Per backend, its fastest of `reps` interleaved rounds of `batch` calls. On CUDA the GPU's time per call
        (device_samples_us), elsewhere the time per call in a stream (interleaved_samples_us). The minimum, not
        the median: a busy host or a clock dip only ever adds time. H100, SD shapes whose backends differ by 10 %
        or more, a host thread holding the interpreter a third of the time (bench/gpu_tune_repeat.py, visits 43
        and 45): stream times picked the slower backend in 7-18 of 64-96 decisions by the median and 0-4 by the
        minimum; device times in none of 64. On a quiet host none of the ways erred."""
        fns = {n: fn for n, (_, fn) in runs.items()}
        samples = device_samples_us(fns, device, warmup=2, reps=self.reps, batch=self.batch)
        if samples is None:
            samples = interleaved_samples_us(fns, device, warmup=2, reps=self.reps, batch=self.batch)
        return {n: min(t) for n, t in samples.items()}

    def measure(self, call: AttentionCall, eligible: list) -> dict:
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        trial = synthetic_call(call, gen)
        fallback = next((b for b in eligible if b.is_fallback), None)
        ref = _first(fallback.run(trial)) if fallback is not None else None
        tol = AGREEMENT_TOL.get(call.dtype, 1e-3)
        runs, times, errors, rejected = {}, {}, {}, {}
        t_start = time.perf_counter()
        for b in eligible:  # correctness first (and compilation, outside the timed rounds)
            try:
                out = _first(b.run(trial))
                if ref is not None and b is not fallback:
                    err = rel_error(out, ref)
                    errors[b.name] = err
                    if not math.isfinite(err) or err > tol:
                        rejected[b.name] = f"differs from sdpa by {err:.2e} (tolerance {tol:.0e})"
                        continue
                runs[b.name] = (b, lambda b=b: b.run(trial))
            except Exception as e:  # noqa: BLE001
                rejected[b.name] = one_line(e, 200)
        if runs:
            try:
                times = self.timer(runs, call.device)
            except Exception:  # noqa: BLE001 - one backend failed while timed: time each alone to find it
                for name, run in runs.items():
                    try:
                        times.update(self.timer({name: run}, call.device))
                    except Exception as e:  # noqa: BLE001
                        rejected[name] = one_line(e, 200)
        times = {n: round(t, 2) for n, t in times.items()}
        for name, why in rejected.items():
            log.warning("tuning %s: %s rejected (%s)", call.describe(), name, why)
        best = min(times, key=times.get) if times else eligible[0].name
        # The fixed-priority policy's own choice stays unless another backend is clearly faster: a shape timed
        # alone and the same shape inside a UNet step disagreed by up to 5 % (H100, visit 45), so a closer
        # measurement cannot tell them apart.
        default = next((b.name for b in eligible if b.name in times and not b.slower_reasons(call)), None)
        kept = default is not None and default != best and times[default] <= times[best] * (1 + KEEP_MARGIN)
        if kept:
            best = default
        log.info("tuned %s: %s%s (%s) in %.0f ms", call.describe(), best,
                 f", the priority choice, within {KEEP_MARGIN:.0%} of the fastest" if kept else "",
                 ", ".join(f"{n} {t:.1f} us" for n, t in times.items()), (time.perf_counter() - t_start) * 1e3)
        return {"backend": best, "times_us": times, "rel_errors": errors, "rejected": rejected,
                "kept_priority_choice": kept, "call": call.describe()}


def _first(result):
    return result[0] if isinstance(result, tuple) else result


# -- python -m arcattn tune -----------------------------------------------------------------------------------
def main(argv=None) -> int:
    from .api import get_router
    from .bench import load_shapes
    from .env import default_device, describe

    p = argparse.ArgumentParser(prog="python -m arcattn tune", description="Measure the backends per shape ahead "
                                "of time and keep the fastest correct choice in the tuning cache.")
    p.add_argument("--shapes", default=None, help="shapes JSON (default: the repository's bench/shapes.json)")
    p.add_argument("--batch", default="1,2")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    shapes = load_shapes(args.shapes)
    router = get_router()
    chooser = router.chooser if isinstance(router.chooser, MeasuredChooser) else MeasuredChooser()
    print(describe(device))
    if device.type == "cpu":
        print("tuning is for GPUs: on the CPU the router keeps its fixed priority")
        return 0
    t0 = time.perf_counter()
    for dname in args.dtype.split(","):
        for B in (int(b) for b in args.batch.split(",")):
            for s in shapes:
                H, D = s["H"], s["D"]
                q = torch.randn(B, s["Sq"], H * D, device=device, dtype=dtypes[dname])
                kv = torch.randn(B, s["Sk"], H * D, device=device, dtype=dtypes[dname])
                call = make_call(q, kv, kv, heads=H)
                eligible = [b for b in router.backends if b.name not in router.disabled and b.available()
                            and not b.unsupported_reasons(call)]
                choice = chooser(call, eligible) if len(eligible) > 1 else eligible[0]
                entry = chooser.cache(device).get(bucket_key(call)) or {}
                times = ", ".join(f"{n} {t:.1f}us" for n, t in entry.get("times_us", {}).items())
                print(f"  {s['name']:<22} B={B} {dname}: {choice.name:<7} {times}")
    print(f"tuned in {time.perf_counter() - t0:.2f} s; cache: {chooser.cache(device).path}")
    return 0
