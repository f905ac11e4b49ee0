"""The Triton flash-attention kernel and the `triton` backend, checked against the float64 reference.

On a machine without a GPU this runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so shapes are
small; every case the issue lists is in the default sweep: fp32/fp16/bf16, head dims 8..256 including 40, 72,
160, Sq/Sk of 1, 77 and non-multiples of the tile, batch 1-3, the (B, S, H*D), (B, H, S, D) and (B, S, H, D)
layouts, strided views, log-sum-exp, causal (Sq < Sk and Sq > Sk), custom/zero/negative scales, the split-key
path, the tensor-descriptor (XPU) path, and the short-keys kernel (every sweep case it takes by default is run on
the flash kernel too). Outputs are poisoned with NaN before the kernel writes them.
ARCATTN_SLOW_TESTS=1 adds a larger randomized sweep.
"""
from __future__ import annotations

import os

import pytest
import torch

import arcattn
from arcattn.call import make_call
from arcattn.reference import attention_reference, rel_error

triton = pytest.importorskip("triton")
from arcattn.kernels import configs, flash  # noqa: E402  (after conftest set TRITON_INTERPRET)
from arcattn.kernels.flash import flash_attention, head_split  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
LSE_TOL = 1e-4
ON_GPU = not flash.interpreted()
DEV = "cuda" if ON_GPU and torch.cuda.is_available() else ("xpu" if ON_GPU else "cpu")

# interpreter warnings from padded rows (1/0 in rows that are never stored) are expected
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _interpreter_serves_cpu(monkeypatch):
    """Only this module lets the interpreter serve CPU calls (ARCATTN_TRITON_CPU=1); other tests keep SDPA."""
    monkeypatch.setenv("ARCATTN_TRITON_CPU", "1")


def rand(gen, *shape, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEV)


def caller_tensors(gen, layout, B, H, Sq, Sk, D, dtype, strided=False):
    """q, k, v in `layout`; strided=True makes them views into wider buffers (like a fused qkv projection)."""
    def one(S):
        if layout == "bsd":
            shape, last = (B, S, H * D), H * D
        elif layout == "bhsd":
            shape, last = (B, H, S, D), D
        else:
            shape, last = (B, S, H, D), D
        if not strided:
            return rand(gen, *shape, dtype=dtype)
        wide = rand(gen, *shape[:-1], 3 * last + 8, dtype=dtype)
        return wide[..., last + 8: 2 * last + 8]  # a middle slice: unaligned base, wide row stride
    return one(Sq), one(Sk), one(Sk)


def check_against_reference(call, out, lse=None):
    ref, ref_lse = attention_reference(call.q4.cpu(), call.k4.cpu(), call.v4.cpu(), scale=call.scale,
                                       causal=call.causal)
    err = rel_error(out.cpu(), call.to_caller(ref))
    assert err < TOL[call.dtype], f"{call.describe()}: relative error {err:.3e} >= {TOL[call.dtype]}"
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == (call.B, call.H, call.Sq)
        lerr = rel_error(lse.cpu(), ref_lse)
        assert lerr < LSE_TOL, f"{call.describe()}: lse relative error {lerr:.3e}"
    return err


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty returns NaN-filled float tensors, so an output element the kernel skips cannot pass."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t
    monkeypatch.setattr(torch, "empty", empty)
    return empty


# (layout, dtype, B, H, Sq, Sk, D, causal, lse, strided): every listed case appears at least once
SWEEP = [
    ("bsd", torch.float16, 1, 2, 77, 77, 40, False, False, False),
    ("bsd", torch.bfloat16, 2, 2, 64, 77, 40, False, True, False),
    ("bsd", torch.float32, 1, 3, 33, 77, 72, False, False, True),
    ("bhsd", torch.float16, 2, 1, 1, 1, 72, False, True, False),
    ("bhsd", torch.bfloat16, 1, 2, 50, 17, 160, True, True, False),
    ("bsd", torch.float16, 1, 1, 45, 100, 160, False, False, True),
    ("bshd", torch.float32, 3, 1, 17, 40, 80, True, False, False),
    ("bsd", torch.float16, 2, 2, 77, 1, 80, False, True, False),
    ("bhsd", torch.float32, 1, 2, 1, 130, 64, False, True, True),
    ("bsd", torch.bfloat16, 1, 1, 70, 33, 64, True, False, True),
    ("bhsd", torch.float16, 1, 1, 20, 20, 8, False, False, False),
    ("bsd", torch.float32, 2, 1, 30, 25, 16, True, True, False),
    ("bshd", torch.bfloat16, 1, 1, 18, 35, 96, False, True, True),
    ("bhsd", torch.float16, 1, 1, 40, 24, 256, False, True, False),
    ("bsd", torch.float32, 1, 1, 16, 48, 256, True, False, False),
    ("bsd", torch.float16, 1, 2, 33, 77, 128, False, False, False),
    ("bhsd", torch.bfloat16, 2, 1, 3, 77, 100, False, False, False),
]


def _short_keys_applies(case) -> bool:
    """The default plan takes the short-keys kernel for non-causal calls with up to 192 keys."""
    return not case[7] and case[5] <= configs.SHORT_KEYS["interpreter"]


# each case on its default kernel; those that default to the short-keys kernel again on the flash kernel
SWEEP_KERNELS = [(c, "default") for c in SWEEP] + [(c, "flash") for c in SWEEP if _short_keys_applies(c)]


@pytest.mark.parametrize("case,kernel", SWEEP_KERNELS,
                         ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c) if isinstance(c, tuple) else c)
def test_backend_sweep_matches_reference(rng, poisoned_empty, monkeypatch, case, kernel):
    layout, dtype, B, H, Sq, Sk, D, causal, lse, strided = case
    if kernel == "flash":
        monkeypatch.setenv("ARCATTN_TRITON_SHORT_KEYS", "0")
    q, k, v = caller_tensors(rng, layout, B, H, Sq, Sk, D, dtype, strided)
    heads = H if layout == "bsd" else None
    launched, real_launch = [], flash.launch

    def spy(plan, *a, **kw):  # the answer must come from the kernel, not from a fallback inside the backend
        launched.append(plan)
        return real_launch(plan, *a, **kw)
    monkeypatch.setattr(flash, "launch", spy)
    res = arcattn.attention(q, k, v, heads=heads, layout=layout, causal=causal, return_lse=lse, backend="triton")
    out, out_lse = res if lse else (res, None)
    call = make_call(q, k, v, heads=heads, layout=layout, causal=causal, want_lse=lse)
    assert out.shape == call.empty_out()[0].shape and out.is_contiguous(), "output not in the caller's layout"
    plan = arcattn.get_router().backend("triton")._entries[call.key].plan
    assert launched and launched[-1] is plan
    if kernel == "flash" or not ON_GPU:  # (on a GPU a measured entry may take a shape from the rule)
        assert plan.short == (kernel == "default" and _short_keys_applies(case)), plan.describe()
    check_against_reference(call, out, out_lse)


# (layout, dtype, B, H, Sq, Sk, D, lse, strided, block_m, q_tiles): the short-keys kernel with explicit tiles
SHORT = [
    ("bsd", torch.float16, 2, 2, 77, 77, 40, True, False, 16, 2),      # 64 + 16 keys; the last program's tiles ragged
    ("bsd", torch.bfloat16, 1, 3, 33, 20, 72, False, True, 16, 3),     # one masked block (32 columns for 20 keys)
    ("bhsd", torch.float16, 1, 1, 45, 154, 160, True, False, 32, 1),   # 128 + 32 keys
    ("bsd", torch.float32, 1, 2, 29, 154, 64, True, True, 16, 2),      # ... in fp32
    ("bshd", torch.float16, 3, 1, 1, 1, 80, True, False, 16, 4),       # one query, one key
    ("bsd", torch.float32, 1, 2, 50, 64, 16, False, True, 16, 5),      # exactly one block, no tail
    ("bsd", torch.float16, 1, 2, 70, 100, 64, True, False, 32, 2),     # 100 keys: one 128-wide masked block
]


@pytest.mark.parametrize("case", SHORT, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_short_keys_kernel(rng, case):
    layout, dtype, B, H, Sq, Sk, D, lse, strided, bm, tiles = case
    q, k, v = caller_tensors(rng, layout, B, H, Sq, Sk, D, dtype, strided)
    call = make_call(q, k, v, heads=H if layout == "bsd" else None, layout=layout, want_lse=lse)
    out, out4 = call.empty_out()
    out.fill_(float("nan"))
    cfg = configs.TileConfig(bm, 16, 4, 1, q_tiles=tiles)
    res = flash_attention(call.q4, call.k4, call.v4, out4=out4, return_lse=lse, config=cfg)
    plan = flash.Plan(torch.device(DEV), dtype, B, H, Sq, Sk, D, causal=False, want_lse=lse, config=cfg)
    assert plan.short and plan.grid == (-(-(-(-Sq // bm)) // tiles), B * H, 1)
    assert plan.kwargs_al["N0"] + plan.kwargs_al["N1"] == sum(head_split(Sk))
    check_against_reference(call, out, res[1] if lse else None)


def test_short_keys_split_spends_fewest_columns():
    key_split = head_split  # the short-keys kernel splits its keys like a head dim
    assert key_split(77) == (64, 16) and key_split(154) == (128, 32) and key_split(64) == (64, 0)
    assert key_split(1) == (16, 0) and key_split(20) == (32, 0) and key_split(100) == (128, 0)
    for n in range(1, 193):
        n0, n1 = key_split(n)
        assert n0 + n1 >= n and n0 & (n0 - 1) == 0 and n0 >= 16 and (n1 == 0 or (n1 >= 16 and n1 & (n1 - 1) == 0))


@pytest.mark.parametrize("scale,desc", [(-0.25, False), (0.0, True), (2.0, False)])
def test_short_keys_scale_and_descriptors(rng, scale, desc):
    """Any scale (negative: masked keys must stay -inf), and the descriptor path for q and the output (XPU)."""
    B, H, Sq, Sk, D = 1, 2, 37, 77, 40
    q, k, v = (rand(rng, B, H, s, D, dtype=torch.float32) for s in (Sq, Sk, Sk))
    out4 = torch.full((B, H, Sq, D), float("nan"), dtype=torch.float32, device=DEV)
    cfg = configs.TileConfig(16, 16, 4, 1, q_tiles=2)
    _, lse = flash_attention(q, k, v, scale=scale, out4=out4, return_lse=True, config=cfg, use_descriptors=desc)
    ref, ref_lse = attention_reference(q.cpu(), k.cpu(), v.cpu(), scale=scale)
    assert rel_error(out4.cpu(), ref) < TOL[torch.float32]
    assert rel_error(lse.cpu(), ref_lse) < LSE_TOL


def test_short_keys_config_on_a_causal_call_runs_the_flash_kernel(rng):
    B, H, Sq, Sk, D = 1, 1, 30, 30, 40
    q, k, v = (rand(rng, B, H, s, D, dtype=torch.float32) for s in (Sq, Sk, Sk))
    cfg = configs.TileConfig(16, 16, 4, 1, q_tiles=2)
    assert not flash.Plan(torch.device(DEV), torch.float32, B, H, Sq, Sk, D, causal=True, want_lse=False,
                          config=cfg).short
    out = flash_attention(q, k, v, causal=True, config=cfg)
    ref, _ = attention_reference(q.cpu(), k.cpu(), v.cpu(), causal=True)
    assert rel_error(out.cpu(), ref) < TOL[torch.float32]


@pytest.mark.parametrize("out_layout", ["bsd", "bhsd", "bshd"])
def test_output_written_straight_into_any_layout(rng, poisoned_empty, out_layout):
    B, H, Sq, Sk, D = 2, 3, 21, 30, 40
    q, k, v = caller_tensors(rng, "bsd", B, H, Sq, Sk, D, torch.float32)
    out = arcattn.attention(q, k, v, heads=H, out_layout=out_layout, backend="triton")
    call = make_call(q, k, v, heads=H, out_layout=out_layout)
    assert out.shape == call.empty_out()[0].shape and out.is_contiguous()
    ref, _ = attention_reference(call.q4, call.k4, call.v4)
    assert rel_error(out, call.to_caller(ref)) < TOL[torch.float32]


@pytest.mark.parametrize("D", [40, 72, 160])
def test_strided_output_view_guard_columns_untouched(rng, D):
    """Write into a view with gaps between heads: padded lanes must never be stored (the gaps stay NaN)."""
    B, H, Sq, Sk = 1, 2, 37, 29
    q, k, v = (rand(rng, B, H, s, D, dtype=torch.float16) for s in (Sq, Sk, Sk))
    buf = torch.full((B, Sq, H, D + 24), float("nan"), dtype=torch.float16, device=DEV)
    out4 = buf[..., :D].transpose(1, 2)
    flash_attention(q, k, v, out4=out4)
    ref, _ = attention_reference(q.cpu(), k.cpu(), v.cpu())
    assert rel_error(out4.cpu(), ref) < TOL[torch.float16]
    assert torch.isnan(buf[..., D:]).all(), "the kernel wrote outside the output view"


def test_head_dim_not_unit_stride(rng):
    """A view whose head dim is not contiguous (stride != 1) is read correctly through its strides."""
    B, H, S, D = 1, 2, 19, 40
    base = rand(rng, B, H, D, S, dtype=torch.float32)
    q = base.transpose(-1, -2)  # (B, H, S, D) with stride 1 on S
    k = rand(rng, B, H, S, D, dtype=torch.float32)
    v = rand(rng, B, H, S, D, dtype=torch.float32)
    assert q.stride(-1) != 1
    out = arcattn.attention(q, k, v, backend="triton")
    ref, _ = attention_reference(q.cpu(), k.cpu(), v.cpu())
    assert rel_error(out.cpu(), ref) < TOL[torch.float32]


@pytest.mark.parametrize("Sk", [77, 250])  # the short-keys kernel, the flash kernel
def test_unaligned_base_and_strides(rng, poisoned_empty, Sk):
    """q/k/v views starting one element into their buffers, with odd row strides (a fused projection's slices):
    neither the base nor the rows are 16-byte aligned, so the plan's unaligned variant serves them."""
    B, H, Sq, D = 2, 2, 33, 40
    def view(S):
        buf = rand(rng, B, S, H * D + 3, dtype=torch.float16)
        return buf[..., 1:1 + H * D]
    q, k, v = view(Sq), view(Sk), view(Sk)
    assert q.data_ptr() % 16 and q.stride(1) % 8
    out = arcattn.attention(q, k, v, heads=H, backend="triton")
    check_against_reference(make_call(q, k, v, heads=H), out)


@pytest.mark.parametrize("scale", [0.3, 0.0, -0.25, 2.0])
def test_scale_argument(rng, scale):
    B, H, Sq, Sk, D = 1, 2, 23, 41, 40
    q, k, v = caller_tensors(rng, "bhsd", B, H, Sq, Sk, D, torch.float32)
    out, lse = arcattn.attention(q, k, v, scale=scale, return_lse=True, causal=scale == 0.0, backend="triton")
    ref, ref_lse = attention_reference(q.cpu(), k.cpu(), v.cpu(), scale=scale, causal=scale == 0.0)
    assert rel_error(out.cpu(), ref) < TOL[torch.float32]
    assert rel_error(lse.cpu(), ref_lse) < LSE_TOL


@pytest.mark.parametrize("splits,causal,dtype,D,bm", [(2, False, torch.float32, 40, 16), (3, True, torch.float16, 72, 16),
                                                      (4, False, torch.bfloat16, 160, 16), (5, True, torch.float32, 64, 16),
                                                      (3, True, torch.float32, 40, 32)])
def test_split_keys_merge_in_one_launch(rng, splits, causal, dtype, D, bm):
    """The occupancy path: the key range split over programs, merged by the last one to finish. Causal with
    query tiles taller than key blocks leaves a split's rows with no key at all (the EMPTY_ROWS guard)."""
    B, H, Sq, Sk = 2, 1, 35, 150
    q, k, v = (rand(rng, B, H, s, D, dtype=dtype) for s in (Sq, Sk, Sk))
    out4 = torch.full((B, H, Sq, D), float("nan"), dtype=dtype, device=DEV)
    cfg = configs.TileConfig(bm, 16, 4, 1)
    _, lse = flash_attention(q, k, v, causal=causal, return_lse=True, out4=out4, config=cfg, splits=splits)
    ref, ref_lse = attention_reference(q.cpu(), k.cpu(), v.cpu(), causal=causal)
    assert rel_error(out4.cpu(), ref) < TOL[dtype]
    assert rel_error(lse.cpu(), ref_lse) < LSE_TOL
    # the per-tile counters are left at zero for the next launch
    assert all(int(b.count_nonzero()) == 0 for b in flash._locks.values())
    # a second launch on the same counters gives the same answer
    out_again = torch.full_like(out4, float("nan"))
    flash_attention(q, k, v, causal=causal, out4=out_again, config=cfg, splits=splits)
    assert rel_error(out_again.cpu(), ref) < TOL[dtype]


@pytest.mark.parametrize("D,head,splits,desc", [(40, (32, 16), 1, False), (40, (32, 16), 2, True),
                                                (40, (32, 16, 64, 0), 1, False), (40, (32, 16, 64, 0), 3, False),
                                                (40, (64, 0, 32, 16), 1, True), (72, (64, 16, 128, 0), 2, True),
                                                (80, (64, 16, 128, 0), 1, False)])
def test_value_head_split_of_its_own(rng, D, head, splits, desc):
    """v and the output may take their own head split (a padded single part, say) while q/k keep theirs:
    checked with LSE, the split-keys merge and the descriptor path, and columns beside the head left alone."""
    B, H, Sq, Sk = 1, 2, 37, 100
    q, k, v = (rand(rng, B, H, s, D, dtype=torch.float16) for s in (Sq, Sk, Sk))
    wide = torch.full((B, H, Sq, D + 8), float("nan"), dtype=torch.float16, device=DEV)
    wide[..., D:] = 7.0
    out4 = wide[..., :D] if not desc else torch.full((B, H, Sq, D), float("nan"), dtype=torch.float16, device=DEV)
    _, lse = flash_attention(q, k, v, out4=out4, return_lse=True, config=configs.TileConfig(16, 16, 4, 1),
                             splits=splits, head=head, use_descriptors=desc)
    ref, ref_lse = attention_reference(q.cpu(), k.cpu(), v.cpu())
    assert rel_error(out4.cpu(), ref) < TOL[torch.float16]
    assert rel_error(lse.cpu(), ref_lse) < LSE_TOL
    if not desc:
        assert bool((wide[..., D:] == 7.0).all())


@pytest.mark.parametrize("D,parts,causal,dtype", [(160, 3, False, torch.float16), (160, 2, True, torch.bfloat16),
                                                   (80, 2, False, torch.float32), (40, 3, True, torch.float16),
                                                   (72, 2, False, torch.float16)])
def test_value_parts_write_output_column_windows(rng, D, parts, causal, dtype):
    """Output columns split over programs (TileConfig.value_parts): every window written, overlapping ones
    alike, nothing beside the head, the log-sum-exp right; key splits or descriptors turn the windows off."""
    B, H, Sq, Sk = 2, 2, 37, 37 if causal else 90
    q, k, v = caller_tensors(rng, "bshd", B, H, Sq, Sk, D, dtype)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    wide = torch.full((B, H, Sq, D + 8), float("nan"), dtype=dtype, device=DEV)
    wide[..., D:] = 7.0
    cfg = configs.TileConfig(16, 16, 4, 1, value_parts=parts)
    _, lse = flash_attention(q, k, v, causal=causal, out4=wide[..., :D], return_lse=True, config=cfg, splits=1)
    ref, ref_lse = attention_reference(q.cpu(), k.cpu(), v.cpu(), causal=causal)
    assert rel_error(wide[..., :D].cpu(), ref) < TOL[dtype]
    assert rel_error(lse.cpu(), ref_lse) < LSE_TOL
    assert bool((wide[..., D:] == 7.0).all())
    plan = flash.Plan(torch.device(DEV), dtype, B, H, Sq, Sk, D, causal=causal, want_lse=False, config=cfg,
                      splits=1)
    assert plan.vparts == -(-D // plan.E0) > 1 and plan.E1 == 0 and plan.grid[2] == plan.vparts
    assert flash.Plan(torch.device(DEV), dtype, B, H, Sq, Sk, D, causal=causal, want_lse=False, config=cfg,
                      splits=2).vparts == 1
    assert flash.Plan(torch.device(DEV), dtype, B, H, Sq, Sk, D, causal=causal, want_lse=False, config=cfg,
                      splits=1, use_descriptors=True).vparts == 1


def test_value_parts_entries_serve_small_grids():
    """A measured entry with output windows is taken although its grid is below the fill threshold (it was
    measured on such a grid); one without them is not."""
    info = configs.DeviceInfo("sm90", 132, False)
    cfg, splits, _ = configs.choose(info, head_pad=160, BH=8, Sq=64, Sk=64, causal=False, D=160)
    assert cfg.value_parts == 5 and splits == 1
    assert configs.choose(info, head_pad=160, BH=8, Sq=256, Sk=256, causal=False, D=160)[0].value_parts == 3
    assert configs.choose(info, head_pad=160, BH=16, Sq=256, Sk=256, causal=False, D=160)[0].value_parts == 2
    assert configs.choose(info, head_pad=160, BH=8, Sq=256, Sk=256, causal=True, D=160)[0].value_parts == 1
    # D 80's measured entry (no windows) on a grid of 16 programs: the heuristic, not the entry and its head split
    small = configs.choose(info, head_pad=80, BH=1, Sq=1024, Sk=1024, causal=False, D=80)
    assert small[0] != configs.TUNED["sm90"][(80, 1024, 1024, 1)][0] and small[2] is None


@pytest.mark.parametrize("D,dtype", [(40, torch.float16), (72, torch.bfloat16), (64, torch.float32)])
def test_tensor_descriptor_path(rng, D, dtype):
    """The XPU path (2-D block loads through tensor descriptors), run here in the interpreter."""
    B, H, Sq, Sk = 1, 2, 45, 77
    q, k, v = caller_tensors(rng, "bsd", B, H, Sq, Sk, D, dtype)
    call = make_call(q, k, v, heads=H, want_lse=True)
    out, out4 = call.empty_out()
    out.fill_(float("nan"))
    assert flash.descriptors_ok([(call.q, call.strides4(call.q)), (out, out4.stride())], q.element_size())
    _, lse = flash_attention(call.q4, call.k4, call.v4, out4=out4, return_lse=True, use_descriptors=True)
    check_against_reference(call, out, lse)


@pytest.mark.parametrize("D", [40, 80])
def test_cuda_policy_unaligned_strides_take_one_power_of_two_part(rng, monkeypatch, D):
    """CUDA's rule (flash.Plan): 16-byte aligned strides may use a head tail, unaligned ones get one
    power-of-two part. Checked here with the sm90 policy forced onto the interpreter."""
    monkeypatch.setattr(configs, "device_info", lambda *a: configs.DeviceInfo("sm90", 132, False))
    plan = flash.Plan(torch.device(DEV), torch.float16, 1, 2, 33, 47, D, causal=False, want_lse=False)
    assert (plan.kwargs_al["D0"], plan.kwargs_al["D1"]) == head_split(D)
    assert (plan.kwargs["D0"], plan.kwargs["D1"]) == (1 << (D - 1).bit_length(), 0) and plan.kwargs["AL"] == 1
    q, k, v = (rand(rng, 1, 2, S, D + 1, dtype=torch.float16)[..., :D] for S in (33, 47, 47))  # row stride D + 1
    out4 = torch.full((1, 2, 33, D), float("nan"), dtype=torch.float16, device=DEV)
    flash_attention(q, k, v, out4=out4, config=configs.TileConfig(16, 16, 4, 1))
    ref, _ = attention_reference(q.cpu(), k.cpu(), v.cpu())
    assert rel_error(out4.cpu(), ref) < TOL[torch.float16]


def test_lse_merges_partial_attentions(rng):
    """What the log-sum-exp output is for: attention over two key halves, merged, equals attention over all."""
    B, H, Sq, Sk, D = 1, 2, 29, 90, 40
    q, k, v = (rand(rng, B, H, s, D, dtype=torch.float32) for s in (Sq, Sk, Sk))
    o1, l1 = arcattn.attention(q, k[:, :, :50], v[:, :, :50], return_lse=True, backend="triton")
    o2, l2 = arcattn.attention(q, k[:, :, 50:], v[:, :, 50:], return_lse=True, backend="triton")
    lse = torch.logaddexp(l1, l2)
    merged = o1 * torch.exp(l1 - lse)[..., None] + o2 * torch.exp(l2 - lse)[..., None]
    ref, ref_lse = attention_reference(q.cpu(), k.cpu(), v.cpu())
    assert rel_error(merged.cpu(), ref) < TOL[torch.float32]
    assert rel_error(lse.cpu(), ref_lse) < LSE_TOL


def test_head_split_spends_fewest_lanes():
    assert head_split(40) == (32, 16)
    assert head_split(72) == (64, 16)
    assert head_split(80) == (64, 16)
    assert head_split(160) == (128, 32)
    assert head_split(64) == (64, 0)
    assert head_split(8) == (16, 0)
    assert head_split(100) == (128, 0)  # 64 + 64 would be no cheaper than 128
    assert head_split(256) == (256, 0)
    assert head_split(40, irregular=False) == (64, 0) and head_split(72, irregular=False) == (128, 0)
    assert head_split(80, irregular=False) == (64, 16) and head_split(160, irregular=False) == (128, 32)
    for D in range(1, 257):
        d0, d1 = head_split(D)
        assert d0 + d1 >= D and d0 >= 16 and (d1 == 0 or d1 >= 16)
        assert d0 + d1 <= max(16, 1 << (D - 1).bit_length())


def test_value_head_padded_where_measured():
    sm90, cuda = configs.DeviceInfo("sm90", 132, False), configs.DeviceInfo("cuda", 80, False)
    assert configs.value_head(sm90, 40, (32, 16)) == (64, 0)
    assert configs.value_head(sm90, 80, (64, 16)) == (64, 16)  # 128-wide only where TUNED says so
    assert configs.value_head(sm90, 160, (128, 32)) == (128, 32)  # a 256-wide accumulator: not padded
    assert configs.value_head(sm90, 64, (64, 0)) == (64, 0)
    assert configs.value_head(cuda, 40, (32, 16)) == (32, 16)  # not measured there
    plan = flash.Plan(torch.device(DEV), torch.float16, 1, 2, 33, 47, 40, causal=False, want_lse=False)
    assert (plan.D0, plan.D1, plan.E0, plan.E1) == (32, 16, 64, 0)  # the interpreter follows sm90's rule
    assert (plan.kwargs_al["E0"], plan.kwargs_al["E1"]) == (64, 0)  # what the kernel is compiled with
    sm90_plan = _sm90_plan(80, Sq=1000, Sk=1000)  # a TUNED entry with v's own split
    assert sm90_plan.heads == (64, 16, 128, 0)
    assert (sm90_plan.kwargs_al["E0"], sm90_plan.kwargs_al["F1"]) == (128, 128)
    assert (sm90_plan.kwargs["E0"], sm90_plan.kwargs["E1"]) == (128, 0)  # unaligned strides: one part
    cross = _sm90_plan(80, Sq=1000, Sk=77)
    assert (cross.D0, cross.D1, cross.E0, cross.E1) == (64, 16, 64, 16)


def test_head_split_argument_checked():
    for bad in ((32, 16, 32, 0), (32, 16, 32), (48, 0), (32, 8), (16, 16)):
        with pytest.raises(ValueError, match="head split"):
            flash.Plan(torch.device(DEV), torch.float16, 1, 2, 33, 47, 40, causal=False, want_lse=False, head=bad)


def test_backend_keeps_the_head_split_when_it_steps_down(rng, monkeypatch):
    """A plan rebuilt with a smaller tile after an out-of-resources error keeps the head split it was planned
    with (v's own split included), and the answer stays right."""
    from triton.runtime.errors import OutOfResources
    b = arcattn.get_router().backend("triton")
    assert b.available(), b.unavailable_reason()
    q, k, v = caller_tensors(rng, "bsd", 1, 2, 40, 50, 40, torch.float16)
    call = make_call(q, k, v, heads=2)
    e = b._prepare(call)
    # a split other than the default one (as a TUNED entry can give), which a rebuilt plan must not forget
    e.plan = flash.Plan(call.device, call.dtype, 1, 2, 40, 50, 40, causal=False, want_lse=False,
                        config=configs.TileConfig(32, 32, 4, 1), splits=1, head=(32, 16, 32, 16))
    before = (e.plan.heads, e.plan.config)
    real, raised = flash.launch, []

    def launch_once_too_big(*a, **kw):
        if not raised:
            raised.append(1)
            raise OutOfResources(1 << 20, 1 << 16, "shared memory")
        return real(*a, **kw)
    monkeypatch.setattr(flash, "launch", launch_once_too_big)
    out = b.run(call)
    assert raised and e.plan.config != before[1] and e.plan.heads == before[0]
    check_against_reference(call, out)


def test_backend_uses_descriptors_where_the_device_wants_them(rng, monkeypatch):
    """On a device whose family loads tiles through tensor descriptors (XPU), a call whose rows are contiguous
    gets a descriptor plan and one with a strided head dim does not; both answers stay right."""
    from dataclasses import replace
    b = arcattn.get_router().backend("triton")
    real = configs.device_info
    monkeypatch.setattr(configs, "device_info", lambda *a, **kw: replace(real(*a, **kw), use_descriptors=True))
    q, k, v = caller_tensors(rng, "bsd", 1, 2, 40, 50, 64, torch.float16)
    call = make_call(q, k, v, heads=2)
    assert b._prepare(call).plan.kwargs["USE_DESC"]
    check_against_reference(call, b.run(call))
    strided = rand(rng, 1, 40, 2, 64, 2, dtype=torch.float16)[..., 0].flatten(2)
    call = make_call(strided, k, v, heads=2)
    assert not b._prepare(call).plan.kwargs["USE_DESC"]
    check_against_reference(call, b.run(call))


def test_xpu_takes_descriptors_only_where_triton_has_them(monkeypatch):
    """Triton before 3.4 (torch 2.6 / 2.7's XPU builds: 3.2 / 3.3) has no tl.make_tensor_descriptor: there the XPU
    family takes the pointer path instead of failing to compile on every shape."""
    from types import SimpleNamespace
    import triton.language as tl
    monkeypatch.setattr(torch.xpu, "get_device_properties", lambda i: SimpleNamespace(gpu_subslice_count=20))
    info = configs.device_info.__wrapped__  # uncached
    monkeypatch.setattr(tl, "make_tensor_descriptor", getattr(tl, "make_tensor_descriptor", None), raising=False)
    assert info("xpu", 0, False) == configs.DeviceInfo("xpu", 20, True)
    monkeypatch.delattr(tl, "make_tensor_descriptor")
    assert info("xpu", 0, False) == configs.DeviceInfo("xpu", 20, False)


def test_backend_steps_down_from_short_keys_to_flash(rng, monkeypatch):
    """Keys and values that do not fit on chip (out of resources) send the call to the flash kernel."""
    from triton.runtime.errors import OutOfResources
    b = arcattn.get_router().backend("triton")
    q, k, v = caller_tensors(rng, "bsd", 1, 2, 40, 77, 40, torch.float16)
    call = make_call(q, k, v, heads=2)
    real = flash.launch

    def short_too_big(plan, *a, **kw):
        if plan.short:
            raise OutOfResources(1 << 20, 1 << 16, "shared memory")
        return real(plan, *a, **kw)
    monkeypatch.setattr(flash, "launch", short_too_big)
    assert b._prepare(call).plan.short
    out = b.run(call)
    e = b._entries[call.key]
    assert not e.plan.short and e.plan.config.q_tiles == 0 and e.plan.verified
    check_against_reference(call, out)


def _sm90_plan(D, Sq, Sk, B=1, H=8):
    import unittest.mock
    with unittest.mock.patch.object(configs, "device_info", lambda *a: configs.DeviceInfo("sm90", 132, False)):
        return flash.Plan(torch.device(DEV), torch.float16, B, H, Sq, Sk, D, causal=False, want_lse=False)


def test_tuned_entries_by_batch_times_heads():
    table = configs.TUNED["sm90"]
    assert configs.tuned_entry("sm90", 64, 4096, 4096, 10) is table[(64, 4096, 4096, 1)]
    assert configs.tuned_entry("sm90", 64, 4096, 4096, 20) is table[(64, 4096, 4096, 16)]
    assert configs.tuned_entry("sm90", 64, 3000, 4000, 16) is table[(64, 4096, 4096, 16)]  # same buckets
    assert configs.tuned_entry("sm90", 64, 8192, 4096, 10) is None
    assert configs.tuned_entry("xpu", 64, 4096, 4096, 10) is None


def test_register_cap_reaches_the_launch_options_only_when_set():
    plain = configs.TileConfig(64, 64, 4, 3)
    capped = configs.TileConfig(64, 64, 4, 3, max_registers=96)
    assert "maxnreg" not in plain.options() and capped.options()["maxnreg"] == 96
    assert capped.short() == plain.short() + " r96"
    assert all(cfg.max_registers is None for cfg, *_ in configs.TUNED["sm90"].values())  # measured: no gain


def test_occupancy_shrinks_tiles_then_splits_keys(monkeypatch):
    info = configs.DeviceInfo("sm90", 132, False)
    monkeypatch.setitem(configs.TUNED, "sm90", {})  # the heuristic, not the measured table
    monkeypatch.setitem(configs.SHORT_KEYS, "sm90", 0)  # the flash kernel's heuristic, also for short keys
    big, s, _ = configs.choose(info, head_pad=64, BH=8, Sq=4096, Sk=4096, causal=False)
    assert big == configs.base_config(info, 64) and s == 1
    small, s, _ = configs.choose(info, head_pad=160, BH=8, Sq=64, Sk=64, causal=False)
    assert small.block_m == configs.MIN_BLOCK_M["sm90"] and s == 1  # few programs, too few keys to split
    cross, s, _ = configs.choose(info, head_pad=80, BH=8, Sq=1024, Sk=77, causal=False)
    assert cross.block_n == 128 and s == 1 and cross.q_tiles == 0  # no wider key block than the 77 keys need
    decode, s, _ = configs.choose(info, head_pad=64, BH=2, Sq=16, Sk=32768, causal=False)
    assert decode.block_m == configs.MIN_BLOCK_M["sm90"] and 1 < s <= configs.MAX_SPLITS


def test_short_keys_rule(monkeypatch):
    """Non-causal calls with at most SHORT_KEYS keys go to the short-keys kernel, its query tiles dealt to about
    2.4 programs per SM: the tiles per program that won per shape on the H100 (visits 49, 50)."""
    info = configs.DeviceInfo("sm90", 132, False)
    monkeypatch.setitem(configs.TUNED, "sm90", {})

    def q_tiles(D, BH, Sq, Sk=77, causal=False):
        cfg, splits, head = configs.choose(info, head_pad=D, BH=BH, Sq=Sq, Sk=Sk, causal=causal, D=D)
        assert splits == 1 and head is None
        assert cfg.q_tiles == 0 or (cfg.block_m, cfg.num_warps) == (64, 4)
        return cfg.q_tiles
    assert q_tiles(48, 8, 4096) == 2 and q_tiles(64, 10, 4096) == 2  # sd15 in1 / sdxl in2 cross, B = 1
    assert q_tiles(64, 20, 4096) == 4 and q_tiles(64, 40, 1024) == 2  # sdxl in2 / in3 cross, B = 2
    assert q_tiles(80, 8, 1024) == 1 and q_tiles(80, 16, 1024) == 1  # sd15 in2 cross, B = 1 and 2
    assert q_tiles(64, 8, 4096, Sk=1) == 2 and q_tiles(64, 8, 4096, Sk=128) == 2
    assert q_tiles(48, 8, 4096, Sk=154) == 2 and q_tiles(64, 8, 4096, Sk=193) == 0  # past 192: the flash kernel
    assert q_tiles(64, 8, 4096, causal=True) == 0
    one_unit = configs.DeviceInfo("sm90", 1, False)  # 8 tiles for 2.4 programs, but a head has only one tile
    assert configs.choose(one_unit, head_pad=64, BH=8, Sq=64, Sk=77, causal=False, D=64)[0].q_tiles == 1
    monkeypatch.setenv("ARCATTN_TRITON_SHORT_KEYS", "0")
    assert q_tiles(48, 8, 4096) == 0
    monkeypatch.setenv("ARCATTN_TRITON_SHORT_KEYS", "100")
    assert q_tiles(48, 8, 4096, Sk=100) == 2 and q_tiles(48, 8, 4096, Sk=101) == 0
    monkeypatch.delenv("ARCATTN_TRITON_SHORT_KEYS")
    for family in ("cuda", "xpu"):  # not measured there: off
        other = configs.DeviceInfo(family, 32, family == "xpu")
        assert configs.choose(other, head_pad=48, BH=8, Sq=4096, Sk=77, causal=False, D=40)[0].q_tiles == 0


def test_declines_with_reasons(rng):
    b = arcattn.get_router().backend("triton")
    assert b.available(), b.unavailable_reason()
    q = rand(rng, 1, 2, 8, 40, dtype=torch.float32)
    mask = torch.ones(8, 8, dtype=torch.bool, device=DEV)
    assert "attention mask not supported" in b.unsupported_reasons(make_call(q, q, q, mask=mask))
    q64 = q.double()
    assert any("dtype float64" in r for r in b.unsupported_reasons(make_call(q64, q64, q64)))
    wide = rand(rng, 1, 1, 4, 320, dtype=torch.float16)
    assert any("head dim 320" in r for r in b.unsupported_reasons(make_call(wide, wide, wide)))
    v = rand(rng, 1, 2, 8, 64, dtype=torch.float32)
    assert any("value head dim" in r for r in b.unsupported_reasons(make_call(q, q, v)))
    if not ON_GPU:
        big = rand(rng, 1, 4096, 64, dtype=torch.float32)
        assert any("interpreter" in r for r in b.unsupported_reasons(make_call(big, big, big, heads=1)))


@pytest.mark.skipif(ON_GPU, reason="CPU-only rule")
def test_interpreter_serves_cpu_only_when_asked(rng, monkeypatch):
    monkeypatch.delenv("ARCATTN_TRITON_CPU")
    q, k, v = caller_tensors(rng, "bsd", 1, 2, 20, 77, 40, torch.float32)
    arcattn.attention(q, k, v, heads=2)
    t = arcattn.telemetry()
    assert t["triton"]["served"] == 0 and t["sdpa"]["served"] == 1
    assert any("ARCATTN_TRITON_CPU=1" in r for r in t["triton"]["declined"])


def test_measured_loss_rule_on_hopper():
    """The documented rule (configs.measured_losses): large D=40 and large D=64 with >= 16 head-batches go to
    SDPA on sm90; everything smaller, and other families, stay with Triton."""
    sm90 = configs.DeviceInfo("sm90", 132, False)
    xpu = configs.DeviceInfo("xpu", 20, True)

    def call(B, H, S, Sk, D):
        q = torch.empty(B, S, H * D, dtype=torch.float16)
        k = torch.empty(B, Sk, H * D, dtype=torch.float16)
        return make_call(q, k, k, heads=H)
    assert configs.measured_losses(sm90, call(1, 8, 4096, 4096, 40))          # sd15-512 in1 self
    assert configs.measured_losses(sm90, call(2, 10, 4096, 4096, 64))         # sdxl-1024 in2 self, B=2
    assert not configs.measured_losses(sm90, call(1, 10, 4096, 4096, 64))     # ... B=1: Triton was faster
    assert not configs.measured_losses(sm90, call(1, 8, 4096, 77, 40))        # cross-attention
    assert not configs.measured_losses(sm90, call(1, 8, 1024, 1024, 80))
    assert not configs.measured_losses(xpu, call(1, 8, 4096, 4096, 40))


def test_cpu_declined_outside_the_interpreter(monkeypatch):
    b = arcattn.backends.create_backends()[1]
    assert b.name == "triton" and b.available()
    monkeypatch.setattr(flash, "interpreted", lambda: False)
    q = torch.randn(1, 1, 8, 40)
    assert any("only in its interpreter" in r for r in b.unsupported_reasons(make_call(q, q, q)))


def test_router_uses_triton_and_passes_masked_calls_to_sdpa(rng):
    q, k, v = caller_tensors(rng, "bsd", 1, 2, 20, 77, 40, torch.float16)
    arcattn.attention(q, k, v, heads=2)
    mask = torch.ones(20, 77, dtype=torch.bool, device=DEV)
    arcattn.attention(q, k, v, heads=2, mask=mask)
    t = arcattn.telemetry()
    assert t["triton"]["served"] == 1
    assert t["triton"]["declined"] == {"attention mask not supported": 1} and t["sdpa"]["served"] == 1


def test_repeated_calls_reuse_the_plan(rng):
    b = arcattn.get_router().backend("triton")
    q, k, v = caller_tensors(rng, "bsd", 1, 2, 20, 30, 40, torch.float32)
    call = make_call(q, k, v, heads=2)
    b.run(call)
    entry = b._entries[call.key]
    for _ in range(3):
        q2, k2, v2 = caller_tensors(rng, "bsd", 1, 2, 20, 30, 40, torch.float32)
        c2 = make_call(q2, k2, v2, heads=2, scale=0.1)
        out = b.run(c2)
        assert b._entries[c2.key] is entry
        ref, _ = attention_reference(c2.q4.cpu(), c2.k4.cpu(), c2.v4.cpu(), scale=0.1)
        assert rel_error(c2.to_caller(ref), out.cpu()) < TOL[torch.float32]


def test_same_shape_with_other_flags_gets_its_own_plan(rng, poisoned_empty):
    """The signature includes causal, LSE and the head dim's stride: one shape asked first plain, then causal,
    then with LSE, then with a strided head dim, must never reuse the plain call's plan."""
    q, k, v = caller_tensors(rng, "bhsd", 1, 2, 24, 24, 32, torch.float32)
    for kw in ({}, {"causal": True}, {"return_lse": True}):
        res = arcattn.attention(q, k, v, backend="triton", **kw)
        out, lse = res if kw.get("return_lse") else (res, None)
        check_against_reference(make_call(q, k, v, causal=kw.get("causal", False)), out, lse)
    b = arcattn.get_router().backend("triton")
    calls = [make_call(q, k, v, causal=c, want_lse=w) for c, w in ((False, False), (True, False), (False, True))]
    assert len({id(b._entries[c.key]) for c in calls}) == 3
    strided = rand(rng, 1, 2, 24, 32, 2, dtype=torch.float32)[..., 0]
    assert make_call(strided, k, v).key != calls[0].key


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ARCATTN_SLOW_TESTS") != "1", reason="set ARCATTN_SLOW_TESTS=1")
@pytest.mark.parametrize("i", range(40))
def test_random_sweep_slow(rng, poisoned_empty, monkeypatch, i):
    monkeypatch.setattr("arcattn.backends.triton_flash.INTERPRETER_MAX_WORK", 1 << 40)
    g = rng
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    layout = pick(["bsd", "bhsd", "bshd"])
    dtype = pick([torch.float32, torch.float16, torch.bfloat16])
    D = pick([8, 16, 24, 32, 40, 48, 64, 72, 80, 96, 100, 128, 160, 192, 256])
    Sq, Sk = pick([1, 2, 15, 16, 17, 33, 64, 77, 100, 129]), pick([1, 7, 16, 31, 77, 128, 150, 200])
    B, H = pick([1, 2, 3]), pick([1, 2, 3])
    causal, lse, strided = pick([False, True]), pick([False, True]), pick([False, True])
    q, k, v = caller_tensors(g, layout, B, H, Sq, Sk, D, dtype, strided)
    heads = H if layout == "bsd" else None
    res = arcattn.attention(q, k, v, heads=heads, layout=layout, causal=causal, return_lse=lse, backend="triton")
    out, out_lse = res if lse else (res, None)
    check_against_reference(make_call(q, k, v, heads=heads, layout=layout, causal=causal, want_lse=lse), out, out_lse)
