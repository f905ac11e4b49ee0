"""A real Forge generation through its HTTP API with the arcattn extension installed (the host's own launcher,
script loader, txt2img/img2img processing and infotext), on the CPU; for Forge and for the two forks of its
older `ldm_patched` layout that arcattn supports, Forge classic and reForge, each where its checkout is given.

Needs, and skips visibly without (per host):
- its checkout: ARCATTN_FORGE_ROOT, ARCATTN_FORGE_CLASSIC_ROOT, ARCATTN_REFORGE_ROOT; with the `repositories/`
  its first launch clones (Forge: huggingface_guess, BLIP, assets; the forks: stable-diffusion-stability-ai,
  generative-models, reForge also k-diffusion);
- a Python with that host's requirements: ARCATTN_FORGE_PYTHON, ARCATTN_FORGE_CLASSIC_PYTHON,
  ARCATTN_REFORGE_PYTHON (default: the checkout's own venv);
- ARCATTN_SD15_CHECKPOINT: any SD1.5 single-file checkpoint; `tests/make_random_checkpoint.py` writes one with
  random weights (2.3 GB) from a ComfyUI checkout.
A checkout is not touched: the host runs with a temporary --data-dir whose extensions/ folder links to this one.
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
CKPT = os.environ.get("ARCATTN_SD15_CHECKPOINT")
VENV_PYTHON = ("Scripts", "python.exe") if os.name == "nt" else ("bin", "python")
# host: (its checkout's variable, its Python's variable, the repositories/ its launch imports from)
HOSTS = {
    "forge": ("ARCATTN_FORGE_ROOT", "ARCATTN_FORGE_PYTHON", ("huggingface_guess",)),
    "forge-classic": ("ARCATTN_FORGE_CLASSIC_ROOT", "ARCATTN_FORGE_CLASSIC_PYTHON",
                      ("stable-diffusion-stability-ai", "generative-models")),
    "reforge": ("ARCATTN_REFORGE_ROOT", "ARCATTN_REFORGE_PYTHON",
                ("stable-diffusion-stability-ai", "generative-models", "k-diffusion")),
}


def host(name: str) -> tuple:
    """(checkout, Python, why it is skipped or None) for one of HOSTS."""
    root_var, py_var, repositories = HOSTS[name]
    root = os.environ.get(root_var)
    py = os.environ.get(py_var) or (os.path.join(root, "venv", *VENV_PYTHON) if root else None)
    if not root:
        return root, py, f"{root_var} is not set: no {name} checkout for a real generation"
    if not py or not os.path.exists(py):
        return root, py, f"no Python with {name}'s requirements ({py_var}, or {py})"
    if not CKPT or not os.path.exists(CKPT):
        return root, py, ("ARCATTN_SD15_CHECKPOINT is not set to an SD1.5 checkpoint "
                          "(python tests/make_random_checkpoint.py COMFYUI_ROOT out.safetensors writes one)")
    missing = [r for r in repositories if not os.path.isdir(os.path.join(root, "repositories", r))]
    if missing:
        return root, py, f"the {name} checkout has no repositories/{', '.join(missing)} (its first launch clones them)"
    return root, py, None


FORGE, PY, SKIP = host("forge")


def api_server(py: str, root: str, data, env: dict):
    """(URL, context manager) of a host's own launcher serving its API on the CPU from the data folder `data`."""
    return _launch(py, root, data, env, "/sdapi/v1/scripts", "--api", "--nowebui")


def ui_server(py: str, root: str, data, env: dict):
    """(URL, context manager) of a host's own launcher serving its web UI on the CPU from the data folder `data`.
    Gradio serves files only from its allowed paths, which --data-dir moves from the checkout to `data`: the
    checkout is added back, or the UI's own scripts (script.js, javascript/*.js) are refused and the page runs
    without them."""
    return _launch(py, root, data, env, "/", "--gradio-allowed-path", root)


def _launch(py: str, root: str, data, env: dict, ready: str, *args: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [py, "launch.py", "--skip-prepare-environment", "--skip-version-check", "--always-cpu", *args,
           "--port", str(port), "--data-dir", str(data)]
    return url, serving(cmd, root, env, url + ready, data / "forge.log")


@pytest.fixture(scope="module", params=list(HOSTS))
def forge(request, tmp_path_factory):
    root, py, skip = host(request.param)
    if skip:
        pytest.skip(skip)
    data = data_folder(tmp_path_factory, request.param)
    url, server = api_server(py, root, data, clean_env(data / "arcattn-cache"))
    with server:
        yield url, data / "forge.log"


def data_folder(tmp_path_factory, name: str):
    """A host's --data-dir with this folder as an extension and the checkpoint."""
    data = tmp_path_factory.mktemp(f"{name}-data")
    lay_out(data, "extensions", ROOT, os.path.join("models", "Stable-diffusion"), CKPT)
    # no live previews: reForge downloads their decoder at the first generation, and this machine is offline
    (data / "config.json").write_text(json.dumps({"live_previews_enable": False}))
    return data


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
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")).astype(np.int16)
              for b in r["images"][:body.get("batch_size", 1)]]  # the API saves no grid: the batch's pictures only
    return np.stack(images) if len(images) > 1 else images[0], json.loads(r["info"])["infotexts"][0]


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
    if "WARNING:arcattn:" in text:
        # the host set up Python's logging itself (reForge: basicConfig, at WARNING): arcattn's lines go through
        # it, and its level drops the INFO line below
        return
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


# Built-in extensions that change the UNet's attention (by title, as the API names scripts: the arguments their UI
# gives, enabled first). Forge has SAG, PAG and StyleAlign; reForge its own SAG and HyperTile; Forge classic none.
# SAG and PAG at high scales: at their defaults they move no pixel of the random checkpoint's 128 px picture by more
# than 2 levels, and a comparison could not tell their effect from rounding. HyperTile with 32 px tiles on two levels
# (its default, 256 px on one, makes one tile of a 128 px picture) and swap size 1 (the same tiles each run): q in
# 16 and 4 tiles beside whole k and v
ATTENTION_EXTENSIONS = {
    "selfattentionguidance integrated (sd 1.x, sd 2.x, sdxl)": ([True, 5.0, 2.0, 1.0], 1),
    "selfattentionguidance integrated": ([True, 5.0, 2.0], 1),
    "perturbedattentionguidance integrated": ([True, 50.0, 0.0, 0.0, 1.0], 1),
    "stylealign integrated": ([True, 1.0], 2),  # shares attention across a batch: two images
    "hypertile integrated": ([True, 32, 1, 1, False], 1),
}


def test_builtin_attention_extensions_with_the_extension(forge):
    """The host's own attention extensions (Self-Attention Guidance, Perturbed-Attention Guidance, StyleAlign,
    HyperTile) with arcattn on give the picture they give with it off, with no call handed back to the host; each
    changes the picture."""
    url, log = forge
    listed = set(get_json(url + "/sdapi/v1/scripts")["txt2img"])
    present = {t: a for t, a in ATTENTION_EXTENSIONS.items() if t in listed}
    if not present:
        pytest.skip("this host has none of the attention extensions: " + ", ".join(ATTENTION_EXTENSIONS))
    seen = {}
    for title, (args, batch) in present.items():
        def run(arc, feature=True):
            scripts = {"arc attention": {"args": arc}}
            if feature:
                scripts[title] = {"args": args}
            return _txt2img(url, batch_size=batch, alwayson_scripts=scripts)
        (on, info_on), (off, info_off), (plain, _) = run([True, "auto"]), run([False, "auto"]), run([False, "auto"],
                                                                                                      feature=False)
        seen[title] = {"on_vs_off": int(abs(on - off).max()), "change": int(abs(off - plain).max()),
                       "infotexts": (info_on, info_off)}
        print(title, {k: v for k, v in seen[title].items() if k != "infotexts"})
    for title, r in seen.items():
        assert "Arc Attention: sdpa" in r["infotexts"][0] and "Arc Attention: off" in r["infotexts"][1], (title, r)
        assert r["change"] > 5, (title, r)  # the extension did change the picture: the comparison means something
        assert r["on_vs_off"] <= 1, (title, r)
    text = open(log).read()
    assert "could not serve a call" not in text, text[-3000:]  # no call handed back to the host
