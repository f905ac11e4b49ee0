#!/usr/bin/env bash
# One GPU visit: ComfyUI's own executor and sampler on the GPU with and without arcattn (bench/comfyui_sampler.py),
# then the real-ComfyUI tests (they run ComfyUI with --cpu) on a machine where CUDA is available. Run from the repo
# root with `.whl` (the packages ComfyUI imports at start-up, as Python 3.12 wheels) and `.hosts/ComfyUI` (a
# ComfyUI copy, never committed) carried. Everything lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip list 2>/dev/null > "$OUT/pip_list_before.txt"
pipi() { python3 -m pip install -q --no-index --find-links .whl --break-system-packages "$@" 2>&1 | grep -v "Location\|WARNING: Running pip" ; }
{ pipi transformers einops pillow psutil pyyaml tqdm pydantic pydantic-settings safetensors
  pipi --no-deps torchsde trampoline; } | tail -5 | tee "$OUT/install.txt"
export PYTHONPATH="$PWD"
export ARCATTN_CACHE_DIR=/tmp/arcattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 bench/comfyui_sampler.py --comfyui "$PWD/.hosts/ComfyUI" --rounds "${ROUNDS:-5}" --json "$OUT/sampler.json" 2>&1 \
  | grep -v "it/s\]\|torchaudio missing" | tee "$OUT/sampler.txt"
ARCATTN_COMFYUI_ROOT="$PWD/.hosts/ComfyUI" timeout 300 python3 -m pytest tests/test_comfyui_real.py tests/test_comfyui.py \
  -q -rs -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/pytest.txt"
