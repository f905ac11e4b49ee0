"""Small GPU checks beside the end-to-end benchmark: does passing SDPA's default scale explicitly change which
kernel torch picks (and its time), and do NaN queries come out NaN from each backend."""
import statistics

import torch
import torch.nn.functional as F

import arcattn
from arcattn.env import describe


def time_us(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


def kernels(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name[:70] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


def main():
    print(describe(torch.device("cuda")))
    for name, B, H, S, D in (("sdxl-1024 in2 self", 1, 10, 4096, 64), ("sd15-512 in1 self", 1, 8, 4096, 40),
                             ("sd15-512 in2 self", 2, 8, 1024, 80)):
        q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.float16) for _ in range(3))
        plain = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        scaled = lambda: F.scaled_dot_product_attention(q, k, v, scale=D ** -0.5)  # noqa: E731
        print(f"{name} B={B}: default scale {time_us(plain):.1f} us {kernels(plain)}")
        print(f"{' ' * len(name)}      explicit scale {time_us(scaled):.1f} us {kernels(scaled)}")
    q, k, v = (torch.randn(1, 64, 8 * 40, device="cuda", dtype=torch.float16) for _ in range(3))
    q[0, 5, :40] = float("nan")
    for backend in ("sdpa", "triton"):
        out = arcattn.attention(q, k, v, heads=8, backend=backend)
        print(f"NaN in query row 5, head 0 -> {backend}: NaN in that row/head {bool(torch.isnan(out[0, 5, :40]).any())},"
              f" other rows finite {bool(torch.isfinite(out[0, :5]).all())}")


if __name__ == "__main__":
    main()
