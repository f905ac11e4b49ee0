#!/usr/bin/env bash
# One GPU visit for the warp-specialisation probe (issue 5; bench/RESULTS.md, fifteenth session). Run from the repo
# root on the device machine. Step 2 needs `.whl` (ComfyUI's import deps, as for gpu_comfyui.sh: huggingface_hub,
# safetensors, ...) and `.whl_diffusers` (diffusers 0.42.1, importlib_metadata, zipp) carried: cp312 wheels, both
# ignored by git. Everything lands in $OUT. About 9 minutes at most.
#  1. bench/gpu_autows.py at B = 2 on SD1.5's D = 40 call and SDXL's D = 64 ones: cuDNN, arcattn's kernel and the
#     probe kernel, plain (descriptors made on the host and on the device) and warp-specialised (descriptors made
#     on the device, the probe's form and the tutorial's; those made on the host hung in visits 83-84), each
#     warp-specialised variant in a child process killed after 30 s; a wrong one is diagnosed (which rows).
#     Visits 85-87 ran this: the probe's form is wrong and the tutorial's right at 2 stages but slow, so step 2
#     did not run (bench/RESULTS.md, sixteenth session).
#  2. Only if no warp-specialised variant hung and one ran right on SD1.5's D = 40 call: diffusers' SD1.5 and SDXL
#     UNet steps (bench/unet.py) with that kernel as an extra backend, `triton_ws`, at the tile that was fastest
#     there; `auto` measures it beside the others, so the step's attention time answers the B = 2 targets.
set -uo pipefail
export PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD"
export ARCATTN_CACHE_DIR=/tmp/arcattn-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
AUTOWS_NO_HOST_WS=1 AUTOWS_B=${AUTOWS_B:-2} \
  AUTOWS_CONFIGS=${AUTOWS_CONFIGS:-"[[128,64,8,3,false],[128,64,8,3,false,true],[128,64,8,3,false,true,true],[128,64,4,2,true,true],[128,128,4,2,true,true],[128,64,4,2,true,true,true],[128,128,4,2,true,true,true],[128,64,4,3,true,true,true]]"} \
  AUTOWS_SHAPES=${AUTOWS_SHAPES:-"sd15-512 in1 self,sdxl-1024 in3 self,sdxl-1024 in2 self"} \
  timeout 300 python3 bench/gpu_autows.py 2>&1 | tee "$OUT/autows.txt"
echo "probe exit status ${PIPESTATUS[0]}" | tee -a "$OUT/autows.txt"
# the fastest right warp-specialised tile on SD1.5's D = 40 call, as BLOCK_M,BLOCK_N,warps,stages; "" if any
# warp-specialised variant hung or none ran right there
best=$(python3 - "$OUT/autows.json" <<'EOF'
import ast, json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception:  # noqa: BLE001
    rows = []
ws = [(ast.literal_eval(r["label"][len("autows "):]), r) for r in rows if r["label"].startswith("autows (")]
ws = [(c, r) for c, r in ws if c[4]]  # warp-specialised, any form
ok = sorted(((c, r) for c, r in ws if r["shape"].startswith("sd15-512 in1 self") and r.get("best_us")
             and c[5:] == (True,)), key=lambda cr: cr[1]["best_us"])  # the form HopperWSBackend serves
hung = any("hung" in str(r.get("err")) for _, r in ws)
print(",".join(map(str, ok[0][0][:4])) if ok and not hung else "")
EOF
)
if [ -z "$best" ]; then
  echo "a warp-specialised variant hung, or none ran right on SD1.5's D = 40 call: UNet step not measured" \
    | tee -a "$OUT/autows.txt"
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  .whl_diffusers/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site"
echo "UNet steps with triton_ws at $best" | tee "$OUT/unet_ws.txt"
rm -rf /tmp/arcattn-cache
for model in sd15 sdxl; do  # one run per model: unet.py writes its JSON at the end
  ARCATTN_WS_CONFIG=$best timeout ${UNET_TIMEOUT:-105} python3 bench/unet.py --extra-backend gpu_autows:HopperWSBackend \
    --models $model --variants stock,none,auto,triton,triton_ws --batch ${UNET_BATCH:-2} --rounds ${UNET_ROUNDS:-6} \
    --json "$OUT/unet_ws_$model.json" 2>&1 | grep -v "kept in float32" | tee -a "$OUT/unet_ws.txt"
  echo "unet $model exit status ${PIPESTATUS[0]}" | tee -a "$OUT/unet_ws.txt"
done
