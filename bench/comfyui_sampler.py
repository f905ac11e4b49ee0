"""Seconds per image in ComfyUI's own sampler loop, with and without arcattn (issue 5: what a user gains per image).

ComfyUI (--comfyui or ARCATTN_COMFYUI_ROOT) on the GPU, its executor running the prompt
EmptyLatentImage -> KSampler (euler, N steps, CFG: cond and uncond in one UNet batch, so one image is a UNet
batch of 2) -> output, on ComfyUI's own SD1.5 and SDXL model classes with random fp16 weights (no checkpoint, text
encoder or VAE: the loader, the conditioning and the output are nodes of this script). Variants, interleaved
round by round, each round a new sampler seed:
  host     ComfyUI's own attention (arcattn's global patch removed)
  arcattn  the global patch, as installing arcattn gives it (policy auto)
  node     the Arc Attention node (enabled, auto) in the prompt, on top of the global patch
The first image with arcattn, which includes Triton's compilation and the tuning of new shapes, is reported
on its own. Prints a table; --json writes the rows.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ComfyUI's own configs for these checkpoints (comfy/model_detection.py), as its loader builds them
UNET_CONFIGS = {
    "sd15": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False},
    "sdxl": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False},
}
PIXELS = {"sd15": 512, "sdxl": 1024}


def setup_comfyui(comfy_root: str, cpu: bool) -> dict:
    """Import ComfyUI as its main.py would, then load arcattn through ComfyUI's custom-node loader."""
    sys.argv = [sys.argv[0]] + (["--cpu"] if cpu else [])
    sys.path.insert(0, comfy_root)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from unloadable import stand_in_unloadable
    stood_in = stand_in_unloadable("torchvision", "av", "scipy")
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import nodes
    host_function = __import__("comfy.ldm.modules.attention", fromlist=["x"]).optimized_attention.__name__
    loaded = asyncio.run(nodes.load_custom_node(ROOT))
    return {"stood_in": stood_in, "host_function": host_function, "node_loaded": loaded}


def register_nodes(device, dtype) -> dict:
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import nodes

    captured: dict = {}

    class RandomModel:
        RETURN_TYPES = ("MODEL",)
        FUNCTION = "load"
        CATEGORY = "arcattn-bench"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": (sorted(UNET_CONFIGS),)}}

        def load(self, model):
            config_class = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[model]
            config = config_class({**UNET_CONFIGS[model], "dtype": dtype})
            m = config.get_model({}, device=device)
            gen = torch.Generator(device=device).manual_seed(0)
            with torch.no_grad():
                for p in m.diffusion_model.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32) * 0.02)
            m.eval()
            return (comfy.model_patcher.ModelPatcher(m, load_device=mm.get_torch_device(),
                                                     offload_device=mm.unet_offload_device()),)

    class RandomConditioning:
        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "make"
        CATEGORY = "arcattn-bench"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": (sorted(UNET_CONFIGS),), "seed": ("INT", {"default": 0})}}

        def make(self, model, seed):
            g = torch.Generator().manual_seed(seed)
            ctx = torch.randn(1, 77, UNET_CONFIGS[model]["context_dim"], generator=g)
            extra = {"pooled_output": torch.randn(1, 1280, generator=g)} if model == "sdxl" else {}
            return ([[ctx, extra]],)

    class Capture:
        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "arcattn-bench"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})}}

        def capture(self, samples, tag):
            captured[tag] = samples["samples"].float().cpu()
            return {}

    class Variant:
        """Passes the model through; its label keeps the executor from reusing one variant's sampler output for
        another (the prompts differ in nothing else when only the global patch changes)."""
        RETURN_TYPES = ("MODEL",)
        FUNCTION = "label"
        CATEGORY = "arcattn-bench"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), "variant": ("STRING", {"default": ""})}}

        def label(self, model, variant):
            return (model,)

    for cls in (RandomModel, RandomConditioning, Capture, Variant):
        nodes.NODE_CLASS_MAPPINGS[f"ArcattnBench{cls.__name__}"] = cls
    return captured


def prompt(model: str, steps: int, seed: int, tag: str, variant: str, px: int) -> dict:
    p = {
        "1": {"class_type": "ArcattnBenchRandomModel", "inputs": {"model": model}},
        "2": {"class_type": "ArcattnBenchRandomConditioning", "inputs": {"model": model, "seed": 1}},
        "3": {"class_type": "ArcattnBenchRandomConditioning", "inputs": {"model": model, "seed": 2}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": px, "height": px, "batch_size": 1}},
        "7": {"class_type": "ArcattnBenchVariant", "inputs": {"model": ["1", 0], "variant": variant}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "ArcattnBenchCapture", "inputs": {"samples": ["5", 0], "tag": tag}},
    }
    if variant == "node":
        p["10"] = {"class_type": "ArcAttention", "inputs": {"model": ["1", 0], "enabled": True, "backend": "auto"}}
        p["7"]["inputs"]["model"] = ["10", 0]
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", default=os.environ.get("ARCATTN_COMFYUI_ROOT"))
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="a check of this script on the CPU: float32, 64 px, not a measurement")
    args = ap.parse_args(argv)
    if not args.comfyui:
        ap.error("a ComfyUI checkout is needed: --comfyui PATH or ARCATTN_COMFYUI_ROOT")
    import torch
    if not torch.cuda.is_available() and not args.cpu_smoke:
        ap.error("needs a CUDA GPU (--cpu-smoke checks the script on the CPU)")
    info = setup_comfyui(args.comfyui, args.cpu_smoke)
    import execution

    import arcattn
    from arcattn.hosts import comfyui
    from arcattn.reference import rel_error

    device, dtype = (torch.device("cpu"), torch.float32) if args.cpu_smoke else (torch.device("cuda"), torch.float16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pixels = (lambda model: 64) if args.cpu_smoke else PIXELS.get
    captured = register_nodes(device, dtype)
    import comfy_queue  # tests/, on the path since setup_comfyui
    executor = execution.PromptExecutor(comfy_queue.Server())  # one executor: its cache keeps each model
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {device_name}, torch {torch.__version__}, triton "
          f"{getattr(__import__('triton'), '__version__', '?')}, cuDNN {torch.backends.cudnn.version()}, "
          f"arcattn {arcattn.__version__}; ComfyUI attention {info['host_function']}, loaded arcattn: "
          f"{info['node_loaded']}, stood in: {info['stood_in'] or 'none'}; SDPA order {comfyui.sdpa_order()}",
          flush=True)

    def run(model, seed, variant):
        if variant == "host":
            comfyui.unpatch()
        elif not comfyui.is_patched():
            comfyui.patch()
        tag = f"{model}-{variant}-{seed}"
        p = prompt(model, args.steps, seed, tag, variant, px=pixels(model))
        pid, outputs, err = comfy_queue.validate(p)
        if err is not None:
            raise RuntimeError(f"invalid prompt: {err}")
        sync()
        t0 = time.perf_counter()
        comfy_queue.execute(executor, p, pid, outputs)
        sync()
        dt = time.perf_counter() - t0
        return dt, captured.pop(tag)

    variants = ["host", "arcattn", "node"]
    rows = []
    for model in args.models.split(","):
        # warm-up: the model built and moved to the GPU (cached by the executor afterwards), cuDNN's first calls,
        # then arcattn's first image (Triton compilation and tuning of this model's shapes)
        first = {}
        for v in variants:
            arcattn.reset_telemetry()
            first[v], _ = run(model, 0, v)
        served = {d["backend"]: 0 for d in arcattn.get_router().decisions()}
        for d in arcattn.get_router().decisions():
            served[d["backend"]] += d["calls"]
        times = {v: [] for v in variants}
        errors = {v: [] for v in variants if v != "host"}
        for r in range(args.rounds):
            order = variants[r % 3:] + variants[:r % 3]
            outs = {}
            for v in order:
                dt, outs[v] = run(model, 1000 + r, v)
                times[v].append(dt)
            for v in errors:
                errors[v].append(rel_error(outs[v], outs["host"]))
        host = statistics.median(times["host"])
        for v in variants:
            med = statistics.median(times[v])
            row = {"model": model, "pixels": pixels(model), "steps": args.steps, "unet_batch": 2, "variant": v,
                   "first_image_s": first[v], "image_s_median": med, "image_s_all": times[v],
                   "host_over_this": host / med, "latent_rel_error_vs_host": errors.get(v),
                   "served_calls_last_image": served if v == "node" else None}
            rows.append(row)
            err = "" if v == "host" else f"  latents vs host: rel. err. max {max(errors[v]):.2e}"
            print(f"{model} {pixels(model)}px {args.steps} steps, CFG (UNet batch 2): {v:<8} "
                  f"{med:7.3f} s/image [{min(times[v]):.3f}, {max(times[v]):.3f}]  host/this {host / med:5.3f}x  "
                  f"first image {first[v]:.2f} s{err}", flush=True)
        print(f"  served by arcattn in the node's first image: {served}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "device": device_name, "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
