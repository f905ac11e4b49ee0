#!/usr/bin/env bash
# One GPU visit for measured dispatch and end-to-end speed (issue 5). Run from the repo root on the device
# machine with `.whl` (diffusers + importlib_metadata wheels) and `.hosts` (a ComfyUI copy, never committed)
# carried. Everything lands in $OUT. STAGES picks what runs (default: all, in this order).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGES=${STAGES:-"doctor overhead tune checks unet pytest"}
has() { [[ " $STAGES " == *" $1 "* ]]; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site"
export ARCATTN_CACHE_DIR=/tmp/arcattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
has doctor && python3 -m arcattn doctor 2>&1 | tee "$OUT/doctor.txt"
has overhead && python3 bench/router_overhead.py 2>&1 | tee "$OUT/router_overhead.txt"
# tuning: the first pass includes Triton's compilation; the second, with an empty tuning cache but compiled
# kernels, is the tuning cost a user pays per new shape bucket
if has tune; then
  python3 bench/sd15_shapes.py > /tmp/sd15.json
  for pass in compile measure; do
    rm -rf /tmp/arcattn-cache
    python3 -m arcattn tune --shapes /tmp/sd15.json --batch 2 --dtype fp16 2>&1 | tee "$OUT/tune_$pass.txt"
  done
fi
has checks && python3 bench/gpu_checks.py 2>&1 | tee "$OUT/checks.txt"
has hostcost && python3 bench/gpu_host_cost.py 2>&1 | tee "$OUT/host_cost.txt"
has stepprofile && python3 bench/gpu_step_profile.py 2>&1 | tee "$OUT/step_profile.txt"
if has unet; then
  rm -rf /tmp/arcattn-cache
  ARCATTN_COMFYUI_ROOT="$PWD/.hosts/ComfyUI" python3 bench/unet.py ${UNET_ARGS:-} --json "$OUT/unet.json" 2>&1 \
    | grep -v "kept in float32" | tee "$OUT/unet.txt"
fi
# the test suite on this torch/Triton (CPU reference of the native extension built with this machine's g++)
if has pytest; then
  python3 extension/build.py --cpu-reference --quiet
  timeout 150 python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest.txt"
fi
if has pytest_triton; then
  timeout 420 python3 -m pytest tests/test_triton_kernel.py tests/test_api.py tests/test_tune.py -q -rf -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/pytest.txt"
fi
