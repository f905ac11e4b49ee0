"""Write an SD1.5 checkpoint with random weights, in the original single-file layout (UNet, CLIP-L text encoder,
VAE), for real-host generations without a download. Built and saved by ComfyUI's own model classes and
`comfy.sd.save_checkpoint`, so the keys are the ones every host's loader detects as SD1.5. The UNet's attention
scores spread (tests/random_weights.py): in the image comparisons of the ComfyUI server and Forge generation tests,
arcattn with its attention scale halved moves pixels by 6-7 levels, against at most 1 with the small uniform
weights of checkpoints written before 2026-12-07 (which those tests could not tell from a right answer).

    python tests/make_random_checkpoint.py COMFYUI_ROOT OUT.safetensors
"""
import os
import sys

comfy_root, out = sys.argv[1], os.path.abspath(sys.argv[2])
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_root)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from comfyui_sampler import UNET_CONFIGS  # noqa: E402  (ComfyUI's SD1.5 config, as its loader builds it)
from random_weights import randomise  # noqa: E402
from unloadable import stand_in_unloadable  # noqa: E402

stand_in_unloadable("torchvision", "av")
import torch  # noqa: E402

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import comfy.ldm.models.autoencoder  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402

SD15_UNET = {**UNET_CONFIGS["sd15"], "dtype": torch.float16}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


gen = torch.Generator().manual_seed(20261207)
config = comfy.supported_models.SD15(SD15_UNET)
model = config.get_model({}, device=torch.device("cpu"))
randomise(model.diffusion_model, gen, std=0.02)
patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

clip = comfy.sd.CLIP(target=config.clip_target({}), model_options={"dtype": torch.float16})
randomise(clip.cond_stage_model, gen, std=0.02)

vae_model = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
randomise(vae_model, gen, std=0.02)
vae = comfy.sd.VAE(sd={k: v.half() for k, v in vae_model.state_dict().items()})

comfy.sd.save_checkpoint(out, patcher, clip=clip, vae=vae)
print(out, os.path.getsize(out))
