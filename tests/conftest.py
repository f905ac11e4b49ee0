"""Shared test helpers: fresh random inputs, poisoned outputs, float64 references."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# helper modules beside the tests (host_process, unloadable, ...), importable by name under --import-mode=importlib
TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.append(TESTS)

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. Triton reads this when a kernel is
# defined, so it must be set before any arcattn kernel module is imported.
if not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def load_file(name: str, relpath: str):
    """A repo file that is not part of the arcattn package (extension/build.py, ...) loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def repo_module():
    """load_file, for tests (pytest imports test files in importlib mode: they cannot import conftest)."""
    return load_file


@pytest.fixture(scope="session")
def extension_build():
    """extension/build.py as a module."""
    return load_file("arcattn_extension_build", "extension/build.py")


@pytest.fixture(scope="session")
def cpu_binary(extension_build):
    """The pybind11 binding built against its CPU reference body (a no-op when tests/run.sh already built it)."""
    return extension_build.build_cpu_reference(quiet=True)


@pytest.fixture(autouse=True)
def _fresh_router():
    """Every test starts with a new process-wide router (own decisions, telemetry, env-driven settings)."""
    import arcattn
    from arcattn.hosts import common
    arcattn.set_router(None)
    common._warned.clear()
    yield
    arcattn.set_router(None)


@pytest.fixture
def rng():
    """A generator seeded differently per test run (fresh inputs), printed so that a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little") if "ARCATTN_SEED" not in os.environ else int(os.environ["ARCATTN_SEED"])
    print(f"ARCATTN_SEED={seed}")
    g = torch.Generator().manual_seed(seed)
    return g
