#!/usr/bin/env bash
# One GPU visit: the whole test suite on the device machine's torch and Triton, with the real ComfyUI and Forge
# checkouts where carried (`.hosts/ComfyUI`, `.hosts/forge`, and Forge Neo's backend/attention.py in
# `.hosts/forge-neo`; never committed) and the Python 3.12 wheels their
# imports need (WHEELS: folders of wheels, default `.whl .whl_diffusers`; a huggingface_hub among them must suit the
# image's own transformers, or carry transformers too). TESTS picks test files (default: all). Everything lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for d in ${WHEELS:-.whl .whl_diffusers}; do
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$d"/*.whl 2>&1 | tail -3
done | tee "$OUT/install.txt"
export PYTHONPATH="$PWD:/tmp/site"
export ARCATTN_CACHE_DIR=/tmp/arcattn-cache
[ -d .hosts/ComfyUI ] && export ARCATTN_COMFYUI_ROOT="$PWD/.hosts/ComfyUI"
[ -d .hosts/forge ] && export ARCATTN_FORGE_ROOT="$PWD/.hosts/forge"
[ -d .hosts/forge-neo ] && export ARCATTN_FORGE_NEO_ROOT="$PWD/.hosts/forge-neo"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m arcattn doctor 2>&1 | tee "$OUT/doctor.txt"
python3 extension/build.py --cpu-reference --quiet 2>&1 | tail -3 | tee "$OUT/build.txt"
timeout "${PYTEST_TIMEOUT:-480}" python3 -m pytest ${TESTS:-tests} -q -rs -p no:cacheprovider --durations=15 2>&1 | tee "$OUT/pytest.txt" | tail -60
