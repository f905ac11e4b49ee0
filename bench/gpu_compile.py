"""torch.compile over a UNet whose attention goes through arcattn, as ComfyUI's TorchCompileModel node (and Forge
Neo's compile extension) does it: does a compiled step still give the stock answer, and which backend serves its
attention calls? ComfyUI's own UNetModel (ARCATTN_COMFYUI_ROOT), scaled down (head dim 64, two levels, 77-token
context), fp16 on CUDA (fp32 on the CPU). Stock eager output against: arcattn eager, and arcattn under
torch.compile (inductor), once through the global patch (auto) and once through the node's override with
`triton` named; each run twice (the second call reuses the compiled code). Prints one line per case: relative
error against stock eager, arcattn calls served per backend in each run, graph breaks, or the exception.

    ARCATTN_COMFYUI_ROOT=/path/to/ComfyUI python bench/gpu_compile.py [cpu]
"""
from __future__ import annotations

import os
import sys
import time

import torch

DEVICE = "cpu" if "cpu" in sys.argv[1:] or not torch.cuda.is_available() else "cuda"
root = os.environ.get("ARCATTN_COMFYUI_ROOT")
if not root:
    sys.exit("set ARCATTN_COMFYUI_ROOT to a ComfyUI checkout")
sys.argv = [sys.argv[0]] + (["--cpu"] if DEVICE == "cpu" else [])
sys.path.insert(0, root)

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import comfy.ldm.modules.attention as attention  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

import arcattn  # noqa: E402
from arcattn.env import describe  # noqa: E402
from arcattn.hosts import comfyui  # noqa: E402
from arcattn.reference import rel_error  # noqa: E402


def served() -> dict:
    return {name: v["served"] for name, v in arcattn.telemetry().items()}


def delta(after: dict, before: dict) -> dict:
    return {n: after[n] - before.get(n, 0) for n in after if after[n] != before.get(n, 0)}


def main() -> None:
    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    print(describe())
    g = torch.Generator().manual_seed(20261208)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=128, out_channels=4, num_res_blocks=1,
                     channel_mult=(1, 2), num_head_channels=64, use_spatial_transformer=True,
                     transformer_depth=[1, 1], transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1],
                     context_dim=768, use_linear_in_transformer=True, dtype=dtype, device=DEVICE)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    unet.eval()
    side = 64 if DEVICE == "cuda" else 16
    x = torch.randn(2, 4, side, side, generator=g).to(DEVICE, dtype)
    t = torch.tensor([10.0, 500.0], device=DEVICE)
    ctx = torch.randn(2, 77, 768, generator=g).to(DEVICE, dtype)
    with torch.inference_mode():
        stock = unet(x, timesteps=t, context=ctx).float()
    comfyui.patch(attention)
    node = {"optimized_attention_override": comfyui.make_override(enabled=True, backend="triton")}
    cases = [("global patch, eager", None, {}), ("global patch, inductor", "inductor", {}),
             ("node: triton, eager", None, node), ("node: triton, inductor", "inductor", node)]
    for name, backend, options in cases:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = unet if backend is None else torch.compile(unet, backend=backend)
        runs = []
        try:
            for _ in range(2):
                before = served()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = model(x, timesteps=t, context=ctx, transformer_options=dict(options))
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                runs.append((rel_error(out.float(), stock), delta(served(), before), time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - a failure is the finding
            print(f"{name:26s} FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            continue
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        print(f"{name:26s} " + "; ".join(f"run {i + 1}: rel err {e:.2e}, served {s}, {secs:.1f} s"
                                          for i, (e, s, secs) in enumerate(runs)) + f"; graph breaks {breaks}")


if __name__ == "__main__":
    main()
