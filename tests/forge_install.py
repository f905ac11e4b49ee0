"""Forge's own install steps for an extension, run in a Forge process without its UI. Used by
tests/test_forge_install.py.

    python tests/forge_install.py FORGE_ROOT URL [launch.py's arguments...]

1. Extensions tab, "Install from URL": `modules.ui_extensions.install_extension_from_url`, the function its
   Install button calls (git clone into the extensions folder, then the extension's install.py);
2. what every later launch does for each extension unless --skip-install: `launch_utils.run_extension_installer`
   on its folder (for this one only: the launch's loop, `run_extensions_installers`, would also run Forge's
   built-in extensions' installers, which pip-install their own packages into the Python under test).
"""
import os
import sys

root, url = os.path.abspath(sys.argv[1]), sys.argv[2]
os.chdir(root)
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "launch.py"), *sys.argv[3:]]

from modules import initialize  # noqa: E402

initialize.imports()
from modules import extensions, launch_utils, ui_extensions  # noqa: E402

extensions.list_extensions()
_, message = ui_extensions.install_extension_from_url(None, url)
print(f"forge_install.py: install from URL: {message}", flush=True)
print("forge_install.py: the launch's extension installer", flush=True)
launch_utils.run_extension_installer(os.path.join(extensions.extensions_dir, "arcattn"))
