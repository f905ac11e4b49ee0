"""One GPU visit: kernel variants of the Triton flash kernel side by side with torch's SDPA kernels, per shape.

    GPU_VARIANTS=19 PYTHONUNBUFFERED=1 python3 bench/gpu_variants.py > $OUT/variants.txt 2>&1

For the large shapes, where the kernel trails or matches cuDNN (bench/NOTES_triton.md), and D = 80, and for each
tile configuration x head split (q/k and v/out: the default split, one padded part, or a split q/k with a padded
v), and the plan's own choice ("default", from configs.TUNED / the heuristic), this prints and saves
(variants.json under $OUT):
- the relative error against a float64 reference on fresh random inputs, output poisoned with NaN first
  (fp16; bf16 too for the default plan), and
- kernel time per call from CUDA-graph replays, in two interleaved rounds, next to torch SDPA's default choice,
  cuDNN and flash, all on the caller's (B, S, H*D) tensors viewed as (B, H, S, D).
Kernels are compiled first by a pool of worker processes (Triton's on-disk cache); every shape then runs in its
own child process, so a variant that faults cannot take the others with it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT") or "/tmp/arcattn_out")
OUT.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/triton_cache")

import torch  # noqa: E402

SHAPES = {s["name"]: s for s in json.load(open(ROOT / "bench" / "shapes.json"))["shapes"]}
SHAPES.update({n: dict(name=n, H=8, D=160, Sq=sq, Sk=77)  # SD1.5's two smallest cross-attentions
               for n, sq in (("sd15-512 in3 cross", 256), ("sd15-512 mid cross", 64))})
DEV = os.environ.get("GPU_SCRIPT_DEVICE", "cuda")  # "cpu" (TRITON_INTERPRET=1, tiny shapes): dry runs only
if DEV == "cpu":
    SHAPES = {n: dict(s, Sq=min(s["Sq"], 40), Sk=min(s["Sk"], 72)) for n, s in SHAPES.items()}
HYB40, HYB80 = (32, 16, 64, 0), (64, 16, 128, 0)  # q/k split, v padded (the sm90 default since visit 11)
C40 = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4), (64, 128, 4, 3), (128, 32, 8, 3)]
C64 = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (128, 64, 8, 4), (64, 128, 4, 3), (128, 128, 8, 3)]
C80 = [(64, 128, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3)]
# The case list of each visit (GPU_VARIANTS=11|12|18|19|25|33|36|37|49|50|62 picks one; results in
# bench/results/variants_visit*):
# (shape, batches, [(tile configuration (BM, BN, warps, stages[, key splits]) or None for the plan's own choice,
#                    head spec or None), ...])
VISITS = {
    # head splits: the plain split, one padded part, split q/k with a padded v; tiles at B = 1 and 2
    "11": [("sd15-512 in1 self", (1, 2), [(c, h) for c in C40 for h in (None, (64, 0), HYB40)]),
           ("sdxl-1024 in2 self", (1, 2), [(c, None) for c in C64]),
           ("sd21-512 in1 self", (1,), [(c, None) for c in C64[:3]]),
           ("sd15-1024 in1 self", (1,), [(c, h) for c in C40[:2] for h in (None, (64, 0), HYB40)]),
           ("sd15-512 in2 self", (1, 2), [(c, h) for c in C80 for h in (None, (128, 0), HYB80)])],
    # the plan's own choice after visit 11, and 256-row tiles
    "12": [("sd15-512 in1 self", (1, 2), [(None, None), ((128, 64, 8, 3), (32, 16)), ((128, 64, 8, 3), HYB40),
                                          ((256, 64, 16, 3), HYB40), ((256, 64, 16, 2), HYB40),
                                          ((128, 64, 8, 2), HYB40)]),
           ("sdxl-1024 in2 self", (1, 2), [(None, None), ((64, 64, 4, 3), None), ((128, 64, 8, 3), None),
                                           ((256, 64, 16, 3), None), ((256, 64, 16, 2), None)]),
           ("sd21-512 in1 self", (1, 2), [(None, None), ((64, 64, 4, 3), None), ((128, 64, 8, 3), None)]),
           ("sdxl-1024 in3 self", (1, 2), [(None, None), ((64, 64, 4, 3), None), ((128, 64, 8, 3), None)]),
           ("sd15-1024 in1 self", (1,), [(None, None), ((256, 64, 16, 3), HYB40)]),
           ("sd15-512 in2 self", (1, 2), [(None, None), ((64, 128, 4, 3), HYB80), ((128, 64, 8, 3), HYB80),
                                          ((256, 64, 16, 2), HYB80)])],
    # the padded v on the cross-attention shapes (77 keys) against the plain split; tensor descriptors (TMA on
    # Hopper, the XPU path) on the large shapes (a third element "desc")
    "18": [("sd15-512 in1 cross", (1, 2), [(None, None), ((128, 64, 4, 3), (32, 16)), ((128, 64, 4, 3), HYB40)]),
           ("sd15-512 in2 cross", (1, 2), [(None, None), ((64, 128, 4, 2), (64, 16)), ((64, 128, 4, 2), HYB80)]),
           ("sd15-512 in3 self", (1, 2), [(None, None), ((64, 64, 4, 3), (128, 32))]),
           ("sd15-512 in1 self", (1, 2), [(None, None), ((128, 64, 8, 3), HYB40, "desc"),
                                          ((128, 64, 8, 3), (32, 16), "desc"), ((64, 64, 4, 3), HYB40, "desc")]),
           ("sdxl-1024 in2 self", (1, 2), [(None, None), ((64, 64, 4, 3), None, "desc"),
                                           ((128, 64, 8, 3), None, "desc")]),
           ("sd15-1024 in1 self", (1,), [(None, None), ((128, 64, 8, 3), HYB40, "desc")])],
    # tiles at B = 2 for the shapes tuned at B = 1 only (and two cross-attentions never tuned)
    "19": [("sd15-512 in1 cross", (2,), [(None, None)] + [(c, None) for c in (
               (128, 128, 8, 2), (64, 128, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 4, 2))]),
           ("sd15-512 in2 self", (2,), [(None, None)] + [(c, HYB80) for c in (
               (64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 2), (128, 64, 8, 4))]),
           ("sd15-512 in2 cross", (2,), [(None, None)] + [(c, None) for c in (
               (128, 128, 8, 2), (64, 64, 4, 3), (32, 128, 4, 2), (128, 128, 4, 2), (128, 64, 8, 3))]),
           ("sd15-512 in3 self", (2,), [(None, None)] + [(c, None) for c in (
               (64, 64, 4, 2), (32, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2), (128, 64, 8, 2))]),
           ("sd15-512 in3 cross", (1, 2), [(None, None)] + [(c, None) for c in (
               (64, 128, 4, 2), (32, 128, 4, 2), (64, 64, 4, 3), (32, 64, 4, 2))]),
           ("sd15-512 mid cross", (1, 2), [(None, None)] + [(c, None) for c in (
               (64, 128, 4, 2), (32, 128, 4, 2), (32, 64, 4, 2))]),
           ("sd15-512 mid self", (2,), [(None, None)] + [(c, None) for c in (
               (64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2))]),
           ("sdxl-1024 in2 cross", (2,), [(None, None)] + [(c, None) for c in (
               (128, 128, 8, 2), (128, 128, 4, 2), (64, 128, 4, 2), (128, 64, 8, 3))]),
           ("sdxl-1024 in3 self", (2,), [(None, None)] + [(c, None) for c in (
               (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2), (64, 64, 4, 4), (64, 32, 4, 3),
               (128, 64, 8, 3), (64, 64, 4, 2))]),
           ("sdxl-1024 in3 cross", (2,), [(None, None)] + [(c, None) for c in (
               (128, 128, 8, 2), (64, 128, 4, 2), (32, 128, 4, 2), (128, 64, 4, 3))])],
}
# key splits on the shapes whose grids leave most SMs idle at B = 1 (SD1.5 in2/in3/mid: 128, 32 and 16 programs
# on 132 SMs), and a few smaller tiles beside them
VISITS["25"] = [
    ("sd15-512 in2 self", (1, 2), [(None, None)] + [(c, HYB80) for c in (
        (64, 128, 4, 3, 2), (64, 128, 4, 3, 4), (64, 64, 4, 3, 2), (64, 64, 4, 3, 4), (32, 64, 4, 3, 1),
        (32, 64, 4, 3, 2), (128, 64, 8, 3, 2))]),
    ("sd15-512 in3 self", (1, 2), [(None, None)] + [(c, None) for c in (
        (64, 64, 4, 3, 2), (64, 64, 4, 3, 4), (64, 32, 4, 3, 2), (64, 32, 4, 3, 4), (64, 32, 4, 3, 8),
        (32, 32, 4, 2, 4), (32, 64, 4, 2, 2), (32, 64, 4, 3, 4))]),
    ("sd15-512 mid self", (1, 2), [(None, None)] + [(c, None) for c in (
        (32, 32, 4, 2, 2), (32, 16, 4, 2, 4), (32, 32, 4, 2, 1), (64, 32, 4, 2, 2))]),
    ("sd15-512 in3 cross", (1,), [(None, None)] + [(c, None) for c in (
        (32, 128, 4, 2), (32, 128, 8, 2), (32, 64, 8, 2))]),
    ("sdxl-1024 in3 self", (1,), [(None, None)] + [(c, None) for c in (
        (64, 64, 4, 3, 2), (128, 64, 8, 3, 2), (64, 128, 4, 3, 2))]),
]
# output column windows (TileConfig.value_parts; "vp2" / "vp3" after the head spec): more programs with
# narrower accumulators for the shapes whose grids leave most SMs idle at B = 1
VISITS["33"] = [
    ("sd15-512 in3 self", (1, 2), [(None, None), ((64, 64, 4, 3), None, "vp2"), ((64, 64, 4, 3), None, "vp3"),
                                   ((32, 64, 4, 2), None, "vp3"), ((64, 32, 4, 3), None, "vp3"),
                                   ((32, 64, 4, 2), None, "vp2"), ((64, 128, 4, 2), None, "vp3")]),
    ("sd15-512 in3 cross", (1, 2), [(None, None), ((64, 64, 4, 3), None, "vp3"), ((32, 64, 4, 2), None, "vp3"),
                                    ((64, 64, 4, 3), None, "vp2"), ((64, 128, 4, 2), None, "vp3"),
                                    ((32, 128, 4, 2), None, "vp3")]),
    ("sd15-512 mid self", (1, 2), [(None, None), ((32, 32, 4, 2), None, "vp3"), ((64, 64, 4, 2), None, "vp3"),
                                   ((32, 64, 4, 2), None, "vp2"), ((32, 64, 4, 2), None, "vp3")]),
    ("sd15-512 mid cross", (1, 2), [(None, None), ((32, 64, 4, 2), None, "vp3"), ((64, 64, 4, 2), None, "vp3"),
                                    ((32, 128, 4, 2), None, "vp3")]),
    ("sd15-512 in2 self", (1, 2), [(None, None), ((64, 64, 4, 3), (64, 16), "vp2"), ((64, 128, 4, 3), (64, 16), "vp2"),
                                   ((128, 64, 8, 3), (64, 16), "vp2"), ((64, 64, 4, 3), (64, 16))]),
    ("sd15-512 in2 cross", (1, 2), [(None, None), ((64, 64, 4, 3), (64, 16), "vp2"),
                                    ((64, 128, 4, 2), (64, 16), "vp2")]),
]
# narrower windows (vp5: 32 columns of D 160) and three windows on D 80, after visit 33's entries
VISITS["36"] = [
    ("sd15-512 in3 self", (1, 2), [(None, None), ((64, 64, 4, 3), None, "vp5"), ((64, 32, 4, 3), None, "vp5"),
                                   ((64, 128, 4, 2), None, "vp5")]),
    ("sd15-512 in3 cross", (1, 2), [(None, None), ((64, 64, 4, 3), None, "vp5"), ((64, 128, 4, 2), None, "vp5"),
                                    ((64, 128, 4, 2), None, "vp3")]),
    ("sd15-512 mid self", (1, 2), [(None, None), ((64, 64, 4, 2), None, "vp5"), ((64, 32, 4, 2), None, "vp5")]),
    ("sd15-512 mid cross", (1, 2), [(None, None), ((64, 64, 4, 2), None, "vp5"), ((64, 128, 4, 2), None, "vp3"),
                                    ((64, 128, 4, 2), None, "vp5")]),
    ("sd15-512 in2 self", (1,), [(None, None), ((64, 64, 4, 3), (64, 16), "vp3"), ((64, 128, 4, 3), (64, 16), "vp3")]),
    ("sd15-512 in2 cross", (1,), [(None, None), ((64, 128, 4, 2), (64, 16), "vp3"), ((64, 64, 4, 3), (64, 16), "vp3")]),
]
# SD1.5's remaining Triton shapes at B = 1 (in1 cross, in2 self / cross): windows on D 40, other tiles
H80P = (64, 16, 128, 0)
VISITS["37"] = [
    ("sd15-512 in1 cross", (1,), [(None, None), ((128, 64, 4, 3), HYB40, "vp2"), ((64, 64, 4, 3), HYB40, "vp2"),
                                  ((64, 128, 4, 2), HYB40), ((128, 128, 4, 2), HYB40, "vp2"), ((128, 128, 8, 2), HYB40)]),
    ("sd15-512 in2 self", (1,), [(None, None), ((64, 128, 4, 2), H80P), ((64, 128, 8, 3), H80P), ((64, 64, 4, 4), H80P),
                                 ((64, 128, 4, 4), H80P)]),
    ("sd15-512 in2 cross", (1,), [(None, None), ((32, 128, 4, 2), (64, 16)), ((64, 128, 4, 2), H80P),
                                  ((64, 128, 8, 2), (64, 16)), ((64, 128, 4, 3), (64, 16))]),
]
# Visit 28 (kernel switches ROWSUM / QTAIL_LOAD, given as a dict after the head spec) ran at commit 2b26a56; the
# switches were removed after it (bench/NOTES_triton.md), and its case list with them.
# Visit 32 (keys in two streams per program, TileConfig.key_halves, "kh" after the head spec) ran at commit 73c99f8;
# removed after it the same way.
# the short-keys kernel (kernels/short_keys.py; "qtN" after the head spec: N query tiles per program) on every
# cross-attention shape of SD1.5 and SDXL, beside the flash kernel's own choice
def _short(tiles):
    return [(None, None)] + [(c, None, f"qt{n}") for c, n in tiles]


VISITS["49"] = [
    ("sd15-512 in1 cross", (1, 2), _short([((128, 64, 8, 3), 1), ((128, 64, 8, 3), 2), ((128, 64, 8, 3), 4),
                                           ((128, 64, 4, 3), 1), ((128, 64, 4, 3), 2), ((128, 64, 4, 3), 4),
                                           ((64, 64, 4, 3), 2), ((64, 64, 4, 3), 4), ((64, 64, 4, 3), 8),
                                           ((128, 64, 8, 2), 2)])),
    ("sdxl-1024 in2 cross", (1, 2), _short([((128, 64, 8, 3), 1), ((128, 64, 8, 3), 2), ((128, 64, 8, 3), 4),
                                            ((128, 64, 4, 3), 1), ((128, 64, 4, 3), 2), ((64, 64, 4, 3), 2),
                                            ((64, 64, 4, 3), 4)])),
    ("sd15-512 in2 cross", (1, 2), _short([((64, 64, 4, 3), 1), ((64, 64, 4, 3), 2), ((64, 64, 4, 3), 4),
                                           ((128, 64, 8, 3), 1), ((128, 64, 8, 3), 2), ((128, 64, 4, 2), 1),
                                           ((64, 64, 4, 2), 2)])),
    ("sdxl-1024 in3 cross", (1, 2), _short([((64, 64, 4, 3), 1), ((64, 64, 4, 3), 2), ((64, 64, 4, 3), 4),
                                            ((128, 64, 8, 3), 1), ((128, 64, 8, 3), 2), ((128, 64, 4, 3), 1)])),
    ("sd15-512 in3 cross", (1, 2), _short([((64, 64, 4, 2), 1), ((32, 64, 4, 2), 1), ((64, 64, 8, 2), 1),
                                           ((32, 64, 4, 2), 2)])),
    ("sd15-512 mid cross", (1, 2), _short([((64, 64, 4, 2), 1), ((32, 64, 4, 2), 1), ((64, 64, 8, 2), 1)])),
]
# a long prompt (two 77-token chunks, as ComfyUI concatenates them): 154 keys, past the rule's 128 (128 + 32
# score columns), against the flash kernel's heuristic choice
for _n in ("sd15-512 in1 cross", "sd15-512 in2 cross", "sdxl-1024 in2 cross", "sdxl-1024 in3 cross"):
    SHAPES[_n + " 154"] = dict(SHAPES[_n], name=_n + " 154", Sk=154)
VISITS["50"] = [
    (n + " 154", (1, 2), _short([((64, 64, 4, 3), 1), ((64, 64, 4, 3), 2), ((64, 64, 4, 3), 4), ((64, 64, 4, 2), 2),
                                 ((128, 64, 8, 3), 1), ((128, 64, 8, 3), 2)]))
    for n in ("sd15-512 in1 cross", "sd15-512 in2 cross", "sdxl-1024 in2 cross", "sdxl-1024 in3 cross")]
# register caps (ptxas .maxnreg, "rN"): more programs resident per SM. SDXL's 1024^2 self-attention at B = 2 has
# 640 programs of 64 x 64 where 3 fit per SM (131 registers, 56 KB of shared memory): 1.6 waves on 132 SMs; with
# two stages and 96 registers 5 fit and one wave holds them all. The "1024^2 H n" probes (B = 1, the plan's own
# choice) measure the wave steps directly: 3 per SM x 132 = 396 programs per wave, 16 per head.
for _h in (12, 20, 24, 26, 36, 40, 48, 50, 60, 74):
    SHAPES[f"1024^2 H {_h}"] = dict(name=f"1024^2 H {_h}", H=_h, D=64, Sq=1024, Sk=1024)
    if DEV == "cpu":
        SHAPES[f"1024^2 H {_h}"].update(H=2, Sq=40, Sk=72)
VISITS["62"] = [
    ("sdxl-1024 in3 self", (1, 2), [(None, None), ((64, 64, 4, 3), None, "r128"), ((64, 64, 4, 3), None, "r104"),
                                    ((64, 64, 4, 2), None), ((64, 64, 4, 2), None, "r128"),
                                    ((64, 64, 4, 2), None, "r104"), ((64, 64, 4, 2), None, "r96"),
                                    ((64, 32, 4, 3), None, "r80"), ((64, 32, 4, 4), None),
                                    ((128, 64, 8, 3), None, "r112")]),
    ("sdxl-1024 in2 self", (2,), [(None, None), ((64, 64, 4, 2), None, "r96"), ((64, 64, 4, 2), None, "r104"),
                                  ((64, 64, 4, 3), None, "r104")]),
    ("sd15-512 in2 self", (2,), [(None, None), ((128, 64, 8, 3), HYB80, "r128"), ((64, 64, 4, 2), HYB80, "r128"),
                                 ((64, 64, 4, 3), HYB80, "r128")]),
    ("sd15-512 in1 self", (2,), [(None, None), ((128, 64, 8, 3), HYB40, "r112"), ((64, 64, 4, 2), HYB40, "r96"),
                                 ((64, 64, 4, 3), HYB40, "r104")]),
] + [(f"1024^2 H {_h}", (1,), [(None, None)]) for _h in (12, 20, 24, 26, 36, 40, 48, 50, 60, 74)]
CASES = VISITS[os.environ.get("GPU_VARIANTS", "50")]


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def inputs(s, B, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    HD = s["H"] * s["D"]
    mk = lambda S: torch.randn(B, S, HD, device=DEV, generator=g).to(dtype)  # noqa: E731
    return mk(s["Sq"]), mk(s["Sk"]), mk(s["Sk"])


def marker(more, prefix, default):
    """N from a "<prefix>N" element after a variant's head spec, else default: "vpN" output column windows,
    "qtN" the short-keys kernel's query tiles per program, "rN" a register cap per thread."""
    return next((int(m[len(prefix):]) for m in more
                 if isinstance(m, str) and m.startswith(prefix) and m[len(prefix):].isdigit()), default)


def plan_for(s, B, dtype, cfg, head, desc=False, vp=1, qt=0, mr=None):
    from arcattn.kernels import configs, flash
    return flash.Plan(torch.device(DEV), dtype, B, s["H"], s["Sq"], s["Sk"], s["D"], causal=False,
                      want_lse=False,
                      config=(configs.TileConfig(*cfg[:4], value_parts=vp, q_tiles=qt, max_registers=mr)
                              if cfg else None),
                      splits=(cfg[4] if len(cfg) > 4 else 1) if cfg else None, head=head,
                      use_descriptors=desc or None)


def runner(s, B, dtype, cfg, head, seed=0, desc=False, vp=1, qt=0, mr=None):
    """(fn, q, k, v, out): fn() runs the kernel on the caller's (B, S, H*D) tensors."""
    from arcattn.kernels import flash
    from arcattn.call import make_call
    plan = plan_for(s, B, dtype, cfg, head, desc, vp, qt, mr)
    if desc:
        flash._ensure_allocator(torch.device(DEV))
    q, k, v = inputs(s, B, dtype, seed)
    call = make_call(q, k, v, heads=s["H"])
    out, out4 = call.empty_out()
    st = (call.strides4(q), call.strides4(k), call.strides4(v), tuple(out4.stride()))
    def fn():
        flash.launch(plan, q, k, v, out, None, *st, call.scale, s["H"], s["Sq"], s["Sk"])
    fn.plan = plan
    return fn, q, k, v, out, call


def compile_one(job):
    name, B, dt, cfg, head, *more = job
    try:
        fn = runner(SHAPES[name], B, getattr(torch, dt), cfg, head, desc="desc" in more, vp=marker(more, "vp", 1),
                    qt=marker(more, "qt", 0), mr=marker(more, "r", None))[0]
        fn()
        sync()
        return None
    except Exception as e:  # noqa: BLE001
        return f"{name} {cfg} {head}: {type(e).__name__}: {str(e)[:160]}"


def reference(call):
    """float64 attention in the caller's layout, a few query rows of one (batch, head) at a time."""
    from arcattn.reference import attention_reference_chunked
    return call.to_caller(attention_reference_chunked(call.q4, call.k4, call.v4, scale=call.scale,
                                                      budget_bytes=1 << 28)[0])


def sdpa_fns(s, B):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    q, k, v = inputs(s, B, torch.float16, 1)
    H, D = s["H"], s["D"]
    v4 = lambda x: x.view(B, -1, H, D).transpose(1, 2)  # noqa: E731
    qh, kh, vh = v4(q), v4(k), v4(v)

    def make(backend):
        def fn():
            if backend is None:
                return F.scaled_dot_product_attention(qh, kh, vh)
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qh, kh, vh)
        return fn
    return {"sdpa default": make(None), "sdpa cudnn": make(SDPBackend.CUDNN_ATTENTION),
            "sdpa flash": make(SDPBackend.FLASH_ATTENTION)}


def cfg_is_default(row):
    return row.get("cfg") is None and "plan" in row


def shape_main(name):
    from arcattn.bench import graph_us
    s = SHAPES[name]
    batches, variants = next((b, v) for n, b, v in CASES if n == name)
    from arcattn.reference import REFERENCE_TOL, rel_error
    rows, refs = [], {}
    for B in batches:
        fns = {}
        for label, fn in sdpa_fns(s, B).items():
            fns[label] = fn
        for cfg, head, *more in variants:
                desc, vp, qt, mr = ("desc" in more, marker(more, "vp", 1), marker(more, "qt", 0),
                                    marker(more, "r", None))
                label = (f"{cfg} head={head or 'split'}" + (" desc" if desc else "") + (f" vp{vp}" if vp > 1 else "")
                         + (f" short qt{qt}" if qt else "") + (f" r{mr}" if mr else "") if cfg else "default")
                row = dict(shape=name, B=B, cfg=cfg, head=head, label=label)
                try:
                    for dtype in ((torch.float16, torch.bfloat16) if cfg is None or qt else (torch.float16,)):
                        fn, q, k, v, out, call = runner(s, B, dtype, cfg, head, seed=7, desc=desc, vp=vp, qt=qt, mr=mr)
                        out.fill_(float("nan"))
                        fn()
                        sync()
                        if (B, dtype) not in refs:  # same seed, same inputs: one reference per batch/dtype
                            refs[(B, dtype)] = reference(call)
                        err = rel_error(out, refs[(B, dtype)])
                        row["plan"] = fn.plan.describe()
                        for ck, _ in (fn.plan.fast or {}).values():  # registers and spills of the compiled kernel
                            row["regs"], row["spills"] = getattr(ck, "n_regs", None), getattr(ck, "n_spills", None)
                        row["err_" + str(dtype)[6:]] = err
                        if not err < REFERENCE_TOL[dtype]:
                            row["wrong"] = True
                    if not row.get("wrong"):
                        fns[label] = runner(s, B, torch.float16, cfg, head, desc=desc, vp=vp, qt=qt, mr=mr)[0]
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                rows.append(row)
        times = {label: [] for label in fns}
        for _ in range(2):  # interleaved rounds
            for label, fn in fns.items():
                times[label].append(graph_us(fn, torch.device(DEV)) if DEV == "cuda" else 1.0)
        best = {label: min(t for t in ts if t is not None) for label, ts in times.items() if any(ts)}
        cudnn = best.get("sdpa cudnn") or best.get("sdpa default")
        for label in ("sdpa default", "sdpa cudnn", "sdpa flash"):
            if label in best:
                rows.append(dict(shape=name, B=B, method=label, us=best[label]))
                log(f"{name} B={B} {label}: {best[label]:.1f} us")
        for row in rows:
            if row.get("B") != B or "cfg" not in row:
                continue
            label = row["label"]
            if label in best:
                row["us"] = best[label]
                row["rounds"] = times[label]
                row["vs_cudnn"] = cudnn / best[label]
            log(f"{name} B={B} {label}: " + (f"{row['us']:.1f} us  x{row['vs_cudnn']:.2f} of cuDNN" if "us" in row
                                            else "") + "".join(f"  {k}={row[k]:.1e}" for k in row if k.startswith("err_"))
                + (f"  [{row['plan']}]" if cfg_is_default(row) else "")
                + (f"  regs={row.get('regs')} spills={row.get('spills')}" if "regs" in row else "")
                + ("  WRONG" if row.get("wrong") else "") + (f"  {row['error']}" if "error" in row else ""))
    json.dump(rows, open(OUT / f"v_{name.replace(' ', '_')}.json", "w"), indent=1, default=str)


def main():
    t0 = time.time()
    from arcattn import env
    log(env.describe() if hasattr(env, "describe") else torch.__version__)
    jobs = [(n, b[0], "float16", *v) for n, b, vs in CASES for v in vs]
    jobs += [(n, b, "float16", *v) for n, bs, vs in CASES for b in bs[1:] for v in vs if v[0] is None]
    jobs += [(n, b, "bfloat16", *v) for n, bs, vs in CASES for b in bs for v in vs
             if v[0] is None or marker(v[2:], "qt", 0) and b == bs[0]]
    with ProcessPoolExecutor(8 if DEV == "cuda" else 2) as ex:
        for r in ex.map(compile_one, jobs):
            if r:
                log("compile:", r)
    log(f"compiled {len(jobs)} kernels in {time.time() - t0:.0f} s")
    allrows = []
    for name, _, _ in CASES:
        p = subprocess.run([sys.executable, __file__, "--shape", name], timeout=240)
        if p.returncode:
            log(f"{name}: child exited {p.returncode}")
        f = OUT / f"v_{name.replace(' ', '_')}.json"
        if f.exists():
            allrows += json.load(open(f))
            f.unlink()
    json.dump(allrows, open(OUT / "variants.json", "w"), indent=1)
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--shape":
        shape_main(sys.argv[2])
    else:
        import multiprocessing
        multiprocessing.set_start_method("spawn")
        main()
