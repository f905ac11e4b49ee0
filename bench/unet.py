"""End-to-end: time per UNet step, stock attention vs arcattn, and the share of the step spent in attention.

diffusers UNet2DConditionModel from the SD1.5 and SDXL configs (random weights, no download), fp16:
SD1.5 at 512 px (64x64 latents) and SDXL at 1024 px (128x128 latents), batch 1 and 2. Variants per model:
stock (diffusers' AttnProcessor2_0), arcattn auto (measured policy), arcattn priority, and each backend forced.
Attention time per step is measured with device events around every attention product, in a separate pass from
the step timing (so the events do not perturb it). With ARCATTN_COMFYUI_ROOT set, the same for ComfyUI's
UNetModel (SD1.5 layout), host attention vs arcattn patched in.

    python bench/unet.py [--models sd15,sdxl] [--batch 1,2] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import arcattn
from arcattn.env import default_device, describe, versions
from arcattn.tune import MeasuredChooser

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0)
SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0)
MODELS = {"sd15": (SD15, 64, 768), "sdxl": (SDXL, 128, 2048)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize()


def median_ms(fn, device, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


class AttentionClock:
    """Device events around each attention product; sum() gives the attention time of the last pass."""

    def __init__(self, device):
        self.device = device
        self.pairs = []

    @contextlib.contextmanager
    def span(self):
        if self.device.type != "cuda":
            sync(self.device)
            t0 = time.perf_counter()
            yield
            sync(self.device)
            self.pairs.append((t0, time.perf_counter()))
            return
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        yield
        b.record()
        self.pairs.append((a, b))

    def total_ms(self):
        sync(self.device)
        if self.device.type == "cuda":
            t = sum(a.elapsed_time(b) for a, b in self.pairs)
        else:
            t = sum((b - a) * 1e3 for a, b in self.pairs)
        self.pairs = []
        return t


def clocked_processor(clock, variant, arc_backend):
    """A processor that times only the attention product: stock SDPA or arcattn."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from arcattn.hosts.diffusers import ArcAttnProcessor

    if variant == "stock":
        real = F.scaled_dot_product_attention

        class Clocked(AttnProcessor2_0):
            def __call__(self, *a, **k):
                def timed(*aa, **kk):
                    with clock.span():
                        return real(*aa, **kk)
                F.scaled_dot_product_attention = timed
                try:
                    return super().__call__(*a, **k)
                finally:
                    F.scaled_dot_product_attention = real
        return Clocked()

    class ClockedArc(ArcAttnProcessor):
        def _attention(self, *a, **k):
            with clock.span():
                return super()._attention(*a, **k)
    return ClockedArc(arc_backend)


def build(name, device, dtype):
    from diffusers import UNet2DConditionModel
    cfg, _, _ = MODELS[name]
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    return unet.to(dtype).eval()


def inputs(name, B, device, dtype):
    cfg, lat, ctx_dim = MODELS[name]
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(B, 4, lat, lat, generator=g).to(device, dtype)
    ctx = torch.randn(B, 77, ctx_dim, generator=g).to(device, dtype)
    t = torch.tensor([500] * B, device=device)
    kw = {}
    if name == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(B, 1280, generator=g).to(device, dtype),
                                   "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * B, device=device,
                                                            dtype=dtype)}
    return x, t, ctx, kw


def bench_diffusers(name, batches, device, dtype, variants, rows):
    unet = build(name, device, dtype)
    for B in batches:
        bench_diffusers_batch(unet, name, B, device, dtype, variants, rows)
    del unet
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_diffusers_batch(unet, name, B, device, dtype, variants, rows):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from arcattn.hosts.diffusers import ArcAttnProcessor

    x, t, ctx, kw = inputs(name, B, device, dtype)
    step = lambda: unet(x, t, encoder_hidden_states=ctx, **kw).sample  # noqa: E731
    ref = None
    for variant in variants:
        backend = None if variant in ("auto", "priority") else variant
        if variant == "stock":
            unet.set_attn_processor(AttnProcessor2_0())
        else:
            router = arcattn.Router(arcattn.get_router().backends, disabled=(), prefer="",
                                    chooser=MeasuredChooser() if variant == "auto" else None)
            arcattn.set_router(router)
            unet.set_attn_processor(ArcAttnProcessor(backend))
        with torch.no_grad():
            t_tune = time.perf_counter()
            out = step()
            sync(device)
            first_ms = (time.perf_counter() - t_tune) * 1e3
            calls_per_step = (sum(d["calls"] for d in arcattn.get_router().decisions())
                              if variant != "stock" else None)
            ms, lo, hi = median_ms(step, device)
            clock = AttentionClock(device)
            unet.set_attn_processor(clocked_processor(clock, variant, backend))
            step()
            clock.total_ms()
            attn = statistics.median([(step(), clock.total_ms())[1] for _ in range(5)])
        if variant != "stock":
            served = {d["backend"]: 0 for d in arcattn.get_router().decisions()}
            for d in arcattn.get_router().decisions():
                served[d["backend"]] += d["calls"]
        else:
            served = {"torch sdpa": None}
        if ref is None:
            ref = out.float()
        err = float((out.float() - ref).norm() / ref.norm())
        rows.append({"model": name, "batch": B, "variant": variant, "step_ms": round(ms, 3), "step_min_ms": round(lo, 3),
                     "step_max_ms": round(hi, 3), "attention_ms": round(attn, 3), "first_step_ms": round(first_ms, 1), "attention_calls_per_step": calls_per_step,
                     "rel_err_vs_stock": err, "served": served})
        print(f"  {name:<5} B={B} {variant:<9} step {ms:8.2f} ms (min {lo:.2f}, max {hi:.2f})  attention {attn:7.2f} ms"
              f" ({100 * attn / ms:4.1f}% of step)  vs stock err {err:.1e}  served {served}", flush=True)


def bench_comfyui(root, B, device, dtype, rows, channels=320):
    """ComfyUI's own UNetModel (SD1.5 layout, random weights): host attention vs arcattn patched in."""
    sys.argv = [sys.argv[0]] + ([] if device.type != "cpu" else ["--cpu"])
    sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import comfy.ldm.modules.attention as attention
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from arcattn.hosts import comfyui

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNetModel(image_size=64, in_channels=4, model_channels=channels, out_channels=4, num_res_blocks=2,
                         channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                         transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                         transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], context_dim=768,
                         dtype=dtype, device=device, operations=comfy.ops.manual_cast)
        for p in unet.parameters():
            torch.nn.init.normal_(p, 0.0, 0.02)
    unet = unet.to(dtype).eval()
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(B, 4, 64, 64, generator=g).to(device, dtype)
    ctx = torch.randn(B, 77, 768, generator=g).to(device, dtype)
    t = torch.tensor([500.0] * B, device=device)
    step = lambda: unet(x, timesteps=t, context=ctx)  # noqa: E731
    host = attention.optimized_attention.__name__
    ref = None
    for variant in ("host", "arcattn"):
        if variant == "arcattn":
            arcattn.set_router(None)
            comfyui.patch()
        with torch.no_grad():
            out = step()
            ms, lo, hi = median_ms(step, device)
        if ref is None:
            ref = out.float()
        err = float((out.float() - ref).norm() / ref.norm())
        served = {}
        if variant == "arcattn":
            for d in arcattn.get_router().decisions():
                served[d["backend"]] = served.get(d["backend"], 0) + d["calls"]
            comfyui.unpatch()
        rows.append({"model": "comfyui-sd15", "batch": B, "variant": variant if variant == "arcattn" else f"host:{host}",
                     "step_ms": round(ms, 3), "step_min_ms": round(lo, 3), "step_max_ms": round(hi, 3),
                     "rel_err_vs_stock": err, "served": served})
        print(f"  comfyui-sd15 B={B} {variant:<8} ({host if variant == 'host' else 'patched'}) step {ms:8.2f} ms "
              f"(min {lo:.2f}, max {hi:.2f}) err {err:.1e} served {served}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sd15,sdxl")
    p.add_argument("--batch", default="1,2")
    p.add_argument("--variants", default="stock,auto,priority,sdpa,triton")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--json", default=None)
    p.add_argument("--comfyui-channels", type=int, default=320, help="ComfyUI UNet width (320 = SD1.5; small for smoke tests)")
    args = p.parse_args(argv)
    device = default_device()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    print(describe(device), flush=True)
    rows = []
    available = {b.name for b in arcattn.get_router().backends if b.available()}
    variants = [v for v in args.variants.split(",") if v in ("stock", "auto", "priority") or v in available]
    for name in filter(None, args.models.split(",")):
        bench_diffusers(name, [int(b) for b in args.batch.split(",")], device, dtype, variants, rows)
    root = os.environ.get("ARCATTN_COMFYUI_ROOT")
    if root:
        for B in (int(b) for b in args.batch.split(",")):
            bench_comfyui(root, B, device, dtype, rows, args.comfyui_channels)
    else:
        print("ARCATTN_COMFYUI_ROOT not set: ComfyUI UNetModel not measured")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions(device), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
