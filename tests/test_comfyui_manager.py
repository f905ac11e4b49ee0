"""ComfyUI-Manager installing this folder from its git URL, the ways a user does it, then ComfyUI loading it:
- `cm-cli.py install URL` (the Manager's command line);
- the Manager's "Install via Git URL" (`POST /customnode/install/git_url`, what its dialog sends) on a running
  ComfyUI, with install.py run at once (Linux, macOS) or reserved for the next start (the Manager's lazy install,
  what it always does on Windows; here forced with `always_lazy_install`);
- the same request refused under the Manager's default settings (README says what to change): from its V3.38
  the `allow_git_url_install` flag, before it `security_level = weak`; the test reads which this Manager has.
Each install must clone the folder as custom_nodes/arcattn, run install.py to its "ready" line, install nothing
with pip, and leave ComfyUI listing the Arc Attention node and patching its attention at the next start.

Needs, and skips visibly without:
- ARCATTN_COMFYUI_ROOT: a ComfyUI checkout; ARCATTN_COMFYUI_MANAGER_ROOT: a ComfyUI-Manager checkout;
- ComfyUI's and the Manager's requirements in this Python (ARCATTN_COMFYUI_PYTHON for another), and git.
Neither checkout is touched: both are copied into a temporary folder. This folder's files (what git tracks, and
new files it does not ignore) are committed to a scratch repository served over HTTP on 127.0.0.1, the URL the
Manager clones. Nothing reaches the network: the Manager runs with network_mode = offline.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from host_process import INSTALL_READY, clean_env, comfyui_server, get_json, import_problem, served_as_git

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.environ.get("ARCATTN_COMFYUI_ROOT")
MANAGER = os.environ.get("ARCATTN_COMFYUI_MANAGER_ROOT")
PY = os.environ.get("ARCATTN_COMFYUI_PYTHON") or sys.executable


def _skip_reason():
    if not COMFY:
        return "ARCATTN_COMFYUI_ROOT is not set: no ComfyUI checkout to install into"
    if not MANAGER or not os.path.exists(os.path.join(MANAGER, "cm-cli.py")):
        return "ARCATTN_COMFYUI_MANAGER_ROOT is not set to a ComfyUI-Manager checkout"
    if not shutil.which("git"):
        return "no git executable: the Manager clones with it"
    problem = import_problem(PY, "comfyui_frontend_package, aiohttp, torchsde, transformers, PIL, "
                                 "git, typer, rich, toml, chardet, github")
    if problem:
        return (f"ComfyUI's and ComfyUI-Manager's requirements: {problem}; install both requirements.txt files "
                "but torch, torchvision and torchaudio, or set ARCATTN_COMFYUI_PYTHON")
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@functools.lru_cache(maxsize=None)
def _git_url_route() -> str:
    """The source of the Manager's "Install via Git URL" handler."""
    with open(os.path.join(MANAGER, "glob", "manager_server.py"), encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.index('"/customnode/install/git_url"')
    return text[start:text.find("@routes", start + 1)]


@pytest.fixture(scope="module")
def plugin_url(tmp_path_factory):
    with served_as_git(ROOT, tmp_path_factory.mktemp("served")) as url:
        yield url


def _comfy_with_manager(base, *, allow_git_url: bool, lazy: bool = False):
    """A copy of the ComfyUI checkout with the Manager in custom_nodes and its config.ini written."""
    comfy = base / "ComfyUI"
    shutil.copytree(COMFY, comfy, ignore=shutil.ignore_patterns(".git", "user", "output", "temp", "__pycache__"))
    nodes = comfy / "custom_nodes"
    for entry in os.listdir(nodes):  # the checkout's own custom_nodes may hold anything; start from none
        path = nodes / entry
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    shutil.copytree(MANAGER, nodes / "ComfyUI-Manager", ignore=shutil.ignore_patterns(".git", "__pycache__"))
    if "allow_git_url_install" in _git_url_route():  # V3.38 on: a flag of its own, whatever the security level
        gate = f"security_level = normal\nallow_git_url_install = {allow_git_url}\n"
    else:  # before: a "high" risk feature, allowed at security_level = weak only
        gate = f"security_level = {'weak' if allow_git_url else 'normal'}\n"
    config = f"[default]\nnetwork_mode = offline\n{gate}always_lazy_install = {lazy}\n"
    # the Manager's config path: user/default/ComfyUI-Manager before its V3.38, user/__manager with a ComfyUI
    # that protects system folders (it then reads the second)
    for folder in (("default", "ComfyUI-Manager"), ("__manager",)):
        os.makedirs(comfy.joinpath("user", *folder), exist_ok=True)
        comfy.joinpath("user", *folder, "config.ini").write_text(config)
    return comfy


def _server(comfy, base, log_name: str):
    return comfyui_server(PY, comfy, base, log_name)


def _post_git_url(url: str, git_url: str) -> int:
    if "request.json()" in _git_url_route():  # later Managers: a JSON body (a plain-text one is refused)
        body, kind = json.dumps({"url": git_url}).encode(), "application/json"
    else:  # earlier ones read the URL as the whole body
        body, kind = git_url.encode(), "text/plain"
    req = urllib.request.Request(url + "/customnode/install/git_url", data=body, headers={"Content-Type": kind},
                                 method="POST")
    try:
        return urllib.request.urlopen(req, timeout=300).status
    except urllib.error.HTTPError as e:
        return e.code


def _check_loaded(comfy, base, log_name: str) -> str:
    """Start ComfyUI on `comfy`; the node must be listed and the global patch made. Returns the server's log."""
    url, server = _server(comfy, base, log_name)
    with server:
        info = get_json(url + "/object_info/ArcAttention")["ArcAttention"]
        assert info["display_name"] == "Arc Attention"
    text = open(base / log_name).read()
    assert "ComfyUI attention patched" in text, text[-3000:]
    assert not re.search(r"(?i)cannot import.*arcattn|IMPORT FAILED.*arcattn", text), text[-3000:]
    return text


def _check_installed(comfy, output: str) -> None:
    folder = comfy / "custom_nodes" / "arcattn"
    for name in ("__init__.py", "nodes.py", "install.py", os.path.join("arcattn", "api.py")):
        assert (folder / name).is_file(), f"{name} missing from the Manager's clone"
    assert "install script failed" not in output, output[-3000:]
    # requirements.txt lists nothing: the Manager must not have run pip for this folder (torch least of all)
    assert not re.search(r"EXECUTE => \[[^\]]*'install', '(?!-)", output), output[-3000:]


def test_manager_cli_installs_and_comfyui_loads(tmp_path, plugin_url):
    comfy = _comfy_with_manager(tmp_path, allow_git_url=False)  # the command line needs no flag
    env = clean_env(tmp_path / "arcattn-cache")
    env["COMFYUI_PATH"] = str(comfy)
    run = subprocess.run([PY, os.path.join("custom_nodes", "ComfyUI-Manager", "cm-cli.py"), "install", plugin_url],
                         cwd=comfy, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    print(out[-2000:])
    assert run.returncode == 0 and "[INSTALLED]" in out, out[-3000:]
    assert INSTALL_READY.search(out), "install.py did not reach its ready line:\n" + out[-3000:]
    _check_installed(comfy, out)
    _check_loaded(comfy, tmp_path, "after.log")


@pytest.mark.parametrize("lazy", [False, True], ids=["at-once", "lazy-next-start"])
def test_manager_install_via_git_url(tmp_path, plugin_url, lazy):
    comfy = _comfy_with_manager(tmp_path, allow_git_url=True, lazy=lazy)
    url, server = _server(comfy, tmp_path, "install.log")
    with server:
        status = _post_git_url(url, plugin_url)
    install_log = open(tmp_path / "install.log").read()
    assert status == 200, install_log[-3000:]
    _check_installed(comfy, install_log)
    # at once: install.py ran inside the request; lazy: it waits for the next start's prestartup
    assert bool(INSTALL_READY.search(install_log)) != lazy, install_log[-3000:]
    after = _check_loaded(comfy, tmp_path, "after.log")
    if lazy and "Startup scripts blocked on old ComfyUI" in after:
        pytest.skip("this ComfyUI-Manager runs reserved install scripts only on a ComfyUI with protected system "
                    "folders, which this ComfyUI checkout predates: pair it with a Manager of its time (before V3.38)")
    if lazy:
        assert INSTALL_READY.search(after), "the reserved install.py did not run at the next start:\n" + after[-3000:]
        # the Manager runs reserved scripts before custom nodes load
        assert INSTALL_READY.search(after).start() < after.index("ComfyUI attention patched")


def test_manager_refuses_git_url_without_its_flag(tmp_path, plugin_url):
    comfy = _comfy_with_manager(tmp_path, allow_git_url=False)
    url, server = _server(comfy, tmp_path, "install.log")
    with server:
        status = _post_git_url(url, plugin_url)
    assert status == 403
    assert not (comfy / "custom_nodes" / "arcattn").exists()
