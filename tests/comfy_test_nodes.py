"""Test nodes for the scripts that run prompts in a real ComfyUI on the CPU (tests/real_comfyui_workflow.py,
tests/real_comfyui_builtin_nodes.py): they stand in for what needs files (a checkpoint, a text encoder, a
ControlNet) and capture the sampler's output. Import after ComfyUI's own modules, inside a checkout."""
from __future__ import annotations

import logging
import sys

import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_base
import comfy.model_patcher
import comfy.ops
import comfy.supported_models
import execution
import nodes

import comfy_queue
from random_weights import randomise

CPU = torch.device("cpu")
CONTEXT_DIM = 96
CAPTURED: dict = {}
UNET = {
    "context_dim": CONTEXT_DIM, "model_channels": 64, "use_linear_in_transformer": True,
    "adm_in_channels": None, "use_temporal_attention": False, "image_size": 32, "in_channels": 4,
    "out_channels": 4, "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
    "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
    "use_spatial_transformer": True, "dtype": torch.float32}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    randomise(module, torch.Generator().manual_seed(seed))


class _Seeded:
    """A test node whose one input is a seed."""
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}


class TinySD15Loader(_Seeded):
    """Stands in for a checkpoint loader: ComfyUI's SD15 model class around a scaled-down UNet, random weights."""
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    def load(self, seed):
        model = comfy.model_base.BaseModel(comfy.supported_models.SD15(dict(UNET)), device=CPU)
        _randomise(model.diffusion_model, seed)
        model.eval()
        return (comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU),)


class TinyControlNetLoader(_Seeded):
    """Stands in for ControlNetLoader: ComfyUI's ControlNet (comfy.cldm) for the tiny UNet, random weights (its
    zero convolutions too, so that it changes the result), wrapped as load_controlnet_state_dict wraps one."""
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    def load(self, seed):
        config = comfy.supported_models.SD15(dict(UNET)).unet_config
        config = {k: v for k, v in config.items() if k != "out_channels"}
        net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, device=CPU,
                                         **config)
        _randomise(net, seed)
        net.eval()
        return (comfy.controlnet.ControlNet(net, load_device=CPU),)


class RandomConditioning(_Seeded):
    """Stands in for CLIPTextEncode: a 77-token context."""
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    def make(self, seed):
        ctx = torch.randn(1, 77, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))
        return ([[ctx, {}]],)


class RandomImage:
    """Stands in for LoadImage: an RGB image in [0, 1], (1, H, W, 3) as ComfyUI's IMAGE."""
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "arcattn-test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "size": ("INT", {"default": 128})}}

    def make(self, seed, size):
        return (torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed)),)


class RandomLatent(_Seeded):
    """Stands in for VAEEncode of a picture: a 16 x 16 latent, as the training node takes it."""
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"

    def make(self, seed):
        return ({"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))},)


class _Capture:
    """An output node that keeps what reaches its one input (name and type in INPUT) under `tag`, in CAPTURED."""
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "arcattn-test"
    INPUT = ("value", "*")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {cls.INPUT[0]: (cls.INPUT[1],), "tag": ("STRING", {"default": ""})}}

    def capture(self, tag, **inputs):
        CAPTURED[tag] = self.keep(inputs[self.INPUT[0]])
        return {}


class CaptureLora(_Capture):
    """A trained LoRA's weights, flattened in key order."""
    INPUT = ("lora", "LORA_MODEL")

    def keep(self, lora):
        return torch.cat([lora[k].detach().float().flatten() for k in sorted(lora)])


class CaptureLatent(_Capture):
    INPUT = ("samples", "LATENT")

    def keep(self, samples):
        return samples["samples"].clone()


def register(*extra) -> None:
    for cls in (TinySD15Loader, TinyControlNetLoader, RandomConditioning, RandomImage, RandomLatent, CaptureLatent,
                CaptureLora, *extra):
        nodes.NODE_CLASS_MAPPINGS[cls.__name__] = cls


def base_prompt(tag: str, steps: int = 2, cfg: float = 4.0) -> dict:
    """Loader -> KSampler (euler, CFG 4: cond and uncond in one batch) -> capture, on a 128 px (16 x 16 latent)
    image. Node "1" is the model, "2" / "3" the positive / negative conditioning, "5" the sampler."""
    return {
        "1": {"class_type": "TinySD15Loader", "inputs": {"seed": 7}},
        "2": {"class_type": "RandomConditioning", "inputs": {"seed": 1}},
        "3": {"class_type": "RandomConditioning", "inputs": {"seed": 2}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 42, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "CaptureLatent", "inputs": {"samples": ["5", 0], "tag": tag}},
    }


def add_model_node(p: dict, node_id: str, class_type: str, **inputs) -> None:
    """Put a MODEL -> MODEL node between the sampler and whatever fed its model."""
    p[node_id] = {"class_type": class_type, "inputs": {"model": p["5"]["inputs"]["model"], **inputs}}
    p["5"]["inputs"]["model"] = [node_id, 0]


def run(p: dict):
    """Validate then execute, as the queue does; returns (arcattn's decisions of this prompt, validation error)."""
    arcattn = sys.modules.get("arcattn")
    pid, outputs, err = comfy_queue.validate(p)
    if err is not None:
        return None, err
    if arcattn is not None:
        arcattn.reset_telemetry()
    comfy_queue.execute(execution.PromptExecutor(comfy_queue.Server()), p, pid, outputs)  # fresh caches: samples again
    return ([d for d in arcattn.get_router().decisions() if d["calls"] > 0] if arcattn is not None else []), None


def rel(tag: str, ref: str = "stock") -> float:
    from arcattn.reference import rel_error  # arcattn is loaded by then (by the node package)
    return rel_error(CAPTURED[tag], CAPTURED[ref])


class WarningLines(logging.Handler):
    """Collects the messages of WARNING and above (add it to the "arcattn" logger)."""
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())
