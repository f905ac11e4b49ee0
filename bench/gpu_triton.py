"""One GPU visit for the Triton backend: everything the issue asks to be shown, in one call, results under $OUT.

    PYTHONUNBUFFERED=1 python3 bench/gpu_triton.py > $OUT/log.txt 2>&1     # then read the summary at the end

Stages (GPU_STAGES picks a subset; GPU_BUDGET_S, default 520 s, bounds the whole run):
 env      device, versions, and the two ceilings measured here (device-to-device copy, bf16 matmul);
 probe    every head split x tile shape the product uses, partial/causal key blocks and unaligned strides,
          each in its own process (a miscompiled variant shows as a wrong answer or a crash, and cannot poison
          the others); compute-sanitizer on the first one that crashes;
 compile  the kernels of the later stages, compiled in parallel worker processes (Triton's on-disk cache);
 tune     tile-configuration sweep and head split on/off, kernel time only (CUDA graphs) -> tune.json; the
          winners are installed as configs.TUNED for the later stages and printed for configs.py;
 sweep    correctness at full size: every shape of bench/shapes.json, B = 1 and 2, fp16 and bf16, plus
          layouts, strided views, LSE, causal, fp32 and shapes beyond the file (S = 32768, Sk = 77 with
          Sq = 16384 and D = 72, the split-keys path, D = 96 / 256), against a chunked float64 reference, with
          NaN-poisoned outputs -> sweep.json;
 bench    `python -m arcattn bench` (all shapes, B 1,2, fp16/bf16, every method) with the per-call breakdown
          -> bench.json;
 launch   CPU cost of Triton's launcher vs arcattn's direct launch, and that both write the same bits.
tune, sweep, bench and launch each run in a child process that saves after every item; a CUDA fault there ends
only that child, and the parent restarts it after the faulting item. A short table comes last.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT") or "/tmp/arcattn_out")
OUT.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/triton_cache")  # shared by the compile workers and the stages
T0 = float(os.environ.setdefault("GPU_T0", str(time.time())))  # children inherit the parent's clock and deadline
DEADLINE = float(os.environ.setdefault("GPU_DEADLINE", str(T0 + float(os.environ.get("GPU_BUDGET_S", "520")))))
STAGES = set((os.environ.get("GPU_STAGES") or "env,probe,compile,tune,sweep,bench,launch").split(","))

import torch  # noqa: E402

from arcattn.reference import REFERENCE_TOL  # noqa: E402

SHAPES = json.load(open(ROOT / "bench" / "shapes.json"))["shapes"]
EXTRA = [
    {"name": "long self D64", "H": 8, "D": 64, "Sq": 32768, "Sk": 32768},
    {"name": "long cross D72", "H": 8, "D": 72, "Sq": 16384, "Sk": 77},
    {"name": "split-keys D64", "H": 2, "D": 64, "Sq": 16, "Sk": 32768},
    {"name": "D256", "H": 4, "D": 256, "Sq": 2048, "Sk": 2048},
    {"name": "D96 ragged", "H": 6, "D": 96, "Sq": 1000, "Sk": 777},
]
if os.environ.get("GPU_SCRIPT_SHAPES"):  # dry runs on the CPU: tiny shapes instead of the real ones
    _o = json.load(open(os.environ["GPU_SCRIPT_SHAPES"]))
    SHAPES, EXTRA = _o["shapes"], _o["extra"]
DEV = os.environ.get("GPU_SCRIPT_DEVICE", "cuda")  # "cpu" (with TRITON_INTERPRET=1) only for dry runs of this script
DT = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TOL = {name: REFERENCE_TOL[dt] for name, dt in DT.items()}


TMP = Path(os.environ.get("GPU_TMP", "/tmp/arcattn_gpu"))
TMP.mkdir(parents=True, exist_ok=True)


def save(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)


def load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:  # noqa: BLE001
        return default


def install_tuned_file():
    """In a child process: install the tuned table the tune stage saved."""
    from arcattn.kernels import configs
    for key, cfg, splits, head in load(TMP / "tuned.json", []):
        configs.TUNED["sm90"][tuple(key)] = (configs.TileConfig(*cfg), splits, tuple(head) if head else None)


def child(stage, start=0, reserve=20) -> int:
    """Run one stage in a fresh process (a CUDA fault there cannot poison the others)."""
    try:
        r = subprocess.run([sys.executable, __file__, "--stage", stage, str(start)], timeout=max(10, left() - reserve))
        return r.returncode
    except subprocess.TimeoutExpired:
        log(f"stage {stage}: timed out")
        return 124


def restartable(stage, key_file, n_total, reserve=20):
    """Run a stage that saves per-item results; after a crash, continue after the item that crashed."""
    for _ in range(6):
        done = load(TMP / key_file, [])
        start = (done[-1]["i"] + 1) if done else 0
        if start >= n_total or left() < 60:
            return
        rc = child(stage, start, reserve)
        if rc == 0:
            return
        log(f"stage {stage} exited with {rc} at item {len(load(TMP / key_file, []))}; restarting after it")


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def left() -> float:
    return DEADLINE - time.time()


def shape(name):
    return next(s for s in SHAPES + EXTRA if s["name"] == name)


# ------------------------------------------------------------------------------------------------- cases

def sweep_cases() -> list:
    cases = []
    for s in SHAPES:
        for B in (1, 2):
            for dt in ("fp16", "bf16"):
                cases.append(dict(shape=s["name"], B=B, dtype=dt, layout="bsd", strided=False, causal=False, lse=False))
    for name in ("sd15-512 in1 self", "sd15-512 in2 cross", "sd15-512 in3 self", "sdxl-1024 in2 self",
                 "sdxl-1024 in3 cross", "sd15-512 mid self"):
        self_attn = "self" in name
        for var in (dict(layout="bhsd"), dict(strided=True), dict(lse=True), dict(causal=self_attn, lse=True),
                    dict(layout="bshd", strided=True, dtype="bf16")):
            c = dict(shape=name, B=2, dtype="fp16", layout="bsd", strided=False, causal=False, lse=False)
            c.update(var)
            cases.append(c)
    for name in ("sd15-512 in3 self", "sd15-512 in2 cross"):
        cases.append(dict(shape=name, B=1, dtype="fp32", layout="bsd", strided=False, causal=False, lse=True))
    for s, dts in (("long self D64", ("fp16",)), ("long cross D72", ("fp16", "bf16")), ("split-keys D64", ("fp16", "bf16")),
                   ("D256", ("fp16",)), ("D96 ragged", ("bf16",))):
        for dt in dts:
            cases.append(dict(shape=s, B=1, dtype=dt, layout="bsd", strided=False, causal=False, lse=True))
    cases.append(dict(shape="D96 ragged", B=2, dtype="fp16", layout="bhsd", strided=True, causal=True, lse=True))
    cases.append(dict(shape="split-keys D64", B=1, dtype="fp16", layout="bsd", strided=False, causal=True, lse=True))
    known = {s["name"] for s in SHAPES + EXTRA}
    return [c for c in cases if c["shape"] in known]


BIG = [(64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2),
       (128, 32, 4, 3), (128, 64, 4, 4), (64, 64, 4, 4)]
TUNE = {
    # shape: (configs (BM, BN, warps, stages), head splits to compare on the 3 fastest configs)
    "sd15-512 in1 self": (BIG, [(64, 0)]),
    "sdxl-1024 in2 self": (BIG, []),
    "sd15-1024 in1 self": ([(64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3)], [(64, 0)]),
    "sd15-512 in1 cross": ([(128, 64, 4, 3), (64, 128, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2), (128, 128, 4, 2)],
                           []),
    "sdxl-1024 in2 cross": ([(128, 128, 8, 2), (128, 128, 4, 2), (64, 128, 4, 2), (128, 64, 4, 3)], []),
    "sd15-512 in2 self": ([(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3),
                           (32, 128, 4, 2), (128, 128, 8, 2)], [(128, 0)]),
    "sd15-512 in2 cross": ([(64, 128, 4, 2), (32, 128, 4, 2), (128, 128, 8, 2), (64, 64, 4, 3), (32, 64, 4, 3)], []),
    "sdxl-1024 in3 self": ([(128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3)], []),
    "sdxl-1024 in3 cross": ([(128, 128, 8, 2), (64, 128, 4, 2), (32, 128, 4, 2), (64, 64, 4, 3)], []),
    "sd15-512 in3 self": ([(64, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2),
                           (128, 64, 8, 2)], [(256, 0)]),
    "sd15-512 mid self": ([(64, 64, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2), (64, 32, 4, 2)], []),
}


def tune_jobs() -> list:
    jobs = []
    known = {s["name"] for s in SHAPES + EXTRA}
    for name, (cfgs, heads) in TUNE.items():
        if name not in known:
            continue
        for c in cfgs:
            jobs.append(dict(shape=name, cfg=c, head=None))
        for h in heads:
            for c in cfgs[:3]:
                jobs.append(dict(shape=name, cfg=c, head=h))
    return jobs


# ------------------------------------------------------------------------------------------------- helpers

def make_inputs(s, B, dtype, layout, strided, gen_seed=0):
    """q, k, v in the caller's layout (strided: middle slices of a fused qkv-like buffer)."""
    g = torch.Generator(device=DEV).manual_seed(gen_seed)
    H, D, Sq, Sk = s["H"], s["D"], s["Sq"], s["Sk"]

    def one(S):
        shp = {"bsd": (B, S, H * D), "bhsd": (B, H, S, D), "bshd": (B, S, H, D)}[layout]
        last = shp[-1]
        if strided:
            wide = torch.randn(*shp[:-1], 3 * last, device=DEV, generator=g, dtype=torch.float32).to(dtype)
            return wide[..., last:2 * last]
        return torch.randn(*shp, device=DEV, generator=g, dtype=torch.float32).to(dtype)
    return one(Sq), one(Sk), one(Sk)


def run_case(c, check=True):
    # the kernel itself is checked here (backend.run directly), also where routing would leave the call to SDPA
    import arcattn
    from arcattn.call import make_call
    s = shape(c["shape"])
    q, k, v = make_inputs(s, c["B"], DT[c["dtype"]], c["layout"], c["strided"], gen_seed=hash(str(c)) & 0xFFFF)
    heads = s["H"] if c["layout"] == "bsd" else None
    res = arcattn.attention(q, k, v, heads=heads, layout=c["layout"], causal=c["causal"], return_lse=c["lse"],
                            backend="triton")
    if not check:
        if DEV == "cuda":
            torch.cuda.synchronize()
        return None
    out, lse = res if c["lse"] else (res, None)
    call = make_call(q, k, v, heads=heads, layout=c["layout"], causal=c["causal"], want_lse=c["lse"])
    from arcattn.reference import attention_reference_chunked, rel_error
    ref, ref_lse = attention_reference_chunked(call.q4, call.k4, call.v4, scale=call.scale, causal=call.causal)
    err = rel_error(out, call.to_caller(ref))
    lerr = rel_error(lse, ref_lse) if lse is not None else None
    return err, lerr, arcattn.get_router().backend("triton")._entries[call.key].plan.describe()


def tune_setup(job, n_sets=1):
    from arcattn.call import make_call
    from arcattn.kernels import configs, flash
    s = shape(job["shape"])
    H, D, Sq, Sk = s["H"], s["D"], s["Sq"], s["Sk"]
    sets = []
    for i in range(n_sets):
        q, k, v = make_inputs(s, 1, torch.float16, "bsd", False, gen_seed=i)
        call = make_call(q, k, v, heads=H)
        out, out4 = call.empty_out()
        sets.append((q, k, v, out, call.strides4(q), call.strides4(k), call.strides4(v), tuple(out4.stride())))
    plan = flash.Plan(q.device, q.dtype, 1, H, Sq, Sk, D, causal=False, want_lse=False,
                      config=configs.TileConfig(*job["cfg"]), splits=1, head=job["head"])
    return plan, sets, call.scale, H, Sq, Sk


def run_tune_once(job):
    from arcattn.kernels import flash
    plan, sets, scale, H, Sq, Sk = tune_setup(job)
    q, k, v, out, sq, sk, sv, so = sets[0]
    flash.launch(plan, q, k, v, out, None, sq, sk, sv, so, scale, H, Sq, Sk)
    if DEV == "cuda":
        torch.cuda.synchronize()


def compile_job(job):
    """Worker: launch once so that the compiled kernel lands in the shared on-disk cache."""
    t = time.time()
    try:
        if len(job) > 2:  # the tuned table the main process installed
            from arcattn.kernels import configs
            for key, cfg, splits, head in job[2]:
                configs.TUNED["sm90"][tuple(key)] = (configs.TileConfig(*cfg), splits, tuple(head) if head else None)
        if job[0] == "case":
            run_case(job[1], check=False)
        else:
            run_tune_once(job[1])
        return job, time.time() - t, None
    except Exception as e:  # noqa: BLE001
        return job, time.time() - t, f"{type(e).__name__}: {str(e)[:300]}"


# ------------------------------------------------------------------------------------------------- probe

# the head splits the product uses on CUDA for 16-byte aligned strides; unaligned calls use one power-of-two part
# None: the split the product takes (flash.Plan: q/k 32 + 16 with v padded to 64 on sm90 for D 40, ...)
PROBE_HEADS = {8: None, 40: None, 64: None, 72: None, 80: None, 96: None, 160: None, 256: None}
PROBE_CFGS = [(128, 64, 8, 3), (64, 128, 4, 3), (64, 64, 4, 3), (128, 64, 4, 3), (32, 32, 4, 2)]


def probe_variants() -> list:
    """Every head split x the tile shapes the tables use, full and partial key blocks, causal, and unaligned
    strides (the power-of-two fallback): each variant in its own process, so that a miscompiled one shows as a
    wrong answer or a crash without hiding the others."""
    out = []
    for D, head in PROBE_HEADS.items():
        for cfg in PROBE_CFGS:
            if D > 128 and cfg[0] * cfg[1] > 64 * 64:
                continue
            out.append(dict(D=D, head=head, cfg=cfg, Sk=512, dtype="fp16", causal=False))
            if D in (40, 80, 160):
                out.append(dict(D=D, head=head, cfg=cfg, Sk=77, dtype="bf16", causal=False))
                out.append(dict(D=D, head=head, cfg=cfg, Sk=300, dtype="fp16", causal=True))
                out.append(dict(D=D, head=None, cfg=cfg, Sk=300, dtype="fp16", causal=False, unaligned=True))
    return out


def probe_one(v) -> dict:
    """Run one kernel variant (in its own process: a crash must not poison the others)."""
    from arcattn.kernels import configs, flash
    from arcattn.reference import attention_reference, rel_error
    g = torch.Generator(device="cuda").manual_seed(0)
    pad = 1 if v.get("unaligned") else 0  # row stride D + 1: no 16-byte alignment anywhere
    q, k, v_ = (torch.randn(1, 2, S, v["D"] + pad, device="cuda", generator=g).to(DT[v["dtype"]])[..., :v["D"]]
                for S in (512, v["Sk"], v["Sk"]))
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    flash.flash_attention(q, k, v_, out4=out, config=configs.TileConfig(*v["cfg"]), splits=1, causal=v["causal"],
                          head=tuple(v["head"]) if v["head"] else None)
    torch.cuda.synchronize()
    ref, _ = attention_reference(q, k, v_, causal=v["causal"])
    return dict(v, err=rel_error(out, ref))


def stage_probe(env):
    import concurrent.futures as cf
    t = time.time()

    def run(v):
        try:
            r = subprocess.run([sys.executable, __file__, "--probe-one", json.dumps(v)], capture_output=True, text=True,
                               timeout=120)
            line = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")]
            if line:
                return json.loads(line[-1][6:])
            err = (r.stderr.strip().splitlines() or ["?"])
            return dict(v, error=next((x for x in reversed(err) if "Error" in x), err[-1])[:200])
        except Exception as e:  # noqa: BLE001
            return dict(v, error=str(e)[:200])
    with cf.ThreadPoolExecutor(max_workers=12) as ex:
        res = list(ex.map(run, probe_variants()))
    env["probe"] = res
    for r in res:
        ok = "err" in r and r["err"] < TOL[r["dtype"]]
        log(f"probe {'ok ' if ok else 'BAD'} D={r['D']} head={r['head']} cfg={r['cfg']} Sk={r['Sk']} {r['dtype']}"
            f"{' causal' if r['causal'] else ''}{' unaligned' if r.get('unaligned') else ''}: "
            + (f"err {r['err']:.1e}" if "err" in r else f"FAILED {r['error']}"))
    main = res
    good = sum("err" in r and r["err"] < TOL[r["dtype"]] for r in main)
    env["probe_ok"] = f"{good}/{len(main)}"
    env["probe_clean"] = good == len(main)
    log(f"probe: {good}/{len(res)} correct, in {time.time() - t:.0f}s")
    bad = next((r for r in main if "err" not in r), None)
    if bad is not None and os.environ.get("PROBE_SANITIZER", "1") == "1":
        try:
            r = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--print-limit", "3", sys.executable, __file__,
                                "--probe-one", json.dumps({k: bad.get(k) for k in ("D", "head", "cfg", "Sk", "dtype", "causal", "unaligned")})],
                               capture_output=True, text=True, timeout=150)
            env["sanitizer"] = (r.stdout + r.stderr)[-6000:]
            log("compute-sanitizer on", {k: bad[k] for k in ("D", "head", "cfg", "Sk")}, "\n" + env["sanitizer"][-3500:])
        except Exception as e:  # noqa: BLE001
            log("compute-sanitizer failed:", e)


# ------------------------------------------------------------------------------------------------- stages

def stage_env(env):
    from arcattn.env import describe, versions
    env["describe"] = describe()
    env["versions"] = versions()
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                            "memory.total,power.limit", "--format=csv"], capture_output=True,
                                           text=True, timeout=20).stdout
    except Exception as e:  # noqa: BLE001
        env["nvidia_smi"] = str(e)
    props = torch.cuda.get_device_properties(0)
    env["sms"], env["l2_bytes"] = props.multi_processor_count, getattr(props, "L2_cache_size", None)
    log(env["describe"])
    log(env["nvidia_smi"].strip().replace("\n", " | "))
    # ceilings: copy bandwidth (bytes read + written) and a large bf16 matmul
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    for _ in range(10):
        y.copy_(x)
    en.record()
    en.synchronize()
    env["copy_TBps"] = 2 * (1 << 30) * 10 / (st.elapsed_time(en) * 1e-3) / 1e12
    del x, y
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    st.record()
    for _ in range(10):
        a @ b
    en.record()
    en.synchronize()
    env["bf16_mm_TFLOPs"] = 2 * 8192 ** 3 * 10 / (st.elapsed_time(en) * 1e-3) / 1e12
    del a, b
    log(f"ceilings: copy {env['copy_TBps']:.2f} TB/s, bf16 matmul {env['bf16_mm_TFLOPs']:.0f} TFLOP/s")


def stage_compile(env, jobs, label="compile"):
    import concurrent.futures as cf
    import multiprocessing as mp
    t = time.time()
    workers = int(os.environ.get("COMPILE_WORKERS", "12"))
    failures, times = [], []
    ctx = mp.get_context("spawn")
    # after a probe failure a kernel may crash its process: then one job per process, so a crash is attributed
    # to the job that caused it (and the sweep skips that case rather than poisoning the main process)
    per_child = None if env.get("probe_clean", True) else 1
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, max_tasks_per_child=per_child) as ex:
        futs = [ex.submit(compile_job, j) for j in jobs]
        try:
            for f in cf.as_completed(futs, timeout=max(30.0, min(150.0, left() - 250))):
                job, dt, err = f.result()
                times.append(dt)
                if err:
                    failures.append((job, err))
        except cf.TimeoutError:
            log("compile stage: timed out; the rest compiles on first use")
            for f in futs:
                f.cancel()
    env[label] = {"jobs": len(jobs), "wall_s": time.time() - t, "worker_s_median": statistics.median(times) if times else None,
                      "failures": [(str(j), e) for j, e in failures]}
    log(f"{label}: {len(jobs)} jobs in {time.time() - t:.0f}s wall ({len(failures)} failures)")
    for j, e in failures[:10]:
        log("  compile failure:", j, e)


def stage_sweep(results, env, start=0):
    """Cases from index `start` on; results saved after each; a CUDA fault ends this process (the parent
    restarts it after the faulting case)."""
    crashed = {j: e for j, e in env.get("compile_sweep", {}).get("failures", []) if "CUDA error" in e}
    real_empty = torch.empty

    def poisoned(*a, **k):
        t = real_empty(*a, **k)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t
    torch.empty = poisoned
    try:
        for i, c in enumerate(sweep_cases()):
            if i < start:
                continue
            if left() < 110:
                log("sweep: out of time")
                break
            t = time.time()
            crash = next((e for j, e in crashed.items() if str(c) in j), None)
            try:
                if crash:
                    raise RuntimeError(f"skipped: crashed in its compile worker: {crash[:150]}")
                err, lerr, plan = run_case(c)
                ok = err < TOL[c["dtype"]] and (lerr is None or lerr < 1e-4)
                r = dict(c, i=i, err=err, lse_err=lerr, ok=ok, plan=plan, s=time.time() - t)
            except Exception as e:  # noqa: BLE001
                r = dict(c, i=i, ok=False, error=f"{type(e).__name__}: {e}"[:400])
            results.append(r)
            save(TMP / "sweep.json", results)
            log(f"sweep {'PASS' if r['ok'] else 'FAIL'} {c['shape']} B={c['B']} {c['dtype']} {c['layout']}"
                f"{' strided' if c['strided'] else ''}{' causal' if c['causal'] else ''}{' lse' if c['lse'] else ''}"
                f": err {r.get('err', float('nan')):.2e}"
                + (f" lse {r['lse_err']:.1e}" if r.get("lse_err") is not None else "") + f" [{r.get('plan', r.get('error'))}]")
            if "CUDA error" in r.get("error", ""):
                sys.exit(3)
    finally:
        torch.empty = real_empty


def stage_tune(results, start=0):
    from arcattn.bench import graph_us, per_call_us
    from arcattn.kernels import flash
    for i, job in enumerate(tune_jobs()):
        if i < start:
            continue
        if left() < 200:
            log("tune: out of time")
            break
        s = shape(job["shape"])
        try:
            plan, sets, scale, H, Sq, Sk = tune_setup(job, n_sets=4)

            def fn(i, plan=plan, sets=sets):
                q, k, v, out, sq, sk, sv, so = sets[i % len(sets)]
                flash.launch(plan, q, k, v, out, None, sq, sk, sv, so, scale, H, Sq, Sk)
            stream_us = statistics.median(per_call_us(fn, torch.device(DEV), reps=9))
            gus = graph_us(lambda: fn(0), torch.device(DEV)) if DEV == "cuda" else None
            us = min(stream_us, gus or stream_us)
            flops = 4.0 * H * Sq * Sk * s["D"]
            r = dict(job, us=us, stream_us=stream_us, graph_us=gus, tflops=flops / (us * 1e-6) / 1e12,
                     plan=plan.describe())
        except Exception as e:  # noqa: BLE001
            r = dict(job, error=f"{type(e).__name__}: {str(e)[:200]}")
        r["i"] = i
        results.append(r)
        save(TMP / "tune.json", results)
        log(f"tune {job['shape']} {job['cfg']} head={job['head'] or 'split'}: "
            + (f"{r['us']:.1f} us {r['tflops']:.0f} TFLOP/s" if "us" in r else r["error"]))
        if "CUDA error" in r.get("error", ""):
            sys.exit(3)


def install_tuned(env, tune):
    """The fastest configuration per tuned shape becomes configs.TUNED['sm90'][(D, Sq bucket, Sk bucket, 1)],
    so the bench below runs what the tuned table will hold. Printed as Python for configs.py."""
    from arcattn.kernels import configs
    best = {}
    for r in tune:
        if "us" in r and (r["shape"] not in best or r["us"] < best[r["shape"]]["us"]):
            best[r["shape"]] = r
    table = {}
    for name, r in best.items():
        s = shape(name)
        key = (s["D"], configs.bucket(s["Sq"]), configs.bucket(s["Sk"]), 1)
        head = tuple(r["head"]) if r["head"] else None
        table[key] = (configs.TileConfig(*r["cfg"]), 1, head)
    configs.TUNED["sm90"].update(table)
    save(TMP / "tuned.json", [(k, tuple(v[0].__dict__.values())[:4], v[1], v[2]) for k, v in table.items()])
    env["tuned"] = {str(k): (v[0].short(), v[2]) for k, v in table.items()}
    lines = [f"        {k}: (TileConfig{tuple(v[0].__dict__.values())[:4]}, 1, {v[2]}),  # {n}"
             for (n, r), (k, v) in zip(best.items(), table.items())]
    log("tuned table (sm90):\n" + "\n".join(lines))


def stage_bench(env):
    from arcattn import bench
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    extra = os.environ.get("BENCH_ARGS", "--batch 1,2 --dtype fp16,bf16 --breakdown").split()
    args = p.parse_args(extra + ["--json", str(OUT / "bench.json"), "--reps", os.environ.get("BENCH_REPS", "11")])
    env["bench_rc"] = bench.run(args)
    import arcattn
    env["auto_decisions"] = arcattn.get_router().decisions()


def stage_launch(env):
    """CPU cost of one launch: Triton's own launcher (JITFunction.run) vs arcattn's cached direct launch, and
    whether both write the same bits."""
    from arcattn.bench import host_us
    from arcattn.call import make_call
    from arcattn.kernels import flash
    s = shape("sd15-512 mid self")
    H, D, Sq, Sk = s["H"], s["D"], s["Sq"], s["Sk"]
    q, k, v = make_inputs(s, 1, torch.float16, "bsd", False)
    call = make_call(q, k, v, heads=H)
    out, out4 = call.empty_out()
    sq, sk, sv, so = call.strides4(q), call.strides4(k), call.strides4(v), tuple(out4.stride())
    plan = flash.Plan(q.device, q.dtype, 1, H, Sq, Sk, D, causal=False, want_lse=False)
    al = plan.align
    div = lambda st: (st[0] // al, st[1] // al, st[2] // al, st[3])  # noqa: E731
    args = (q, k, v, out, out, out, out, out, call.scale * flash.LOG2E, H, Sq, Sk, *div(sq), *div(sk), *div(sv), *div(so))

    def triton_jit():
        flash._attn_fwd[plan.grid](*args, **plan.kwargs_al)

    def arcattn_launch():
        flash.launch(plan, q, k, v, out, None, sq, sk, sv, so, call.scale, H, Sq, Sk)

    out.fill_(float("nan"))
    triton_jit()
    torch.cuda.synchronize()
    ref = out.clone()
    out.fill_(float("nan"))
    arcattn_launch()
    torch.cuda.synchronize()
    env["launch"] = {"triton_jit_us": host_us(triton_jit, q.device, 2000, warmup=50),
                     "arcattn_launch_us": host_us(arcattn_launch, q.device, 2000, warmup=50),
                     "same_bits": bool(torch.equal(ref, out)), "fast_path": bool(plan.fast)}
    log("launch cost:", env["launch"])


def final_table(env, sweep, tune):
    print("\n================ summary ================")
    print(env.get("describe"))
    print(f"ceilings: copy {env.get('copy_TBps', 0):.2f} TB/s, bf16 mm {env.get('bf16_mm_TFLOPs', 0):.0f} TFLOP/s;"
          f" compile {env.get('compile_tune', {}).get('wall_s', 0):.0f}s + {env.get('compile_sweep', {}).get('wall_s', 0):.0f}s;"
          f" probe {env.get('probe_ok')}")
    if env.get("tuned"):
        print("tuned:", env["tuned"])
    if sweep:
        bad = [r for r in sweep if not r["ok"]]
        print(f"correctness: {len(sweep) - len(bad)}/{len(sweep)} pass; worst err per dtype: " + ", ".join(
            f"{dt} {max((r['err'] for r in sweep if r['dtype'] == dt and 'err' in r), default=0):.1e}"
            for dt in ("fp16", "bf16", "fp32")))
        for r in bad:
            print("  FAIL", {k: r[k] for k in r if k not in ("s",)})
    if tune:
        best = {}
        for r in tune:
            if "us" in r and (r["shape"] not in best or r["us"] < best[r["shape"]]["us"]):
                best[r["shape"]] = r
        for name, r in best.items():
            split = [x for x in tune if x["shape"] == name and x.get("head") is None and "us" in x]
            print(f"  tune best {name}: {r['cfg']} head={r['head'] or 'split'} {r['us']:.1f} us"
                  f" ({r['tflops']:.0f} TFLOP/s); best with split head: {min(x['us'] for x in split):.1f} us")
    if "launch" in env:
        print("launch:", env["launch"])
    try:
        from arcattn.bench import summary
        rows = json.load(open(OUT / "bench.json"))["rows"]
        print(summary(rows))
    except Exception as e:  # noqa: BLE001
        print("no bench summary:", e)


def main():
    env = {"stages": sorted(STAGES)}
    for f in ("sweep.json", "tune.json", "tuned.json", "launch.json", "bench_env.json", "irregular.json"):
        (TMP / f).unlink(missing_ok=True)

    def tuned_list():
        return load(TMP / "tuned.json", [])

    def tune_then_install():
        restartable("tune", "tune.json", len(tune_jobs()), reserve=300)
        install_tuned(env, load(TMP / "tune.json", []))

    stages = [("env", lambda: stage_env(env)),
              ("probe", lambda: stage_probe(env)),
              ("compile", lambda: "tune" in STAGES and stage_compile(env, [("tune", j) for j in tune_jobs()],
                                                                    "compile_tune")),
              ("tune", tune_then_install),
              ("compile", lambda: stage_compile(env, [("case", c, tuned_list()) for c in sweep_cases()],
                                                "compile_sweep")),
              ("sweep", lambda: (save(TMP / "env_for_sweep.json", {"compile_sweep": env.get("compile_sweep", {})}),
                                 restartable("sweep", "sweep.json", len(sweep_cases()), reserve=120))),
              ("bench", lambda: child("bench", reserve=25)),
              ("launch", lambda: child("launch", reserve=5))]
    for name, fn in stages:
        if name not in STAGES:
            continue
        log(f"== {name} ({left():.0f}s left)")
        try:
            fn()
        except Exception:  # noqa: BLE001
            log(f"stage {name} failed:\n{traceback.format_exc()}")
        for f in ("launch.json", "bench_env.json"):
            env.update(load(TMP / f, {}))
        save(OUT / "env.json", env)
        save(OUT / "sweep.json", load(TMP / "sweep.json", []))
        save(OUT / "tune.json", load(TMP / "tune.json", []))
    final_table(env, load(TMP / "sweep.json", []), load(TMP / "tune.json", []))


def child_main(stage, start):
    install_tuned_file()
    if stage == "tune":
        stage_tune(load(TMP / "tune.json", []), start)
    elif stage == "sweep":
        stage_sweep(load(TMP / "sweep.json", []), load(TMP / "env_for_sweep.json", {}), start)
    elif stage == "bench":
        env = {}
        stage_bench(env)
        save(TMP / "bench_env.json", env)
    elif stage == "launch":
        env = {}
        stage_launch(env)
        save(TMP / "launch.json", env)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--probe-one":
        print("PROBE " + json.dumps(probe_one(json.loads(sys.argv[2]))), flush=True)
    elif len(sys.argv) > 2 and sys.argv[1] == "--stage":
        child_main(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    else:
        main()
