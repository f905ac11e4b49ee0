"""Against a real ComfyUI checkout (ARCATTN_COMFYUI_ROOT): a small real UNetModel, patched vs unpatched."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.environ.get("ARCATTN_COMFYUI_ROOT")

pytestmark = pytest.mark.skipif(not COMFY, reason="ARCATTN_COMFYUI_ROOT is not set: no real ComfyUI checkout to test")


def _run_executor_script(script: str) -> dict:
    """Run one of the scripts that execute prompts in ComfyUI (in its own process: ComfyUI parses sys.argv);
    its last line of output, as JSON."""
    import importlib.util
    missing = [m for m in ("einops", "torchsde", "transformers", "safetensors", "scipy", "PIL", "yaml", "psutil",
                           "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"ComfyUI's nodes and executor need {', '.join(missing)} to import "
                    f"(the packages of {os.path.join(COMFY, 'requirements.txt')} but torch, torchvision and torchaudio)")
    env = dict(os.environ)
    for name in ("ARCATTN_BACKEND", "ARCATTN_COMFYUI_PATCH", "ARCATTN_DISABLE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", script), COMFY, ROOT],
                          capture_output=True, text=True, timeout=600, env=env, cwd=COMFY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_real_unet_same_output_and_attention_served_by_arcattn():
    import importlib.util
    missing = [m for m in ("einops",) if importlib.util.find_spec(m) is None]  # what ComfyUI's UNet imports
    if missing:
        pytest.skip(f"ComfyUI's UNet needs {', '.join(missing)} to import (pip install {' '.join(missing)})")
    env = dict(os.environ, ARCATTN_COMFYUI_PATCH="1")
    env.pop("ARCATTN_BACKEND", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "real_comfyui_check.py"), COMFY, ROOT],
                          capture_output=True, text=True, timeout=600, env=env, cwd=COMFY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
    assert r["patched_rel_error"] < 1e-5 and r["node_rel_error"] < 1e-5
    calls = [d["call"] for d in r["decisions"] if d["calls"] > 0]
    self_attn = [c for c in calls if "Sk=77" not in c]
    cross_attn = [c for c in calls if "Sk=77" in c]
    assert self_attn and cross_attn, calls
    assert r["node_served"] > 0
    # a custom node loaded before arcattn (IP-Adapter style: its attn2 replacement calls its own copy of
    # optimized_attention) is routed too, and gets the host's function back on unpatch
    assert r["ip_patch_calls"] > 0 and r["ip_rel_error"] < 1e-5 and r["ip_restored"]
    ip_cross = [d["call"] for d in r["ip_decisions"] if d["calls"] > 0 and "Sk=77" in d["call"]]
    assert ip_cross, r["ip_decisions"]
    assert r["registered"] and r["node_classes"] == ["ArcAttention"]
    assert r["restored"] == r["host_function"]
    # --cpu: the device settle_sdpa_order reads is the CPU, and no CUDA context exists once the node is imported
    # (telling only where torch sees a CUDA GPU: cuda_available)
    assert r["host_device"] == "cpu"
    assert not r["cuda_initialized_after_node_import"], r  # so neither ComfyUI before it nor the import made one


def test_real_attention_functions_and_arcattn_agree_on_random_inputs():
    """arcattn's wrapper (the node's override, sdpa) against each of ComfyUI's own attention functions on 200
    random inputs: layouts, output layouts, float masks of every shape ComfyUI reads, fp32 and fp64; each answer
    within tolerance of a float64 reference, and of the host's own answer wherever that one is right; 20
    inputs with q in tiles beside whole k and v, as HyperTile passes them; and 20 with `scale=`, default or not,
    each answered as the host answers it (tests/real_comfyui_attention_diff.py)."""
    env = dict(os.environ)
    for name in ("ARCATTN_BACKEND", "ARCATTN_COMFYUI_PATCH", "ARCATTN_DISABLE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "real_comfyui_attention_diff.py"), COMFY, ROOT,
                           "200"], capture_output=True, text=True, timeout=600, env=env, cwd=COMFY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, f in r["functions"].items():
        print(name, {k: v for k, v in f.items() if k != "failures"})
    assert r["served"] == r["calls"] == 800  # arcattn answered every call, none went back to the host
    assert sorted(r["functions"]) == ["attention_basic", "attention_pytorch", "attention_split", "attention_sub_quad"]
    for name, f in r["functions"].items():
        assert f["cases"] == 200 and not f["failures"], (name, f["failures"][:5])
    # q in tiles beside whole k and v (HyperTile): read by q's batch as every host function reads them, all served
    t = r["tiled"]
    print("tiled", {k: v for k, v in t.items() if k != "failures"})
    assert t["cases"] == 80 and t["served"] == 80 and not t["failures"], t["failures"][:5]
    # scale= in **kwargs: the host's own answer every time; served where it is the default scale
    sc = r["scaled"]
    print("scaled", {k: v for k, v in sc.items() if k != "failures"})
    assert sc["cases"] == 80 and 0 < sc["default"] < 80 and sc["served"] == sc["default"], sc
    assert sc["compared"] >= 60, sc
    assert not sc["failures"], sc["failures"][:5]


def test_real_workflow_through_comfyui_loader_validation_and_executor():
    """The arcattn folder loaded by ComfyUI's custom-node loader; prompts (model -> Arc Attention -> KSampler)
    validated and executed by ComfyUI's executor, as the UI's queue does (tests/real_comfyui_workflow.py)."""
    r = _run_executor_script("real_comfyui_workflow.py")
    print(json.dumps(r, indent=1))
    assert r["node_loaded"] and r["node_classes"] == ["ArcAttention"] and r["patched"]
    assert r["backend_choices"][0] == "auto" and "sdpa" in r["backend_choices"]
    # the global patch and the node both serve the sampler's self- and cross-attention (CFG: cond and uncond in one
    # batch), with the stock sampler's result; the host's own attention is a different algorithm on --cpu
    # (sub-quadratic), so equal within float32 rounding, not bit for bit
    for tag in ("plain", "node_auto", "node_sdpa"):
        case = r[tag]
        assert case["served"] > 0 and case["rel_error"] < 1e-5, (tag, case)
        assert any("Sk=77" in c for c in case["calls"]) and any("Sk=77" not in c for c in case["calls"]), case
        assert all(c.startswith("B=2 ") for c in case["calls"]), case
    assert r["node_sdpa"]["backends"] == ["sdpa"]
    # disabled on the node: the host's own function, untouched, even with the global patch on
    assert r["node_off"] == {"rel_error": 0.0, "served": 0, "calls": [], "backends": []}
    assert r["source_has_override"] is False
    # an IP-Adapter-style node loaded before arcattn, whose attn2 replacement calls its own copy of
    # optimized_attention without transformer_options: the copy is arcattn's, and its calls follow the node
    assert r["ip_stock_patch_calls"] > 0 and r["ip_copy_is_ours"]
    for tag in ("ip_plain", "ip_node_sdpa"):
        case = r[tag]
        assert case["patch_calls"] > 0 and case["rel_error"] < 1e-5, (tag, case)
        assert any("Sk=77" in c for c in case["calls"]) and any("Sk=77" not in c for c in case["calls"]), case
    # (which backend the node names is not told apart here: on the CPU every choice is sdpa; test_comfyui.py's
    # stand-in checks it)
    assert r["ip_node_off"]["patch_calls"] > 0
    assert {k: r["ip_node_off"][k] for k in ("rel_error", "served", "calls")} == {"rel_error": 0.0, "served": 0,
                                                                                 "calls": []}
    # arcattn failing on every call: the generation goes on with the host's attention, one log line
    # (a prompt that failed to run would have stopped the script: returncode above)
    assert r["broken"]["rel_error"] == 0.0
    assert len(r["broken"]["warnings"]) == 1 and "injected failure" in r["broken"]["warnings"][0]
    assert r["bogus_refused"] and "no-such-backend" in r["bogus_error"]
    assert r["restored"] == r["host_function"]
    assert r["after_unpatch"] == {"rel_error": 0.0, "served": 0}


def test_real_builtin_attention_nodes_with_arcattn():
    """ComfyUI's own nodes that change attention (SAG, PAG, HyperTile, ToMe, the attention multipliers, a
    ControlNet) and its LoRA training node, run by ComfyUI's executor: with arcattn's global patch and with the Arc
    Attention node after them, each gives the stock result with arcattn serving the calls; with the node off, the
    host serves every call (tests/real_comfyui_builtin_nodes.py)."""
    r = _run_executor_script("real_comfyui_builtin_nodes.py")
    print(json.dumps({k: v for k, v in r.items() if not isinstance(v, dict) or "plain" not in v}))
    assert r["node_loaded"] and r["patched"] and all(r["extras"].values()), r["extras"]
    assert r["sag_copy_is_ours"]  # SAG's cond-pass call goes through its own copy, taken before arcattn loaded
    features = ("none", "SelfAttentionGuidance", "PerturbedAttentionGuidance", "HyperTile", "TomePatchModel",
                "UNetSelfAttentionMultiply", "UNetCrossAttentionMultiply", "ControlNet")
    for feature in features:
        f = r[feature]
        print(feature, f"change {f['change']:.1e}", {c: (f"{f[c]['rel_error']:.1e}", f[c]["served"])
                                                     for c in ("plain", "node_auto", "node_off")})
        for case in ("plain", "node_auto"):
            assert f[case]["served"] > 0 and f[case]["rel_error"] < 1e-5, (feature, case, f[case])
            assert not f[case]["warnings"], (feature, case, f[case]["warnings"])  # nothing handed back to the host
        assert f["node_off"] == {"rel_error": 0.0, "served": 0, "calls": [], "warnings": []}, (feature, f["node_off"])
    base = r["none"]["plain"]["served"]
    # each node did its part: the extra UNet passes of the guidance nodes and the ControlNet's own attention calls
    # were served too (PAG's perturbed attention returns v and makes no call; SAG's call that records the scores is
    # its own attention_basic_with_sim, not a host function); HyperTile's tiles (2 x 16 tiles of 16 queries, keys
    # read by q's batch) and ToMe's merged queries (180 of 256) reached arcattn
    for feature in ("SelfAttentionGuidance", "PerturbedAttentionGuidance", "ControlNet"):
        assert r[feature]["plain"]["served"] > base, (feature, r[feature]["plain"]["served"], base)
    for feature in features[1:]:  # each changes the result far beyond arcattn's difference from the stock one
        assert r[feature]["change"] > 1e-3, (feature, r[feature]["change"])
    assert any(c.startswith("B=32 H=8 Sq=16 Sk=16 ") for c in r["HyperTile"]["plain"]["calls"]), r["HyperTile"]
    assert any(" Sq=180 Sk=256 " in c for c in r["TomePatchModel"]["plain"]["calls"]), r["TomePatchModel"]
    # ComfyUI's LoRA training node (2 steps, float32, gradient checkpointing): the same LoRA weights as without
    # arcattn, each attention call served in the forward pass and again in its recomputation during backward
    t = r["training"]
    print("training", t)
    for case in ("plain", "node_auto"):
        assert t[case]["served"] > 0 and t[case]["rel_error"] < 1e-5 and not t[case]["warnings"], (case, t[case])
    assert t["node_off"] == {"rel_error": 0.0, "served": 0, "backends": [], "warnings": []}, t["node_off"]
