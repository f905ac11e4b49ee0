"""The sdpa backend keeps every score matrix under its allocation budget by chunking the query dimension."""
import pytest
import torch
import torch.nn.functional as F

from arcattn.backends.sdpa import SDPABackend
from arcattn.call import make_call
from arcattn.reference import attention_reference, rel_error


@pytest.fixture
def spy(monkeypatch):
    shapes = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, *a, **kw):
        shapes.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return shapes


# mask_rows: None (no mask), 50 (a mask per query row), 1 (one row for all queries: a key-padding mask)
@pytest.mark.parametrize("causal,mask_rows", [(False, None), (True, None), (False, 50), (True, 50), (False, 1),
                                              (True, 1)])
def test_chunks_stay_under_budget_and_match_reference(rng, spy, monkeypatch, causal, mask_rows):
    B, H, Sq, Sk, D = 2, 3, 50, 40, 16
    budget = B * H * Sk * 4 * 7  # room for 7 query rows of fp32 scores
    backend = SDPABackend(max_alloc_bytes=budget, chunk_devices=("cpu",))
    q, k, v = (torch.randn(B, S, H * D, generator=rng) for S in (Sq, Sk, Sk))
    mask = None if mask_rows is None else torch.randn(B, 1, mask_rows, Sk, generator=rng)
    call = make_call(q, k, v, heads=H, mask=mask, causal=causal)
    assert backend.chunk_rows(call) == 7
    real_empty = torch.empty  # every output row must be written by a chunk
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    out = backend.run(call)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert len(spy) == -(-Sq // 7)
    for qs, ks in spy:
        assert qs[0] * qs[1] * qs[2] * ks[2] * 4 <= budget
    ref, _ = attention_reference(call.q4, call.k4, call.v4, mask=call.mask, causal=causal)
    assert rel_error(out.unflatten(-1, (H, D)).transpose(1, 2), ref) < 1e-5


def test_no_chunking_when_it_fits_or_off_device(rng, spy):
    q = torch.randn(1, 64, 32, generator=rng)
    call = make_call(q, q, q, heads=2)
    assert SDPABackend(max_alloc_bytes=1 << 30, chunk_devices=("cpu",)).chunk_rows(call) is None
    assert SDPABackend(max_alloc_bytes=16, chunk_devices=("xpu",)).chunk_rows(call) is None  # not an XPU
    SDPABackend(max_alloc_bytes=16, chunk_devices=("xpu",)).run(call)
    assert len(spy) == 1


def test_sd15_1024_on_arc_would_be_chunked():
    # sd15 at 1024 px: 8 heads x 16384^2 scores; no single chunk may pass the default budget (under 4 GB)
    q = torch.empty(1, 16384, 320, device="meta", dtype=torch.float16)
    call = make_call(q, q, q, heads=8)
    backend = SDPABackend(chunk_devices=("meta",))
    rows = backend.chunk_rows(call)
    assert rows is not None and 8 * rows * 16384 * 4 <= backend.max_alloc_bytes < 4 << 30


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("ARCATTN_SDPA_MAX_ALLOC_MB", "2")
    assert SDPABackend().max_alloc_bytes == 2 << 20


def test_lse_path_is_chunked_too(rng):
    B, H, Sq, Sk, D = 1, 2, 30, 20, 8
    q, k, v = (torch.randn(B, H, S, D, generator=rng) for S in (Sq, Sk, Sk))
    call = make_call(q, k, v, want_lse=True)
    backend = SDPABackend(max_alloc_bytes=B * H * Sk * 4 * 4)
    assert backend.chunk_rows(call) == 4
    out, lse = backend.run(call)
    ref, ref_lse = attention_reference(q, k, v)
    assert rel_error(out, ref) < 1e-5 and rel_error(lse, ref_lse) < 1e-5
