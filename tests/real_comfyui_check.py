"""Run inside a ComfyUI checkout (path in argv[1]): a small real UNetModel gives the same output with arcattn
patched in as without it, and arcattn's telemetry shows it served the self- and cross-attention calls, also those
an earlier custom node's attn2 replacement makes through its own copy of optimized_attention.
Prints one JSON line. Used by tests/test_comfyui_real.py in a subprocess (ComfyUI parses sys.argv)."""
import json
import os
import sys

comfy_root, repo_root = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_root)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_weights import randomise  # noqa: E402

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import comfy.ldm.modules.attention as attention  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

# An SD1.5-shaped UNet, scaled down: 8 heads, cross-attention on a 77-token context
torch.manual_seed(1234)
unet = UNetModel(image_size=32, in_channels=4, model_channels=64, out_channels=4, num_res_blocks=1,
                 channel_mult=(1, 2), num_heads=8, use_spatial_transformer=True, transformer_depth=[1, 1],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1], context_dim=96,
                 use_linear_in_transformer=True, dtype=torch.float32)
randomise(unet, torch.Generator().manual_seed(1234))
unet.eval()
x = torch.randn(2, 4, 16, 16)
t = torch.tensor([10.0, 500.0])
ctx = torch.randn(2, 77, 96)
host_function = attention.optimized_attention.__name__

with torch.no_grad():
    before = unet(x, timesteps=t, context=ctx)

# what ComfyUI does with a custom node folder: import its __init__.py as a package
import importlib.util  # noqa: E402
import tempfile  # noqa: E402


def load_node(name, folder):
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# A custom node loaded before arcattn that copies optimized_attention at import and calls its copy from an attn2
# replacement patch, as IP-Adapter nodes do (ComfyUI's folder order is the file system's).
ip_folder = tempfile.mkdtemp()
with open(os.path.join(ip_folder, "__init__.py"), "w") as f:
    f.write("from comfy.ldm.modules.attention import optimized_attention\n"
            "CALLS = [0]\n"
            "def attn2(n, context, value, extra_options):\n"
            "    CALLS[0] += 1\n"
            "    return optimized_attention(n, context, value, extra_options['n_heads'])\n"
            "NODE_CLASS_MAPPINGS = {}\n")
ip_node = load_node("ip_adapter_like_node", ip_folder)
ip_keys = [(kind, i) for kind in ("input", "middle", "output") for i in range(12)]  # the blocks' (name, id)
ip_options = {"patches_replace": {"attn2": {key: ip_node.attn2 for key in ip_keys}}}
with torch.no_grad():
    ip_before = unet(x, timesteps=t, context=ctx, transformer_options=ip_options)

cuda_before_import = torch.cuda.is_initialized()
pkg = load_node("arcattn_node", repo_root)
cuda_after_import = torch.cuda.is_initialized()
import arcattn  # noqa: E402
from arcattn.reference import rel_error  # noqa: E402

with torch.no_grad():
    after = unet(x, timesteps=t, context=ctx)
decisions = arcattn.get_router().decisions()
rel = rel_error(after, before)

# the earlier custom node's attn2 patch now reaches arcattn: every cross-attention call goes through its copy
arcattn.reset_telemetry()
with torch.no_grad():
    ip_after = unet(x, timesteps=t, context=ctx, transformer_options=ip_options)
ip_rel = rel_error(ip_after, ip_before)
ip_decisions = arcattn.get_router().decisions()

# the node, per model, through transformer_options (ComfyUI's wrap_attn hook)
arcattn.reset_telemetry()
override = arcattn.hosts.comfyui.make_override(enabled=True, backend="sdpa")
with torch.no_grad():
    via_node = unet(x, timesteps=t, context=ctx, transformer_options={"optimized_attention_override": override})
node_rel = rel_error(via_node, before)
node_served = sum(d["calls"] for d in arcattn.get_router().decisions())

arcattn.hosts.comfyui.unpatch()
restored = attention.optimized_attention.__name__
ip_restored = ip_node.optimized_attention is attention.optimized_attention
host_device = str(arcattn.hosts.comfyui._host_device())  # what settle_sdpa_order reads
print(json.dumps({"host_function": host_function, "patched_rel_error": rel, "decisions": decisions,
                  "host_device": host_device, "cuda_available": torch.cuda.is_available(),
                  "cuda_initialized_before_node_import": cuda_before_import,
                  "cuda_initialized_after_node_import": cuda_after_import,
                  "node_rel_error": node_rel, "node_served": node_served, "restored": restored,
                  "ip_rel_error": ip_rel, "ip_decisions": ip_decisions, "ip_restored": ip_restored,
                  "ip_patch_calls": ip_node.CALLS[0],
                  "registered": "arcattn" in attention.REGISTERED_ATTENTION_FUNCTIONS,
                  "node_classes": sorted(pkg.NODE_CLASS_MAPPINGS)}))
