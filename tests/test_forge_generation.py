"""A real Forge generation through its HTTP API with the arcattn extension installed (Forge's own launcher, script
loader, txt2img/img2img processing and infotext), on the CPU.

Needs, and skips visibly without:
- ARCATTN_FORGE_ROOT: a Forge checkout, with its `repositories/` in place (huggingface_guess, BLIP, assets: what
  Forge's first launch clones);
- ARCATTN_FORGE_PYTHON: a Python with Forge's requirements (default: the checkout's own venv);
- ARCATTN_SD15_CHECKPOINT: any SD1.5 single-file checkpoint; `tests/make_random_checkpoint.py` writes one with
  random weights (2.3 GB) from a ComfyUI checkout.
The checkout is not touched: Forge runs with a temporary --data-dir whose extensions/ folder links to this one.
"""
from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request

import pytest
from host_process import clean_env, free_port, get_json, lay_out, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORGE = os.environ.get("ARCATTN_FORGE_ROOT")
CKPT = os.environ.get("ARCATTN_SD15_CHECKPOINT")
VENV_PYTHON = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
PY = os.environ.get("ARCATTN_FORGE_PYTHON") or (os.path.join(FORGE, "venv", *VENV_PYTHON) if FORGE else None)


def _skip_reason():
    if not FORGE:
        return "ARCATTN_FORGE_ROOT is not set: no Forge checkout for a real generation"
    if not PY or not os.path.exists(PY):
        return f"no Python with Forge's requirements (ARCATTN_FORGE_PYTHON, or {PY})"
    if not CKPT or not os.path.exists(CKPT):
        return ("ARCATTN_SD15_CHECKPOINT is not set to an SD1.5 checkpoint "
                "(python tests/make_random_checkpoint.py COMFYUI_ROOT out.safetensors writes one)")
    if not os.path.isdir(os.path.join(FORGE, "repositories", "huggingface_guess")):
        return "the Forge checkout has no repositories/huggingface_guess (Forge's first launch clones it)"
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    data = tmp_path_factory.mktemp("forge-data")
    lay_out(data, "extensions", ROOT, os.path.join("models", "Stable-diffusion"), CKPT)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [PY, "launch.py", "--skip-prepare-environment", "--skip-version-check", "--always-cpu", "--api",
           "--nowebui", "--port", str(port), "--data-dir", str(data)]
    with serving(cmd, FORGE, clean_env(data / "arcattn-cache"), url + "/sdapi/v1/scripts", data / "forge.log"):
        yield url, data / "forge.log"


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=900))


def _txt2img(url, args=None, **kw):
    import numpy as np
    from PIL import Image
    body = {"prompt": "a photo of a red fox in the snow", "negative_prompt": "blurry", "width": 128, "height": 128,
            "steps": 2, "cfg_scale": 7, "seed": 1234, "sampler_name": "Euler", "scheduler": "Automatic"}
    body.update(kw)
    if args is not None:
        body["alwayson_scripts"] = {"arc attention": {"args": args}}
    r = _post(url + "/sdapi/v1/txt2img", body)
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["images"][0]))).convert("RGB")).astype(np.int16)
    return img, json.loads(r["info"])["infotexts"][0]


def test_extension_listed_with_its_accordion(forge):
    url, _ = forge
    scripts = get_json(url + "/sdapi/v1/scripts")
    assert "arc attention" in scripts["txt2img"] and "arc attention" in scripts["img2img"]
    ours = [s for s in get_json(url + "/sdapi/v1/script-info") if s["name"] == "arc attention"]
    assert len(ours) == 2 and all(s["is_alwayson"] for s in ours)
    labels = [a["label"] for a in ours[0]["args"]]
    assert labels == ["Arc Attention", "Backend"], labels
    assert ours[0]["args"][0]["value"] is True
    assert ours[0]["args"][1]["choices"][0] == "auto" and "sdpa" in ours[0]["args"][1]["choices"]


def test_generation_records_the_backend_and_off_gives_forge_attention(forge):
    url, log = forge
    default, info_default = _txt2img(url)
    on, info_on = _txt2img(url, [True, "auto"])
    off, info_off = _txt2img(url, [False, "auto"])
    named, info_named = _txt2img(url, [True, "triton"])  # not servable on the CPU: the usual order takes over
    # on the CPU every call goes to arcattn's sdpa backend; the infotext says which backend served the generation
    assert "Arc Attention: sdpa" in info_default and "Arc Attention: sdpa" in info_on, info_on
    assert "Arc Attention: sdpa" in info_named, info_named
    assert "Arc Attention: off" in info_off, info_off
    assert on.std() > 5  # a real picture (random weights give noise, not a flat image): the comparison means something
    # Forge's own attention on the CPU is SDPA too: the same pixels
    assert abs(on - off).max() <= 1 and abs(on - default).max() == 0 and abs(on - named).max() <= 1
    # and a bad backend name (an API caller's typo) generates with auto, saying so once on Forge's console
    _, info_bad = _txt2img(url, [True, "no-such-backend"])
    assert "Arc Attention: sdpa" in info_bad
    time.sleep(1)
    text = open(log).read()
    assert text.count("unknown backend 'no-such-backend'") == 1, text[-3000:]
    assert "[arcattn] INFO arcattn: Forge attention routed through arcattn at" in text, text[-3000:]


def test_img2img_with_the_extension(forge):
    url, _ = forge
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (120, 60, 30)).save(buf, format="PNG")
    r = _post(url + "/sdapi/v1/img2img", {
        "init_images": [base64.b64encode(buf.getvalue()).decode()], "prompt": "a fox", "steps": 2,
        "denoising_strength": 0.6, "width": 128, "height": 128, "seed": 7, "sampler_name": "Euler",
        "alwayson_scripts": {"arc attention": {"args": [True, "auto"]}}})
    assert "Arc Attention: sdpa" in json.loads(r["info"])["infotexts"][0]
