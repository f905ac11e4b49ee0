"""Run inside a ComfyUI checkout (path in argv[1], arcattn's folder in argv[2]), --cpu: ComfyUI's own nodes that
change attention (Self-Attention Guidance, Perturbed-Attention Guidance, HyperTile, ToMe, the attention
multipliers, a ControlNet) and its LoRA training node, in prompts run by ComfyUI's executor, without arcattn, then
with its global patch, with the Arc Attention node after them, and with that node off. Prints one JSON line. Used
by tests/test_comfyui_real.py.

The built-in node modules are loaded before arcattn, as ComfyUI's start-up does (SAG's module holds its own copy of
optimized_attention from then on). The model, the conditioning, the image and the ControlNet are test nodes with
random weights (tests/comfy_test_nodes.py).
"""
import asyncio
import json
import logging
import os
import sys

comfy_root, repo_root = sys.argv[1], os.path.abspath(sys.argv[2])
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_root)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unloadable import stand_in_unloadable  # noqa: E402

stood_in = stand_in_unloadable("torchvision", "av")

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import nodes  # noqa: E402
import torch  # noqa: E402
from comfy_test_nodes import WarningLines, add_model_node, base_prompt, register, rel, run  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)
register()

EXTRAS = ("nodes_sag.py", "nodes_pag.py", "nodes_hypertile.py", "nodes_tomesd.py", "nodes_attention_multiply.py",
          "nodes_custom_sampler.py", "nodes_train.py")
# node -> its inputs; HyperTile's swap_size 1 keeps its tiling out of the global random state (same tiles each run),
# and its 32 px tiles split the 16 x 16 latent's first-level self-attention into 16 tiles of 16 tokens
MODEL_NODES = {
    "SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0},
    "PerturbedAttentionGuidance": {"scale": 3.0},
    "HyperTile": {"tile_size": 32, "swap_size": 1, "max_depth": 0, "scale_depth": False},
    "TomePatchModel": {"ratio": 0.3},
    "UNetSelfAttentionMultiply": {"q": 1.1, "k": 0.9, "v": 1.2, "out": 0.8},
    "UNetCrossAttentionMultiply": {"q": 0.9, "k": 1.1, "v": 0.8, "out": 1.2},
}


def training_prompt(tag, arc=None):
    """ComfyUI's LoRA training node on the tiny model: 2 steps in float32, with gradient checkpointing (torch's
    non-reentrant checkpoint, which stops each recomputation from inside the attention call that saves its last
    tensor), then the LoRA's weights captured."""
    p = {
        "1": {"class_type": "TinySD15Loader", "inputs": {"seed": 7}},
        "2": {"class_type": "RandomConditioning", "inputs": {"seed": 1}},
        "3": {"class_type": "RandomLatent", "inputs": {"seed": 5}},
        "5": {"class_type": "TrainLoraNode", "inputs": {
            "model": ["1", 0], "latents": ["3", 0], "positive": ["2", 0], "batch_size": 1,
            "grad_accumulation_steps": 1, "steps": 2, "learning_rate": 0.0005, "rank": 4, "optimizer": "AdamW",
            "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32",
            "algorithm": "LoRA", "gradient_checkpointing": True, "existing_lora": "[None]"}},
        "6": {"class_type": "CaptureLora", "inputs": {"lora": ["5", 1], "tag": tag}},
    }
    if arc is not None:
        add_model_node(p, "30", "ArcAttention", **arc)
    return p


def run_training(tag, arc=None):
    # the node draws its sigmas and batch order from torch's global generator, which it never seeds (two runs in one
    # process differ by 1.4 relative): seeded here as a fresh process would have it
    torch.manual_seed(0)
    return run(training_prompt(tag, arc))


def prompt(tag, feature, arc=None):
    p = base_prompt(tag)
    if feature == "ControlNet":
        p["20"] = {"class_type": "TinyControlNetLoader", "inputs": {"seed": 3}}
        p["21"] = {"class_type": "RandomImage", "inputs": {"seed": 4, "size": 128}}
        p["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["20", 0], "image": ["21", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        p["5"]["inputs"]["positive"] = ["22", 0]
        p["5"]["inputs"]["negative"] = ["22", 1]
    elif feature != "none":
        add_model_node(p, "20", feature, **MODEL_NODES[feature])
    if arc is not None:
        add_model_node(p, "30", "ArcAttention", **arc)
    return p


result = {"stood_in": stood_in, "extras": {}}
for name in EXTRAS:
    result["extras"][name] = asyncio.run(nodes.load_custom_node(os.path.join(comfy_root, "comfy_extras", name),
                                                                module_parent="comfy_extras"))
features = ["none", *MODEL_NODES, "ControlNet"]
assert "arcattn" not in sys.modules
for feature in features:  # ComfyUI's own attention: the references
    _, err = run(prompt(f"{feature}/stock", feature))
    assert err is None, (feature, err)
_, err = run_training("training/stock")
assert err is None, err

result["node_loaded"] = asyncio.run(nodes.load_custom_node(repo_root))
import arcattn  # noqa: E402  (loaded by the node package)

result["patched"] = arcattn.hosts.comfyui.is_patched()
# SAG's module took its copy of optimized_attention when ComfyUI loaded it, before arcattn: now arcattn's
(sag,) = [m for n, m in sys.modules.items() if n.endswith("nodes_sag")]
result["sag_copy_is_ours"] = sag.optimized_attention is sys.modules["comfy.ldm.modules.attention"].optimized_attention
lines = WarningLines()
logging.getLogger("arcattn").addHandler(lines)
cases = {"plain": None, "node_auto": {"enabled": True, "backend": "auto"},
         "node_off": {"enabled": False, "backend": "auto"}}
for feature in features:
    r = result[feature] = {"change": rel(f"{feature}/stock", "none/stock")}
    for case, arc in cases.items():
        lines.lines.clear()
        tag = f"{feature}/{case}"
        decisions, err = run(prompt(tag, feature, arc))
        assert err is None, (tag, err)
        r[case] = {"rel_error": rel(tag, f"{feature}/stock"), "served": sum(d["calls"] for d in decisions),
                   "calls": sorted({d["call"] for d in decisions}), "warnings": list(lines.lines)}
r = result["training"] = {}
for case, arc in cases.items():
    lines.lines.clear()
    decisions, err = run_training(f"training/{case}", arc)
    assert err is None, (case, err)
    r[case] = {"rel_error": rel(f"training/{case}", "training/stock"), "served": sum(d["calls"] for d in decisions),
               "backends": sorted({d["backend"] for d in decisions}), "warnings": list(lines.lines)}
logging.getLogger("arcattn").removeHandler(lines)
print(json.dumps(result))
