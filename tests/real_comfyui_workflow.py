"""Run inside a ComfyUI checkout (path in argv[1], arcattn's folder in argv[2]), --cpu: the arcattn folder loaded by
ComfyUI's own custom-node loader, and prompts (model -> Arc Attention -> KSampler) validated and executed by
ComfyUI's own executor, as the UI's queue does. Prints one JSON line. Used by tests/test_comfyui_real.py.

Only the model loader, the conditioning and the output are test nodes (no checkpoint, text encoder or VAE here);
the sampler, the validation, the caching and the attention path are ComfyUI's.
"""
import asyncio
import json
import logging
import os
import sys
import types

comfy_root, repo_root = sys.argv[1], os.path.abspath(sys.argv[2])
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_root)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import comfy_queue  # noqa: E402
from unloadable import stand_in_unloadable  # noqa: E402

stood_in = stand_in_unloadable("torchvision", "av")  # ComfyUI imports them for models and video types not used here

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import comfy.ldm.modules.attention as attention  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import execution  # noqa: E402
import nodes  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)
CPU = torch.device("cpu")
CONTEXT_DIM = 96


class TinySD15Loader:
    """Stands in for a checkpoint loader: ComfyUI's SD15 model class around a scaled-down UNet, random weights."""
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    def load(self, seed):
        config = comfy.supported_models.SD15({
            "context_dim": CONTEXT_DIM, "model_channels": 64, "use_linear_in_transformer": True,
            "adm_in_channels": None, "use_temporal_attention": False, "image_size": 32, "in_channels": 4,
            "out_channels": 4, "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
            "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
            "use_spatial_transformer": True, "dtype": torch.float32})
        model = comfy.model_base.BaseModel(config, device=CPU)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.diffusion_model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        model.eval()
        return (comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU),)


class RandomConditioning:
    """Stands in for CLIPTextEncode: a 77-token context."""
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    def make(self, seed):
        ctx = torch.randn(1, 77, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))
        return ([[ctx, {}]],)


CAPTURED: dict = {}


class CaptureLatent:
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})}}

    def capture(self, samples, tag):
        CAPTURED[tag] = samples["samples"].clone()
        return {}


class InspectModel:
    """Records whether a MODEL carries an attention override; `after` orders it behind the sampler."""
    RETURN_TYPES = ()
    FUNCTION = "inspect"
    OUTPUT_NODE = True
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "after": ("LATENT",), "tag": ("STRING", {"default": ""})}}

    def inspect(self, model, after, tag):
        CAPTURED[tag] = "optimized_attention_override" in model.model_options.get("transformer_options", {})
        return {}


# An IP-Adapter-style custom node, loaded before arcattn: its module copies optimized_attention at import, and its
# attn2 replacement calls that copy without the model's transformer_options (so the node's override never sees it)
ip_module = types.ModuleType("ip_adapter_like_nodes")
exec("from comfy.ldm.modules.attention import optimized_attention\n", ip_module.__dict__)
sys.modules[ip_module.__name__] = ip_module
IP_CALLS = [0]


def ip_attn2(n, context, value, extra_options):
    IP_CALLS[0] += 1
    return ip_module.optimized_attention(n, context, value, extra_options["n_heads"])


class IPAdapterLike:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def apply(self, model):
        m = model.clone()
        for name in ("input", "middle", "output"):
            for number in range(12):  # every block the tiny UNet may have; those it lacks are never looked up
                m.set_model_attn2_replace(ip_attn2, name, number)
        return (m,)


for cls in (TinySD15Loader, RandomConditioning, CaptureLatent, InspectModel, IPAdapterLike):
    nodes.NODE_CLASS_MAPPINGS[cls.__name__] = cls


def prompt(tag, arc=None, ip=False):
    """Loader -> [IP-Adapter-like] -> [Arc Attention] -> KSampler (2 euler steps, CFG 4: cond and uncond in one
    batch) -> capture."""
    p = {
        "1": {"class_type": "TinySD15Loader", "inputs": {"seed": 7}},
        "2": {"class_type": "RandomConditioning", "inputs": {"seed": 1}},
        "3": {"class_type": "RandomConditioning", "inputs": {"seed": 2}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 42, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "CaptureLatent", "inputs": {"samples": ["5", 0], "tag": tag}},
    }
    if ip:
        p["11"] = {"class_type": "IPAdapterLike", "inputs": {"model": ["1", 0]}}
        p["5"]["inputs"]["model"] = ["11", 0]
    if arc is not None:
        p["10"] = {"class_type": "ArcAttention", "inputs": {"model": p["5"]["inputs"]["model"], **arc}}
        p["5"]["inputs"]["model"] = ["10", 0]
    return p


def run(p):
    """Validate then execute, as the queue does; returns (arcattn's decisions of this prompt, validation error)."""
    import arcattn
    pid, outputs, err = comfy_queue.validate(p)
    if err is not None:
        return None, err
    arcattn.reset_telemetry() if "arcattn" in sys.modules else None
    comfy_queue.execute(execution.PromptExecutor(comfy_queue.Server()), p, pid, outputs)  # fresh caches: samples again
    return ([d for d in arcattn.get_router().decisions() if d["calls"] > 0] if "arcattn" in sys.modules else []), None


def rel(tag, ref="stock"):
    from arcattn.reference import rel_error  # arcattn is loaded by then (by the node package)
    return rel_error(CAPTURED[tag], CAPTURED[ref])


result = {"stood_in": stood_in}
assert "arcattn" not in sys.modules
run(prompt("stock"))  # ComfyUI's own attention: the reference
run(prompt("ip_stock", ip=True))
result["ip_stock_patch_calls"] = IP_CALLS[0]
result["host_function"] = attention.optimized_attention.__name__

result["node_loaded"] = asyncio.run(nodes.load_custom_node(repo_root))
import arcattn  # noqa: E402  (loaded by the node package)

result["node_classes"] = sorted(c for c in nodes.NODE_CLASS_MAPPINGS if c.startswith("Arc"))
result["backend_choices"] = nodes.NODE_CLASS_MAPPINGS["ArcAttention"].INPUT_TYPES()["required"]["backend"][0]
result["patched"] = arcattn.hosts.comfyui.is_patched()

cases = {"plain": None, "node_auto": {"enabled": True, "backend": "auto"},
         "node_sdpa": {"enabled": True, "backend": "sdpa"}, "node_off": {"enabled": False, "backend": "auto"}}
for tag, arc in cases.items():
    decisions, err = run(prompt(tag, arc))
    assert err is None, err
    result[tag] = {"rel_error": rel(tag), "served": sum(d["calls"] for d in decisions),
                   "calls": sorted({d["call"] for d in decisions}),
                   "backends": sorted({d["backend"] for d in decisions})}

# the IP-Adapter-like node's calls through its own copy: served by the global patch, and by the node's setting
# (its model wrapper) when the Arc Attention node follows it; off leaves every call to the host
for tag, arc in {"ip_plain": None, "ip_node_sdpa": {"enabled": True, "backend": "sdpa"},
                 "ip_node_off": {"enabled": False, "backend": "auto"}}.items():
    IP_CALLS[0] = 0
    decisions, err = run(prompt(tag, arc, ip=True))
    assert err is None, err
    result[tag] = {"rel_error": rel(tag, "ip_stock"), "served": sum(d["calls"] for d in decisions),
                   "calls": sorted({d["call"] for d in decisions}),
                   "backends": sorted({d["backend"] for d in decisions}), "patch_calls": IP_CALLS[0]}
result["ip_copy_is_ours"] = ip_module.optimized_attention is attention.optimized_attention

# the loader's model, shared with the node in one prompt, carries no override once the node has run and sampled
p = prompt("with_inspect", {"enabled": True, "backend": "auto"})
p["9"] = {"class_type": "InspectModel", "inputs": {"model": ["1", 0], "after": ["5", 0], "tag": "source_has_override"}}
_, err = run(p)
assert err is None, err
result["source_has_override"] = CAPTURED["source_has_override"]

# arcattn failing on every call inside a real generation: the prompt still succeeds, the host's attention serves
# every call, and the log says so once
class BrokenRouter:
    def run(self, call, prefer=None):
        raise RuntimeError("injected failure")

    def decisions(self):
        return []

    def reset(self):
        pass


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


lines = Lines()
logging.getLogger("arcattn").addHandler(lines)
arcattn.set_router(BrokenRouter())
try:
    _, err = run(prompt("broken", {"enabled": True, "backend": "auto"}))
finally:
    arcattn.set_router(None)
    logging.getLogger("arcattn").removeHandler(lines)
result["broken"] = {"error": err, "rel_error": rel("broken") if "broken" in CAPTURED else None,
                    "warnings": lines.lines}

# a workflow naming a backend this install does not list is refused by ComfyUI's validation, before it runs
_, err = run(prompt("bogus", {"enabled": True, "backend": "no-such-backend"}))
result["bogus_refused"] = err is not None and "bogus" not in CAPTURED
result["bogus_error"] = json.dumps(err)[:400] if err else None

arcattn.hosts.comfyui.unpatch()
result["restored"] = attention.optimized_attention.__name__
decisions, err = run(prompt("after_unpatch"))
result["after_unpatch"] = {"rel_error": rel("after_unpatch"), "served": sum(d["calls"] for d in decisions)}
print(json.dumps(result))
