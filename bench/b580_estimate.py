"""ESTIMATE (not a measurement): attention device time per UNet step on an Arc B580, from the H200 kernel times.

For each attention shape, the best kernel measured on the H200 (Triton or torch's, CUDA-graph replays, B = 1,
fp16; bench/results/triton_h200.json "breakdown") gives a fraction of the H200's measured matmul ceiling
(788 TFLOP/s). The estimate assumes the same fraction of the B580's published fp16 XMX peak (~110 TFLOP/s),
floored by the bytes each call must move at the B580's 456 GB/s. Host time per call (Python + launch, ~20-30 us
on the machines measured here) is not included: it depends on the user's CPU and is the same order as the small
kernels. Nothing here was run on Intel hardware.

    python bench/b580_estimate.py [bench/results/triton_h200.json]
"""
import json
import sys
from pathlib import Path

B580_TFLOPS, B580_GBPS = 110.0, 456.0
# attention calls per UNet step at each shape: SD1.5 at 512 px (2+3 transformer blocks per level, 1 in the
# middle) and SDXL at 1024 px (transformer depth 2 at 64x64: 2 down + 3 up blocks; depth 10 at 32x32:
# 2 down + 3 up + middle)
STEPS = {
    "SD1.5 512 px": {"sd15-512 in1 self": 5, "sd15-512 in1 cross": 5, "sd15-512 in2 self": 5,
                     "sd15-512 in2 cross": 5, "sd15-512 in3 self": 5, "sd15-512 in3 cross": 5,
                     "sd15-512 mid self": 1, "sd15-512 mid cross": 1},
    "SDXL 1024 px": {"sdxl-1024 in2 self": 10, "sdxl-1024 in2 cross": 10, "sdxl-1024 in3 self": 60,
                     "sdxl-1024 in3 cross": 60},
}
# shapes not in shapes.json take the efficiency of the nearest measured one
SHAPES_EXTRA = {"sd15-512 in3 cross": ("sd15-512 in3 self", 8, 160, 256, 77),
                "sd15-512 mid cross": ("sd15-512 mid self", 8, 160, 64, 77)}


def main(path):
    data = json.loads(Path(path).read_text())
    ceiling = data["ceilings"]["bf16_matmul_TFLOPs"]
    shapes = {s["name"]: s for s in json.loads((Path(__file__).parent / "shapes.json").read_text())["shapes"]}
    eff = {}
    for r in data["breakdown"]:
        if r.get("dtype") != "float16" or r.get("B") != 1 or "gpu_kernel_us" not in r:
            continue
        s = shapes[r["shape"]]
        flops = 4 * s["H"] * s["Sq"] * s["Sk"] * s["D"]
        best_us = min(r["gpu_kernel_us"], r["gpu_sdpa_kernel_us"])
        eff[r["shape"]] = flops / (best_us * 1e-6) / (ceiling * 1e12)
    for name, (near, H, D, Sq, Sk) in SHAPES_EXTRA.items():
        shapes[name] = {"name": name, "H": H, "D": D, "Sq": Sq, "Sk": Sk}
        eff[name] = eff[near]
    print(f"ESTIMATE, not measured: B580 fp16 {B580_TFLOPS:.0f} TFLOP/s, {B580_GBPS:.0f} GB/s; efficiencies from "
          f"{data['env']['device_name']} (torch {data['env']['torch']}, triton {data['env']['triton']})")
    print("| model | batch | attention calls | est. B580 attention device time per step | largest share |")
    print("|---|---|---|---|---|")
    for model, counts in STEPS.items():
        for B in (1, 2):
            total, parts = 0.0, {}
            for name, n in counts.items():
                s = shapes[name]
                flops = 4 * B * s["H"] * s["Sq"] * s["Sk"] * s["D"]
                nbytes = 2 * B * s["H"] * s["D"] * (2 * s["Sq"] + 2 * s["Sk"])
                t = max(flops / (eff[name] * B580_TFLOPS * 1e12), nbytes / (B580_GBPS * 1e9))
                parts[name] = n * t
                total += n * t
            top = max(parts, key=parts.get)
            print(f"| {model} | {B} | {sum(counts.values())} | {total * 1e3:.1f} ms | {top} "
                  f"({100 * parts[top] / total:.0f}%) |")
    print("\nper-shape fraction of peak used (H200, best kernel):",
          ", ".join(f"{k} {v:.0%}" for k, v in eff.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "triton_h200.json")
