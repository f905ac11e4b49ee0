"""`python -m arcattn bench`: attention shapes x backends, side by side with torch SDPA, host-style.

Every method gets the same inputs a host hands over, q/k/v as (B, S, H*D), and must return (B, S, H*D):
- arcattn backends forced (`arcattn.attention(..., backend=name)`), the router's own choice ("auto": the
  process router with its policy, measured by default on GPUs) and the fixed-priority router ("priority");
- torch SDPA the way ComfyUI's attention_pytorch calls it ("torch": view, transpose, SDPA, transpose back,
  reshape), letting torch choose, and on CUDA with each of its kernels forced ("torch:flash",
  "torch:efficient", "torch:cudnn", "torch:math") through torch.nn.attention.sdpa_kernel.

Reported per (shape, batch, dtype, method): median microseconds per call in a steady stream of calls (device
events on CUDA; synchronize + perf_counter on XPU and CPU), TFLOP/s (4*B*H*Sq*Sk*D flops), the ratio to "torch"
(> 1 = faster than torch's default) and the output's relative error against "torch". Inputs rotate over several
sets so that repeated calls do not just re-read the L2 cache. --breakdown adds where a Triton call's time goes
(arcattn's Python, the launch, the kernel) next to the same split for host-style SDPA.

    python -m arcattn bench [--shapes bench/shapes.json] [--batch 1,2] [--dtype fp16,bf16] [--json out.json]
    python -m arcattn bench --quick            # a few small shapes, seconds, runs on the CPU too
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .dispatch import one_line
from .env import synchronize
from .tune import rotated, stream_samples_us

DEFAULT_SHAPES = Path(__file__).resolve().parent.parent / "bench" / "shapes.json"
QUICK_SHAPES = [
    {"name": "quick self", "H": 2, "D": 40, "Sq": 64, "Sk": 64},
    {"name": "quick cross", "H": 2, "D": 72, "Sq": 48, "Sk": 77},
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TORCH_KERNELS = ("flash", "efficient", "cudnn", "math")
MATH_MAX_SCORES = 1 << 31  # torch:math materialises B*H*Sq*Sk scores: skip it above this


# ------------------------------------------------------------------------------------------------- timing

def calibrate(fn: Callable[[int], object], device: torch.device, *, target_ms: float = 2.0, warmup: int = 3) -> int:
    """Warm fn up (compilation, caches) and return how many back-to-back calls make one >= target_ms sample."""
    t0 = time.perf_counter()
    fn(0)
    synchronize(device)
    one = time.perf_counter() - t0
    for i in range(warmup if one < 0.02 else 0):
        fn(i)
    synchronize(device)
    t0 = time.perf_counter()
    fn(0)
    synchronize(device)
    one = max(time.perf_counter() - t0, 1e-6)
    return int(min(10000, max(3 if one < 0.02 else 1, target_ms * 1e-3 / one)))


def sample_us(fn: Callable[[int], object], device: torch.device, n: int, warm: int = 0) -> float:
    """Per-call microseconds of n back-to-back calls. On CUDA bracketed by events, so a CPU-bound stream of
    calls (launch overhead) and a GPU-bound one are both measured as a host sees them; elsewhere by
    synchronize + perf_counter. warm: untimed calls queued just before the start event (CUDA), so the sample
    starts in a steady stream of this method's own calls rather than on an idle GPU or one still cooling down
    from whatever ran before."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for i in range(-warm, 0):  # the sets just before the timed ones: the rotation over inputs goes on
            fn(i)
        start.record()
        for i in range(n):
            fn(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / n
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    synchronize(device)
    return (time.perf_counter() - t0) * 1e6 / n


def host_us(fn: Callable[[], object], device: torch.device, n: int, *, warmup: int = 20, reps: int = 5) -> float:
    """Host (CPU) microseconds per call: n calls back to back without synchronising (the device work queues up),
    the median over `reps` such batches, synchronised between batches."""
    return statistics.median(stream_samples_us(fn, device, warmup=warmup, reps=reps, batch=n, host_only=True))


def per_call_us(fn: Callable[[int], object], device: torch.device, *, reps: int = 15, target_ms: float = 2.0,
                warmup: int = 3) -> list:
    """Per-call microseconds, one sample per rep (see sample_us)."""
    n = calibrate(fn, device, target_ms=target_ms, warmup=warmup)
    if n == 1:
        reps = min(reps, 3)  # a slow method (an interpreter): few single calls
    return [sample_us(fn, device, n) for _ in range(reps)]


def l2_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    if device.type == "xpu":
        return 18 << 20  # B580: 18 MB L2
    return 32 << 20


# ------------------------------------------------------------------------------------------------- methods

def host_sdpa(q, k, v, H: int):
    """torch SDPA the way hosts call it: (B, S, H*D) in, (B, S, H*D) out."""
    B, Sq, HD = q.shape
    D = HD // H
    qh = q.view(B, -1, H, D).transpose(1, 2)
    kh = k.view(B, -1, H, D).transpose(1, 2)
    vh = v.view(B, -1, H, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(qh, kh, vh)
    return o.transpose(1, 2).reshape(B, Sq, HD)


class Method:
    """One way of computing attention: a name, a function (q, k, v) -> out, or the reason it cannot run."""

    def __init__(self, name: str, fn: Optional[Callable] = None, reason: Optional[str] = None, ctx=None):
        self.name, self.fn, self.reason, self.ctx = name, fn, reason, ctx


def methods_for(device: torch.device, H: int, wanted: Optional[set], sample_call) -> list:
    import arcattn
    from arcattn.call import make_call
    from arcattn.dispatch import Router

    out = []
    router = arcattn.get_router()
    for b in router.backends:
        name = b.name
        # forced: the backend itself, also where the priority policy would leave the call to SDPA
        why = b.unavailable_reason() or "; ".join(b.unsupported_reasons(sample_call))
        fn = lambda q, k, v, name=name: arcattn.attention(q, k, v, heads=H, backend=name)  # noqa: E731
        out.append(Method(name, None if why else fn, why or None))
    out.append(Method("auto", lambda q, k, v: arcattn.attention(q, k, v, heads=H)))
    prio = Router(router.backends, disabled=router.disabled, prefer="", chooser=None)  # no re-probing per case
    out.append(Method("priority", lambda q, k, v: prio.run(make_call(q, k, v, heads=H))))
    out.append(Method("torch", lambda q, k, v: host_sdpa(q, k, v, H)))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        kinds = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        for kname in TORCH_KERNELS:
            out.append(Method(f"torch:{kname}", lambda q, k, v: host_sdpa(q, k, v, H),
                              ctx=lambda kind=kinds[kname]: sdpa_kernel(kind)))
    if wanted:
        out = [m for m in out if m.name in wanted]
    return out


# ------------------------------------------------------------------------------------------------- one case

def bench_case(shape: dict, B: int, dtype: torch.dtype, device: torch.device, wanted: Optional[set], reps: int,
               check: bool, warm: int = 2) -> list:
    from arcattn.call import make_call
    from arcattn.reference import AGREEMENT_TOL, rel_error

    H, D, Sq, Sk = shape["H"], shape["D"], shape["Sq"], shape["Sk"]
    per_set = (B * (Sq + 2 * Sk) * H * D + B * Sq * H * D) * torch.tensor([], dtype=dtype).element_size()
    n_sets = int(max(1, min(16, math.ceil(3 * l2_bytes(device) / per_set), (2 << 30) // per_set)))
    gen = torch.Generator(device="cpu").manual_seed(1234)
    sets = [tuple(torch.randn(B, S, H * D, generator=gen).to(device=device, dtype=dtype) for S in (Sq, Sk, Sk))
            for _ in range(n_sets)]
    flops = 4.0 * B * H * Sq * Sk * D
    rows, timed = [], []
    ref = host_sdpa(*sets[0], H).float() if check else None
    for m in methods_for(device, H, wanted, make_call(*sets[0], heads=H)):
        row = {"shape": shape["name"], "H": H, "D": D, "Sq": Sq, "Sk": Sk, "B": B,
               "dtype": str(dtype).replace("torch.", ""), "method": m.name, "us": None, "tflops": None,
               "vs_torch": None, "rel_err_vs_torch": None, "status": "ok", "spread": None}
        rows.append(row)
        if m.fn is None:
            row["status"] = f"n/a: {m.reason}"
            continue
        if m.name == "torch:math" and B * H * Sq * Sk > MATH_MAX_SCORES:
            row["status"] = "skipped: the math path would materialise a too large score matrix"
            continue
        try:
            with (m.ctx() if m.ctx else contextlib.nullcontext()):
                out = m.fn(*sets[0])
                if ref is not None and m.name != "torch":
                    row["rel_err_vs_torch"] = rel_error(out.float(), ref)
                    if row["rel_err_vs_torch"] > AGREEMENT_TOL.get(dtype, 1e-2):
                        row["status"] = "WRONG"
                fn = (lambda i, m=m: m.fn(*sets[i % n_sets]))
                timed.append((row, m, fn, calibrate(fn, device)))
        except Exception as e:  # noqa: BLE001 - a torch kernel that cannot serve the shape, an OOM, ...
            row["status"] = f"n/a: {one_line(e, 160)}"
    # Interleaved rounds (each method once per round), so that host noise and clock drift fall on all methods
    # alike; the median over rounds is reported. The order rotates every round: a method that always ran right
    # after a heavy one (torch:math) measured up to 14% slow on an H200 (bench/NOTES_triton.md, visits 13-16).
    # Python's GC stays off while timing.
    samples = {id(row): [] for row, *_ in timed}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(reps if all(n > 1 for *_, n in timed) else min(reps, 3)):
            for row, m, fn, n in rotated(timed, r):
                with (m.ctx() if m.ctx else contextlib.nullcontext()):
                    samples[id(row)].append(sample_us(fn, device, n, warm))
    finally:
        if gc_was:
            gc.enable()
    for row, m, fn, n in timed:
        s = samples[id(row)]
        us = statistics.median(s)
        row["us"], row["tflops"] = us, flops / (us * 1e-6) / 1e12
        row["spread"] = (max(s) - min(s)) / us if us else None
    base = next((r["us"] for r in rows if r["method"] == "torch" and r["us"]), None)
    for r in rows:
        if r["us"] and base:
            r["vs_torch"] = base / r["us"]
    return rows


# ------------------------------------------------------------------------------------------------- breakdown

def breakdown(shape: dict, B: int, dtype: torch.dtype, device: torch.device, n: int = 300) -> dict:
    """Where one Triton call's time goes: arcattn's Python (API, router, plan lookup), the Triton launch, the
    kernel on the GPU; and the same for host-style SDPA. CPU columns are host microseconds per call (no sync);
    GPU columns come from CUDA-graph replays (launch gaps removed)."""
    from arcattn.call import make_call
    from arcattn.kernels import flash

    H, D, Sq, Sk = shape["H"], shape["D"], shape["Sq"], shape["Sk"]
    q, k, v = (torch.randn(B, S, H * D, device=device, dtype=dtype) for S in (Sq, Sk, Sk))
    import arcattn
    router = arcattn.get_router()
    backend = router.backend("triton")
    res = {"shape": shape["name"], "B": B, "dtype": str(dtype).replace("torch.", "")}
    if backend.unsupported_reasons(make_call(q, k, v, heads=H)) or not backend.available():
        res["status"] = "triton n/a"
        return res
    call = make_call(q, k, v, heads=H)
    backend.run(call)
    e = backend._entries[call.key]
    out = torch.empty(e.out_shape, dtype=dtype, device=device)
    sq, sk, sv = call.strides4(q), call.strides4(k), call.strides4(v)

    def cpu_us(fn) -> float:
        return host_us(fn, device, n)

    launch = lambda: flash.launch(e.plan, q, k, v, out, None, sq, sk, sv, e.so, call.scale, H, Sq, Sk)  # noqa: E731
    res["cpu_api_us"] = cpu_us(lambda: router.run(make_call(q, k, v, heads=H), prefer="triton", strict=True))
    res["cpu_make_call_us"] = cpu_us(lambda: make_call(q, k, v, heads=H))
    res["cpu_backend_run_us"] = cpu_us(lambda: backend.run(call))
    res["cpu_launch_us"] = cpu_us(launch)
    res["cpu_empty_us"] = cpu_us(lambda: torch.empty(e.out_shape, dtype=dtype, device=device))
    res["cpu_host_sdpa_us"] = cpu_us(lambda: host_sdpa(q, k, v, H))
    res["config"] = e.plan.describe()
    if device.type == "cuda":
        res["gpu_kernel_us"] = graph_us(launch, device)
        res["gpu_host_sdpa_us"] = graph_us(lambda: host_sdpa(q, k, v, H), device)
        res["gpu_sdpa_kernel_us"] = graph_us(lambda: F.scaled_dot_product_attention(
            q.view(B, -1, H, D).transpose(1, 2), k.view(B, -1, H, D).transpose(1, 2),
            v.view(B, -1, H, D).transpose(1, 2)), device)
    res["stream_triton_us"] = statistics.median(
        per_call_us(lambda i: router.run(make_call(q, k, v, heads=H), prefer="triton", strict=True), device))
    res["stream_host_sdpa_us"] = statistics.median(per_call_us(lambda i: host_sdpa(q, k, v, H), device))
    return res


def capture_graph(fn, device, *, calls: int = 1, warmup: int = 3):
    """A CUDA graph of `calls` back-to-back calls of fn(), captured after `warmup` calls on a side stream (so
    that lazy initialisation and allocations happen outside the capture)."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return g


def graph_us(fn, device, calls: int = 20, replays: int = 20) -> Optional[float]:
    """GPU time per call from replaying a CUDA graph of `calls` back-to-back calls (no launch gaps)."""
    try:
        g = capture_graph(fn, device, calls=calls)
        g.replay()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(replays):
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / calls)
        return statistics.median(times)
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", default=None, help=f"shapes JSON (default {DEFAULT_SHAPES.relative_to(DEFAULT_SHAPES.parent.parent)})")
    p.add_argument("--only", default=None, help="comma-separated substrings of shape names to keep")
    p.add_argument("--batch", default="1,2", help="batch sizes, comma-separated (default 1,2)")
    p.add_argument("--dtype", default="fp16,bf16", help="fp16, bf16, fp32, comma-separated (default fp16,bf16)")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per method (median reported)")
    p.add_argument("--warm", type=int, default=2,
                   help="untimed calls of a method queued right before each of its samples (CUDA; default 2)")
    p.add_argument("--device", default=None, help="default: arcattn's default device (xpu, cuda, cpu)")
    p.add_argument("--json", default=None, help="write all rows (and the environment) to this file")
    p.add_argument("--quick", action="store_true", help="small shapes, batch 1, fp32 on the CPU: seconds")
    p.add_argument("--breakdown", action="store_true", help="also split a Triton call's time (Python/launch/kernel)")
    p.add_argument("--no-check", action="store_true", help="skip the output check against torch")


def load_shapes(path: Optional[str]) -> list:
    p = Path(path) if path else DEFAULT_SHAPES
    if not p.exists():
        raise SystemExit(f"no shapes file at {p}: pass --shapes PATH (the repository's bench/shapes.json format:"
                         ' {"shapes": [{"name", "H", "D", "Sq", "Sk"}, ...]})')
    with open(p) as f:
        return json.load(f)["shapes"]


def format_row(r: dict) -> str:
    if r["us"] is None:
        return f"  B={r['B']} {r['dtype']:<8} {r['method']:<16} {r['status']}"
    vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] else "-"
    err = f"{r['rel_err_vs_torch']:.1e}" if r["rel_err_vs_torch"] is not None else "-"
    flag = "" if r["status"] == "ok" else f"  {r['status']}"
    return (f"  B={r['B']} {r['dtype']:<8} {r['method']:<16} {r['us']:>10.1f} us {r['tflops']:>8.3g} TFLOP/s"
            f" {vs:>7} vs torch  err {err}{flag}")


def summary(rows: list) -> str:
    """One line per (shape, B, dtype): triton vs torch default and vs each forced torch kernel."""
    out = [f"{'shape':<22} {'B':>1} {'dtype':<8} {'triton us':>9} {'torch us':>9} {'x torch':>7} "
           f"{'x cudnn':>7} {'x flash':>7} {'x effic':>7} {'x best':>7} {'auto':>7} {'prio':>7}"]
    groups = {}
    for r in rows:
        groups.setdefault((r["shape"], r["B"], r["dtype"]), {})[r["method"]] = r
    for (name, B, dt), g in groups.items():
        t = g.get("triton", {}).get("us")

        def ratio(method):
            u = g.get(method, {}).get("us")
            return f"{u / t:.2f}" if (u and t) else "-"
        torch_us = [g[m]["us"] for m in g if m.startswith("torch") and g[m]["us"]]
        best = f"{min(torch_us) / t:.2f}" if (t and torch_us) else "-"
        tt = g.get("torch", {}).get("us")
        auto = g.get("auto", {}).get("us")
        prio = g.get("priority", {}).get("us")
        us = lambda u: f"{u:.1f}" if u else "-"  # noqa: E731 - "-": the method could not run here
        out.append(f"{name:<22} {B:>1} {dt:<8} {us(t):>9} {us(tt):>9} {ratio('torch'):>7} "
                   f"{ratio('torch:cudnn'):>7} {ratio('torch:flash'):>7} {ratio('torch:efficient'):>7} {best:>7} "
                   f"{(f'{tt / auto:.2f}' if auto and tt else '-'):>7} {(f'{tt / prio:.2f}' if prio and tt else '-'):>7}")
    out.append("x <method> = that method's time / triton's (> 1: triton faster); auto/prio = torch default / router")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from arcattn.env import default_device, describe, versions

    device = torch.device(args.device) if args.device else default_device()
    if args.quick:
        shapes, batches = QUICK_SHAPES, [1]
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float16]
        reps = min(args.reps, 5)
    else:
        shapes = load_shapes(args.shapes)
        batches = [int(b) for b in args.batch.split(",")]
        dtypes = [DTYPES[d.strip()] for d in args.dtype.split(",")]
        reps = args.reps
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        shapes = [s for s in shapes if any(k in s["name"] for k in keep)]
    wanted = set(args.methods.split(",")) if args.methods else None
    print(describe(device), flush=True)
    rows, bd = [], []
    for shape in shapes:
        print(f"{shape['name']}: H={shape['H']} D={shape['D']} Sq={shape['Sq']} Sk={shape['Sk']}", flush=True)
        for B in batches:
            for dtype in dtypes:
                case_rows = bench_case(shape, B, dtype, device, wanted, reps, not args.no_check, args.warm)
                for r in case_rows:
                    print(format_row(r), flush=True)
                rows.extend(case_rows)
        if args.breakdown and device.type != "cpu":
            b = breakdown(shape, 1, dtypes[0], device)
            bd.append(b)
            print("  breakdown: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in b.items() if k not in ("shape",)), flush=True)
    print()
    print(summary(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": versions(device), "describe": describe(device), "rows": rows, "breakdown": bd}, f,
                      indent=1)
    wrong = [r for r in rows if r["status"] == "WRONG"]
    if wrong:
        print(f"{len(wrong)} method(s) gave outputs far from torch's: " +
              ", ".join(sorted({r['method'] for r in wrong})))
    return 1 if wrong else 0


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arcattn bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
