"""Run with a Forge fork's Python inside its checkout (argv: checkout, repo, cases per function): arcattn's Forge
wrapper against each of the fork's own ldm_patched attention functions on random inputs, masks of every shape
(2-D, 3-D with a first dim of 1, B, H and B * H, 4-D), and on q in tiles beside whole k and v (HyperTile); and the
copy of the attention function that the fork's SAG node takes at import, rebound. Prints one JSON line. Used by
tests/test_forge_forks_real.py in a subprocess (the forks parse sys.argv and pick their attention at import)."""
import json
import sys

root, repo, n_cases = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = [sys.argv[0], "--always-cpu"]
sys.path[:0] = [root, repo]

try:  # reForge parses sys.argv only once this is on; Forge classic parses an empty list at import whatever it says
    import ldm_patched.modules.options as options
    options.enable_args_parsing()
except ImportError:
    pass
import ldm_patched.modules.args_parser as args_parser  # noqa: E402

args_parser.args, _ = args_parser.parser.parse_known_args()  # before model_management takes its copy

import torch  # noqa: E402

import ldm_patched.ldm.modules.attention as attention  # noqa: E402

from arcattn.hosts import forge  # noqa: E402
from attention_diff import compare, draw, new_record, tiled  # noqa: E402
from served_calls import served_total  # noqa: E402


FUNCTIONS = [n for n in ("attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch")
             if hasattr(attention, n)]
g = torch.Generator().manual_seed(20261207)

# the fork's own nodes that copy optimized_attention at import (reForge's SAG, as its built-in extension loads it,
# before any user extension), where the fork has them
contrib = {}
for name in ("ldm_patched.contrib.nodes_sag",):
    try:
        contrib[name] = __import__(name, fromlist=["_"])
    except Exception:  # noqa: BLE001 - not in this fork
        pass

installed = forge.install()
result = {"host_function": getattr(attention.optimized_attention, "original", attention.optimized_attention).__name__,
          "installed": bool(installed), "mask3d": {}, "functions": {}}
wrappers = {}
served_before = served_total()
with torch.no_grad():
    for name in FUNCTIONS:
        fn = getattr(attention, name)
        wrapper = wrappers[name] = forge.ForgeAttention(fn, "forge", mask3d=forge._mask3d("ldm_patched", fn))
        result["mask3d"][name] = wrapper.mask3d
        r = result["functions"][name] = new_record()
        for i in range(n_cases):
            B, H, D, Sq, Sk = draw(g, 1, 4), draw(g, 1, 6), 8 * draw(g, 1, 10), draw(g, 1, 80), draw(g, 1, 80)
            q, k, v = (torch.randn(B, S, H * D, generator=g) for S in (Sq, Sk, Sk))
            shapes = (None, (Sq, Sk), (1, Sq, Sk), (B, Sq, Sk), (H, Sq, Sk), (B * H, Sq, Sk), (B, H, Sq, Sk),
                      (B, 1, 1, Sk))
            shape = shapes[i % len(shapes)]
            mask = None if shape is None else -4 * torch.rand(shape, generator=g)
            compare(r, fn, wrapper, (q, k, v, H, mask), {}, [list(shape or ()), B, H])
result["served"] = served_total() - served_before
result["contrib_copies_ours"] = {n: isinstance(m.optimized_attention, forge.ForgeAttention) for n, m in contrib.items()}

# q in tiles beside whole k and v, as reForge's HyperTile passes them
result["tiled"] = tiled({name: (getattr(attention, name), wrappers[name]) for name in FUNCTIONS}, g)
forge.uninstall()
print(json.dumps(result))
