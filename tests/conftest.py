"""Shared test helpers: fresh random inputs, poisoned outputs, float64 references."""
from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. Triton reads this when a kernel is
# defined, so it must be set before any arcattn kernel module is imported.
if not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_router():
    """Every test starts with a new process-wide router (own decisions, telemetry, env-driven settings)."""
    import arcattn
    arcattn.set_router(None)
    yield
    arcattn.set_router(None)


@pytest.fixture
def rng():
    """A generator seeded differently per test run (fresh inputs), printed so that a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little") if "ARCATTN_SEED" not in os.environ else int(os.environ["ARCATTN_SEED"])
    print(f"ARCATTN_SEED={seed}")
    g = torch.Generator().manual_seed(seed)
    return g
