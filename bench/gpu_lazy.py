"""One GPU visit: the flash kernel with lazy rescaling (LAZY) against its default, beside torch's SDPA kernels.

    PYTHONUNBUFFERED=1 python3 bench/gpu_lazy.py > $OUT/lazy.txt 2>&1

LAZY keeps each row's running maximum until some row's maximum has grown by more than 2^8, so most key blocks skip
the accumulator's rescale (FlashAttention-4's conditional rescaling, here as a block-uniform branch). Per shape
and batch: the plan the router would use, with and without LAZY, checked against a float64 reference on fresh
random inputs (output poisoned with NaN first, fp16 and bf16), then timed from CUDA-graph replays in three
interleaved rounds next to cuDNN and torch's default SDPA, on the caller's (B, S, H*D) tensors.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT") or "/tmp/arcattn_out")
OUT.mkdir(parents=True, exist_ok=True)

import torch  # noqa: E402

import gpu_variants as gv  # noqa: E402  (its SHAPES, inputs, reference and SDPA runners)
from arcattn.bench import graph_us  # noqa: E402
from arcattn.call import make_call  # noqa: E402
from arcattn.kernels import flash  # noqa: E402
from arcattn.reference import REFERENCE_TOL, rel_error  # noqa: E402

CASES = [("sd15-512 in1 self", (1, 2)), ("sd15-512 in2 self", (1, 2)), ("sdxl-1024 in2 self", (1, 2)),
         ("sdxl-1024 in3 self", (1, 2)), ("sd15-512 in3 self", (2,))]


def runner(s, B, dtype, lazy, seed):
    q, k, v = gv.inputs(s, B, dtype, seed)
    call = make_call(q, k, v, heads=s["H"])
    plan = flash.Plan(call.device, dtype, B, s["H"], s["Sq"], s["Sk"], s["D"], causal=False, want_lse=False,
                      lazy_rescale=lazy)
    out, out4 = call.empty_out()
    st = (call.strides4(q), call.strides4(k), call.strides4(v), tuple(out4.stride()))

    def fn():
        flash.launch(plan, q, k, v, out, None, *st, call.scale, s["H"], s["Sq"], s["Sk"])
    return fn, out, call, plan


def one(name, s, B):
    fns, errs, refs = dict(gv.sdpa_fns(s, B)), {}, {}
    for lazy in (False, True):
        label = "lazy" if lazy else "default"
        for dtype in (torch.float16, torch.bfloat16):
            fn, out, call, plan = runner(s, B, dtype, lazy, seed=7)
            out.fill_(float("nan"))
            fn()
            torch.cuda.synchronize()
            if dtype not in refs:  # same seed: the same inputs for both plans
                refs[dtype] = gv.reference(call)
            err = errs[f"{label} {str(dtype)[6:]}"] = rel_error(out, refs[dtype])
            if not err < REFERENCE_TOL[dtype]:
                print(f"{name} B={B} {label} {dtype}: WRONG {err:.2e}", flush=True)
        fns[label] = runner(s, B, torch.float16, lazy, seed=1)[0]
    times = {label: [] for label in fns}
    for _ in range(3):  # interleaved rounds
        for label, fn in fns.items():
            times[label].append(graph_us(fn, torch.device("cuda")))
    best = {label: min(t) for label, t in times.items()}
    print(f"{name} B={B} [{plan.describe()}] default {best['default']:.1f} us, lazy {best['lazy']:.1f} us "
          f"({best['default'] / best['lazy']:.3f}x), cuDNN {best['sdpa cudnn']:.1f}, SDPA default "
          f"{best['sdpa default']:.1f}; errors " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
    return dict(shape=name, B=B, plan=plan.describe(), us=best, rounds=times, errors=errs)


def main():
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{__import__('triton').__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    rows = []
    for name, batches in CASES:
        for B in batches:
            try:
                rows.append(one(name, gv.SHAPES[name], B))
            except Exception as e:  # noqa: BLE001 - one shape's failure (a compile error) must not end the visit
                print(f"{name} B={B}: {type(e).__name__}: {str(e)[:400]}", flush=True)
    (OUT / "lazy.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
