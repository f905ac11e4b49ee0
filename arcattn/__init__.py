"""arcattn: fast, lean UNet attention for Stable Diffusion hosts on Intel Arc (and wherever Triton runs)."""
from __future__ import annotations

import logging

from ._version import __version__
from .api import attention, get_router, reset_telemetry, set_router, telemetry
from .call import LAYOUTS, AttentionCall, make_call
from .dispatch import BackendUnsupported, Router

logging.getLogger("arcattn").addHandler(logging.NullHandler())

__all__ = ["__version__", "attention", "telemetry", "reset_telemetry", "get_router", "set_router", "Router",
           "AttentionCall", "make_call", "LAYOUTS", "BackendUnsupported"]
