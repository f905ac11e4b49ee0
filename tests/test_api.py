"""Public API: argument checks with clear errors, and float64-reference correctness of the sdpa backend."""
import math

import numpy as np
import pytest
import torch

import arcattn
from arcattn.reference import attention_reference, rel_error

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def to4(t, layout, heads):
    if layout == "bsd":
        return t.unflatten(-1, (heads, t.shape[-1] // heads)).transpose(1, 2)
    return t if layout == "bhsd" else t.transpose(1, 2)


def from4(t4, layout):
    if layout == "bsd":
        return t4.transpose(1, 2).flatten(2)
    return t4 if layout == "bhsd" else t4.transpose(1, 2)


def make(gen, layout, B, H, Sq, Sk, D, dtype=torch.float32, Dv=None):
    Dv = Dv or D
    q4, k4, v4 = rand(gen, B, H, Sq, D, dtype=dtype), rand(gen, B, H, Sk, D, dtype=dtype), rand(gen, B, H, Sk, Dv, dtype=dtype)
    return q4, k4, v4, from4(q4, layout).contiguous(), from4(k4, layout).contiguous(), from4(v4, layout).contiguous()


@pytest.mark.parametrize("layout", ["bsd", "bhsd", "bshd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("B,H,Sq,Sk,D", [(1, 8, 64, 64, 40), (2, 5, 33, 77, 64), (1, 2, 1, 1, 160), (2, 3, 17, 5, 72)])
def test_sdpa_matches_reference(rng, layout, dtype, B, H, Sq, Sk, D):
    q4, k4, v4, q, k, v = make(rng, layout, B, H, Sq, Sk, D, dtype)
    out = arcattn.attention(q, k, v, heads=H, layout=layout, backend="sdpa")
    assert out.shape == (q.shape if layout == "bsd" else from4(q4, layout).shape)
    ref, _ = attention_reference(q4, k4, v4)
    assert rel_error(to4(out, layout, H), ref) < TOL[dtype]


@pytest.mark.parametrize("mask_kind", ["bool2d", "bool4d", "float3d", "float4d_heads"])
def test_sdpa_masks(rng, mask_kind):
    B, H, Sq, Sk, D = 2, 4, 19, 23, 32
    q4, k4, v4, q, k, v = make(rng, "bsd", B, H, Sq, Sk, D)
    if mask_kind == "bool2d":
        mask = torch.rand(Sq, Sk, generator=rng) > 0.3
        mask[:, 0] = True  # no fully masked rows
        m4 = mask[None, None]
    elif mask_kind == "bool4d":
        mask = torch.rand(B, 1, Sq, Sk, generator=rng) > 0.3
        mask[..., 0] = True
        m4 = mask
    elif mask_kind == "float3d":
        mask = torch.randn(B, Sq, Sk, generator=rng)
        m4 = mask[:, None]
    else:
        mask = torch.randn(B, H, 1, Sk, generator=rng)
        m4 = mask
    out = arcattn.attention(q, k, v, heads=H, mask=mask)
    ref, _ = attention_reference(q4, k4, v4, mask=m4)
    assert rel_error(to4(out, "bsd", H), ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_mask_with_half_inputs_keeps_its_values(rng, dtype):
    """Hosts pass float32 additive masks with fp16/bf16 q; finfo(float32).min on a whole row must give that row's
    uniform average (as the hosts' SDPA call does), not the zeros of a mask cast down to -inf."""
    B, H, Sq, Sk, D = 2, 2, 9, 13, 16
    q4, k4, v4, q, k, v = make(rng, "bsd", B, H, Sq, Sk, D, dtype)
    mask = torch.randn(B, Sq, Sk, generator=rng)
    mask[:, 0] = torch.finfo(torch.float32).min
    out = arcattn.attention(q, k, v, heads=H, mask=mask, backend="sdpa")
    ref, _ = attention_reference(q4, k4, v4, mask=mask[:, None])
    assert rel_error(to4(out, "bsd", H), ref) < TOL[dtype]
    assert rel_error(to4(out, "bsd", H)[:, :, 0], v4.double().mean(2)) < TOL[dtype]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("mask_shape", ["2d", "3d"])
def test_float32_mask_with_float64_inputs(rng, chunked, mask_shape):
    """torch's CPU SDPA gives wrong values (rel. err. ~2) for float64 q with a float32 mask; the sdpa backend must
    not pass that pair on, also when it slices the query rows."""
    from arcattn.backends.sdpa import SDPABackend
    from arcattn.call import make_call
    B, H, Sq, Sk, D = 1, 5, 31, 23, 64
    q4, k4, v4, q, k, v = make(rng, "bsd", B, H, Sq, Sk, D, torch.float64)
    mask = -4 * torch.rand(*((Sq, Sk) if mask_shape == "2d" else (B, Sq, Sk)), generator=rng)  # float32
    backend = SDPABackend(max_alloc_bytes=B * H * Sk * 8 * 7 if chunked else 1 << 30, chunk_devices=("cpu",))
    call = make_call(q, k, v, heads=H, mask=mask)
    assert (backend.chunk_rows(call) == 7) if chunked else backend.chunk_rows(call) is None
    out = backend.run(call)
    ref, _ = attention_reference(q4, k4, v4, mask=(mask if mask_shape == "2d" else mask[:, None]).double())
    assert rel_error(to4(out, "bsd", H), ref) < TOL[torch.float64]
    out = arcattn.attention(q, k, v, heads=H, mask=mask)
    assert rel_error(to4(out, "bsd", H), ref) < TOL[torch.float64]


@pytest.mark.parametrize("causal", [False, True])
def test_lse_and_causal(rng, causal):
    B, H, Sq, Sk, D = 1, 3, 21, 30, 16
    q4, k4, v4, q, k, v = make(rng, "bhsd", B, H, Sq, Sk, D)
    out, lse = arcattn.attention(q, k, v, causal=causal, return_lse=True, scale=0.3)
    ref, ref_lse = attention_reference(q4, k4, v4, causal=causal, scale=0.3)
    assert rel_error(out, ref) < 1e-5
    assert lse.dtype == torch.float32 and lse.shape == (B, H, Sq)
    assert rel_error(lse, ref_lse) < 1e-5
    plain = arcattn.attention(q, k, v, causal=causal, scale=0.3)
    assert rel_error(plain, ref) < 1e-5


def test_out_layout_and_strided_views(rng):
    B, H, S, D = 2, 4, 12, 8
    big = rand(rng, B, S, 3 * H * D)
    q, k, v = big.split(H * D, dim=-1)  # non-contiguous views, as from a fused qkv projection
    out = arcattn.attention(q, k, v, heads=H, out_layout="bhsd")
    ref, _ = attention_reference(to4(q, "bsd", H), to4(k, "bsd", H), to4(v, "bsd", H))
    assert out.shape == (B, H, S, D)
    assert rel_error(out, ref) < 1e-5


def test_value_head_dim_may_differ(rng):
    q4, k4, v4, q, k, v = make(rng, "bhsd", 1, 2, 9, 11, 16, Dv=24)
    out = arcattn.attention(q, k, v)
    assert out.shape == (1, 2, 9, 24)
    assert rel_error(out, attention_reference(q4, k4, v4)[0]) < 1e-5


def test_nan_in_nan_out(rng):
    q4, k4, v4, q, k, v = make(rng, "bsd", 1, 2, 8, 8, 16)
    q[0, 3, 0] = float("nan")
    out = arcattn.attention(q, k, v, heads=2)
    assert torch.isnan(out[0, 3]).any()
    assert torch.isfinite(out[0, 2]).all()


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("args,kwargs,exc,words", [
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {}, ValueError, "heads is required"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 5}, ValueError, "not divisible by heads=5"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 0}, ValueError, "positive int"),
    ((t(2, 8, 64), t(3, 8, 64), t(3, 8, 64)), {"heads": 4}, ValueError, "batch mismatch"),
    ((t(2, 8, 64), t(2, 8, 32), t(2, 8, 32)), {"heads": 4}, ValueError, "head-dim mismatch"),
    ((t(2, 8, 64), t(2, 7, 64), t(2, 8, 64)), {"heads": 4}, ValueError, "sequence mismatch"),
    ((t(1, 4, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16)), {}, ValueError, "heads mismatch"),
    ((t(1, 4, 8, 16), t(1, 4, 8, 16), t(1, 4, 8, 16)), {"heads": 3}, ValueError, "does not match"),
    ((t(2, 8, 64), t(2, 8, 64)[None], t(2, 8, 64)), {"heads": 4}, ValueError, "must be 3-D"),
    ((t(8, 64), t(8, 64), t(8, 64)), {"heads": 4, "layout": "bsd"}, ValueError, "must be 3-D"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "layout": "nope"}, ValueError, "layout must be one of"),
    ((t(2, 8, 64), t(2, 8, 64, dtype=torch.float16), t(2, 8, 64)), {"heads": 4}, TypeError, "share one dtype"),
    ((t(2, 8, 64).int(), t(2, 8, 64).int(), t(2, 8, 64).int()), {"heads": 4}, TypeError, "floating"),
    ((t(2, 8, 64).numpy(), t(2, 8, 64), t(2, 8, 64)), {"heads": 4}, TypeError, "q must be a torch.Tensor"),
    ((t(2, 0, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4}, ValueError, "query length is zero"),
    ((t(2, 8, 64), t(2, 0, 64), t(2, 0, 64)), {"heads": 4}, ValueError, "key length is zero"),
    ((t(0, 8, 64), t(0, 8, 64), t(0, 8, 64)), {"heads": 4}, ValueError, "batch is zero"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": t(3, 8, 8)}, ValueError, "does not broadcast"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": t(8, 8).long()}, TypeError, "mask must be bool"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "scale": float("inf")}, ValueError, "finite"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "scale": "x"}, TypeError, "scale must be a number"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "backend": "nope"}, ValueError, "unknown backend"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "out_layout": "nope"}, ValueError, "out_layout must be"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": t(8)}, ValueError, "mask must be 2-D, 3-D or 4-D"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": t(1, 2, 1, 8, 8)}, ValueError, "2-D, 3-D or 4-D"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": [[True]]}, TypeError, "mask must be a torch"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": torch.ones(8, 8, device="meta")}, ValueError,
     "mask is on meta"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "scale": 10 ** 400}, ValueError, "finite"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "causal": "False"}, TypeError, "causal must be a bool"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "return_lse": "no"}, TypeError, "return_lse must be"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "backend": 0}, TypeError, "backend must be"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "backend": ["sdpa"]}, TypeError, "backend must be"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "out_layout": ""}, ValueError, "out_layout must be"),
    ((t(2, 8, 64).to_sparse(), t(2, 8, 64), t(2, 8, 64)), {"heads": 4}, TypeError, "q must be a dense tensor"),
    ((t(2, 8, 64), t(2, 8, 64), t(2, 8, 64)), {"heads": 4, "mask": t(8, 8).to_sparse()}, TypeError,
     "mask must be a dense tensor"),
])
def test_bad_input_is_named(args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        arcattn.attention(*args, **kwargs)


def test_device_mismatch_is_named():
    q = t(1, 4, 16)
    k = torch.empty(1, 4, 16, device="meta")
    with pytest.raises(ValueError, match="one device"):
        arcattn.attention(q, k, k, heads=2)


def test_validation_is_remembered_but_still_checks_new_signatures():
    q = t(1, 4, 16)
    arcattn.attention(q, q, q, heads=2)
    with pytest.raises(ValueError):
        arcattn.attention(q, q, q, heads=3)  # a new signature is checked afresh


def test_default_scale_is_inverse_sqrt_head_dim():
    call = arcattn.make_call(t(1, 4, 40 * 2), t(1, 4, 80), t(1, 4, 80), heads=2)
    assert call.scale == pytest.approx(1 / math.sqrt(40))


def test_default_scale_is_flagged_so_backends_can_leave_it_to_their_default():
    q = t(1, 4, 80)
    assert arcattn.make_call(q, q, q, heads=2).default_scale
    assert arcattn.make_call(q, q, q, heads=2, scale=40 ** -0.5).default_scale
    assert not arcattn.make_call(q, q, q, heads=2, scale=0.3).default_scale


@pytest.mark.parametrize("bad", [4.0, np.int64(4), True])
def test_heads_check_does_not_depend_on_earlier_calls(bad):
    """4.0, numpy's 4 and True hash like the ints 4 and 1: an accepted call must not let them through later."""
    q = t(1, 4, 16)
    arcattn.attention(q, q, q, heads=4 if bad is not True else 1)
    with pytest.raises(ValueError, match="heads must be a positive int"):
        arcattn.attention(q, q, q, heads=bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.0, -0.5])
@pytest.mark.parametrize("return_lse", [False, True])
def test_causal_with_a_scale_of_zero_or_below(rng, dtype, scale, return_lse):
    """torch's CPU SDPA gives NaN for is_causal with such a scale; arcattn must give the reference's answer."""
    q4, k4, v4, q, k, v = make(rng, "bhsd", 1, 2, 9, 9, 8, dtype)
    out = arcattn.attention(q, k, v, causal=True, scale=scale, return_lse=return_lse)
    ref, ref_lse = attention_reference(q4, k4, v4, causal=True, scale=scale)
    assert rel_error(out[0] if return_lse else out, ref) < TOL[dtype]


@pytest.mark.parametrize("kind", ["bool", "-inf"])
def test_fully_masked_row_gives_zeros_with_and_without_lse(rng, kind):
    q4, k4, v4, q, k, v = make(rng, "bhsd", 1, 2, 5, 7, 8)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[2] = False
    if kind == "-inf":
        mask = torch.zeros(5, 7).masked_fill(~mask, float("-inf"))
    plain = arcattn.attention(q, k, v, mask=mask)
    out, lse = arcattn.attention(q, k, v, mask=mask, return_lse=True)
    for o in (plain, out):
        assert torch.equal(o[:, :, 2], torch.zeros_like(o[:, :, 2]))
        assert not o.isnan().any()
    assert torch.isneginf(lse[:, :, 2]).all() and torch.isfinite(lse[:, :, [0, 1, 3, 4]]).all()
    assert rel_error(plain, out) < 1e-6


def test_a_scale_near_the_default_is_kept_in_float64(rng):
    q4, k4, v4, q, k, v = make(rng, "bhsd", 1, 2, 9, 9, 16, torch.float64)
    scale = 0.25 * (1 + 5e-7)
    ref, _ = attention_reference(q4, k4, v4, scale=scale)
    assert rel_error(arcattn.attention(q, k, v, scale=scale), ref) < TOL[torch.float64]


@pytest.mark.parametrize("mask_dtype", [torch.float64, torch.bfloat16])
def test_other_float_masks_keep_finite_minimum_rows_with_half_q(rng, mask_dtype):
    """A mask of another float dtype goes to float32 with fp16 q, as a float32 one stays: a row at a large finite
    negative value keeps the uniform average instead of turning into -inf (fp16) and zeros."""
    q4, k4, v4, q, k, v = make(rng, "bsd", 1, 2, 6, 9, 16, torch.float16)
    mask = torch.randn(6, 9, generator=rng).to(mask_dtype)
    mask[1] = max(torch.finfo(torch.float32).min, torch.finfo(mask_dtype).min)  # finite in both dtypes
    out = arcattn.attention(q, k, v, heads=2, mask=mask, backend="sdpa")
    assert rel_error(to4(out, "bsd", 2)[:, :, 1], v4.double().mean(2)) < TOL[torch.float16]


def test_unhashable_arguments_are_named():
    q = t(1, 4, 16)
    with pytest.raises(ValueError, match="heads must be a positive int"):
        arcattn.attention(q, q, q, heads=[2])
    with pytest.raises(ValueError, match="layout must be one of"):
        arcattn.attention(q, q, q, heads=2, layout=["bsd"])


@pytest.mark.parametrize("causal,Sq,Sk", [(False, 37, 50), (True, 50, 37), (True, 20, 45)])
def test_chunked_reference_equals_the_reference(rng, causal, Sq, Sk):
    """The full-size GPU checks use the chunked reference: a budget this small cuts every head into row blocks."""
    from arcattn.reference import attention_reference_chunked
    q, k, v = (torch.randn(2, 3, S, 24, generator=rng) for S in (Sq, Sk, Sk))
    out, lse = attention_reference(q, k, v, scale=0.3, causal=causal)
    cout, clse = attention_reference_chunked(q, k, v, scale=0.3, causal=causal, budget_bytes=Sk * 8 * 7)
    assert torch.allclose(cout, out, rtol=0, atol=1e-12) and torch.allclose(clse, lse, rtol=0, atol=1e-12)
