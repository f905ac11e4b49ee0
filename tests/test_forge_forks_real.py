"""arcattn's Forge wrapper against real hosts' attention functions, each in a subprocess: the ldm_patched functions
of reForge and Forge classic (ARCATTN_REFORGE_ROOT / ARCATTN_FORGE_CLASSIC_ROOT, with ARCATTN_REFORGE_PYTHON /
ARCATTN_FORGE_CLASSIC_PYTHON or the checkout's venv; tests/real_ldm_patched_attention_diff.py), and those of
Forge's backend/attention.py and Forge Neo's (ARCATTN_FORGE_ROOT, ARCATTN_FORGE_NEO_ROOT: a Neo checkout, or any
folder holding its backend/attention.py; tests/real_forge_attention_diff.py, in this Python). On random inputs and
masks of every shape, wherever the host's own function answers, arcattn answers the same.
Skipped visibly without a checkout."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
# fork: (checkout variable, Python variable, how its functions read a 3-D mask's first dim, per HostAttention)
FORKS = {"reforge": ("ARCATTN_REFORGE_ROOT", "ARCATTN_REFORGE_PYTHON", "batch"),
         "forge-classic": ("ARCATTN_FORGE_CLASSIC_ROOT", "ARCATTN_FORGE_CLASSIC_PYTHON", None)}


# host: the variable naming a folder that holds its backend/attention.py
BACKEND_HOSTS = {"forge": "ARCATTN_FORGE_ROOT", "forge-neo": "ARCATTN_FORGE_NEO_ROOT"}


def _diff(python: str, script: str, root: str) -> dict:
    """Run one of the diff scripts with 48 cases per function in the host's folder; its JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in ("ARCATTN_BACKEND", "ARCATTN_DISABLE", "TRITON_INTERPRET")}
    proc = subprocess.run([python, os.path.join(ROOT, "tests", script), root, ROOT, "48"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
    return r


@pytest.mark.parametrize("fork", sorted(FORKS))
def test_fork_attention_functions_and_arcattn_agree(fork):
    root_var, py_var, mask3d = FORKS[fork]
    root = os.environ.get(root_var)
    if not root:
        pytest.skip(f"{root_var} is not set: no {fork} checkout to test")
    py = os.environ.get(py_var) or os.path.join(root, "venv", *VENV_PYTHON)
    if not os.path.exists(py):
        pytest.skip(f"no Python with {fork}'s requirements ({py_var}, or {py})")
    r = _diff(py, "real_ldm_patched_attention_diff.py", root)
    assert r["installed"] and sorted(r["functions"]) == ["attention_basic", "attention_pytorch", "attention_split",
                                                         "attention_sub_quad"]
    assert set(r["mask3d"].values()) == {mask3d}
    for name, f in r["functions"].items():
        assert f["cases"] == 48 and f["both_answered"] >= 24, (name, f)
        assert not f["mismatches"] and not f["arcattn_only_raised"], (name, f)
    assert r["served"] > 0
    # tiled q (HyperTile) served with the fork's answer; the SAG node's own copy of the function is arcattn's
    t = r["tiled"]
    assert t["cases"] == 24 and t["served"] == 24 and not t["mismatches"], t
    assert all(r["contrib_copies_ours"].values()), r["contrib_copies_ours"]
    if fork == "reforge":
        assert list(r["contrib_copies_ours"]) == ["ldm_patched.contrib.nodes_sag"]


@pytest.mark.parametrize("host", sorted(BACKEND_HOSTS))
def test_backend_attention_functions_and_arcattn_agree(host):
    root = os.environ.get(BACKEND_HOSTS[host])
    if not root:
        pytest.skip(f"{BACKEND_HOSTS[host]} is not set: no {host} backend/attention.py to test")
    if importlib.util.find_spec("einops") is None:
        pytest.skip("backend/attention.py imports einops, which this Python lacks")
    r = _diff(sys.executable, "real_forge_attention_diff.py", root)
    assert {"attention_basic", "attention_pytorch"} <= set(r["functions"])
    for name, takes_out in r["skip_output_reshape"].items():
        # ComfyUI's functions with skip_output_reshape (Jan 2025 on), Neo's, read a 3-D mask over the batch;
        # Forge's attention_pytorch reads it over heads
        want = "batch" if takes_out or name != "attention_pytorch" else "heads"
        assert r["mask3d"][name] == want, (name, r["mask3d"])
    if host == "forge-neo":
        assert all(r["skip_output_reshape"].values())
    answered = 0
    for name, f in r["functions"].items():
        assert f["cases"] == 48 and f["both_answered"] >= 24, (name, f)
        assert not f["mismatches"] and not f["arcattn_only_raised"], (name, f)
        answered += f["both_answered"]
    assert r["served"] == answered  # none handed back to the host's function
    t = r["tiled"]
    assert t["cases"] == 6 * len(r["functions"]) and t["served"] == t["cases"] and not t["mismatches"], t
