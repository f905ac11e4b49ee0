"""Router: per-signature decisions, priority and overrides, fallback on failure, telemetry, logging once."""
import logging

import pytest
import torch

import arcattn
from arcattn.backends.base import Backend
from arcattn.backends.sdpa import SDPABackend
from arcattn.call import make_call
from arcattn.dispatch import BackendUnsupported, Router


class Boom(Backend):
    name = "boom"
    dtypes = (torch.float32,)

    def __init__(self):
        self.runs = 0

    def run(self, call):
        self.runs += 1
        raise RuntimeError("device lost (simulated)")


class Picky(Backend):
    """Serves only head dim 64; counts how often it is asked."""
    name = "picky"

    def __init__(self):
        self.asked = 0
        self.runs = 0

    def extra_reasons(self, call):
        self.asked += 1
        return [] if call.D == 64 else [f"head dim {call.D} is not 64"]

    def run(self, call):
        self.runs += 1
        return SDPABackend().run(call)


class Absent(Backend):
    name = "absent"

    def probe(self):
        return "no such device here"


def qkv(gen, S=16, D=64, H=2, dtype=torch.float32):
    return (torch.randn(1, S, H * D, generator=gen, dtype=dtype) for _ in range(3))


def test_failing_backend_falls_back_with_identical_output_counted_and_logged_once(rng, caplog):
    boom = Boom()
    router = Router([boom, SDPABackend()], disabled=(), prefer="")
    arcattn.set_router(router)
    q, k, v = qkv(rng)
    expected = SDPABackend().run(make_call(q, k, v, heads=2))
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        outs = [arcattn.attention(q, k, v, heads=2) for _ in range(3)]
    for out in outs:
        assert torch.equal(out, expected)
    assert boom.runs == 1  # marked broken for this signature after the first failure
    warnings = [r for r in caplog.records if "boom failed" in r.getMessage()]
    assert len(warnings) == 1 and "device lost" in warnings[0].getMessage()
    t = router.telemetry()
    assert t["boom"]["served"] == 0
    assert t["boom"]["failed"] == {"RuntimeError: device lost (simulated)": 1}
    assert t["boom"]["declined"] == {"marked broken after an error": 2}
    assert t["sdpa"]["served"] == 3


def test_out_of_memory_is_not_marked_broken(rng):
    """Out of device memory is the moment's, not the backend's: the fallback serves that call and the next
    call of the same shape tries the backend again."""
    class Tight(Boom):
        def run(self, call):
            self.runs += 1
            if self.runs == 1:
                raise getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)("out of memory (simulated)")
            return SDPABackend().run(call)
    tight = Tight()
    router = Router([tight, SDPABackend()], disabled=(), prefer="")
    arcattn.set_router(router)
    q, k, v = qkv(rng)
    expected = SDPABackend().run(make_call(q, k, v, heads=2))
    for _ in range(3):
        assert torch.equal(arcattn.attention(q, k, v, heads=2), expected)
    assert tight.runs == 3
    t = router.telemetry()
    assert t["boom"]["served"] == 2 and t["sdpa"]["served"] == 1


def test_checkpoint_stop_signal_passes_through_and_marks_nothing_broken(rng):
    """torch's checkpoint stops a recomputation by raising from inside an op: the router lets it through (no
    fallback run, no log, no broken mark), and the next call of the shape still goes to the backend."""
    from arcattn.dispatch import CONTROL_FLOW
    assert CONTROL_FLOW, "this torch has no checkpoint stop signal to test"

    class Stopping(Boom):
        def run(self, call):
            self.runs += 1
            if self.runs == 1:
                raise CONTROL_FLOW[0]()
            return SDPABackend().run(call)
    stopping = Stopping()
    router = Router([stopping, SDPABackend()], disabled=(), prefer="")
    arcattn.set_router(router)
    q, k, v = qkv(rng)
    with pytest.raises(CONTROL_FLOW[0]):
        arcattn.attention(q, k, v, heads=2)
    arcattn.attention(q, k, v, heads=2)
    assert stopping.runs == 2
    t = router.telemetry()
    assert t["boom"]["served"] == 2 and t["sdpa"]["served"] == 0


def test_broken_is_per_signature(rng):
    boom = Boom()
    router = Router([boom, SDPABackend()], disabled=(), prefer="")
    arcattn.set_router(router)
    arcattn.attention(*qkv(rng, S=16), heads=2)
    arcattn.attention(*qkv(rng, S=32), heads=2)
    assert boom.runs == 2  # a new signature gets its own chance


def test_decision_is_made_once_per_signature(rng):
    picky = Picky()
    router = Router([picky, SDPABackend()], disabled=(), prefer="")
    arcattn.set_router(router)
    for _ in range(5):
        arcattn.attention(*qkv(rng, D=64), heads=2)
        arcattn.attention(*qkv(rng, D=40), heads=2)
    assert picky.asked == 2
    assert picky.runs == 5
    t = router.telemetry()
    assert t["picky"]["served"] == 5 and t["sdpa"]["served"] == 5
    assert t["picky"]["declined"] == {"head dim 40 is not 64": 5}


def test_unavailable_backend_is_skipped_and_reported(rng):
    router = Router([Absent(), SDPABackend()], disabled=(), prefer="")
    arcattn.set_router(router)
    arcattn.attention(*qkv(rng), heads=2)
    t = router.telemetry()
    assert t["absent"]["available"] is False and t["absent"]["unavailable_reason"] == "no such device here"
    assert t["absent"]["declined"] == {}  # not a per-call fallback: it is simply not there
    assert t["sdpa"]["served"] == 1


def test_disable_and_prefer_from_environment(rng, monkeypatch):
    monkeypatch.setenv("ARCATTN_DISABLE", "picky")
    picky = Picky()
    arcattn.set_router(Router([picky, SDPABackend()]))
    arcattn.attention(*qkv(rng), heads=2)
    assert picky.runs == 0
    monkeypatch.delenv("ARCATTN_DISABLE")
    monkeypatch.setenv("ARCATTN_BACKEND", "sdpa")
    picky = Picky()
    arcattn.set_router(Router([picky, SDPABackend()]))
    arcattn.attention(*qkv(rng), heads=2)
    assert picky.runs == 0


def test_preferred_backend_that_cannot_serve_falls_back_quietly_in_hosts(rng):
    picky = Picky()
    router = Router([picky, SDPABackend()], disabled=(), prefer="")
    call = make_call(*qkv(rng, D=40), heads=2)
    router.run(call, prefer="picky")
    assert router.telemetry()["picky"]["declined"] == {"head dim 40 is not 64": 1}


def test_forced_backend_through_api_raises_with_reasons(rng):
    arcattn.set_router(Router([Picky(), SDPABackend()], disabled=(), prefer=""))
    with pytest.raises(BackendUnsupported, match="head dim 40 is not 64"):
        arcattn.attention(*qkv(rng, D=40), heads=2, backend="picky")
    arcattn.set_router(Router([Absent(), SDPABackend()], disabled=(), prefer=""))
    with pytest.raises(BackendUnsupported, match="no such device here"):
        arcattn.attention(*qkv(rng), heads=2, backend="absent")


def test_forced_backend_failure_propagates(rng):
    arcattn.set_router(Router([Boom(), SDPABackend()], disabled=(), prefer=""))
    with pytest.raises(RuntimeError, match="device lost"):
        arcattn.attention(*qkv(rng), heads=2, backend="boom")


def test_declines_name_the_reason(rng):
    call = make_call(*qkv(rng, dtype=torch.float64), heads=2, causal=True, want_lse=True)
    reasons = Boom().unsupported_reasons(call)
    assert any("dtype float64" in r for r in reasons)
    assert any("causal" in r for r in reasons) and any("log-sum-exp" in r for r in reasons)


def test_reset_forgets_decisions_and_counts(rng):
    router = arcattn.get_router()
    arcattn.attention(*qkv(rng), heads=2)
    assert router.telemetry()["sdpa"]["served"] == 1
    arcattn.reset_telemetry()
    assert router.telemetry()["sdpa"]["served"] == 0


class SlowHere(Picky):
    """Can serve everything, but declares itself measured slower than the fallback at head dim 40."""
    name = "slowhere"

    def extra_reasons(self, call):
        return []

    def slower_reasons(self, call):
        return ["measured slower at head dim 40"] if call.D == 40 else []


def test_measured_losses_steer_priority_only(rng):
    s = SlowHere()
    arcattn.set_router(Router([s, SDPABackend()], disabled=(), prefer=""))
    arcattn.attention(*qkv(rng, D=40), heads=2)
    assert s.runs == 0
    assert arcattn.telemetry()["slowhere"]["declined"] == {"measured slower at head dim 40": 1}
    arcattn.attention(*qkv(rng, D=64), heads=2)
    assert s.runs == 1
    arcattn.attention(*qkv(rng, D=40), heads=2, backend="slowhere")  # forced: served anyway
    assert s.runs == 2
    chosen = []
    arcattn.set_router(Router([s, SDPABackend()], disabled=(), prefer="",
                              chooser=lambda call, eligible: chosen.append([b.name for b in eligible]) or eligible[0]))
    arcattn.attention(*qkv(rng, D=40), heads=2)  # the measured policy sees it as eligible and decides itself
    assert chosen == [["slowhere", "sdpa"]] and s.runs == 3


def test_disabled_beats_preferred(rng, monkeypatch):
    monkeypatch.setenv("ARCATTN_DISABLE", "picky")
    monkeypatch.setenv("ARCATTN_BACKEND", "picky")
    picky = Picky()
    arcattn.set_router(Router([picky, SDPABackend()]))
    arcattn.attention(*qkv(rng), heads=2)
    assert picky.runs == 0
    assert "disabled by ARCATTN_DISABLE" in next(iter(arcattn.telemetry()["picky"]["declined"]))
    with pytest.raises(BackendUnsupported, match="disabled"):
        arcattn.attention(*qkv(rng), heads=2, backend="picky")


def test_preferred_backend_that_declines_leaves_the_rest_of_the_order(rng):
    picky = Picky()
    router = Router([Absent(), picky, SDPABackend()], disabled=(), prefer="absent")
    arcattn.set_router(router)
    arcattn.attention(*qkv(rng, D=64), heads=2)
    assert picky.runs == 1  # not straight to sdpa
    assert router.telemetry()["absent"]["declined"] == {"no such device here": 1}


def test_unknown_backend_in_environment_is_ignored_with_one_line(rng, monkeypatch, caplog):
    monkeypatch.setenv("ARCATTN_BACKEND", "trtion")
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        arcattn.set_router(Router([Picky(), SDPABackend()]))
        for _ in range(3):
            arcattn.attention(*qkv(rng), heads=2)
    assert len([r for r in caplog.records if "trtion" in r.getMessage()]) == 1
    assert arcattn.telemetry()["picky"]["served"] == 3


def test_backend_auto_in_the_api_keeps_the_fallback(rng):
    arcattn.set_router(Router([Boom(), SDPABackend()], disabled=(), prefer=""))
    q, k, v = qkv(rng)
    out = arcattn.attention(q, k, v, heads=2, backend="auto")
    assert torch.equal(out, SDPABackend().run(make_call(q, k, v, heads=2)))


def test_inputs_that_need_gradients_go_to_a_backend_with_a_backward(rng):
    picky = Picky()
    arcattn.set_router(Router([picky, SDPABackend()], disabled=(), prefer=""))
    q, k, v = (t.requires_grad_() for t in qkv(rng))
    out = arcattn.attention(q, k, v, heads=2)
    assert picky.runs == 0 and out.grad_fn is not None
    out.square().sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    from arcattn.reference import attention_reference
    ref, _ = attention_reference(*(t.unflatten(-1, (2, 64)).transpose(1, 2) for t in (q64, k64, v64)))
    ref.square().sum().backward()
    from arcattn.reference import rel_error  # a norm, not elementwise: no single near-zero element decides
    for t, t64 in ((q, q64), (k, k64), (v, v64)):
        assert rel_error(t.grad, t64.grad) < 1e-4
    with torch.no_grad():  # the same tensors in inference: the fast backend again
        arcattn.attention(q, k, v, heads=2)
    assert picky.runs == 1
