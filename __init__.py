"""ComfyUI entry point of arcattn: registers the "Arc Attention" node and patches UNet attention.

Set ARCATTN_COMFYUI_PATCH=0 to keep ComfyUI's attention as it is (the node still works per model). Whatever
fails here is logged once and ComfyUI starts unchanged.
"""
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    from ._loader import load_arcattn
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

    load_arcattn().hosts.comfyui.load()
except Exception as _e:  # noqa: BLE001 - ComfyUI must always start
    logging.getLogger("arcattn").error("arcattn failed to load (%s: %s); ComfyUI runs without it",
                                       type(_e).__name__, _e)
