"""arcattn's Forge wrapper against the real attention functions of Forge's backend/attention.py (ARCATTN_FORGE_ROOT)
and of Forge Neo's (ARCATTN_FORGE_NEO_ROOT: a Neo checkout, or any folder holding its backend/attention.py): on
random inputs, masks of every shape, both layouts, arcattn answers as each function answers, and serves every call
it answers (tests/real_forge_attention_diff.py, in a subprocess). Skipped visibly without either."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = {"forge": "ARCATTN_FORGE_ROOT", "forge-neo": "ARCATTN_FORGE_NEO_ROOT"}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_backend_attention_functions_and_arcattn_agree(host):
    root = os.environ.get(HOSTS[host])
    if not root:
        pytest.skip(f"{HOSTS[host]} is not set: no {host} backend/attention.py to test")
    if importlib.util.find_spec("einops") is None:
        pytest.skip("backend/attention.py imports einops, which this Python lacks")
    env = {k: v for k, v in os.environ.items() if k not in ("ARCATTN_BACKEND", "ARCATTN_DISABLE", "TRITON_INTERPRET")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "real_forge_attention_diff.py"), root, ROOT, "48"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
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
