"""One-click check for arcattn: run by ComfyUI-Manager, by Forge at every launch, or by hand.

    python install.py                  check (fast when nothing changed since the last check)
    python install.py --force          check everything again
    python install.py --build-native   build the native XMX kernel, then check

Never installs, upgrades or downgrades torch. The logic lives in arcattn/install_check.py, loaded by file path
so that a run with nothing to do does not import torch.
"""
import time

_T0 = time.perf_counter()

import importlib.util  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def _run() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)  # the arcattn package beside this file, whatever the cwd or PYTHONPATH
    path = os.path.join(here, "arcattn", "install_check.py")
    try:
        spec = importlib.util.spec_from_file_location("arcattn_install_check", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001
        print(f"arcattn install.py: cannot load {path} ({type(e).__name__}: {e}); is the folder complete?")
        return 1
    return mod.main(sys.argv[1:], t0=_T0, root=here)


if __name__ == "__main__":
    sys.exit(_run())
