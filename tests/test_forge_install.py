"""Forge installing this folder from its git URL, as a user does, then loading it: the Extensions tab's "Install
from URL" (the function its button calls, tests/forge_install.py), then the extension installer that every
later launch runs, then Forge's own launcher and API server with the installed copy (not a link to this folder).

Needs, and skips visibly without, what tests/test_forge_generation.py needs (ARCATTN_FORGE_ROOT, a Python with
Forge's requirements, ARCATTN_SD15_CHECKPOINT, the checkout's repositories/), and git. The checkout is not
touched: Forge runs with a temporary --data-dir. This folder's files are served as a git repository on 127.0.0.1
(tests/host_process.served_as_git), the URL Forge clones.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from host_process import INSTALL_READY, clean_env, get_json, link, served_as_git
from test_forge_generation import CKPT, FORGE, PY, SKIP, api_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(SKIP is not None or not shutil.which("git"),
                                reason=SKIP or "no git executable: Forge clones with it")


def test_install_from_url_then_launch(tmp_path):
    data = tmp_path / "forge-data"
    os.makedirs(data / "models" / "Stable-diffusion")
    link(CKPT, data / "models" / "Stable-diffusion" / os.path.basename(CKPT))
    env = clean_env(data / "arcattn-cache")
    with served_as_git(ROOT, tmp_path / "served") as url:
        run = subprocess.run([PY, os.path.join(ROOT, "tests", "forge_install.py"), FORGE, url, "--data-dir", str(data),
                              "--always-cpu", "--skip-prepare-environment"],
                             env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    print(out[-2000:])
    assert run.returncode == 0, out[-3000:]
    installed = data / "extensions" / "arcattn"  # the folder name Forge takes from the URL
    assert f"Installed into {installed}" in out, out[-3000:]
    for name in ("install.py", os.path.join("scripts", "arcattn_forge.py"), os.path.join("arcattn", "api.py")):
        assert (installed / name).is_file(), f"{name} missing from Forge's clone"
    assert not os.path.islink(installed)
    # install.py ran twice, to its ready line each time: at the install, then as a launch runs it (the second says
    # the check is unchanged)
    install, launch = out.split("forge_install.py: the launch's extension installer")
    assert INSTALL_READY.search(install) and INSTALL_READY.search(launch), out[-3000:]
    assert "unchanged since" in launch, launch[-2000:]
    assert "Error running install.py" not in out, out[-3000:]

    api, server = api_server(PY, FORGE, data, env)
    with server:
        scripts = get_json(api + "/sdapi/v1/scripts")
    assert "arc attention" in scripts["txt2img"] and "arc attention" in scripts["img2img"], scripts
    text = open(data / "forge.log").read()
    # the data folder's only extension is the clone: this is the installed copy at work
    assert "Forge attention routed through arcattn at" in text, text[-3000:]
