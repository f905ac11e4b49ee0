"""End-to-end: time per UNet step, stock attention vs arcattn, and the share of the step spent in attention.

diffusers UNet2DConditionModel from the SD1.5 and SDXL configs (random weights, no download), fp16:
SD1.5 at 512 px (64x64 latents) and SDXL at 1024 px (128x128 latents), batch 1 and 2. Variants per model:
stock (diffusers' AttnProcessor2_0), "none" (the same step with the attention product removed), arcattn auto
(measured policy), arcattn priority, and each backend forced; interleaved round by round. Attention time per
step = step(variant) - step(none): eager (what a host sees, launch costs included) and, on CUDA, from CUDA-graph
replays (device time alone). With ARCATTN_COMFYUI_ROOT set, ComfyUI's own UNetModel (SD1.5 layout) too, the
same way: ComfyUI's attention function, none, and arcattn patched in; with ARCATTN_FORGE_ROOT set, Forge's own UNet
(SD1.5 layout) with arcattn installed as the Forge extension does, toggle on and off.

    python bench/unet.py [--models sd15,sdxl] [--batch 1,2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import arcattn
from arcattn.bench import capture_graph
from arcattn.env import default_device, describe, synchronize, versions
from arcattn.tune import MeasuredChooser, rotated, stream_samples_us

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
# SD1.5 at 512 px: attention calls per UNet step by query length (self + cross: five blocks at each of the three
# upper levels, one in the middle)
SD15_ATTENTION_CALLS = {4096: 10, 1024: 10, 256: 10, 64: 2}


def median_ms(fn, device, warmup=3, reps=10):
    """(median, min, max) ms of one synchronised call of fn()."""
    times = [t / 1e3 for t in stream_samples_us(fn, device, warmup=warmup, reps=reps, batch=1)]
    return statistics.median(times), min(times), max(times)


class Switch:
    """One processor on every attention module, delegating to the variant under test, so that variants can be
    interleaved round by round (drift in clocks or temperature then hits all of them alike)."""

    def __init__(self):
        self.current = None

    def __call__(self, attn, *args, **kwargs):
        return self.current(attn, *args, **kwargs)


def variant_processors(variants):
    """name -> processor. "stock": diffusers' AttnProcessor2_0. "none": the same processor with the attention
    product removed (the query comes back as the result), so step(variant) - step(none) is what attention costs
    in a step, host time included. The rest: arcattn with its own router each."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from arcattn.hosts.diffusers import ArcAttnProcessor

    class NoAttention(ArcAttnProcessor):
        def _attention(self, q, k, v, heads, layout, mask, scale):
            return q if layout == "bsd" else q.transpose(1, 2).flatten(2)

    procs = {}
    for v in variants:
        if v == "stock":
            procs[v] = AttnProcessor2_0()
        elif v == "none":
            procs[v] = NoAttention()
        else:
            router = arcattn.Router(arcattn.get_router().backends, disabled=(), prefer="",
                                    chooser=MeasuredChooser() if v == "auto" else None)
            procs[v] = ArcAttnProcessor(None if v in ("auto", "priority") else v, router=router)
    return procs


def replay_ms(g, replays):
    """ms of each of `replays` replays of graph g: device time alone, no host launch cost."""
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


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


def bench_diffusers(name, batches, device, dtype, variants, rows, rounds, graph_rounds=8):
    unet = build(name, device, dtype)
    for B in batches:
        bench_diffusers_batch(unet, name, B, device, dtype, variants, rows, rounds, graph_rounds)
    del unet
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_variants(step, variants, activate, device, rounds, graph_rounds):
    """Eager steps (two per sample) and, on CUDA, CUDA-graph replays of `step` under each variant, interleaved
    round by round with the order rotated: attention time is a difference of two steps ~10 % apart, so drift
    between variants must hit all alike. activate(v) puts variant v in place. Returns (eager ms lists per variant,
    median graph ms per variant, graph errors per variant)."""
    eager = {v: [] for v in variants}
    for r in range(rounds):
        for v in rotated(variants, r):
            activate(v)
            synchronize(device)
            t0 = time.perf_counter()
            step()
            step()
            synchronize(device)
            eager[v].append((time.perf_counter() - t0) * 1e3 / 2)
    graphs, errors = {}, {}
    if device.type == "cuda":
        captured = {}
        for v in variants:  # every variant's graph first, then the replays in rounds
            activate(v)
            try:
                g = capture_graph(step, device, warmup=2)
                for _ in range(3):
                    g.replay()
                captured[v] = g
            except Exception as e:  # noqa: BLE001
                errors[v] = f"{type(e).__name__}: {e}"[:200]
        samples = {v: [] for v in captured}
        for r in range(graph_rounds):
            for v in rotated(list(captured), r):
                samples[v] += replay_ms(captured[v], 10)
        graphs = {v: statistics.median(t) for v, t in samples.items()}
        captured = g = None  # the graphs and their memory pools go
    return eager, graphs, errors


def bench_diffusers_batch(unet, name, B, device, dtype, variants, rows, rounds, graph_rounds=8):
    x, t, ctx, kw = inputs(name, B, device, dtype)
    switch = Switch()
    unet.set_attn_processor(switch)
    procs = variant_processors(variants)
    step = lambda: unet(x, t, encoder_hidden_states=ctx, **kw).sample  # noqa: E731
    res = {v: {"model": name, "batch": B, "variant": v} for v in variants}
    outs = {}
    with torch.no_grad():
        for v in variants:  # first steps: measuring (auto), compiling (triton), outputs for the error check
            switch.current = procs[v]
            t0 = time.perf_counter()
            outs[v] = step().float()
            synchronize(device)
            res[v]["first_step_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
            router = getattr(procs[v], "router", None)
            res[v]["attention_calls_per_step"] = sum(d["calls"] for d in router.decisions()) if router else None
            step()
        eager, graphs, errors = time_variants(step, variants, lambda v: setattr(switch, "current", procs[v]),
                                              device, rounds, graph_rounds)
    for v, e in errors.items():
        res[v]["graph_error"] = e
    served = {v: served_by(getattr(procs[v], "router", None)) for v in variants}
    report(name, B, variants, res, eager, graphs, outs, "stock", served, rows)


def served_by(router):
    """backend -> calls served (the fallback's share included), from the router's telemetry; None without one."""
    if router is None:
        return None
    return {name: t["served"] for name, t in router.telemetry().items() if t["served"]}


def report(name, B, variants, res, eager, graphs, outs, ref_name, served, rows):
    """Fill and print one row per variant: eager and graph step times, attention = step - step("none"), error
    against the `ref_name` variant's output."""
    ref = outs.get(ref_name)
    for v in variants:
        r = res[v]
        r["step_ms"] = round(statistics.median(eager[v]), 3)
        r["step_spread_ms"] = [round(min(eager[v]), 3), round(max(eager[v]), 3)]
        r["graph_step_ms"] = None if graphs.get(v) is None else round(graphs[v], 3)
        if "none" in variants:
            r["attention_ms"] = round(r["step_ms"] - statistics.median(eager["none"]), 3)
            if graphs.get(v) is not None and graphs.get("none") is not None:
                r["attention_graph_ms"] = round(graphs[v] - graphs["none"], 3)
        if ref is not None and v != "none":
            r["rel_err_vs_stock"] = float((outs[v] - ref).norm() / ref.norm())
        if served.get(v) is not None:
            r["served"] = served[v]
        rows.append(r)
        g = "" if r["graph_step_ms"] is None else f" graph {r['graph_step_ms']:7.2f} ms"
        a = "" if "attention_ms" not in r else f"  attention {r['attention_ms']:6.2f} ms"
        ag = "" if "attention_graph_ms" not in r else f" (graph {r['attention_graph_ms']:6.2f} ms)"
        e = "" if "rel_err_vs_stock" not in r else f"  err {r['rel_err_vs_stock']:.1e}"
        print(f"  {name:<5} B={B} {v:<9} step {r['step_ms']:8.2f} ms [{r['step_spread_ms'][0]:.2f}, "
              f"{r['step_spread_ms'][1]:.2f}]{g}{a}{ag}{e}  {r.get('served', '')}", flush=True)


def no_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                 **kwargs):
    """The hosts' attention signature with the product removed: the query comes back, in the output layout the
    host asked for, so step(host) - step(none) is what attention costs in a step."""
    if skip_reshape:  # (B, H, N, D) in
        return q if skip_output_reshape else q.transpose(1, 2).flatten(2)
    return q if not skip_output_reshape else q.unflatten(-1, (heads, -1)).transpose(1, 2)


# The SD1.5 UNet in the ldm layout that ComfyUI (comfy/model_detection.py) and Forge (huggingface_guess) build.
# Both pop transformer_depth_output from its end, deepest level first: the three zeros are the 8x8 level's outputs
SD15_LDM = dict(in_channels=4, out_channels=4, channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768)


def random_sd15(make, B, device, dtype):
    """make() a host's SD1.5 UNet on `device` with random weights; (unet, latents, timesteps, context) at 512 px."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = make()
        for p in unet.parameters():
            torch.nn.init.normal_(p, 0.0, 0.02)
    unet = unet.to(dtype).eval()
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(B, 4, 64, 64, generator=g).to(device, dtype)
    ctx = torch.randn(B, 77, 768, generator=g).to(device, dtype)
    return unet, x, torch.tensor([500.0] * B, device=device), ctx


def check_sd15_layout(step, set_function, original, label):
    """One step with a counting attention function: the host's UNet must make SD1.5's calls per query length
    (visits 17-66 measured a ComfyUI UNet in the wrong layout: 4 calls at 4096 queries instead of 10)."""
    calls = {}

    def counting(q, k, v, heads, *args, **kwargs):
        n = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
        calls[n] = calls.get(n, 0) + 1
        return original(q, k, v, heads, *args, **kwargs)

    set_function(counting)
    try:
        with torch.no_grad():
            step()
    finally:
        set_function(original)
    if calls != SD15_ATTENTION_CALLS:
        raise RuntimeError(f"{label} UNet is not in the SD1.5 layout: attention calls by query length {calls}, "
                           f"expected {SD15_ATTENTION_CALLS}")


def bench_host_variants(label, B, step, variants, activate, host, device, rows, rounds, graph_rounds):
    """First steps (measuring, compiling, outputs), then the interleaved eager and graph steps of each variant;
    errors against the host's own attention ("host")."""
    res = {v: {"model": label, "batch": B, "variant": v if v != "host" else f"host:{host}"} for v in variants}
    arcattn.set_router(None)  # a fresh router: its decisions are this batch size's
    outs = {}
    try:
        with torch.no_grad():
            for v in variants:
                activate(v)
                outs[v] = step().float()
                step()
            eager, graphs, errors = time_variants(step, variants, activate, device, rounds, graph_rounds)
    finally:
        activate("host")
    for v, e in errors.items():
        res[v]["graph_error"] = e
    served = {"arcattn": served_by(arcattn.get_router())}
    report(label, B, variants, res, eager, graphs, outs, "host", served, rows)


def bench_comfyui(root, B, device, dtype, rows, channels=320, rounds=12, graph_rounds=8):
    """ComfyUI's own UNetModel (SD1.5 layout, random weights), the diffusers method: variants "host" (ComfyUI's
    own attention function), "none" (the attention product removed: the query comes back) and "arcattn"
    (arcattn's global patch, as the node package applies it at start-up), interleaved round by round, eager and
    CUDA-graph steps."""
    sys.argv = [sys.argv[0]] + ([] if device.type != "cpu" else ["--cpu"])
    sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import comfy.ldm.modules.attention as attention
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from arcattn.hosts import comfyui

    comfyui.settle_sdpa_order()  # as the node package's import does, before ComfyUI's first attention call
    try:
        host_device = comfyui._host_device()
    except LookupError as e:
        host_device = f"unknown ({e})"
    print(f"  ComfyUI device {host_device}, torch SDPA order after settling: {comfyui.sdpa_order()}", flush=True)
    unet, x, t, ctx = random_sd15(lambda: UNetModel(
        image_size=64, model_channels=channels, num_res_blocks=2, dtype=dtype, device=device,
        operations=comfy.ops.manual_cast, **SD15_LDM), B, device, dtype)
    step = lambda: unet(x, timesteps=t, context=ctx)  # noqa: E731
    originals = (attention.optimized_attention, attention.optimized_attention_masked)

    def set_function(fn):
        attention.optimized_attention = attention.optimized_attention_masked = fn

    def activate(v):
        if comfyui.is_patched():
            comfyui.unpatch()
        attention.optimized_attention, attention.optimized_attention_masked = originals
        if v == "arcattn":
            comfyui.patch()
        elif v == "none":
            set_function(no_attention)

    check_sd15_layout(step, set_function, originals[0], "ComfyUI")
    try:
        bench_host_variants("comfyui-sd15", B, step, ["host", "none", "arcattn"], activate,
                            getattr(originals[0], "__name__", "host"), device, rows, rounds, graph_rounds)
    finally:
        attention.optimized_attention, attention.optimized_attention_masked = originals


def bench_forge(root, B, device, dtype, rows, channels=320, rounds=12, graph_rounds=8):
    """Forge's own UNet (backend.nn.unet.IntegratedUNet2DConditionModel, SD1.5 layout, random weights) with
    arcattn put in as the Forge extension does (`arcattn.hosts.forge.install()`, then the accordion's per-
    generation switch): variants "host" (Forge's own attention function), "none", "arcattn" (toggle on, auto)
    and "arcattn-off" (installed, toggle off: what the wrapper costs when a user switches it off)."""
    sys.argv = [sys.argv[0]] + ([] if device.type != "cpu" else ["--always-cpu"])  # backend.args reads argv
    for path in (os.path.join(root, "packages_3rdparty"), root):  # gguf: Forge puts its own copy on the path
        sys.path.insert(0, path)
    import backend.attention as A
    import backend.nn.unet as U

    from arcattn.hosts import forge

    original = A.attention_function
    print(f"  Forge attention function: {original.__name__}", flush=True)
    # Forge's loader passes huggingface_guess's SD15 entry, the same config as ComfyUI's
    unet, x, t, ctx = random_sd15(lambda: U.IntegratedUNet2DConditionModel(
        model_channels=channels, num_res_blocks=[2, 2, 2, 2], use_linear_in_transformer=False, **SD15_LDM),
        B, device, dtype)
    step = lambda: unet(x, timesteps=t, context=ctx, transformer_options={})  # noqa: E731

    # Forge's timestep_embedding builds its frequencies on the CPU and copies them over, which a CUDA graph
    # cannot capture: its result for these timesteps is computed once, by Forge's function, and reused
    embed = U.timestep_embedding
    t_emb = embed(t, channels, repeat_only=False)
    U.timestep_embedding = lambda timesteps, dim, **kw: t_emb if timesteps is t and dim == channels else embed(
        timesteps, dim, **kw)

    def set_function(fn):
        U.attention_function = fn

    check_sd15_layout(step, set_function, original, "Forge")
    sites = forge.install()
    if "backend.nn.unet.attention_function" not in sites:
        forge.uninstall()
        raise RuntimeError(f"arcattn's Forge install did not reach backend.nn.unet: {sites}")
    wrapper = U.attention_function

    def activate(v):
        forge.set_generation(v != "arcattn-off")
        set_function({"host": original, "none": no_attention}.get(v, wrapper))

    try:
        bench_host_variants("forge-sd15", B, step, ["host", "none", "arcattn", "arcattn-off"], activate,
                            original.__name__, device, rows, rounds, graph_rounds)
        print(f"  arcattn wrapper fallbacks to Forge's function: {dict(wrapper.fallbacks) or 'none'}", flush=True)
    finally:
        forge.uninstall()
        U.timestep_embedding = embed


def add_backend(spec: str) -> None:
    """Put a probe's backend into the process-wide router, before the fallback (bench only)."""
    import importlib
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    module, cls = spec.split(":")
    extra = getattr(importlib.import_module(module), cls)()
    old = arcattn.get_router()
    arcattn.set_router(arcattn.Router([b for b in old.backends if not b.is_fallback] + [extra, old.fallback],
                                      chooser=old.chooser))
    print(f"extra backend {extra.name}: {extra.unavailable_reason() or 'available'}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sd15,sdxl")
    p.add_argument("--batch", default="1,2")
    p.add_argument("--variants", default="stock,none,auto,priority,sdpa,triton")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--graph-rounds", type=int, default=8, help="interleaved rounds of 10 CUDA-graph replays each")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--json", default=None)
    p.add_argument("--extra-backend", default=None, metavar="MODULE:CLASS",
                   help="a probe's backend (a module beside this script, e.g. gpu_autows:HopperWSBackend), added "
                        "before the fallback; name it in --variants to force it; auto and priority consider it too")
    p.add_argument("--comfyui-channels", type=int, default=320, help="ComfyUI and Forge UNet width (320 = SD1.5; small for smoke tests)")
    args = p.parse_args(argv)
    device = default_device()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    print(describe(device), flush=True)
    if args.extra_backend:
        add_backend(args.extra_backend)
    rows = []
    available = {b.name for b in arcattn.get_router().backends if b.available()}
    variants = [v for v in args.variants.split(",") if v in ("stock", "none", "auto", "priority") or v in available]
    for name in filter(None, args.models.split(",")):
        bench_diffusers(name, [int(b) for b in args.batch.split(",")], device, dtype, variants, rows, args.rounds,
                        args.graph_rounds)
    for env, bench, what in (("ARCATTN_COMFYUI_ROOT", bench_comfyui, "ComfyUI UNetModel"),
                             ("ARCATTN_FORGE_ROOT", bench_forge, "Forge's UNet")):
        root = os.environ.get(env)
        if not root:
            print(f"{env} not set: {what} not measured")
            continue
        for B in (int(b) for b in args.batch.split(",")):
            bench(root, B, device, dtype, rows, args.comfyui_channels, args.rounds, args.graph_rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions(device), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
