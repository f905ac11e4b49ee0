"""arcattn's Forge adapter against a real Forge checkout: ARCATTN_FORGE_ROOT=/path/to/stable-diffusion-webui-forge.

Imports Forge's own backend.attention and backend.nn.unet (and backend.nn.flux when its imports resolve) in a
subprocess (Forge parses sys.argv and picks its attention at import; its top-level `backend`/`modules` must not
meet the stand-ins of tests/test_forge.py), then proves that install() reaches CrossAttention.forward: calls
are served by arcattn (telemetry), the output matches Forge's own function and a float64 reference, a disabled
toggle gives Forge's function back bit for bit, and uninstall() restores every original.

Forge needs a few packages beyond arcattn's test set to import these modules on a CPU: einops and psutil (gguf
comes from Forge's own packages_3rdparty, as at its start-up). Skipped visibly when ARCATTN_FORGE_ROOT is unset or those
are missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FORGE_ROOT = os.environ.get("ARCATTN_FORGE_ROOT")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe(attention_flag: str) -> dict:
    """Runs in the subprocess. Prints one JSON line with what it saw."""
    # Forge's start-up puts its own copy of gguf (packages_3rdparty) on the path; backend.utils imports it
    sys.path[:0] = [ROOT, FORGE_ROOT, os.path.join(FORGE_ROOT, "packages_3rdparty")]
    # Forge's backend/args.py parses sys.argv at import: CPU (no GPU here) and the attention under test
    sys.argv = ["forge-probe", "--always-cpu"] + ([attention_flag] if attention_flag else [])
    import torch

    import arcattn
    from arcattn.hosts import forge
    from arcattn.reference import attention_reference, rel_error
    from served_calls import served_total

    import backend.attention as A
    import backend.nn.unet as U
    res = {"forge_file": A.__file__, "host_function": A.attention_function.__name__}
    try:
        import backend.nn.flux as FL
    except Exception as e:  # noqa: BLE001
        FL = None
        res["flux_import_error"] = f"{type(e).__name__}: {e}"
    original = A.attention_function
    in_pytorch_class = A.attention_function in [A.attention_pytorch, A.attention_xformers]

    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    attn = U.CrossAttention(query_dim=64, context_dim=48, heads=4, dim_head=16).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    x = torch.randn(2, 37, 64, generator=g)
    ctx = torch.randn(2, 11, 48, generator=g)

    def ref64():
        lin = torch.nn.functional.linear
        q, k, v = (lin(t.double(), m.weight.double()) for t, m in ((x, attn.to_q), (ctx, attn.to_k), (ctx, attn.to_v)))
        q4, k4, v4 = (t.view(2, -1, 4, 16).transpose(1, 2) for t in (q, k, v))
        o = attention_reference(q4, k4, v4)[0].transpose(1, 2).reshape(2, 37, 64)
        return lin(o, attn.to_out[0].weight.double(), attn.to_out[0].bias.double())

    with torch.no_grad():
        ref = ref64()
        host_out = attn(x, context=ctx)
        sites = forge.install()
        res["sites"] = sites
        res["rebound"] = {
            "backend.attention": A.attention_function is not original and A.attention_function.original is original,
            "backend.nn.unet": U.attention_function is A.attention_function,
        }
        if FL is not None:
            res["rebound"]["backend.nn.flux"] = FL.attention_function is A.attention_function
        res["memory_class_kept"] = (A.attention_function in [A.attention_pytorch, A.attention_xformers]) == in_pytorch_class
        before = {n: v["served"] for n, v in arcattn.telemetry().items()}
        out = attn(x, context=ctx)
        after = {n: v["served"] for n, v in arcattn.telemetry().items()}
        res["served"] = {n: after[n] - before[n] for n in after if after[n] != before[n]}
        res["fallbacks"] = {k: v for w in forge.wrappers() for k, v in w.fallbacks.items()}
        res["rel_error_vs_host"] = rel_error(out, host_out.double())
        res["rel_error_vs_ref"] = rel_error(out, ref)
        res["host_rel_error_vs_ref"] = rel_error(host_out, ref)
        if FL is not None:
            q, k, v = (torch.randn(1, 2, 24, 32, generator=g) for _ in range(3))
            pos = torch.arange(24, dtype=torch.float64)[:, None] * (1e-2 * torch.arange(1, 17, dtype=torch.float64))
            c, s = torch.cos(pos), torch.sin(pos)
            pe = torch.stack([c, -s, s, c], -1).reshape(24, 16, 2, 2).float()[None, None]
            before_f = served_total()
            fo = FL.attention(q, k, v, pe)
            qr, kr = FL.apply_rope(q, k, pe)
            fref = attention_reference(qr, kr, v)[0].transpose(1, 2).reshape(1, 24, 64)
            res["flux_rel_error_vs_ref"] = rel_error(fo, fref)
            res["flux_served"] = served_total() - before_f
        # a 3-D mask with B == H: Forge's attention_pytorch reads its first dim over heads, its sliced functions
        # over the batch; the wrapper must read it as the function it wraps does
        mq, mk, mv = (torch.randn(2, S, 32, generator=g) for S in (13, 7, 7))
        mask3 = torch.randn(2, 13, 7, generator=g)
        m0 = served_total()
        mo = A.attention_function(mq, mk, mv, 2, mask=mask3)
        res["mask3d_served"] = served_total() - m0
        res["mask3d_rel_error_vs_host"] = rel_error(mo, original(mq, mk, mv, 2, mask=mask3).double())
        forge.set_generation(False)
        t0 = served_total()
        off = attn(x, context=ctx)
        res["disabled_bitwise_equal_host"] = bool(torch.equal(off, host_out))
        res["disabled_served"] = served_total() - t0
        res["restored"] = forge.uninstall()
        res["originals_back"] = (A.attention_function is original and U.attention_function is original
                                 and (FL is None or FL.attention_function is original))
    print("PROBE " + json.dumps(res))
    return res


def _missing_deps() -> list:
    import importlib.util
    return [m for m in ("einops", "psutil") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(not FORGE_ROOT, reason="ARCATTN_FORGE_ROOT is not set: real-Forge check skipped "
                                           "(set it to a Forge checkout to run it)")
@pytest.mark.parametrize("flag", ["", "--attention-pytorch"], ids=["forge-default", "forge-pytorch"])
def test_real_forge_cross_attention_routes_through_arcattn(flag):
    missing = _missing_deps()
    if missing:
        pytest.skip(f"Forge's backend needs {', '.join(missing)} to import (pip install {' '.join(missing)})")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe", flag], capture_output=True, text=True,
                       env=env, cwd=FORGE_ROOT, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    assert r.returncode == 0 and lines, f"probe failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads(lines[-1][len("PROBE "):])
    print(json.dumps(res, indent=1))
    assert all(res["rebound"].values()), res["rebound"]
    assert res["memory_class_kept"]
    assert sum(res["served"].values()) == 1 and not res["fallbacks"], (res["served"], res["fallbacks"])
    assert res["rel_error_vs_ref"] < 1e-5 and res["rel_error_vs_host"] < 1e-5
    if "flux_import_error" not in res:
        assert res["flux_served"] == 1 and res["flux_rel_error_vs_ref"] < 1e-5
    else:
        print("backend.nn.flux not importable here:", res["flux_import_error"])
    assert res["mask3d_served"] == 1 and res["mask3d_rel_error_vs_host"] < 1e-5, res["host_function"]
    assert res["disabled_bitwise_equal_host"] and res["disabled_served"] == 0
    assert res["originals_back"] and res["restored"]


# (stand-in file, real Forge file, qualified name): the stand-ins must keep Forge's exact signatures
SIGNATURES = [
    ("backend/attention.py", "backend/attention.py", "attention_basic"),
    ("backend/attention.py", "backend/attention.py", "attention_pytorch"),
    ("backend/attention.py", "backend/attention.py", "attention_sub_quad"),
    ("backend/attention.py", "backend/attention.py", "attention_xformers"),
    ("backend/nn/unet.py", "backend/nn/unet.py", "CrossAttention.__init__"),
    ("backend/nn/unet.py", "backend/nn/unet.py", "CrossAttention.forward"),
    ("backend/nn/flux.py", "backend/nn/flux.py", "attention"),
    ("backend/nn/flux.py", "backend/nn/flux.py", "apply_rope"),
    ("modules/scripts.py", "modules/scripts.py", "Script.title"),
    ("modules/scripts.py", "modules/scripts.py", "Script.ui"),
    ("modules/scripts.py", "modules/scripts.py", "Script.show"),
    ("modules/scripts.py", "modules/scripts.py", "Script.process"),
    ("modules/scripts.py", "modules/scripts.py", "Script.process_before_every_sampling"),
    ("modules/scripts.py", "modules/scripts.py", "Script.postprocess_batch"),
    ("modules/scripts.py", "modules/scripts.py", "Script.postprocess"),
    ("modules/scripts.py", "modules/scripts.py", "Script.elem_id"),
    ("modules/script_callbacks.py", "modules/script_callbacks.py", "on_ui_settings"),
    ("modules/script_callbacks.py", "modules/script_callbacks.py", "on_script_unloaded"),
    ("modules/shared.py", "modules/options.py", "OptionInfo.__init__"),
    ("modules/shared.py", "modules/options.py", "OptionInfo.info"),
    ("modules/shared.py", "modules/options.py", "Options.add_option"),
    ("modules/ui_components.py", "modules/ui_components.py", "InputAccordion"),
]


def _signature(path: str, qualname: str) -> str:
    import ast
    tree = ast.parse(open(path, encoding="utf-8").read())
    node, parts = tree, qualname.split(".")
    for part in parts:
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
    return ast.unparse(node.args)


@pytest.mark.skipif(not FORGE_ROOT, reason="ARCATTN_FORGE_ROOT is not set: real-Forge check skipped "
                                           "(set it to a Forge checkout to run it)")
def test_standins_keep_forge_signatures():
    standins = os.path.join(ROOT, "tests", "standins", "forge")
    mismatched = []
    for standin, real, name in SIGNATURES:
        want = _signature(os.path.join(FORGE_ROOT, real), name)
        got = _signature(os.path.join(standins, standin), name)
        if got != want:
            mismatched.append(f"{name}: Forge ({want}) vs stand-in ({got})")
    assert not mismatched, "\n".join(mismatched)
    # the hooks the script relies on are still called by Forge's processing, and before the infotext
    src = open(os.path.join(FORGE_ROOT, "modules", "processing.py"), encoding="utf-8").read()
    assert "scripts.process_before_every_sampling(" in src
    post, info = src.index("p.scripts.postprocess_batch("), src.index("def infotext(index=0")
    assert post < info
    assert "extra_generation_params" in src


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "--probe":
    _probe(sys.argv[2] if len(sys.argv) > 2 else "")
