"""Start ComfyUI's own server (main.py) from its checkout, after putting empty stand-ins in place of packages
that do not load on this machine (tests/unloadable.py). Used by tests/test_comfyui_server.py and
tests/test_comfyui_manager.py.

    python tests/comfyui_server.py COMFYUI_ROOT [main.py's arguments...]
"""
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unloadable import stand_in_unloadable  # noqa: E402

# A host that restarts itself runs sys.argv again (ComfyUI-Manager does after running reserved install scripts):
# sys.argv keeps this script first, so the restart comes back through here, stand-ins included, and finds the
# checkout in the environment.
ROOT_VAR = "ARCATTN_TEST_COMFYUI_ROOT"
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    os.environ[ROOT_VAR] = os.path.abspath(sys.argv.pop(1))
root = os.environ[ROOT_VAR]
stood_in = stand_in_unloadable("torchvision", "av")
if stood_in:
    print(f"comfyui_server.py: empty stand-ins for {', '.join(stood_in)} (they do not import here)", flush=True)
os.chdir(root)
sys.path.insert(0, root)
sys.argv = [os.path.abspath(__file__), *sys.argv[1:]]
# main.py run as __main__ by hand: runpy would put main.py's path into sys.argv[0]
path = os.path.join(root, "main.py")
main = types.ModuleType("__main__")
main.__file__ = path
sys.modules["__main__"] = main
with open(path, encoding="utf-8") as f:
    exec(compile(f.read(), path, "exec"), main.__dict__)
