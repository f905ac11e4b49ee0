"""Measured dispatch: fastest correct backend per bucket, cached on disk, bad caches ignored."""
import json
import logging
import os
import statistics
import time

import pytest
import torch

import arcattn
from arcattn.backends.base import Backend
from arcattn.backends.sdpa import SDPABackend
from arcattn.dispatch import Router
from arcattn.tune import CACHE_VERSION, MeasuredChooser, TuneCache, bucket, bucket_key, policy_from_env


class Timed(Backend):
    """Correct (serves through SDPA) and declares what it costs, in microseconds per call, to the fake timer;
    `wrong` makes its output wrong."""

    def __init__(self, name, cost_us, wrong=False):
        self.name, self.cost_us, self.wrong, self.runs = name, cost_us, wrong, 0

    def run(self, call):
        self.runs += 1
        out = SDPABackend().run(call)
        return out * 1.5 if self.wrong else out


COSTS = {"sdpa": 50.0}


def declared_cost(runs, device):
    """The chooser's timer, made exact: run each backend once, report what it declares (sdpa: 50 us)."""
    out = {}
    for name, (backend, fn) in runs.items():
        fn()
        out[name] = getattr(backend, "cost_us", COSTS.get(backend.name))
    return out


def chooser_for(tmp_path):
    return MeasuredChooser(str(tmp_path), measure_cpu=True, timer=declared_cost)


def make_router(tmp_path, *backends):
    chooser = chooser_for(tmp_path)
    router = Router([*backends, SDPABackend()], disabled=(), prefer="", chooser=chooser)
    arcattn.set_router(router)
    return router, chooser


def qkv(gen, S=64):
    return [torch.randn(1, S, 64, generator=gen) for _ in range(3)]


def test_fastest_correct_backend_wins_and_is_cached(tmp_path, rng):
    slow, fast, wrong = Timed("slow", 90.0), Timed("fast", 10.0), Timed("wrong", 1.0, wrong=True)
    chooser = chooser_for(tmp_path)
    router = Router([slow, wrong, fast, SDPABackend()], disabled=(), prefer="", chooser=chooser)
    arcattn.set_router(router)
    arcattn.attention(*qkv(rng), heads=4)
    assert router.decisions()[0]["backend"] == "fast"
    entry = next(iter(chooser.cache(torch.device("cpu")).entries.values()))
    assert "differs from sdpa" in entry["rejected"]["wrong"]
    assert set(entry["times_us"]) == {"slow", "fast", "sdpa"}
    # a new process (new chooser) with the same setup reads the cache instead of measuring
    slow2, fast2 = Timed("slow", 90.0), Timed("fast", 10.0)
    router2 = Router([slow2, Timed("wrong", 1.0, wrong=True), fast2, SDPABackend()], disabled=(), prefer="",
                     chooser=chooser_for(tmp_path))
    arcattn.set_router(router2)
    arcattn.attention(*qkv(rng), heads=4)
    assert slow2.runs == 0 and fast2.runs == 1


def test_nearby_length_shares_a_bucket_new_resolution_does_not_retune_everything(tmp_path, rng):
    fast = Timed("fast", 10.0)
    router, chooser = make_router(tmp_path, fast)
    arcattn.attention(*qkv(rng, S=4096 // 16), heads=4)
    n = fast.runs
    arcattn.attention(*qkv(rng, S=4096 // 16 + 8), heads=4)  # same half-octave bucket: no measuring
    assert fast.runs == n + 1
    assert bucket(256) == bucket(264) and bucket(256) != bucket(512) and bucket(77) != bucket(64)


@pytest.mark.parametrize("kind", ["not json", "another setup", "malformed entries", "no entries"])
def test_corrupt_or_stale_cache_is_ignored_with_one_line(tmp_path, rng, caplog, kind):
    cache = TuneCache(torch.device("cpu"), str(tmp_path))
    current = {"version": CACHE_VERSION, "env": cache.env}  # each file wrong in one way only
    content = {"not json": "{not json",
               "another setup": json.dumps(dict(current, env=dict(cache.env, torch="0.0"), entries={})),
               "malformed entries": json.dumps(dict(current, entries={"x": 3})),
               "no entries": json.dumps(current)}[kind]
    with open(cache.path, "w") as f:
        f.write(content)
    fast = Timed("fast", 10.0)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        make_router(tmp_path, fast)
        arcattn.attention(*qkv(rng), heads=4)
    lines = [r for r in caplog.records if "ignoring tuning cache" in r.getMessage()]
    assert len(lines) == 1
    assert arcattn.get_router().decisions()[0]["backend"] == "fast"
    with open(cache.path) as f:
        assert json.load(f)["env"] == cache.env  # rewritten for this setup


def test_cpu_keeps_priority_without_measuring(tmp_path, rng):
    slow = Timed("slow", 90.0)
    router = Router([slow, SDPABackend()], disabled=(), prefer="", chooser=MeasuredChooser(str(tmp_path)))
    arcattn.set_router(router)
    arcattn.attention(*qkv(rng), heads=4)
    assert slow.runs == 1 and not os.listdir(tmp_path)


def test_policy_switches(monkeypatch):
    monkeypatch.delenv("ARCATTN_POLICY", raising=False)
    monkeypatch.delenv("ARCATTN_TUNE", raising=False)
    assert policy_from_env() == "auto"
    monkeypatch.setenv("ARCATTN_POLICY", "priority")
    assert policy_from_env() == "priority"
    monkeypatch.setenv("ARCATTN_POLICY", "auto")
    monkeypatch.setenv("ARCATTN_TUNE", "0")
    assert policy_from_env() == "priority"
    arcattn.set_router(None)
    assert arcattn.get_router().chooser is None


@pytest.mark.parametrize("value,default,expected", [
    ("OFF", True, False), (" no ", True, False), ("0", True, False), ("false", True, False),
    ("On", False, True), ("yes", False, True), ("1", False, True), ("TRUE", False, True),
    ("", True, True), ("", False, False), ("maybe", True, True), ("maybe", False, False), (None, True, True)])
def test_env_flag_words(monkeypatch, value, default, expected):
    from arcattn.env import env_flag
    if value is None:
        monkeypatch.delenv("ARCATTN_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("ARCATTN_TEST_FLAG", value)
    assert env_flag("ARCATTN_TEST_FLAG", default) is expected


def test_chooser_failure_falls_back_to_priority(rng, caplog):
    def broken(call, eligible):
        raise RuntimeError("out of memory while measuring")
    fast = Timed("fast", 10.0)
    arcattn.set_router(Router([fast, SDPABackend()], disabled=(), prefer="", chooser=broken))
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        arcattn.attention(*qkv(rng), heads=4)
    assert fast.runs == 1 and any("priority order" in r.getMessage() for r in caplog.records)


def test_bucket_key_names_the_signature(rng):
    call = arcattn.make_call(*qkv(rng, S=77), heads=4)
    assert bucket_key(call).startswith("B1 H4 Sq~2^6.5 Sk~2^6.5 D16")
    q, k, v = qkv(rng, S=77)
    variants = [arcattn.make_call(q, k, v, heads=4), arcattn.make_call(q.half(), k.half(), v.half(), heads=4),
                arcattn.make_call(q, k, v, heads=4, out_layout="bhsd"),
                arcattn.make_call(q, k, v, heads=4, mask=torch.ones(77, 77, dtype=torch.bool)),
                arcattn.make_call(q, k, v, heads=4, mask=torch.zeros(77, 77)),
                arcattn.make_call(q, k, v, heads=4, causal=True), arcattn.make_call(q, k, v, heads=4, want_lse=True)]
    assert len({bucket_key(c) for c in variants}) == len(variants)  # each of these tunes on its own
    assert bucket(4096) == "2^12" and bucket(40) == "40"


def test_cache_of_an_older_format_is_not_trusted(tmp_path, rng, caplog):
    cache = TuneCache(torch.device("cpu"), str(tmp_path))
    with open(cache.path, "w") as f:  # right setup, old format: its times meant something else
        json.dump({"version": 1, "env": cache.env, "entries": {}}, f)
    with caplog.at_level(logging.WARNING, logger="arcattn"):
        TuneCache(torch.device("cpu"), str(tmp_path))
    assert any("another setup or cache version" in r.getMessage() for r in caplog.records)


def test_stream_samples_report_microseconds_per_call():
    from arcattn.tune import stream_samples_us
    samples = stream_samples_us(lambda: time.sleep(0.001), torch.device("cpu"), warmup=0, reps=2, batch=2)
    assert len(samples) == 2 and min(samples) >= 1000


class SlowSpell:
    """A fake clock and host: each call advances the clock by its cost, doubled during the first `spell` calls
    (a busy host, a GPU still raising its clocks)."""

    def __init__(self, spell):
        self.now, self.calls, self.spell = 0.0, 0, spell

    def fn(self, cost_us):
        def call():
            self.calls += 1
            self.now += cost_us * 1e-6 * (2 if self.calls <= self.spell else 1)
        return call


def test_interleaved_rounds_resist_a_slow_spell():
    """Timed one after the other, the backend timed during a slow spell looks slower than one 1.5x its cost;
    interleaved, the spell lands on both and the cheaper one wins (by the median and by the minimum)."""
    from arcattn.tune import interleaved_samples_us, stream_samples_us
    cpu = torch.device("cpu")
    kw = dict(warmup=2, reps=5, batch=10)
    h = SlowSpell(spell=60)
    one_by_one = {n: statistics.median(stream_samples_us(h.fn(c), cpu, clock=lambda: h.now, **kw))
                  for n, c in (("cheap", 100.0), ("dear", 150.0))}
    assert one_by_one["cheap"] > one_by_one["dear"]  # the bias this guards against
    h = SlowSpell(spell=60)
    together = interleaved_samples_us({"cheap": h.fn(100.0), "dear": h.fn(150.0)}, cpu, clock=lambda: h.now, **kw)
    assert all(len(t) == 5 for t in together.values())
    assert statistics.median(together["cheap"]) < statistics.median(together["dear"])
    assert min(together["cheap"]) < min(together["dear"])


def test_chooser_counts_each_backends_fastest_round():
    """Two of three rounds of `spiky` land in a busy spell (30 ms instead of 1 ms per call): by its median it
    would lose to `steady` (10 ms), by its fastest round it wins. Contention only ever adds time."""
    calls = {"spiky": 0}

    def spiky():
        calls["spiky"] += 1
        time.sleep(0.03 if calls["spiky"] in (3, 4) else 0.001)  # after 2 warm-up calls: rounds 0 and 1

    chooser = MeasuredChooser(reps=3, batch=1, measure_cpu=True)
    t = chooser.timer({"spiky": (None, spiky), "steady": (None, lambda: time.sleep(0.01))}, torch.device("cpu"))
    assert calls["spiky"] == 5 and t["spiky"] < 5000 < t["steady"]


def test_backend_failing_while_timed_is_rejected_others_still_timed(tmp_path, rng):
    """The real (interleaved) timer on the CPU: a backend that passes its check run but raises while timed is
    rejected; the others are timed alone and the fastest of them wins."""
    class FailsLater(Timed):
        def run(self, call):
            if self.runs >= 1:
                self.runs += 1
                raise RuntimeError("device lost")
            return super().run(call)

    flaky = FailsLater("flaky", 1.0)
    chooser = MeasuredChooser(str(tmp_path), measure_cpu=True, reps=2, batch=2)
    router = Router([flaky, SDPABackend()], disabled=(), prefer="", chooser=chooser)
    arcattn.set_router(router)
    arcattn.attention(*qkv(rng), heads=4)
    entry = next(iter(chooser.cache(torch.device("cpu")).entries.values()))
    assert router.decisions()[0]["backend"] == "sdpa"
    assert "device lost" in entry["rejected"]["flaky"] and set(entry["times_us"]) == {"sdpa"}


def test_device_samples_need_cuda():
    from arcattn.tune import device_samples_us
    assert device_samples_us({"a": lambda: None}, torch.device("cpu"), warmup=1, reps=1, batch=1) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (device times)")
def test_device_samples_hide_the_host_cuda():
    """A backend costing the host 300 us and the GPU one tiny kernel against one costing the GPU ~100 us: in a
    stream the first looks slower, on the device it is faster, and the chooser goes by the device."""
    from arcattn.tune import device_samples_us
    x = torch.zeros(1, device="cuda")

    def host_heavy():
        t_end = time.perf_counter() + 3e-4
        while time.perf_counter() < t_end:
            pass
        x.add_(1)

    def device_heavy():
        torch.cuda._sleep(200_000)  # ~100 us at 2 GHz, longer at lower clocks

    cuda = torch.device("cuda")
    s = device_samples_us({"host": host_heavy, "device": device_heavy}, cuda, warmup=2, reps=3, batch=5)
    assert max(s["host"]) < 50 and min(s["device"]) > 80, s
    t = MeasuredChooser(reps=3, batch=5).timer({"host": (None, host_heavy), "device": (None, device_heavy)}, cuda)
    assert t["host"] < t["device"], t


@pytest.mark.parametrize("fast_cost, expected", [(46.0, "sdpa"), (40.0, "fast")])
def test_priority_choice_kept_unless_clearly_slower(tmp_path, rng, fast_cost, expected):
    """The fixed-priority choice (sdpa here: `fast` declares a measured loss) stays when the measured winner is
    within 10 % of it (46 vs 50 us) and is replaced when the winner is clearly faster (40 vs 50 us)."""
    class Ruled(Timed):
        def slower_reasons(self, call):
            return ["measured slower here"]

    fast = Ruled("fast", fast_cost)
    router, chooser = make_router(tmp_path, fast)
    arcattn.attention(*qkv(rng), heads=4)
    entry = next(iter(chooser.cache(torch.device("cpu")).entries.values()))
    assert router.decisions()[0]["backend"] == expected
    assert entry["kept_priority_choice"] == (expected == "sdpa")


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_synthetic_inputs_fresh_with_the_callers_strides(device):
    """Tuning inputs: the call's shapes, strides, dtype and device, random (never zeros), new each time; on a GPU
    drawn on the GPU."""
    from arcattn.call import make_call
    from arcattn.tune import synthetic_call
    wide = torch.zeros(2, 9, 3 * 40 + 8, dtype=torch.float16, device=device)
    q = wide[..., 8:48]  # a strided view, as a fused qkv projection gives
    call = make_call(q, q, q, heads=1)
    gen = torch.Generator().manual_seed(0)
    a, b = synthetic_call(call, gen), synthetic_call(call, gen)
    for x, y in ((a.q, q), (a.k, q), (a.v, q)):
        assert x.shape == y.shape and x.stride() == y.stride() and x.dtype == y.dtype and x.device == y.device
        assert torch.isfinite(x).all() and x.float().std() > 0.5
    assert not torch.equal(a.q, b.q) and not torch.equal(a.q, a.k)
