"""Where arcattn's prebuilt native binaries live.

arcattn/backends/xmx.py looks here for `_xmx.sycl<N><python extension suffix>` (e.g.
`_xmx.sycl8.cpython-311-x86_64-linux-gnu.so`, `_xmx.sycl8.cp311-win_amd64.pyd`; N = the SYCL runtime major it
was built against, which must match torch's XPU build): the SYCL/ESIMD attention kernel for Intel Xe2, built by
`python extension/build.py` (or `python install.py --build-native`) or taken from a release, where binaries for
several Python versions and SYCL runtimes can sit side by side. ARCATTN_XMX_PATH points the loader somewhere else instead.

Never put the CPU reference build (`extension/build.py --cpu-reference`) here: it is for tests, and the loader
refuses it unless ARCATTN_XMX_ALLOW_CPU_REFERENCE=1. Binaries are build outputs: git ignores them (*.so, *.pyd).
"""
