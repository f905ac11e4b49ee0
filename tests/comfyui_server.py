"""Start ComfyUI's own server (main.py) from its checkout, after putting empty stand-ins in place of packages
that do not load on this machine (tests/unloadable.py). Used by tests/test_comfyui_server.py.

    python tests/comfyui_server.py COMFYUI_ROOT [main.py's arguments...]
"""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unloadable import stand_in_unloadable  # noqa: E402

root = os.path.abspath(sys.argv[1])
stood_in = stand_in_unloadable("torchvision", "av")
if stood_in:
    print(f"comfyui_server.py: empty stand-ins for {', '.join(stood_in)} (they do not import here)", flush=True)
os.chdir(root)
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "main.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
