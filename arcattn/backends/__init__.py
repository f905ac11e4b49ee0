"""Backend registry, in priority order: native XMX (Arc Xe2), Triton flash attention, torch SDPA."""
from __future__ import annotations

import importlib
from typing import Optional

from .base import Backend

# (module, class): imported lazily so that a broken optional backend can never stop arcattn from importing
_REGISTRY = (
    ("xmx", "arcattn.backends.xmx", "XMXBackend"),
    ("triton", "arcattn.backends.triton_flash", "TritonBackend"),
    ("sdpa", "arcattn.backends.sdpa", "SDPABackend"),
)
NAMES = tuple(name for name, _, _ in _REGISTRY)


class Missing(Backend):
    """Stands in for a backend whose module failed to import, carrying the reason."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self._reason = reason

    def probe(self) -> Optional[str]:
        return self._reason

    def unsupported_reasons(self, call) -> list:
        return [self._reason]

    def capabilities(self) -> dict:
        return {}


def create_backends() -> list:
    out = []
    for name, module, cls in _REGISTRY:
        try:
            out.append(getattr(importlib.import_module(module), cls)())
        except Exception as e:  # noqa: BLE001
            if name == "sdpa":
                raise
            out.append(Missing(name, f"module {module} failed to import: {type(e).__name__}: {e}"))
    return out
