"""The warp-specialisation probe (bench/gpu_autows.py): its kernel and its bench-only backend, in Triton's
interpreter (which ignores the warp specialisation itself: what runs here is the arithmetic, the tensor
descriptors, the masks of a partial key block and query tile, and the router contract)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import arcattn
from arcattn.call import make_call
from arcattn.reference import attention_reference, rel_error

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
gpu_autows = pytest.importorskip("gpu_autows")
# CPU tensors: these run only in the interpreter (conftest turns it on where there is no GPU)
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs Triton's interpreter (TRITON_INTERPRET=1); the GPU run is bench/gpu_autows.sh")


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    B, S, HD = t.shape
    return t.view(B, S, H, HD // H).transpose(1, 2)


def _reference(q, k, v, H, scale):
    ref = attention_reference(_heads(q, H), _heads(k, H), _heads(v, H), scale=scale)
    return ref[0] if isinstance(ref, tuple) else ref


@pytest.mark.parametrize("B,Sq,Sk,H,D,cfg", [
    (2, 100, 100, 2, 40, (64, 32, 4, 2, True, True)),   # D padded to 64, partial key block and query tile
    (1, 64, 77, 3, 64, (64, 32, 4, 2, True, False)),    # cross-attention's 77 keys, host-made descriptors
    (2, 64, 77, 2, 40, (64, 32, 4, 2, True, True)),     # Sq != Sk over two batch entries: their row offsets
    (2, 64, 96, 2, 32, (32, 32, 4, 2, True, True, True)),  # the tutorial form: descriptor store, 3 key blocks
])
def test_kernel_matches_reference(B, Sq, Sk, H, D, cfg):
    g = torch.Generator().manual_seed(Sq + D)
    q = torch.randn(B, Sq, H * D, generator=g).half()
    k, v = (torch.randn(B, Sk, H * D, generator=g).half() for _ in range(2))
    out = torch.full_like(q, float("nan"))
    gpu_autows.ws_attention(q, k, v, out, H, cfg, scale=0.2)
    assert rel_error(_heads(out, H), _reference(q, k, v, H, 0.2)) < 2e-3


def test_tutorial_form_refuses_what_it_cannot_store():
    q = torch.randn(1, 100, 2 * 40).half()
    with pytest.raises(ValueError, match="tutorial form"):
        gpu_autows.ws_attention(q, q, q, torch.empty_like(q), 2, (64, 32, 4, 2, True, True, True))


def test_diagnose_names_the_bad_rows():
    S, D = 256, 16
    ref = torch.randn(1, 2, S, D, dtype=torch.float64)
    out = ref.clone().float()
    out[..., 64:128, :] = float("nan")  # the second 64 rows of the first 128-row tile
    d = gpu_autows.diagnose(out, ref)
    assert d["nan_by_64_rows"] == [0.0, 0.5] and d["rows_bad_frac"] == 0.25
    assert d["err_finite_rows"] < 1e-6


@pytest.fixture
def ws_router(monkeypatch):
    monkeypatch.setenv("ARCATTN_WS_CONFIG", "64,32,4,2")
    ws = gpu_autows.HopperWSBackend()
    base = arcattn.get_router()
    return ws, arcattn.Router([b for b in base.backends if not b.is_fallback] + [ws, base.fallback])


def test_backend_serves_through_the_router(ws_router):
    ws, router = ws_router
    assert ws.unavailable_reason() is None
    H, D = 2, 80
    q, k, v = (torch.randn(2, 70, H * D).half() for _ in range(3))
    call = make_call(q, k, v, heads=H, layout="bsd", out_layout="bsd")
    assert ws.unsupported_reasons(call) == []
    out = router.run(call, prefer="triton_ws", strict=True)
    assert out.shape == q.shape
    assert rel_error(_heads(out, H), _reference(q, k, v, H, D ** -0.5)) < 2e-3


def test_backend_declines_what_it_cannot_serve(ws_router):
    ws, _ = ws_router
    q = torch.randn(1, 64, 2 * 64).half()
    assert "causal not supported" in ws.unsupported_reasons(make_call(q, q, q, heads=2, causal=True))
    mask = torch.ones(64, 64, dtype=torch.bool)
    assert ws.unsupported_reasons(make_call(q, q, q, heads=2, mask=mask))
    q4 = torch.randn(1, 2, 64, 64).half()
    assert any("layout" in r for r in ws.unsupported_reasons(make_call(q4, q4, q4)))
    wide = torch.randn(1, 64, 2 * 160).half()
    assert any("head dim" in r for r in ws.unsupported_reasons(make_call(wide, wide, wide, heads=2)))
    strided = torch.randn(1, 64, 2 * 2 * 64).half()[..., ::2]
    assert any("contiguous" in r for r in ws.unsupported_reasons(make_call(strided, strided, strided, heads=2)))


def test_unet_bench_adds_the_backend_before_the_fallback():
    import unet
    try:
        unet.add_backend("gpu_autows:HopperWSBackend")
        names = [b.name for b in arcattn.get_router().backends]
        assert names[-2:] == ["triton_ws", "sdpa"]
    finally:
        arcattn.set_router(None)
