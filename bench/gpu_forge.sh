#!/usr/bin/env bash
# One GPU visit: Forge's own UNet (backend.nn.unet, SD1.5 layout, random fp16 weights) on the GPU with arcattn put
# in as the Forge extension does, toggle on and off, against Forge's own attention (bench/unet.py's Forge part),
# then the real-Forge and Forge stand-in tests on a machine where CUDA is available. Run from the repo root with
# `.whl`, `.whl_diffusers` (Python 3.12 wheels: einops, psutil, pyyaml, tqdm, safetensors; diffusers for Forge's
# ConfigMixin) and `.hosts/forge` (Forge's backend/ without its huggingface/ configs, packages_3rdparty/ and modules/; never
# committed) carried. Everything lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl_diffusers/*.whl \
  2>&1 | tail -3 | tee "$OUT/install.txt"
export PYTHONPATH="$PWD:/tmp/site"
export ARCATTN_CACHE_DIR=/tmp/arcattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m arcattn doctor 2>&1 | tee "$OUT/doctor.txt"
ARCATTN_FORGE_ROOT="$PWD/.hosts/forge" timeout 420 python3 bench/unet.py --models "" --batch "${BATCH:-1,2}" \
  --rounds "${ROUNDS:-12}" --json "$OUT/forge_unet.json" 2>&1 | grep -v "kept in float32" | tee "$OUT/forge_unet.txt"
ARCATTN_FORGE_ROOT="$PWD/.hosts/forge" timeout 120 python3 -m pytest tests/test_forge_real.py tests/test_forge.py \
  -q -rs -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/pytest.txt"
