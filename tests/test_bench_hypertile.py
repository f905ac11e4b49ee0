"""bench/gpu_hypertile.py on the CPU: its rows (served by arcattn, both outputs near the float64 reference) and its
side-by-side timing (order alternating, medians, spread). The GPU run is in bench/RESULTS.md."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
gpu_hypertile = pytest.importorskip("gpu_hypertile")


def test_dry_run_serves_tiled_calls_near_the_reference(capsys, monkeypatch):
    monkeypatch.delenv("ARCATTN_COMFYUI_ROOT", raising=False)  # the stand-in reading, not a checkout
    assert gpu_hypertile.main("cpu", [("tiny", 16, 64, 4, 2)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny")]
    assert len(rows) == 2  # B = 1 and 2
    for row in rows:
        errors = [float(x) for x in re.findall(r"\d\.\de[-+]\d\d", row)]
        assert len(errors) == 2 and max(errors) < 1e-3, row
        assert re.search(r"\{'(sdpa|triton|xmx)': 1\}$", row), row  # served by a backend, not handed back


def test_side_by_side_alternates_and_takes_medians(monkeypatch):
    order, times = [], {"host": iter([10.0, 12.0, 11.0, 30.0]), "ours": iter([9.0, 9.5, 9.0, 9.0])}

    def fake_graph_us(fn, device):
        name = fn()
        order.append(name)
        return next(times[name])

    monkeypatch.setattr(gpu_hypertile, "graph_us", fake_graph_us)
    host, ours, spread = gpu_hypertile.side_by_side(lambda: "host", lambda: "ours", torch.device("cpu"), rounds=4)
    assert order == ["host", "ours", "ours", "host", "host", "ours", "ours", "host"]
    assert (host, ours) == (11.5, 9.0)
    assert spread == pytest.approx((30.0 - 10.0) / 11.5)
