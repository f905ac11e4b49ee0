"""Run inside a ComfyUI checkout (path in argv[1], arcattn's folder in argv[2]), --cpu: the arcattn folder loaded by
ComfyUI's own custom-node loader, and prompts (model -> Arc Attention -> KSampler) validated and executed by
ComfyUI's own executor, as the UI's queue does. Prints one JSON line. Used by tests/test_comfyui_real.py.

Only the model loader, the conditioning and the output are test nodes (no checkpoint, text encoder or VAE here);
the sampler, the validation, the caching and the attention path are ComfyUI's (test nodes: tests/comfy_test_nodes.py).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unloadable import stand_in_unloadable  # noqa: E402

stood_in = stand_in_unloadable("torchvision", "av")  # ComfyUI imports them for models and video types not used here

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import comfy.ldm.modules.attention as attention  # noqa: E402
import nodes  # noqa: E402
from comfy_test_nodes import CAPTURED, WarningLines, base_prompt, rel, run  # noqa: E402
import comfy_test_nodes  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)


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


comfy_test_nodes.register(InspectModel, IPAdapterLike)


def prompt(tag, arc=None, ip=False):
    """Loader -> [IP-Adapter-like] -> [Arc Attention] -> KSampler (2 euler steps, CFG 4: cond and uncond in one
    batch) -> capture."""
    p = base_prompt(tag)
    if ip:
        p["11"] = {"class_type": "IPAdapterLike", "inputs": {"model": ["1", 0]}}
        p["5"]["inputs"]["model"] = ["11", 0]
    if arc is not None:
        p["10"] = {"class_type": "ArcAttention", "inputs": {"model": p["5"]["inputs"]["model"], **arc}}
        p["5"]["inputs"]["model"] = ["10", 0]
    return p


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


lines = WarningLines()
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
