"""Host (CPU) microseconds per attention call on a GPU machine, by path, on a shape small enough that the GPU
keeps up: where does a call's host time go, stock diffusers processor vs arcattn's processor per backend."""
import cProfile
import pstats

import torch
import torch.nn.functional as F

import arcattn
from arcattn.bench import host_us
from arcattn.call import make_call
from arcattn.env import describe


def per_call_us(fn, n=400):
    return host_us(fn, torch.device("cuda"), n, warmup=50, reps=7)


def main():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from arcattn.hosts.diffusers import ArcAttnProcessor
    print(describe(torch.device("cuda")))
    B, S, H, D = 1, 64, 8, 160  # sd15-512 mid self: tiny kernels, the host decides the time
    q, k, v = (torch.randn(B, S, H * D, device="cuda", dtype=torch.float16) for _ in range(3))
    q4, k4, v4 = (t.view(B, S, H, D).transpose(1, 2) for t in (q, k, v))
    router = arcattn.get_router()
    call = make_call(q, k, v, heads=H)
    sdpa = router.backend("sdpa")
    tri = router.backend("triton")
    rows = [
        ("F.sdpa on (B,H,S,D) views", lambda: F.scaled_dot_product_attention(q4, k4, v4)),
        ("host-style sdpa (view..reshape)", lambda: F.scaled_dot_product_attention(
            q.view(B, -1, H, D).transpose(1, 2), k.view(B, -1, H, D).transpose(1, 2),
            v.view(B, -1, H, D).transpose(1, 2)).transpose(1, 2).reshape(B, -1, H * D)),
        ("call.q4/k4/v4 views only", lambda: (call.q4, call.k4, call.v4)),
        ("SDPABackend.run(call)", lambda: sdpa.run(call)),
        ("TritonBackend.run(call)", lambda: tri.run(call)),
        ("make_call", lambda: make_call(q, k, v, heads=H)),
        ("SDPABackend.run(make_call(...))", lambda: sdpa.run(make_call(q, k, v, heads=H))),
        ("router.run(make_call(...), sdpa)", lambda: router.run(make_call(q, k, v, heads=H), prefer="sdpa")),
        ("attention(backend=sdpa)", lambda: arcattn.attention(q, k, v, heads=H, backend="sdpa")),
        ("attention(backend=triton)", lambda: arcattn.attention(q, k, v, heads=H, backend="triton")),
    ]
    attn = Attention(query_dim=H * D, heads=H, dim_head=D).cuda().half().eval()
    x = torch.randn(B, S, H * D, device="cuda", dtype=torch.float16)
    stock, arc_s, arc_t = AttnProcessor2_0(), ArcAttnProcessor("sdpa"), ArcAttnProcessor("triton")
    with torch.no_grad():
        rows += [("diffusers stock processor", lambda: stock(attn, x)),
                 ("ArcAttnProcessor(sdpa)", lambda: arc_s(attn, x)),
                 ("ArcAttnProcessor(triton)", lambda: arc_t(attn, x))]
        for name, fn in rows:
            print(f"  {name:<34} {per_call_us(fn):8.1f} us/call (host)")
        for name, fn in (("attention(backend=sdpa)", lambda: arcattn.attention(q, k, v, heads=H, backend="sdpa")),
                         ("sdpa.run(make_call)", lambda: sdpa.run(make_call(q, k, v, heads=H))),
                         ("stock", lambda: stock(attn, x)), ("arc sdpa", lambda: arc_s(attn, x))):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(300):
                fn()
            prof.disable()
            torch.cuda.synchronize()
            print(f"--- cProfile, 300 calls: {name}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
