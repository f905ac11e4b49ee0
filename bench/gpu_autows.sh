#!/usr/bin/env bash
# One GPU visit for the warp-specialisation probe (issue 5; bench/RESULTS.md, fifteenth session). Run from the repo
# root on the device machine with `.whl` (ComfyUI's import deps, as for gpu_comfyui.sh: huggingface_hub,
# safetensors, ...) and `.whl_diffusers` (diffusers 0.42.1, importlib_metadata, zipp) carried, cp312 wheels, both
# ignored by git. Everything lands in $OUT.
#  1. bench/gpu_autows.py at B = 2: cuDNN, arcattn's kernel and the probe kernel, each warp-specialised variant (on-
#     device descriptors; the host-descriptor ones hung in visits 83-84) in a child process killed after 30 s.
#  2. Only if a warp-specialised variant ran right: diffusers' SD1.5 and SDXL UNet steps (bench/unet.py) with that
#     kernel as an extra backend, `triton_ws`, at the tile that was fastest on SD1.5's D = 40 call; `auto` measures it
#     beside the others, so the step's attention time answers the B = 2 targets directly.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  .whl_diffusers/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site"
export ARCATTN_CACHE_DIR=/tmp/arcattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
AUTOWS_NO_HOST_WS=1 AUTOWS_B=${AUTOWS_B:-2} \
  AUTOWS_SHAPES=${AUTOWS_SHAPES:-"sd15-512 in1 self,sdxl-1024 in3 self,sdxl-1024 in2 self"} \
  timeout 330 python3 bench/gpu_autows.py 2>&1 | grep -v "first call" | tee "$OUT/autows.txt"
# the fastest right warp-specialised tile on SD1.5's D = 40 call, as BLOCK_M,BLOCK_N,warps,stages ("" if none ran)
best=$(python3 - "$OUT/autows.json" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception:  # noqa: BLE001
    rows = []
ok = [r for r in rows if r["label"].endswith("True, True)") and r.get("best_us")]
ok.sort(key=lambda r: (not r["shape"].startswith("sd15-512 in1"), r["best_us"]))
print(",".join(ok[0]["label"][len("autows ("):].split(", ")[:4]) if ok else "")
EOF
)
if [ -z "$best" ]; then
  echo "no warp-specialised variant ran right: UNet step not measured" | tee -a "$OUT/autows.txt"
  exit 0
fi
echo "UNet steps with triton_ws at $best" | tee "$OUT/unet_ws.txt"
rm -rf /tmp/arcattn-cache
ARCATTN_WS_CONFIG=$best timeout ${UNET_TIMEOUT:-240} python3 bench/unet.py --extra-backend gpu_autows:HopperWSBackend \
  --variants stock,none,auto,triton,triton_ws --batch ${UNET_BATCH:-2} --rounds ${UNET_ROUNDS:-6} \
  --json "$OUT/unet_ws.json" 2>&1 | grep -v "kept in float32" | tee -a "$OUT/unet_ws.txt"
