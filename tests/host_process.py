"""A host's own server started for a test (tests/test_comfyui_server.py, tests/test_forge_generation.py, the
install tests): on a free port, its output in a log file, ready once a URL answers, stopped however the test ends;
and this folder served as a git repository, for the hosts' installers to clone."""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# SD_WEBUI_RESTART: set by Forge's webui.sh / webui.bat for their restart loop; a test's host has none
HOST_SETTINGS = ("TRITON_INTERPRET", "SD_WEBUI_LOG_LEVEL", "SD_WEBUI_RICH_LOG", "SD_WEBUI_RESTART")


def clean_env(cache_dir) -> dict:
    """The test's environment without arcattn's settings or a host's logging settings (the host must see the
    defaults a user has)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCATTN_") and k not in HOST_SETTINGS}
    env["ARCATTN_CACHE_DIR"] = str(cache_dir)
    return env


# install.py's last line when the plugin can serve (indented where an installer relays the output)
INSTALL_READY = re.compile(r"^\s*arcattn \S+ ready", re.M)


def import_problem(python: str, modules: str):
    """Why `python` cannot import `modules` (comma-separated, as an import statement takes them), or None."""
    try:
        probe = subprocess.run([python, "-c", f"import {modules}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run {python} ({e})"
    if probe.returncode:
        why = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        return f"{python} lacks them ({why})"
    return None


def link(target, where) -> None:
    """A symbolic link, or a visible skip where this system refuses them (Windows without the privilege)."""
    try:
        os.symlink(os.path.abspath(target), where, target_is_directory=os.path.isdir(target))
    except OSError as e:
        pytest.skip(f"cannot make a symbolic link here ({e}); the test links this folder into the host's")


def lay_out(base, plugin_dir: str, plugin, checkpoint_dir: str, checkpoint) -> None:
    """A host's data folder as an install leaves it: `plugin` linked in as base/plugin_dir/arcattn, the checkpoint
    linked into base/checkpoint_dir."""
    os.makedirs(os.path.join(base, plugin_dir))
    link(plugin, os.path.join(base, plugin_dir, "arcattn"))
    os.makedirs(os.path.join(base, checkpoint_dir))
    link(checkpoint, os.path.join(base, checkpoint_dir, os.path.basename(checkpoint)))


def get_json(url: str):
    return json.load(urllib.request.urlopen(url, timeout=60))


@contextlib.contextmanager
def serving(cmd: list, cwd, env: dict, ready_url: str, log_path, timeout: float = 600):
    """Start `cmd`, wait until `ready_url` answers, yield; fails the test with the log's tail if it never does."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(ready_url, timeout=5)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if proc.poll() is not None or time.time() > deadline:
                        log.flush()
                        pytest.fail(f"{cmd[1]} did not start:\n" + open(log_path).read()[-4000:])
                    time.sleep(1)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def comfyui_server(python: str, checkout, base, log_name: str, *args: str):
    """(URL, context manager) of ComfyUI's own server on the CPU from `checkout`, through tests/comfyui_server.py
    (its stand-ins), its output in base/log_name; `args` go to main.py."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfyui_server.py"), str(checkout),
           "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch", *args]
    env = clean_env(os.path.join(base, "arcattn-cache"))
    env.pop("COMFYUI_PATH", None)  # the Manager's command line reads it: the server is the checkout given here
    return url, serving(cmd, None, env, url + "/object_info/KSampler", os.path.join(base, log_name), timeout=300)


def _git(*args, cwd) -> str:
    return subprocess.run(["git", "-c", "user.name=arcattn-test", "-c", "user.email=test@localhost", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def served_as_git(folder, tmp):
    """`folder`'s files (what git tracks there, and new files it does not ignore) committed to a scratch repository
    and served over dumb HTTP on 127.0.0.1; yields its URL, which ends in /arcattn.git as a user's clone URL would."""
    work = os.path.join(tmp, "work")
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=folder).split("\0")
    for rel in filter(None, listed):
        src = os.path.join(folder, rel)
        if os.path.isfile(src):  # a tracked file deleted in the working tree is left out
            os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(work, rel))
    _git("init", "-q", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "arcattn under test", cwd=work)
    bare = os.path.join(tmp, "srv", "arcattn.git")
    _git("clone", "-q", "--bare", work, bare, cwd=tmp)
    _git("update-server-info", cwd=bare)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=os.path.join(tmp, "srv")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/arcattn.git"
    finally:
        httpd.shutdown()
        httpd.server_close()
