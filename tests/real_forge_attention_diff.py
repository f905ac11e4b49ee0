"""Run in a subprocess (argv: a folder holding backend/attention.py, this repository, cases per function): arcattn's
Forge wrapper against each attention function of that real backend/attention.py (Forge's, or Forge Neo's) on random
inputs, masks of every shape (2-D, 3-D with a first dim of 1, B, H and B * H, 4-D), both input layouts, both output
layouts where the function takes skip_output_reshape, and q in tiles beside whole k and v (HyperTile). Prints one
JSON line. Used by tests/test_forge_forks_real.py.

Only backend/attention.py (and what it imports from the checkout, such as Forge's sub-quadratic attention) is the
host's own code: the modules it asks for settings (backend.memory_management, backend.args, backend.logging,
modules.errors) are stand-ins here that choose no xformers, Sage or flash-attn, so a folder holding nothing but
that one file is enough."""
import inspect
import json
import os
import sys
import types

root, repo, n_cases = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [repo]

import torch  # noqa: E402


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _no(*_a, **_k):
    return False


backend = _stub("backend", __path__=[os.path.join(root, "backend")])
backend.memory_management = _stub(
    "backend.memory_management", xformers_enabled=_no, xformers_enabled_vae=_no, sage_enabled=_no, flash_enabled=_no,
    pytorch_attention_enabled=lambda: True, is_nvidia=_no, pytorch_attention_flash_attention=_no,
    # Neo asks it .get(dtype, default); Forge takes a non-None answer as the precision (inputs here are float32)
    force_upcast_attention_dtype=lambda: {},
    get_free_memory=lambda dev=None, torch_free_too=False: (1 << 34, 1 << 34) if torch_free_too else 1 << 34,
    soft_empty_cache=lambda *_a, **_k: None,
    OOM_EXCEPTION=torch.cuda.OutOfMemoryError)
backend.args = _stub("backend.args", args=types.SimpleNamespace(
    disable_attention_upcast=False, attention_split=False, sage2_function=None, sage2_fp16_triton=False))
backend.logging = _stub("backend.logging", setup_logger=lambda *_a, **_k: None)
_stub("modules", __path__=[])
_stub("modules.errors", display_once=lambda *_a, **_k: None)

import backend.attention as attention  # noqa: E402

from arcattn.hosts import forge  # noqa: E402
from attention_diff import compare, draw, new_record, tiled  # noqa: E402
from served_calls import served_total  # noqa: E402

FUNCTIONS = [n for n in ("attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch")
             if hasattr(attention, n)]
g = torch.Generator().manual_seed(20261208)

result = {"file": os.path.join(root, "backend", "attention.py"), "mask3d": {}, "functions": {},
          "skip_output_reshape": {}}
wrappers = {}
served_before = served_total()
with torch.no_grad():
    for name in FUNCTIONS:
        fn = getattr(attention, name)
        takes_out = "skip_output_reshape" in inspect.signature(fn).parameters
        result["skip_output_reshape"][name] = takes_out
        wrapper = wrappers[name] = forge.ForgeAttention(fn, "forge", mask3d=forge._mask3d("forge", fn))
        result["mask3d"][name] = wrapper.mask3d
        r = result["functions"][name] = new_record()
        for i in range(n_cases):
            B, H, D, Sq, Sk = draw(g, 1, 4), draw(g, 1, 6), 8 * draw(g, 1, 10), draw(g, 1, 80), draw(g, 1, 80)
            if i % 3 == 0:
                B = H  # the shape where a 3-D mask's two readings (over the batch, over heads) both broadcast
            shapes = (None, (Sq, Sk), (1, Sq, Sk), (B, Sq, Sk), (H, Sq, Sk), (B * H, Sq, Sk), (B, H, Sq, Sk),
                      (B, 1, 1, Sk))
            shape = shapes[i % len(shapes)]
            mask = None if shape is None else -4 * torch.rand(shape, generator=g)
            heads_first = i % 2 == 1  # skip_reshape: (B, H, S, D) in
            q, k, v = (torch.randn(B, H, S, D, generator=g) if heads_first else torch.randn(B, S, H * D, generator=g)
                       for S in (Sq, Sk, Sk))
            kw = {"skip_reshape": True} if heads_first else {}
            if takes_out and i % 4 >= 2:
                kw["skip_output_reshape"] = True
            compare(r, fn, wrapper, (q, k, v, H, mask), kw, [list(shape or ()), B, H, sorted(kw)])
result["served"] = served_total() - served_before
result["tiled"] = tiled({name: (getattr(attention, name), wrappers[name]) for name in FUNCTIONS}, g)
print(json.dumps(result))
