"""Run inside a ComfyUI checkout (path in argv[1], repo in argv[2], case count in argv[3]): arcattn's wrapper
(as the node's override builds it) against each of ComfyUI's own attention functions on random inputs a host
can pass: both input layouts, both output layouts, float masks of every shape ComfyUI reads, fp32 and fp64; q
in tiles beside whole k and v, as HyperTile passes them; and `scale=` given, default or not.
Prints one JSON line. Used by tests/test_comfyui_real.py in a subprocess (ComfyUI parses sys.argv)."""
import json
import sys

comfy_root, repo_root, n_cases = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = [sys.argv[0], "--cpu"]
sys.path[:0] = [comfy_root, repo_root]

import torch  # noqa: E402

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401
import comfy.ldm.modules.attention as attention  # noqa: E402

from arcattn.hosts.comfyui import make_override  # noqa: E402
from arcattn.reference import attention_reference, rel_error  # noqa: E402
from served_calls import served_total  # noqa: E402


FUNCTIONS = ("attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
g = torch.Generator().manual_seed(20261207)


def pick(options):
    return options[int(torch.randint(len(options), (1,), generator=g))]


def case():
    B, H, D = pick((1, 2, 3)), pick((1, 2, 5, 8)), pick((8, 24, 40, 64, 72))
    Sq, Sk = pick((1, 7, 31, 64, 77)), pick((1, 5, 31, 77, 154))
    dtype = pick((torch.float32, torch.float64))
    q4, k4, v4 = (torch.randn(B, H, S, D, generator=g, dtype=torch.float64) for S in (Sq, Sk, Sk))
    mask_shape = pick((None, (Sq, Sk), (B, Sq, Sk), (1, Sq, Sk), (B, 1, Sk), (B, H, Sq, Sk), (B, 1, 1, Sk)))
    mask = None if mask_shape is None else -4 * torch.rand(mask_shape, generator=g)  # float32, as hosts pass
    skip_reshape, skip_output_reshape = pick((False, True)), pick((False, True))
    return dict(B=B, H=H, D=D, Sq=Sq, Sk=Sk, dtype=dtype, q4=q4, k4=k4, v4=v4, mask=mask,
                skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)


def inputs(c):
    t4 = [t.to(c["dtype"]) for t in (c["q4"], c["k4"], c["v4"])]
    return t4 if c["skip_reshape"] else [t.transpose(1, 2).flatten(2) for t in t4]


def reference(c, scale=None):
    m = c["mask"]
    if m is not None:  # ComfyUI reads a 2-D mask as (Sq, Sk) and a 3-D one as (B, Sq, Sk)
        m = m.double()[(None, None) if m.dim() == 2 else (slice(None), None) if m.dim() == 3 else ()]
    ref, _ = attention_reference(c["q4"], c["k4"], c["v4"], mask=m, scale=scale)
    return ref if c["skip_output_reshape"] else ref.transpose(1, 2).flatten(2)


override = make_override(enabled=True, backend="sdpa")
results = {name: {"cases": 0, "worst_vs_ref": 0.0, "worst_vs_host": 0.0, "host_wrong": 0, "failures": []}
           for name in FUNCTIONS}
served_before = served_total()
with torch.no_grad():
    for i in range(n_cases):
        c = case()
        ref = reference(c)
        kw = dict(mask=c["mask"], skip_reshape=c["skip_reshape"], skip_output_reshape=c["skip_output_reshape"])
        for name in FUNCTIONS:
            fn = getattr(attention, name)
            r = results[name]
            r["cases"] += 1
            out = override(fn, *inputs(c), c["H"], **kw)
            host = fn(*inputs(c), c["H"], **kw)
            tol = TOL[c["dtype"]]
            e_ref = rel_error(out, ref) if out.shape == ref.shape and out.dtype == c["dtype"] else float("inf")
            e_host_ref = rel_error(host, ref) if host.shape == ref.shape else float("inf")
            e_host = rel_error(out, host.double()) if host.shape == out.shape else float("inf")
            r["worst_vs_ref"] = max(r["worst_vs_ref"], e_ref)
            if e_host_ref < tol:  # compare with the host only where the host's own answer is right
                r["worst_vs_host"] = max(r["worst_vs_host"], e_host)
            else:
                r["host_wrong"] += 1  # e.g. torch's CPU SDPA with float64 q and a float32 mask
            if e_ref >= tol or (e_host_ref < tol and e_host >= tol):
                r["failures"].append(dict(case=i, dtype=str(c["dtype"]), B=c["B"], H=c["H"], D=c["D"], Sq=c["Sq"],
                                          Sk=c["Sk"], mask=None if c["mask"] is None else list(c["mask"].shape),
                                          skip_reshape=c["skip_reshape"],
                                          skip_output_reshape=c["skip_output_reshape"],
                                          vs_ref=e_ref, vs_host=e_host, host_vs_ref=e_host_ref))
served = served_total() - served_before

# q in tiles beside whole k and v (ComfyUI's HyperTile: q (B * T, S / T, C), k and v (B, S, C)): every function
# reads k and v by q's batch, so each tile attends to S / T consecutive keys
tiled = {"cases": 0, "worst_vs_ref": 0.0, "worst_vs_host": 0.0, "failures": []}
served_before = served_total()
with torch.no_grad():
    for i in range(max(1, n_cases // 10)):
        B, T, H, D, St = pick((1, 2)), pick((2, 4, 16)), pick((1, 5, 8)), pick((8, 40, 64)), pick((1, 7, 16))
        dtype = pick((torch.float32, torch.float64))
        q, k, v = (torch.randn(B * T if n == "q" else B, St if n == "q" else St * T, H * D, generator=g,
                               dtype=torch.float64) for n in "qkv")
        ref, _ = attention_reference(*(t.reshape(B * T, -1, H, D).transpose(1, 2) for t in (q, k, v)))
        ref = ref.transpose(1, 2).flatten(2)
        q, k, v = (t.to(dtype) for t in (q, k, v))
        for name in FUNCTIONS:
            fn = getattr(attention, name)
            out, host = override(fn, q, k, v, H), fn(q, k, v, H)
            e_ref, e_host = rel_error(out, ref), rel_error(out, host.double())
            tiled["cases"] += 1
            tiled["worst_vs_ref"] = max(tiled["worst_vs_ref"], e_ref)
            tiled["worst_vs_host"] = max(tiled["worst_vs_host"], e_host)
            if e_ref >= TOL[dtype] or e_host >= TOL[dtype]:
                tiled["failures"].append(dict(function=name, B=B, T=T, H=H, D=D, St=St, dtype=str(dtype),
                                              vs_ref=e_ref, vs_host=e_host))
tiled["served"] = served_total() - served_before
# `scale=` in **kwargs: this ComfyUI's functions ignore it or honour it by version; arcattn serves the default
# scale (both readings agree) and hands others back, so every answer is the host's own
scaled = {"cases": 0, "default": 0, "compared": 0, "worst_vs_host": 0.0, "failures": []}
served_before = served_total()
with torch.no_grad():
    for i in range(max(1, n_cases // 10)):
        c = case()
        default = bool(torch.randint(2, (1,), generator=g))
        scale = c["D"] ** -0.5 if default else 0.05 + float(torch.rand(1, generator=g))
        kw = dict(mask=c["mask"], skip_reshape=c["skip_reshape"], skip_output_reshape=c["skip_output_reshape"],
                  scale=scale)
        for name in FUNCTIONS:
            fn = getattr(attention, name)
            out, host = override(fn, *inputs(c), c["H"], **kw), fn(*inputs(c), c["H"], **kw)
            e_host = rel_error(out, host.double()) if host.shape == out.shape else float("inf")
            tol = TOL[c["dtype"]]
            scaled["cases"] += 1
            scaled["default"] += default
            # compared where the host's answer is right under one reading or the other
            if host.shape == out.shape and min(rel_error(host, reference(c, s)) for s in (None, scale)) < tol:
                scaled["worst_vs_host"] = max(scaled["worst_vs_host"], e_host)
                scaled["compared"] += 1
                if e_host >= tol:
                    scaled["failures"].append(dict(function=name, case=i, scale=scale, vs_host=e_host))
scaled["served"] = served_total() - served_before
print(json.dumps({"functions": results, "calls": n_cases * len(FUNCTIONS), "served": served, "tiled": tiled,
                  "scaled": scaled, "host_function": attention.optimized_attention.__name__}))
