"""The CPU reference build of arcattn._xmx, loaded through the real loader: correctness and argument checks.

Two implementations are checked against float64, both in that build:
  "reference"     forward(): the plain C++ body that follows the kernel's schedule step for step;
  "kernel_model"  forward_kernel_model(): kernel/xmx_attention_esimd.hpp itself, compiled by g++ against a host
                  model of the ESIMD API subset it uses (2-D block loads with out-of-bounds zeros, transposed and
                  VNNI layouts, clipped stores, DPAS on packed tiles, documented restrictions as static_asserts).
They check the kernel's arithmetic, layouts and the binding; they say nothing about Intel's compiler or GPU: the
SYCL build has never been compiled here.
"""
from __future__ import annotations

import pytest
import torch

from arcattn.backends.xmx import DTYPE_CODES, XMXBackend
from arcattn.reference import attention_reference, rel_error

HEAD_DIMS = (40, 64, 80, 128, 160)
# Measured: ~3e-4 (fp16) and ~2e-3 (bf16) against float64; a wrong tile, tail or head gives errors of order 1.
TOL = {torch.float16: 1.5e-3, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def backend(cpu_binary):
    b = XMXBackend(cpu_binary, allow_cpu_reference=True, max_batch=0, max_seq=0)
    assert b.unavailable_reason() is None, b.unavailable_reason()
    assert b.kind == "cpu-reference" and b.device_types == ("cpu",)
    return b


@pytest.fixture(scope="module")
def module(backend):
    return backend._mod


class _Impl:
    """The module with `forward` bound to one implementation (the argument checks are shared)."""

    def __init__(self, mod, name):
        self.forward = mod.forward if name == "reference" else mod.forward_kernel_model


@pytest.fixture(scope="module", params=["reference", "kernel_model"])
def xmx(request, module):
    return _Impl(module, request.param)


def _tensor(rng, layout, B, H, S, D, dtype, scale=1.0):
    shape = {"bsd": (B, S, H * D), "bhsd": (B, H, S, D), "bshd": (B, S, H, D)}[layout]
    return (torch.randn(shape, generator=rng) * scale).to(dtype)


def _as4(t, layout, H, D):
    if layout == "bhsd":
        return t
    if layout == "bsd":
        t = t.unflatten(-1, (H, D))
    return t.transpose(1, 2)


def _forward(xmx, q4, k4, v4, out4, scale=None, dtype_code=None, queue=0):
    B, H, Sq, D = q4.shape
    Sk = k4.shape[2]
    xmx.forward(q4.data_ptr(), k4.data_ptr(), v4.data_ptr(), out4.data_ptr(),
                DTYPE_CODES[q4.dtype] if dtype_code is None else dtype_code, B, H, Sq, Sk, D,
                tuple(q4.stride()), tuple(k4.stride()), tuple(v4.stride()), tuple(out4.stride()),
                D ** -0.5 if scale is None else scale, queue)


def _check(xmx, rng, layout, B, H, Sq, Sk, D, dtype, scale=None, amp=1.0, keys=None):
    q, k, v = (_tensor(rng, layout, B, H, S, D, dtype, amp) for S in (Sq, Sk, Sk))
    if keys is not None:
        k = keys(k)
    q4, k4, v4 = (_as4(t, layout, H, D) for t in (q, k, v))
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    out4 = _as4(out, layout, H, D)
    _forward(xmx, q4, k4, v4, out4, scale=scale)
    ref, _ = attention_reference(q4, k4, v4, scale=scale)
    err = rel_error(out4, ref)
    assert err < TOL[dtype], f"{layout} B={B} H={H} Sq={Sq} Sk={Sk} D={D} {dtype}: rel error {err:.3g}"
    return err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("Sq,Sk", [(37, 77), (1, 1), (64, 64), (9, 33), (130, 17), (16, 96)])
def test_head_dims_and_tails_match_float64(xmx, rng, D, dtype, Sq, Sk):
    # Sk 77/33/17: partial last key block (77 also leaves the block's second 16-key chunk empty); 64/96: whole
    # blocks; 1: a single key. Sq 37/9/130/1: partial row slices for both 8 and 4 rows per thread.
    _check(xmx, rng, "bsd", 2, 3, Sq, Sk, D, dtype)


@pytest.mark.parametrize("layout", ["bsd", "bhsd", "bshd"])
@pytest.mark.parametrize("D", [40, 64, 160])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_layouts(xmx, rng, layout, D, dtype):
    _check(xmx, rng, layout, 2, 5, 45, 70, D, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("H", [2, 3])
def test_row_shifted_surfaces(xmx, module, rng, H, dtype):
    """The loader's self-test case for the y0 > 0 path: contiguous (B, H, S, D) at D = 40 (80-byte rows), Sq = 37,
    Sk = 77. Head h starts h * S * 80 bytes in, 16, 32 or 48 bytes past a 64-byte boundary, so its 2-D block surface
    is moved back by whole rows (kernel/schedule.hpp head_surface). Checked against float64, and asserted to take
    that path for q, k, v and out."""
    B, Sq, Sk, D = 1, 37, 77, 40
    q, k, v = (_tensor(rng, "bhsd", B, H, S, D, dtype) for S in (Sq, Sk, Sk))
    out = torch.full_like(q, float("nan"))
    for t, rows in ((q, Sq), (k, Sk), (v, Sk), (out, Sq)):
        y0 = [module.head_surface(t.data_ptr(), tuple(t.stride()), 0, h, rows, D)["y0"] for h in range(H)]
        assert y0[0] == 0 and y0[1] > 0, y0
    _forward(xmx, q, k, v, out)
    ref, _ = attention_reference(q, k, v)
    err = rel_error(out, ref)
    assert err < TOL[dtype], f"row-shifted H={H} {dtype}: rel error {err:.3g}"


def test_binary_reports_its_kernel_instances(module):
    """The host model registers one kernel id per instance the kernel's dispatch instantiates (as the SYCL runtime
    does for a device image): fp16 and bf16 for every head dim, named after the kernel class."""
    info = module.device_info()
    assert info["kernels"] == 2 * len(HEAD_DIMS) and info["kernel_name"] == "ArcattnXmxAttention"


@pytest.mark.parametrize("order", ["rising", "falling", "large"])
def test_online_softmax_rescaling(xmx, rng, order):
    """Scores that rise block after block (rescale every step), fall (never after the first), or are large."""
    D = 64

    def arrange(k):
        if order == "large":
            return k
        # key j gets a growing (or shrinking) component along q's mean direction
        ramp = torch.linspace(-3, 3, k.shape[1]) if order == "rising" else torch.linspace(3, -3, k.shape[1])
        return (k.float() + ramp[None, :, None]).to(k.dtype)

    amp = 4.0 if order == "large" else 1.0
    _check(xmx, rng, "bsd", 1, 2, 40, 150, D, torch.float16, amp=amp, keys=arrange)


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0])
def test_explicit_scale(xmx, rng, scale):
    _check(xmx, rng, "bhsd", 1, 2, 33, 50, 80, torch.float16, scale=scale)


@pytest.mark.parametrize("D", [40, 80, 160])
def test_writes_nothing_outside_the_output(xmx, rng, D):
    """The output is a view into a larger buffer: padded tile columns and tail rows must not leak out of it."""
    B, H, Sq, Sk = 2, 3, 21, 30
    q, k, v = (_tensor(rng, "bsd", B, H, S, D, torch.float16) for S in (Sq, Sk, Sk))
    big = torch.full((B, Sq + 5, H * D + 64), 7.0, dtype=torch.float16)
    out = big[:, :Sq, :H * D]
    out.fill_(float("nan"))
    q4, k4, v4, out4 = (_as4(t, "bsd", H, D) for t in (q, k, v, out))
    _forward(xmx, q4, k4, v4, out4)
    ref, _ = attention_reference(q4, k4, v4)
    assert rel_error(out4, ref) < TOL[torch.float16]
    outside = torch.ones_like(big, dtype=torch.bool)
    outside[:, :Sq, :H * D] = False
    assert (big[outside] == 7.0).all(), "the kernel wrote outside the output view"


def test_inputs_with_row_padding_and_offsets(xmx, rng):
    """Strided inputs: q/k/v are column slices of one fused (B, S, 3*H*D) projection, as some hosts produce."""
    B, H, S, D = 1, 4, 50, 40
    qkv = torch.randn(B, S, 3 * H * D, generator=rng).to(torch.float16)
    q, k, v = qkv.split(H * D, dim=-1)
    q4, k4, v4 = (_as4(t, "bsd", H, D) for t in (q, k, v))
    out4 = torch.full((B, H, S, D), float("nan"), dtype=torch.float16)
    _forward(xmx, q4, k4, v4, out4)
    ref, _ = attention_reference(q4, k4, v4)
    assert rel_error(out4, ref) < TOL[torch.float16]


# -- argument checks: each raises ValueError naming the problem, and writes nothing ------------------------------
def _inputs(rng, B=1, H=2, S=20, D=40, dtype=torch.float16):
    q, k, v = (torch.randn(B, H, S, D, generator=rng).to(dtype) for _ in range(3))
    return q, k, v, torch.full((B, H, S, D), float("nan"), dtype=dtype)


def _expect_error(xmx, match, q4, k4, v4, out4, **kw):
    with pytest.raises(ValueError, match=match):
        _forward(xmx, q4, k4, v4, out4, **kw)
    assert torch.isnan(out4).all(), "a rejected call must not write the output"


def test_rejects_unaligned_head_start(xmx, rng):
    q, k, v, out = _inputs(rng)
    flat = torch.randn(q.numel() + 1, generator=rng).to(q.dtype)
    odd = flat[1:].view(q.shape)  # starts 2 bytes past an aligned address
    _expect_error(xmx, "4-byte aligned", odd, k, v, out)


def test_rejects_row_pitch_not_multiple_of_16_bytes(xmx, rng):
    q, k, v, out = _inputs(rng)
    wide = torch.randn(1, 2, 20, 44, generator=rng).to(q.dtype)[..., :40]  # 88-byte rows
    _expect_error(xmx, "multiple of 16", q, wide, v, out)


def test_rejects_uncompiled_head_dim(xmx, rng):
    q, k, v, out = _inputs(rng, D=72)
    _expect_error(xmx, "head dim 72 not compiled", q, k, v, out)


def test_rejects_bad_dtype_code(xmx, rng):
    q, k, v, out = _inputs(rng)
    _expect_error(xmx, "dtype code", q, k, v, out, dtype_code=7)


def test_rejects_non_unit_head_dim_stride(xmx, rng):
    q, k, v, out = _inputs(rng)
    qt = torch.randn(1, 2, 40, 20, generator=rng).to(q.dtype).transpose(-1, -2)
    _expect_error(xmx, "head-dim stride", qt, k, v, out)


def test_kernel_model_matches_reference_body(module, rng):
    """The kernel source and the C++ body follow one schedule: they agree to within a few fp16 ulps."""
    B, H, Sq, Sk, D = 1, 2, 45, 100, 80
    q, k, v = (_tensor(rng, "bhsd", B, H, S, D, torch.float16) for S in (Sq, Sk, Sk))
    outs = []
    for fn in (module.forward, module.forward_kernel_model):
        out = torch.full_like(q, float("nan"))
        fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), 0, B, H, Sq, Sk, D, tuple(q.stride()),
           tuple(k.stride()), tuple(v.stride()), tuple(out.stride()), D ** -0.5, 0)
        outs.append(out.float())
    assert torch.isfinite(outs[0]).all() and torch.isfinite(outs[1]).all()
    assert (outs[0] - outs[1]).abs().max() <= 4e-3


def test_rejects_queue_on_cpu_build(xmx, rng):
    q, k, v, out = _inputs(rng)
    _expect_error(xmx, "queue=0", q, k, v, out, queue=1234)


def test_rejects_overlapping_output_rows(xmx, rng):
    q, k, v, _ = _inputs(rng)
    out = torch.full((1, 2, 20, 40), float("nan"), dtype=q.dtype).as_strided((1, 2, 20, 40), (1600, 800, 8, 1))
    _expect_error(xmx, "pitch", q, k, v, out)
