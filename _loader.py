"""Find the arcattn package that sits beside this file without putting this folder on sys.path.

ComfyUI and Forge load this repository as a plugin folder; adding the folder itself to sys.path would let its
`nodes.py`, `install.py` or `scripts/` shadow the host's modules of the same names. So the package is loaded by
path and registered as `arcattn` (an arcattn already imported, e.g. pip-installed, is used as it is).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load_arcattn():
    mod = sys.modules.get("arcattn")
    if mod is None:
        pkg_dir = os.path.join(HERE, "arcattn")
        spec = importlib.util.spec_from_file_location("arcattn", os.path.join(pkg_dir, "__init__.py"),
                                                      submodule_search_locations=[pkg_dir])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["arcattn"] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop("arcattn", None)
            raise
    importlib.import_module("arcattn.hosts.comfyui")
    return mod
