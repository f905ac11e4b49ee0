"""Probe (issue 5, fifteenth session): Triton's automatic warp specialisation on Hopper, against cuDNN.

Every earlier attempt at FA3's overlap of softmax and tensor-core work was written by hand (AHEAD, two query
halves, a second stream, Gluon with hand-placed waits; bench/NOTES_triton.md) and lost. One route was never
tried: `tl.range(..., warp_specialize=True)`. Compiled here for sm_90, Triton 3.6 and 3.9 both turn this
file's key loop into a producer warp group (TMA loads, 40 registers) and two consumer warp groups of 64 query
rows each (232 registers): FA3's layout, chosen by the compiler. The probe asks whether that is fast enough to
matter for the B = 2 targets: SD1.5's D = 40 4096^2 call needs about 138 us at B = 2 (cuDNN 150-152 us, the
production Triton kernel 174 us, H100), SDXL's 1024^2 D = 64 calls about 27 us (cuDNN / Triton 31-33 us).

The kernel is minimal on purpose: the hosts' layout (B, S, H*D), contiguous, read through one 2-D tensor
descriptor per tensor (rows b*S.., columns h*D..); no causal mask. Where S is not a multiple of the key tile, every
key block masks keys past S (the last block's rows there are the next batch's; the compiler gives up the warp
specialisation for a separate masked last block); a partial query tile stores only its rows below S. A head
narrower than its power-of-two pad (D = 40 -> 64) reads the next head's columns for k and v: q's pad columns
are zeroed so they add nothing to the scores, and the output's pad columns are never stored.
Each variant is checked against a float64 reference first (output poisoned with NaN) and timed only when right;
each warp-specialised one runs in a child process that is killed after 30 s.

Outcome (H100, torch 2.11, Triton 3.6; bench/RESULTS.md, fifteenth and sixteenth sessions): with descriptors made
on the host every warp-specialised variant hung (visits 83-84). With descriptors made on the device none hung, but
this kernel's form leaves the second 64 rows of every 128-row tile unwritten and the first 64 wrong (visits
85-86); the tutorial form (below) is right at 2 stages, wrong at 3, and about 1.47x slower than the production
kernel (visits 86-87). Not adopted. The plain variants run right, behind cuDNN and the production kernel.

    PYTHONUNBUFFERED=1 python3 bench/gpu_autows.py > $OUT/autows.txt 2>&1

`HopperWSBackend` (below) serves the same kernel to arcattn's router for `bench/unet.py --extra-backend
gpu_autows:HopperWSBackend`; `bench/gpu_autows.sh` is the whole visit.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from arcattn.backends.base import Backend  # noqa: E402
OUT = Path(os.environ.get("OUT") or "/tmp/arcattn_out")
LOG2E = 1.4426950408889634


@triton.jit
def _ws_fwd(qd, kd, vd, O, SQ, SK, H, B, qk_scale, D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, WS: tl.constexpr, EVEN_N: tl.constexpr, ON_DEVICE: tl.constexpr,
            TUTORIAL: tl.constexpr):
    if ON_DEVICE:  # qd, kd, vd are the tensors' pointers: the descriptors are made here, in global scratch
        qd = tl.make_tensor_descriptor(qd, shape=[B * SQ, H * D], strides=[H * D, 1], block_shape=[BLOCK_M, DP])
        kd = tl.make_tensor_descriptor(kd, shape=[B * SK, H * D], strides=[H * D, 1], block_shape=[BLOCK_N, DP])
        vd = tl.make_tensor_descriptor(vd, shape=[B * SK, H * D], strides=[H * D, 1], block_shape=[BLOCK_N, DP])
    bh = tl.program_id(1)
    b = bh // H
    col = (bh % H) * D
    row0 = b * SQ + tl.program_id(0) * BLOCK_M
    q = qd.load([row0, col])
    if DP > D:  # the pad columns hold the next head (or zeros past the last): they must not reach the scores
        q = tl.where((tl.arange(0, DP) < D)[None, :], q, tl.zeros_like(q))
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    for n in tl.range(0, SK, BLOCK_N, warp_specialize=WS):
        k = kd.load([b * SK + n, col])
        s = tl.dot(q, k.T)
        if not EVEN_N:  # keys past S (the next batch's rows, or zeros) count for nothing
            s = tl.where((n + tl.arange(0, BLOCK_N) < SK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = vd.load([b * SK + n, col])
        if TUTORIAL:  # the rescale as its own step, as in Triton's fused-attention tutorial
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    if TUTORIAL:  # whole tiles, D a power of two: the tutorial's descriptor store
        od = tl.make_tensor_descriptor(O, shape=[B * SQ, H * D], strides=[H * D, 1], block_shape=[BLOCK_M, DP])
        od.store([row0, col], out)
    else:
        rows = row0 + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, DP)
        keep = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M) < SQ)[:, None] & (cols < D)[None, :]
        tl.store(O + rows[:, None] * (H * D) + (col + cols)[None, :], out, mask=keep)


def full_config(cfg: tuple) -> tuple:
    """A config of 5 to 7 entries as all 7: (BLOCK_M, BLOCK_N, warps, stages, warp_specialize, descriptors made
    on the device, tutorial form); the last two default to False."""
    on_device, tutorial = (tuple(cfg[5:]) + (False, False))[:2]
    return (*cfg[:5], bool(on_device), bool(tutorial))


def tutorial_fits(block_m: int, Sq: int, D: int) -> bool:
    """The tutorial form's descriptor store writes whole BLOCK_M x D tiles: whole query tiles, D a power of two."""
    return Sq % block_m == 0 and D & (D - 1) == 0


def ws_attention(q, k, v, out, H: int, cfg: tuple, scale: float = None) -> None:
    """q (B, Sq, H*D), k and v (B, Sk, H*D), out like q; all contiguous fp16 / bf16. cfg: (BLOCK_M, BLOCK_N,
    warps, stages, warp_specialize[, descriptors made on the device[, tutorial form]]). Host-made descriptors
    with warp specialisation hung on the H100 (visits 83-84); Triton's Hopper warp specialisation supports FA's data
    partitioning only with on-device ones (triton-lang/triton PR 7658). The tutorial form (on-device descriptors
    only) rescales the accumulator as its own step and stores through a descriptor, as Triton's fused-attention
    tutorial does: it needs whole query tiles and a power-of-two D."""
    bm, bn, warps, stages, ws, on_device, tutorial = full_config(cfg)
    B, Sq, HD = q.shape
    Sk = k.shape[1]
    D = HD // H
    DP = triton.next_power_of_2(D)
    if tutorial and not (on_device and tutorial_fits(bm, Sq, D)):
        raise ValueError("the tutorial form needs on-device descriptors, whole query tiles and a power-of-two D")
    if on_device:
        qd, kd, vd = q, k, v
    else:
        from triton.tools.tensor_descriptor import TensorDescriptor
        qd = TensorDescriptor.from_tensor(q.view(B * Sq, HD), [bm, DP])
        kd = TensorDescriptor.from_tensor(k.view(B * Sk, HD), [bn, DP])
        vd = TensorDescriptor.from_tensor(v.view(B * Sk, HD), [bn, DP])
    scale = D ** -0.5 if scale is None else scale
    _ws_fwd[(triton.cdiv(Sq, bm), B * H)](qd, kd, vd, out, Sq, Sk, H, B, scale * LOG2E, D=D, DP=DP, BLOCK_M=bm,
                                          BLOCK_N=bn, WS=ws, EVEN_N=Sk % bn == 0, ON_DEVICE=on_device,
                                          TUTORIAL=tutorial, num_warps=warps, num_stages=stages)


class HopperWSBackend(Backend):
    """This kernel as an arcattn backend, for `bench/unet.py --extra-backend gpu_autows:HopperWSBackend` (bench
    only: it is not in arcattn's registry). It serves fp16 / bf16 calls in the hosts' (B, S, H*D) layout,
    contiguous, in and out, with 16 <= D <= 128, no mask, not causal, on a Hopper GPU (or on the CPU in Triton's
    interpreter). ARCATTN_WS_CONFIG="BLOCK_M,BLOCK_N,warps,stages" picks its tile (default 128,64,4,2); it is
    always warp-specialised, with descriptors made on the device, in the probe's own form: wrong on the H100 with
    Triton 3.6 (visits 85-86), so `auto`'s check against SDPA would refuse it there."""
    name = "triton_ws"
    description = "bench probe: Triton flash kernel with automatic warp specialisation (Hopper)"
    device_types = ("cuda", "cpu")
    dtypes = (torch.float16, torch.bfloat16)
    max_head_dim = 128

    def __init__(self):
        c = os.environ.get("ARCATTN_WS_CONFIG", "128,64,4,2")
        self.cfg = tuple(int(x) for x in c.split(",")) + (True, True)

    def probe(self):
        if not hasattr(tl, "make_tensor_descriptor"):
            return f"Triton {triton.__version__} has no tl.make_tensor_descriptor"
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
            return "needs a Hopper GPU (compute capability 9.x)"
        triton.set_allocator(_scratch)
        return None

    def extra_reasons(self, call):
        reasons = []
        if call.layout != "bsd" or call.out_layout != "bsd":
            reasons.append("only the (B, S, H*D) layout, in and out")
        elif not all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (call.q, call.k, call.v)):
            reasons.append("q, k, v must be contiguous and 16-byte aligned")
        if call.D < 16 or (call.H * call.D) % 8:
            reasons.append("head dim < 16, or rows not a multiple of 16 bytes")
        if (call.device.type == "cpu") != (os.environ.get("TRITON_INTERPRET") == "1"):
            reasons.append("on the CPU only in Triton's interpreter; on a GPU only compiled")
        return reasons

    def run(self, call):
        out = torch.empty(call.q.shape, dtype=call.dtype, device=call.device)
        ws_attention(call.q, call.k, call.v, out, call.H, self.cfg, call.scale)
        return out


def _scratch(size: int, align: int, stream):
    """Global scratch for descriptors made on the device."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


SHAPES = [("sd15-512 in1 self", 8, 4096, 40), ("sdxl-1024 in2 self", 10, 4096, 64),
          ("sdxl-1024 in3 self", 20, 1024, 64), ("sd15-512 in2 self", 8, 1024, 80),
          ("sdxl 832x1216 in2 self (S not a multiple of 64)", 10, 3952, 64),
          ("sd15-512 in1 cross (77 keys)", 8, 4096, 40, 77)]  # (name, H, Sq, D[, Sk])
# (BLOCK_M, BLOCK_N, warps, stages, warp_specialize[, descriptors made on the device[, tutorial form]]); with warp
# specialisation, warps are per partition. The last entry has host-made descriptors, like the variants that hung in
# visits 83-84 (AUTOWS_NO_HOST_WS=1 leaves it out).
CONFIGS = [(128, 64, 8, 3, False), (128, 64, 8, 3, False, True), (128, 64, 8, 3, False, True, True),
           (128, 64, 4, 2, True, True), (128, 64, 4, 3, True, True), (128, 128, 4, 2, True, True),
           (256, 64, 4, 2, True, True), (256, 128, 4, 2, True, True), (128, 64, 4, 2, True, True, True),
           (128, 128, 4, 2, True, True, True), (128, 64, 4, 2, True)]


if os.environ.get("AUTOWS_CONFIGS"):  # a JSON list of configs in place of the table above
    CONFIGS = [tuple(c) for c in json.loads(os.environ["AUTOWS_CONFIGS"])]
CHILD = os.environ.get("AUTOWS_CHILD")
CHILD_CFG = tuple(json.loads(CHILD)) if CHILD else None


def in_child(name: str, B: int, cfg: tuple, limit_s: float = 30.0) -> dict:
    """One warp-specialised variant in its own process, killed after limit_s: a hung kernel costs one variant."""
    import subprocess
    env = dict(os.environ, AUTOWS_CHILD=json.dumps(list(cfg)), AUTOWS_SHAPES=name, AUTOWS_B=str(B))
    try:
        r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        when = ("after its first call (compiled, ran, checked): in the timing" if "FIRST_CALL_DONE" in out
                else "before its first call returned (compilation or the kernel)")
        return dict(err=f"hung: killed after {limit_s:.0f} s, {when}")
    for line in r.stdout.splitlines():
        if line.startswith("CHILD "):
            row = json.loads(line[6:])
            return dict(us=row.get("us"), best_us=row.get("best_us"), err=row.get("err"), diag=row.get("diag"))
    return dict(err=f"rc {r.returncode}: {(r.stdout + r.stderr)[-400:]}")


def diagnose(out4: torch.Tensor, ref: torch.Tensor) -> dict:
    """Where a wrong result is wrong. out4: the variant's (B, H, S, D) output, poisoned with NaN before the call;
    ref: float64 reference for its last batch entry's last two heads. A data-partitioned kernel gives each of two
    consumer warp groups 64 of a 128-row tile's query rows: `nan_by_64_rows` tells whether one group's rows are the
    bad ones; `err_finite_rows` whether the rows it wrote are right."""
    bad = torch.isnan(out4) | torch.isinf(out4)
    rows_bad = bad.any(-1)  # (B, H, S)
    half = (torch.arange(out4.shape[2], device=out4.device) // 64) % 2
    ok = ~rows_bad[-1:, -2:, :, None]
    part, ref = torch.where(ok, out4[-1:, -2:].double(), 0), torch.where(ok, ref, 0)
    finite_err = ((part - ref).norm() / ref.norm()).item() if ok.any() else None
    return dict(nan_frac=round(bad.float().mean().item(), 4), rows_bad_frac=round(rows_bad.float().mean().item(), 4),
                nan_by_batch=[round(x, 3) for x in rows_bad.float().mean((1, 2)).tolist()],
                nan_by_64_rows=[round(rows_bad[..., half == i].float().mean().item(), 3) for i in (0, 1)],
                err_finite_rows=finite_err)


def main() -> int:
    import torch.nn.functional as F
    from arcattn.bench import graph_us
    from arcattn.env import describe
    from arcattn.kernels import flash
    from arcattn.reference import attention_reference_chunked, rel_error
    print(describe(torch.device("cuda")), "| triton", triton.__version__, flush=True)
    triton.set_allocator(_scratch)
    OUT.mkdir(parents=True, exist_ok=True)
    only = os.environ.get("AUTOWS_SHAPES")
    batches = [int(x) for x in os.environ.get("AUTOWS_B", "1,2").split(",")]
    rows = []
    for name, H, S, D, *rest in SHAPES:
        if only and not any(x in name for x in only.split(",")):
            continue
        Sk = rest[0] if rest else S
        for B in batches:
            g = torch.Generator(device="cuda").manual_seed(B * 1000 + H)
            q = torch.randn(B, S, H * D, device="cuda", generator=g, dtype=torch.float16)
            k, v = (torch.randn(B, Sk, H * D, device="cuda", generator=g, dtype=torch.float16) for _ in range(2))
            view = lambda t: t.view(B, t.shape[1], H, D).transpose(1, 2)  # noqa: E731  (the hosts' (B, H, S, D) view)
            ref = attention_reference_chunked(view(q)[-1:, -2:], view(k)[-1:, -2:], view(v)[-1:, -2:],
                                              scale=D ** -0.5, budget_bytes=1 << 28)[0]
            fns, errs, diags = {}, {}, {}

            def check(label, run):
                out = torch.full((B, S, H * D), float("nan"), device="cuda", dtype=torch.float16)
                try:
                    t0 = time.time()
                    r = run(out)  # a (B, H, S, D) result where the variant returns one instead of writing `out`
                    torch.cuda.synchronize()
                    errs[label] = rel_error((view(out) if r is None else r)[-1:, -2:], ref)
                    print(f"  {label}: first call {time.time() - t0:.1f} s, err {errs[label]:.1e}", flush=True)
                    if CHILD:
                        print("FIRST_CALL_DONE", flush=True)
                    if errs[label] < 2e-3:
                        fns[label] = lambda: run(out)
                    elif r is None:
                        diags[label] = diagnose(view(out), ref)
                        print(f"  {label}: {diags[label]}", flush=True)
                except Exception as e:  # noqa: BLE001
                    errs[label] = f"{type(e).__name__}: {str(e)[:300]}"
                    print(f"  {label}: {errs[label]}", flush=True)

            def sdpa(out):
                out.view(B, S, H, D).copy_(F.scaled_dot_product_attention(view(q), view(k), view(v)).transpose(1, 2))

            if not CHILD:
                check("cudnn (sdpa, host layout, incl. output copy)", sdpa)
                check("sdpa kernel only", lambda out: F.scaled_dot_product_attention(view(q), view(k), view(v)))
                check("arcattn triton (production)",
                      lambda out: (flash.flash_attention(view(q), view(k), view(v), out4=view(out)), None)[1])
            for cfg in CONFIGS:
                bm, _, _, _, ws, on_device, tutorial = full_config(cfg)
                if os.environ.get("AUTOWS_NO_HOST_WS") and ws and not on_device:
                    continue  # host descriptors with warp specialisation: hung in visits 83-84
                if tutorial and not tutorial_fits(bm, S, D):
                    continue
                if ws and not CHILD:
                    if sum("hung" in str(r.get("err")) for r in rows if r["shape"] == name) >= 2:
                        continue  # two hung variants on this shape: the rest would most likely hang too
                    rows.append(dict(shape=name, B=B, label=f"autows {cfg}", **in_child(name, B, cfg)))
                    print(f"[{time.strftime('%H:%M:%S')}] {name} B={B} autows {cfg}: {rows[-1]}", flush=True)
                    continue
                if CHILD and cfg != CHILD_CFG:
                    continue
                check(f"autows {cfg}", lambda out, cfg=cfg: ws_attention(q, k, v, out, H, cfg))
            times = {lab: [] for lab in fns}
            for _ in range(3):
                for lab, fn in fns.items():
                    times[lab].append(graph_us(fn, torch.device("cuda")))
            base = min((x for x in times.get("sdpa kernel only", []) if x), default=None)
            for lab in list(fns) + [x for x in errs if x not in fns]:
                ts = [x for x in times.get(lab, []) if x]
                best = min(ts) if ts else None
                rows.append(dict(shape=name, H=H, S=S, Sk=Sk, D=D, B=B, label=lab, us=ts, best_us=best,
                                 err=errs.get(lab), diag=diags.get(lab)))
                ratio = f"  x{base / best:.3f} of cuDNN kernel" if base and best else ""
                print(f"[{time.strftime('%H:%M:%S')}] {name} B={B} {lab}: "
                      + (f"{best:.1f} us ({', '.join(f'{x:.1f}' for x in ts)})" if best else "not timed")
                      + ratio, flush=True)
            if CHILD:
                print("CHILD " + json.dumps(rows[-1] if rows else {}), flush=True)
                return 0
            (OUT / "autows.json").write_text(json.dumps(dict(device=describe(torch.device("cuda")),
                                                             triton=triton.__version__, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
