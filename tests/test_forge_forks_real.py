"""arcattn's Forge wrapper against the real ldm_patched attention functions of reForge and Forge classic
(ARCATTN_REFORGE_ROOT / ARCATTN_FORGE_CLASSIC_ROOT, with ARCATTN_REFORGE_PYTHON / ARCATTN_FORGE_CLASSIC_PYTHON or
the checkout's venv): on random inputs and masks of every shape, wherever the fork's own function answers, arcattn
answers the same (tests/real_ldm_patched_attention_diff.py, in a subprocess with the fork's Python).
Skipped visibly without a checkout."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
# fork: (checkout variable, Python variable, how its functions read a 3-D mask's first dim, per HostAttention)
FORKS = {"reforge": ("ARCATTN_REFORGE_ROOT", "ARCATTN_REFORGE_PYTHON", "batch"),
         "forge-classic": ("ARCATTN_FORGE_CLASSIC_ROOT", "ARCATTN_FORGE_CLASSIC_PYTHON", None)}


@pytest.mark.parametrize("fork", sorted(FORKS))
def test_fork_attention_functions_and_arcattn_agree(fork):
    root_var, py_var, mask3d = FORKS[fork]
    root = os.environ.get(root_var)
    if not root:
        pytest.skip(f"{root_var} is not set: no {fork} checkout to test")
    py = os.environ.get(py_var) or os.path.join(root, "venv", *VENV_PYTHON)
    if not os.path.exists(py):
        pytest.skip(f"no Python with {fork}'s requirements ({py_var}, or {py})")
    env = {k: v for k, v in os.environ.items() if k not in ("ARCATTN_BACKEND", "ARCATTN_DISABLE", "TRITON_INTERPRET")}
    proc = subprocess.run([py, os.path.join(ROOT, "tests", "real_ldm_patched_attention_diff.py"), root, ROOT, "48"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
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
