"""A real ComfyUI server (its own main.py, custom-node loading, HTTP API, executor, SaveImage) with this folder as a
custom node, generating from a real SD1.5 checkpoint file on the CPU: the workflow a user queues, with and without
the Arc Attention node.

Needs, and skips visibly without:
- ARCATTN_COMFYUI_ROOT: a ComfyUI checkout;
- ComfyUI's requirements in this Python (its requirements.txt, torch's family excepted: a torchvision or av that
  does not load is stood in for, tests/unloadable.py), ARCATTN_COMFYUI_PYTHON to use another Python;
- ARCATTN_SD15_CHECKPOINT: any SD1.5 single-file checkpoint; `tests/make_random_checkpoint.py` writes one with
  random weights (2.3 GB).
The checkout is not touched: the server runs with a temporary --base-directory whose custom_nodes/ links here.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest
from host_process import comfyui_server, get_json, import_problem, lay_out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.environ.get("ARCATTN_COMFYUI_ROOT")
CKPT = os.environ.get("ARCATTN_SD15_CHECKPOINT")
PY = os.environ.get("ARCATTN_COMFYUI_PYTHON") or sys.executable


def _skip_reason():
    if not COMFY:
        return "ARCATTN_COMFYUI_ROOT is not set: no ComfyUI checkout for a real server"
    if not CKPT or not os.path.exists(CKPT):
        return ("ARCATTN_SD15_CHECKPOINT is not set to an SD1.5 checkpoint "
                "(python tests/make_random_checkpoint.py COMFYUI_ROOT out.safetensors writes one)")
    problem = import_problem(PY, "comfyui_frontend_package, aiohttp, torchsde, transformers, PIL")
    if problem:
        return (f"ComfyUI's requirements: {problem}; install ComfyUI's requirements.txt but torch, torchvision and "
                "torchaudio, or set ARCATTN_COMFYUI_PYTHON")
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@contextlib.contextmanager
def comfyui_serving(base):
    """ComfyUI's own server on the CPU from the --base-directory `base`, with this folder as a custom node and the
    checkpoint; yields its URL."""
    lay_out(base, "custom_nodes", ROOT, os.path.join("models", "checkpoints"), CKPT)
    url, running = comfyui_server(PY, COMFY, base, "server.log", "--base-directory", str(base))
    with running:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-base")
    with comfyui_serving(base) as url:
        yield url, base


def _queue(url, base, workflow: dict, timeout: float = 600) -> dict:
    """POST /prompt as the UI's Queue button does; wait for /history; return the prompt's history entry."""
    req = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": workflow}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        pid = json.load(urllib.request.urlopen(req, timeout=60))["prompt_id"]
    except urllib.error.HTTPError as e:
        return {"refused": json.loads(e.read())}
    return finished(url, base, pid, timeout)


def finished(url, base, prompt_id: str, timeout: float = 600) -> dict:
    """Wait until ComfyUI's history has the queued prompt `prompt_id` completed; return its history entry."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = get_json(f"{url}/history/{prompt_id}")
        if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
            return h[prompt_id]
        time.sleep(0.5)
    pytest.fail("prompt did not finish:\n" + open(base / "server.log").read()[-3000:])


def _workflow(prefix: str, arc: dict | None = None) -> dict:
    w = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": os.path.basename(CKPT)}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red fox in the snow", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1234, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
    if arc is not None:
        w["10"] = {"class_type": "ArcAttention", "inputs": {"model": ["1", 0], **arc}}
        w["5"]["inputs"]["model"] = ["10", 0]
    return w


def _image(base, entry, node: str = "7"):
    import numpy as np
    from PIL import Image
    assert entry["status"]["status_str"] == "success", entry["status"]
    img = entry["outputs"][node]["images"][0]
    path = os.path.join(base, "output", img["subfolder"], img["filename"])
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_node_listed_as_the_ui_sees_it(server):
    url, _ = server
    info = get_json(url + "/object_info/ArcAttention")["ArcAttention"]
    assert info["display_name"] == "Arc Attention" and info["category"] == "advanced/attention"
    assert info["input"]["required"]["model"] == ["MODEL"] and info["output"] == ["MODEL"]
    assert info["input"]["required"]["enabled"][0] == "BOOLEAN"
    assert info["input"]["required"]["backend"][0][0] == "auto" and "sdpa" in info["input"]["required"]["backend"][0]


def test_queued_workflows_with_and_without_the_node(server):
    url, base = server
    plain = _image(base, _queue(url, base, _workflow("plain")))  # no node: arcattn's global patch serves it
    on = _image(base, _queue(url, base, _workflow("on", {"enabled": True, "backend": "auto"})))
    off = _image(base, _queue(url, base, _workflow("off", {"enabled": False, "backend": "auto"})))  # ComfyUI's own
    print("max |plain - off|", abs(plain - off).max(), "max |on - off|", abs(on - off).max(), "std", off.std())
    assert off.std() > 5  # a real picture (random weights: noise, not a flat image), so the comparison means something
    # on the CPU ComfyUI's own attention is sub-quadratic and arcattn's is SDPA: equal up to float rounding, which
    # may move a pixel by a level after the VAE
    assert abs(on - off).max() <= 2 and abs(plain - off).max() <= 2 and abs(on - plain).max() == 0
    # an unknown backend is refused by ComfyUI's validation before anything runs, naming the choices
    refused = _queue(url, base, _workflow("bad", {"enabled": True, "backend": "no-such-backend"}))
    assert "refused" in refused and "no-such-backend" in json.dumps(refused["refused"])
    text = open(base / "server.log").read()
    assert "ComfyUI attention patched" in text, text[-3000:]  # arcattn's start-up line reaches ComfyUI's console
