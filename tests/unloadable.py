"""Empty stand-ins for packages a host imports at start-up but that the code under test never calls, where they
do not load on this machine: PyPI's torchvision wheels are CUDA builds that fail beside a CPU-only torch
("operator torchvision::nms does not exist"), and a GPU image may lack av (ComfyUI's video types) or scipy
(two of ComfyUI's samplers). A package that imports is used as it is."""
from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

SUBMODULES = {
    "torchvision": ("transforms", "transforms.functional", "models", "ops", "io", "utils"),
    "av": ("container", "subtitles", "subtitles.stream", "video", "audio"),
    "scipy": ("stats", "integrate"),
}


def stand_in_unloadable(*names: str) -> list:
    """Import each of `names`; put an empty module (with its usual submodules) in place of any that fails.
    Returns the names stood in."""
    stood_in = []
    for name in names:
        try:
            importlib.import_module(name)
            continue
        except Exception:  # noqa: BLE001 - ImportError, or a RuntimeError from a mismatched binary
            pass
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]
        top = _module(name)
        for sub in SUBMODULES.get(name, ()):
            parent = top
            for i, part in enumerate(sub.split(".")):
                full = ".".join([name, *sub.split(".")[:i + 1]])
                mod = sys.modules.get(full) or _module(full)
                setattr(parent, part, mod)
                parent = mod
        stood_in.append(name)
    return stood_in


def _module(name: str) -> types.ModuleType:
    """A package module with a spec (transformers' availability checks call find_spec) and no distribution metadata,
    so libraries that ask for the package's version treat it as absent; any other name it is asked for is an
    empty class."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)

    def placeholder(attr: str):
        # `from av.container import InputContainer` (names used in annotations and isinstance checks): an empty
        # class of that name; dunder lookups stay missing, so version and feature probes see no package
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = type(attr, (), {"__module__": name})
        setattr(mod, attr, cls)
        return cls

    mod.__getattr__ = placeholder
    mod.__path__ = []
    sys.modules[name] = mod
    return mod
