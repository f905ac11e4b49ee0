"""What install.py does: check this machine for arcattn, install nothing that touches torch, say what it found.

Run by ComfyUI-Manager (after requirements.txt, cwd = the node folder), by Forge at every launch, or by hand.
Rules:
  * torch, torchvision, torchaudio and every Triton build are the host's: never installed, upgraded or
    downgraded here. A missing requirements.txt entry (Forge and a by-hand run do not install that file) is
    installed with every torch-family package pinned to what is installed, so pip fails rather than move them.
  * A failing pip (offline, broken) prints one line, never a traceback.
  * Exit 0 whenever the plugin can work (SDPA alone is enough); non-zero only when it cannot, with the reason.
  * Fast when nothing changed: the first full check (torch import, backend probes, self-test) is remembered
    under the user's cache dir, keyed by arcattn's files, the Python and the installed torch/Triton versions.
    A later run whose key matches prints one line without importing torch; `--force` checks again.

This module must import without torch and without executing arcattn/__init__.py (install.py loads it by file
path), so it imports arcattn only inside the full check.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Optional

# The host's packages: requirement lines naming them are skipped, and they are pinned in every pip call.
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "torchsde", "triton", "pytorch-triton", "pytorch-triton-xpu",
                "pytorch-triton-rocm", "triton-windows", "triton-xpu", "intel-extension-for-pytorch")
TRITON_DISTS = ("triton", "pytorch-triton-xpu", "triton-windows", "pytorch-triton-rocm", "pytorch-triton",
                "triton-xpu")
XPU_INDEX = "https://download.pytorch.org/whl/xpu"
STATE_VERSION = 1
OLDEST_TESTED_TORCH = (2, 5)  # the CPU suite passes on 2.5.1; 2.3.1's SDPA differs (old_torch_note)


def _out(line: str = "") -> None:
    print(line, flush=True)


def _why(e: BaseException) -> str:
    """"Type: first line of the message", short enough for one output line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:200]


# -- facts that need no torch -------------------------------------------------------------------------------
def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except Exception:  # noqa: BLE001 - absent, or a broken dist-info: "not usable" either way
        return None


def read_version(root: str) -> str:
    try:
        with open(os.path.join(root, "arcattn", "_version.py"), encoding="utf-8") as f:
            m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read())
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def detect_host(root: str, environ=None) -> str:
    """'comfyui' (a custom_nodes folder), 'forge' (an extensions folder of a webui, or its PYTHONPATH), or
    'manual'."""
    environ = os.environ if environ is None else environ
    parent = os.path.dirname(os.path.abspath(root))
    if os.path.basename(parent) == "custom_nodes":
        return "comfyui"
    webui_roots = [os.path.dirname(parent)] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if os.path.basename(parent) in ("extensions", "extensions-builtin") or any(
            os.path.isfile(os.path.join(p, "launch.py")) and os.path.isdir(os.path.join(p, "modules"))
            for p in webui_roots):
        return "forge"
    return "manual"


def cache_dir(environ=None) -> str:
    environ = os.environ if environ is None else environ
    if environ.get("ARCATTN_CACHE_DIR"):
        return environ["ARCATTN_CACHE_DIR"]
    if os.name == "nt" and environ.get("LOCALAPPDATA"):
        return os.path.join(environ["LOCALAPPDATA"], "arcattn")
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "arcattn")


def parse_requirements(path: str) -> list:
    """[(requirement text, canonical name)] from a requirements file: comments, options (-r, --index-url ...),
    URLs and torch-family names are left out."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")) or "://" in line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if not m:
            continue
        name = canonical(m.group(1))
        if name in TORCH_FAMILY:
            continue
        out.append((line, name))
    return out


def missing_requirements(reqs: list) -> list:
    """Requirements whose distribution is absent or, where `packaging` is at hand, whose version does not match."""
    missing = []
    for line, name in reqs:
        have = dist_version(name)
        if have is None:
            missing.append(line)
            continue
        req = _requirement(line)
        if req is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(line)
    return missing


def _packaging():
    for modname in ("packaging", "pip._vendor.packaging"):
        try:
            return importlib.import_module(modname + ".requirements")
        except Exception:  # noqa: BLE001
            continue
    return None


def _requirement(text: str):
    mod = _packaging()
    if mod is None:
        return None
    try:
        return mod.Requirement(text)
    except Exception:  # noqa: BLE001
        return None


def installed_torch_family() -> dict:
    return {n: v for n in TORCH_FAMILY if (v := dist_version(n)) is not None}


def fingerprint(root: str) -> list:
    """(path, size, mtime) of arcattn's own files: any edit, update or new native binary changes it."""
    items = []
    pkg = os.path.join(root, "arcattn")
    for d, dirs, files in os.walk(pkg):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith((".pyc", ".pyo")):
                continue
            p = os.path.join(d, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            items.append((os.path.relpath(p, root).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    for extra in ("requirements.txt", "install.py"):
        try:
            st = os.stat(os.path.join(root, extra))
            items.append((extra, st.st_size, st.st_mtime_ns))
        except OSError:
            pass
    return items


def state_key(root: str, environ=None) -> str:
    environ = os.environ if environ is None else environ
    data = {
        "v": STATE_VERSION,
        "root": os.path.abspath(root),
        "python": [sys.executable, platform.python_version()],
        "dists": installed_torch_family(),
        "env": sorted((k, v) for k, v in environ.items() if k.startswith("ARCATTN_") and k != "ARCATTN_CACHE_DIR"),
        "files": fingerprint(root),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def state_path(root: str, environ=None) -> str:
    ident = hashlib.sha256(f"{os.path.abspath(root)}|{sys.executable}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir(environ), f"install-state-{ident}.json")


def load_state(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_state(path: str, state: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".install-state-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the fast path


# -- pip ----------------------------------------------------------------------------------------------------
def pip_install(requirements: list, *, python: Optional[str] = None, timeout: float = 600,
                environ=None) -> tuple:
    """Install `requirements` with the host's torch family pinned. Returns (ok, one-line message)."""
    python = python or sys.executable
    pins = installed_torch_family()
    env = dict(os.environ if environ is None else environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env.setdefault("PIP_NO_INPUT", "1")
    if env.get("INDEX_URL") and not env.get("PIP_INDEX_URL"):
        env["PIP_INDEX_URL"] = env["INDEX_URL"]  # Forge's launcher setting for its own pip calls
    what = ", ".join(requirements)
    fd, constraints = tempfile.mkstemp(prefix="arcattn-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        cmd = [python, "-m", "pip", "install", "--retries", "1", "--timeout", "15", "-c", constraints, *requirements]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return False, f"pip could not install {what}: no answer within {timeout:.0f} s (offline?)"
        except OSError as e:
            return False, f"pip could not install {what}: cannot run {python} ({e.strerror or e})"
        if r.returncode == 0:
            return True, f"installed {what}"
        return False, f"pip could not install {what}: {_pip_reason(r.stdout + r.stderr, r.returncode)}"
    finally:
        try:
            os.unlink(constraints)
        except OSError:
            pass


def _pip_reason(output: str, rc: int) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    pick = errors[-1] if errors else (lines[-1] if lines else f"exit status {rc}")
    if pick.startswith("ERROR:"):
        pick = pick[len("ERROR:"):].strip()
    if any("No module named pip" in ln for ln in lines):
        pick = "this Python has no pip"
    elif any(k in output for k in ("NewConnectionError", "Temporary failure in name resolution",
                                   "Network is unreachable", "Max retries exceeded")):
        pick += " (no network?)"
    return pick[:240]


# -- the full check (imports torch) -------------------------------------------------------------------------
def torch_facts() -> dict:
    import torch
    v = torch.__version__
    local = v.split("+", 1)[1] if "+" in v else ""
    if getattr(torch.version, "hip", None):
        build = "ROCm"
    elif local.startswith("xpu") or getattr(torch.version, "xpu", None):
        build = "XPU"
    elif getattr(torch.version, "cuda", None):
        build = "CUDA"
    else:
        build = "CPU"
    xpu = getattr(torch, "xpu", None)
    xpu_ok = bool(xpu is not None and _safe(xpu.is_available))
    cuda_ok = bool(_safe(torch.cuda.is_available))
    device = "xpu" if xpu_ok else ("cuda" if cuda_ok else "cpu")
    name = ""
    try:
        if device == "xpu":
            name = torch.xpu.get_device_name(0)
        elif device == "cuda":
            name = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        name = ""
    extra = ""
    if build == "CUDA":
        extra = f", CUDA {torch.version.cuda}"
    elif build == "XPU" and getattr(torch.version, "xpu", None):
        extra = f", SYCL {torch.version.xpu}"
    return {"version": v, "build": build, "device": device, "device_name": name, "extra": extra}


def old_torch_note(version: str) -> Optional[str]:
    """A line for install.py and doctor when torch predates the oldest release arcattn is tested with."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m or (int(m[1]), int(m[2])) >= OLDEST_TESTED_TORCH:
        return None
    oldest = ".".join(map(str, OLDEST_TESTED_TORCH))
    return (f"torch {version} is older than {oldest}, the oldest arcattn is tested with (and the first with Intel XPU "
            "built in). Inside a host arcattn answers as the host's own SDPA would; its Python API can raise for a "
            "float32 mask with half-precision inputs and gives NaN for a fully masked row, as this torch's SDPA does")


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return False


def _intel_gpu_seen() -> bool:
    """Linux only: a PCI display device from Intel (vendor 0x8086) under /sys/class/drm."""
    try:
        for card in os.listdir("/sys/class/drm"):
            p = os.path.join("/sys/class/drm", card, "device", "vendor")
            if re.fullmatch(r"card\d+", card) and os.path.isfile(p):
                with open(p) as f:
                    if f.read().strip().lower() == "0x8086":
                        return True
    except OSError:
        pass
    return False


def device_advice(t: dict) -> Optional[str]:
    if t["device"] != "cpu":
        return None
    if t["build"] == "XPU":
        return ("torch is an XPU build but sees no Intel GPU: install or update the Intel graphics driver "
                "(Linux: the compute runtime / Level Zero packages), then restart")
    if t["build"] == "CUDA":
        return "torch is a CUDA build but sees no NVIDIA GPU (driver missing or too old?)"
    if t["build"] == "CPU" and _intel_gpu_seen():
        return (f"an Intel GPU is present but torch is a CPU build: for Arc, install torch's XPU build "
                f"(pip install torch --index-url {XPU_INDEX}); arcattn never installs torch itself")
    return None


def _torch_declared_triton() -> Optional[tuple]:
    """(dist, version) of the Triton that the installed torch itself requires on this platform, if any."""
    try:
        reqs = metadata.requires("torch") or []
    except Exception:  # noqa: BLE001
        return None
    mod = _packaging()
    for text in reqs:
        req = None
        if mod is not None:
            try:
                req = mod.Requirement(text)
            except Exception:  # noqa: BLE001
                req = None
        name = canonical(req.name if req is not None else re.split(r"[ ;<>=!~\[]", text, 1)[0])
        if name not in TRITON_DISTS:
            continue
        if req is not None and req.marker is not None:
            try:
                if not req.marker.evaluate({"extra": ""}):
                    continue
            except Exception:  # noqa: BLE001
                continue
        pins = [s.version for s in req.specifier if s.operator == "=="] if req is not None else []
        return name, (pins[0] if pins else None)
    return None


def triton_facts(device: str) -> dict:
    """What Triton is installed, whether it imports, and what is wrong with it for `device` (with the fix)."""
    dists = {n: v for n in TRITON_DISTS if (v := dist_version(n)) is not None}
    facts = {"dists": dists, "version": None, "error": None, "problems": []}
    try:
        import triton
        facts["version"] = getattr(triton, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        facts["error"] = _why(e)
    py = f'"{sys.executable}" -m pip'
    declared = _torch_declared_triton()
    xpu_pin = declared[1] if declared is not None and declared[0] == "pytorch-triton-xpu" and declared[1] else None
    if device == "xpu" and "triton" in dists:
        keep = dists.get("pytorch-triton-xpu") or xpu_pin
        reinstall = (f" && {py} install --force-reinstall --no-deps pytorch-triton-xpu=={keep} --index-url {XPU_INDEX}"
                     if keep else f" && reinstall the pytorch-triton-xpu that your torch wants (from {XPU_INDEX})")
        facts["problems"].append(
            f"PyPI 'triton' {dists['triton']} is installed"
            + (f" next to pytorch-triton-xpu {dists['pytorch-triton-xpu']}: both own the 'triton' package and"
               if "pytorch-triton-xpu" in dists else ";")
            + f" the PyPI one has no XPU backend. Fix: {py} uninstall -y triton{reinstall}")
    if declared is not None and device != "cpu":
        name, pin = declared
        have = dists.get(name)
        if have is None or (pin is not None and have != pin):
            index = f" --index-url {XPU_INDEX}" if name == "pytorch-triton-xpu" else ""
            spec = f"{name}=={pin}" if pin else name
            facts["problems"].append(
                f"torch {dist_version('torch')} requires {spec}, installed: {have or 'none'}. "
                f"Fix: {py} install --no-deps {spec}{index}")
    return facts


def run_selftest(device: str) -> list:
    """arcattn's own self-test (arcattn.selftest), imported only when a full check runs."""
    from arcattn.selftest import run_selftest as full
    return full(device)


def summarize_selftest(results: list) -> dict:
    """Per backend: 'pass' (worst error), 'FAIL' (reason), or 'n/a'. Router entries ("router->x") are folded in."""
    per: dict = {}
    for r in results:
        name = r["backend"].split("->", 1)[-1] if r["backend"].startswith("router->") else r["backend"]
        cur = per.setdefault(name, {"state": "n/a", "err": None, "reason": None})
        if r["ok"] is False:
            cur.update(state="FAIL", reason=r.get("reason"))
        elif r["ok"] and cur["state"] != "FAIL":
            cur["state"] = "pass"
            if r.get("rel_error") is not None:
                cur["err"] = max(cur["err"] or 0.0, r["rel_error"])
        elif cur["state"] == "n/a" and r.get("reason"):
            cur["reason"] = r["reason"]
    return per


def native_facts(root: str) -> dict:
    d = os.path.join(root, "arcattn", "_native")
    try:
        files = sorted(f for f in os.listdir(d) if f.endswith((".so", ".pyd")))
    except OSError:
        files = []
    return {"files": files, "build_script": os.path.isfile(os.path.join(root, "extension", "build.py"))}


def full_check(root: str, host: str, version: str, args, t0: float, environ=None) -> tuple:
    """Returns (exit code, headline, cacheable)."""
    environ = os.environ if environ is None else environ
    _out(f"arcattn {version} install check ({host}; python {platform.python_version()} at {sys.executable})")

    # requirements.txt (ComfyUI-Manager has installed it already; Forge and by-hand runs have not)
    missing = missing_requirements(parse_requirements(os.path.join(root, "requirements.txt")))
    cacheable = True
    if missing and args.no_pip:
        _out(f"  requirements: missing {', '.join(missing)} (--no-pip: not installed)")
        cacheable = False
    elif missing:
        ok, msg = pip_install(missing, environ=environ)
        _out(f"  requirements: {msg}")
        cacheable = ok

    # torch: the host's, never ours to install
    if importlib.util.find_spec("torch") is None:
        _out(f"  torch is not installed in this Python ({sys.executable}).")
        _out("arcattn cannot work without torch. It uses the host's torch and never installs it: install the torch "
             f"build for your GPU first (Intel Arc: pip install torch --index-url {XPU_INDEX}), then run install.py "
             "again.")
        return 1, "torch missing", False
    try:
        t = torch_facts()
    except Exception as e:  # noqa: BLE001
        _out(f"arcattn cannot work: torch fails to import ({_why(e)})")
        return 1, "torch broken", False
    where = t["device"] + (f" ({t['device_name']})" if t["device_name"] else "")
    _out(f"  torch {t['version']} ({t['build']} build{t['extra']}), device: {where}")
    for note in (device_advice(t), old_torch_note(t["version"])):
        if note:
            _out(f"  note: {note}")

    # arcattn itself, from this folder
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        import arcattn
    except Exception as e:  # noqa: BLE001
        _out(f"arcattn cannot work: the package fails to import ({_why(e)})")
        return 1, "arcattn import failed", False

    tri = triton_facts(t["device"])
    if tri["version"]:
        dists = ", ".join(f"{n} {v}" if v != tri["version"] else n for n, v in tri["dists"].items())
        _out(f"  triton {tri['version']} (package: {dists or 'no metadata'})")
    else:
        _out(f"  triton: not importable ({tri['error'] or 'not installed'})"
             + ("; Triton kernels need a GPU, SDPA serves the CPU" if t["device"] == "cpu" else ""))
    for p in tri["problems"]:
        _out(f"  problem: {p}")

    router = arcattn.get_router()
    avail = {}
    for b in router.backends:
        why = b.unavailable_reason()
        avail[b.name] = why
        state = "disabled (ARCATTN_DISABLE)" if b.name in router.disabled else (
            "available" if why is None else f"unavailable: {why}")
        _out(f"  backend {b.name}: {state}")

    nat = native_facts(root)
    if t["device"] == "xpu" and avail.get("xmx") is not None:
        how = ("python install.py --build-native (needs the Intel oneAPI DPC++/C++ compiler, icpx)"
               if nat["build_script"] else "the native build is not part of this copy of arcattn")
        _out(f"  native XMX kernel: not in use{' (found ' + ', '.join(nat['files']) + ')' if nat['files'] else ''}."
             f" To get one: {how}; Triton and SDPA serve meanwhile")
    elif t["device"] == "xpu":
        _out(f"  native XMX kernel: loaded ({', '.join(nat['files']) or 'found by its backend'})")
    else:
        _out(f"  native XMX kernel: not applicable on {t['device']} (Intel Arc Xe2 only)")

    try:
        results = run_selftest(t["device"])
    except Exception as e:  # noqa: BLE001
        _out(f"arcattn cannot work: the self-test crashed ({_why(e)})")
        return 1, "self-test crashed", False
    per = summarize_selftest(results)
    parts = []
    for name, s in per.items():
        if s["state"] == "pass":
            parts.append(f"{name} pass" + (f" (err {s['err']:.1e})" if s["err"] is not None else ""))
        elif s["state"] == "FAIL":
            parts.append(f"{name} FAIL ({s['reason']})")
        else:
            parts.append(f"{name} n/a")
    _out(f"  self-test: {'; '.join(parts)}")

    fallback = router.fallback.name
    failed = [n for n, s in per.items() if s["state"] == "FAIL"]
    fast = [n for n, s in per.items() if s["state"] == "pass" and n != fallback and n not in router.disabled]
    elapsed = time.perf_counter() - t0
    if per.get(fallback, {}).get("state") != "pass":
        _out(f"arcattn cannot work here: its {fallback} fallback failed the self-test "
             f"({per.get(fallback, {}).get('reason')}) ({elapsed:.2f} s)")
        return 1, "fallback failed", False
    for n in failed:
        _out(f"  WARNING: backend {n} gives wrong results here; set ARCATTN_DISABLE={n} and please report it "
             "with `python -m arcattn doctor`")
    if fast:
        headline = f"ready: {', '.join(fast)} with {fallback} as fallback"
    else:
        headline = f"ready with {fallback} only (the plugin works; no faster backend is usable here)"
    _out(f"arcattn {version} {headline} (checked in {elapsed:.2f} s)")
    return 0, headline, cacheable and not failed


# -- the native build ---------------------------------------------------------------------------------------
def build_native(root: str, argv: list) -> tuple:
    """Run extension/build.py's main(argv). Returns (exit code, whether a check should follow): a build that
    exits through argparse (--help, a usage error) is not followed by a check."""
    path = os.path.join(root, "extension", "build.py")
    if not os.path.isfile(path):
        _out(f"arcattn: no native build in this copy ({path} is missing); nothing built")
        return 2, False
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        spec = importlib.util.spec_from_file_location("arcattn_extension_build", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001
        _out(f"arcattn: the native build script failed to load ({_why(e)})")
        return 1, False
    entry = getattr(mod, "main", None)
    if not callable(entry):
        _out(f"arcattn: {path} has no main(argv) yet; the native build is not available in this version")
        return 2, False
    try:
        rc = entry(list(argv))
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else (0 if e.code is None else 1)), False
    except Exception as e:  # noqa: BLE001
        _out(f"arcattn: the native build failed ({_why(e)})")
        return 1, False
    rc = int(rc or 0)
    return rc, rc == 0


# -- entry --------------------------------------------------------------------------------------------------
class _Args:
    force = False
    no_pip = False


def _parse(argv: list) -> tuple:
    args, build = _Args(), None
    usage = "usage: python install.py [--force] [--no-pip] [--build-native [BUILD ARGS...]]"
    rest = list(argv)
    if "--build-native" in rest:
        i = rest.index("--build-native")
        build, rest = rest[i + 1:], rest[:i]
    for a in rest:
        if a == "--force":
            args.force = True
        elif a == "--no-pip":
            args.no_pip = True
        elif a in ("-h", "--help"):
            _out(usage)
            _out("  --force         check everything again even if nothing changed since the last check")
            _out("  --no-pip        do not install missing requirements.txt entries")
            _out("  --build-native  build the native XMX kernel (extension/build.py), then check")
            raise SystemExit(0)
        else:
            _out(f"arcattn install.py: unknown argument {a!r}\n{usage}")
            raise SystemExit(2)
    return args, build


def main(argv: Optional[list] = None, *, t0: Optional[float] = None, root: Optional[str] = None,
         environ=None) -> int:
    t0 = time.perf_counter() if t0 is None else t0
    environ = os.environ if environ is None else environ
    root = os.path.abspath(root or repo_root())
    try:
        args, build = _parse(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0)
    version = read_version(root)
    host = detect_host(root, environ)

    if build is not None:
        rc, check_after = build_native(root, build)
        if not check_after:
            return rc
        args.force = True  # a new binary: check it now

    spath = state_path(root, environ)
    key = state_key(root, environ)
    if not args.force:
        st = load_state(spath)
        reqs_ok = not missing_requirements(parse_requirements(os.path.join(root, "requirements.txt")))
        if st and st.get("key") == key and st.get("rc") == 0 and reqs_ok:
            _out(f"arcattn {version} {st.get('headline', 'ready')}; unchanged since the check of {st.get('when')} "
                 f"({time.perf_counter() - t0:.2f} s; python install.py --force checks again)")
            return 0
    rc, headline, cacheable = full_check(root, host, version, args, t0, environ)
    if rc == 0 and cacheable:
        save_state(spath, {"key": key, "rc": rc, "headline": headline,
                           "when": time.strftime("%Y-%m-%d %H:%M"), "host": host})
    return rc
