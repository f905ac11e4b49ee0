"""ComfyUI node: "Arc Attention" (MODEL -> MODEL) turns arcattn on or off per model and picks the backend."""
from __future__ import annotations

try:  # loaded as part of the node package (ComfyUI) or as a plain module (tests)
    from ._loader import load_arcattn
except ImportError:
    from _loader import load_arcattn

import logging

log = logging.getLogger("arcattn")


def backend_choices() -> list:
    try:
        return ["auto", *load_arcattn().backends.NAMES]
    except Exception:  # noqa: BLE001 - arcattn failed to load: the node still lists, and passes models through
        return ["auto"]


class ArcAttention:
    """Route this model's attention through arcattn (or, disabled, through ComfyUI's own attention)."""

    DESCRIPTION = ("Arc Attention: routes this model's attention through arcattn (native XMX on Arc B-series, "
                   "Triton flash attention, SDPA fallback). 'auto' picks the fastest backend that can serve each "
                   "shape; a named backend is tried first, and a call it cannot serve goes down the usual order "
                   "(xmx, triton, sdpa).")
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "advanced/attention"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "enabled": ("BOOLEAN", {"default": True, "label_on": "arcattn", "label_off": "ComfyUI attention"}),
            "backend": (backend_choices(), {"default": "auto"}),
        }}

    def apply(self, model, enabled: bool = True, backend: str = "auto"):
        try:
            comfyui = load_arcattn().hosts.comfyui
        except Exception as e:  # noqa: BLE001 - a workflow must never fail because of arcattn
            log.error("Arc Attention: arcattn is not loaded (%s: %s); the model passes through unchanged",
                      type(e).__name__, e)
            return (model,)
        try:
            m = model.clone()
            comfyui.set_model_setting(m, enabled=enabled, backend=backend)
        except Exception as e:  # noqa: BLE001
            log.error("Arc Attention: could not set the model (%s: %s); the model passes through unchanged",
                      type(e).__name__, e)
            return (model,)
        return (m,)


NODE_CLASS_MAPPINGS = {"ArcAttention": ArcAttention}
NODE_DISPLAY_NAME_MAPPINGS = {"ArcAttention": "Arc Attention"}
