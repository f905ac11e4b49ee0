"""A quick correctness check of every available backend on this machine, against the float64 reference."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .api import get_router
from .call import make_call
from .env import default_device
from .reference import REFERENCE_TOL, attention_reference, rel_error

# (B, H, Sq, Sk, D): a self- and a cross-attention shape with SD-like head dims and ragged lengths
CASES = ((1, 2, 64, 64, 64), (1, 2, 70, 77, 40))


def run_selftest(device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> list:
    """One entry per (backend, case): backend, case, dtype, ok, rel_error, reason."""
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.float16
    router = get_router()
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))  # fresh inputs every run
    results = []
    for B, H, Sq, Sk, D in CASES:
        q, k, v = (torch.randn(B, S, H * D, generator=gen).to(device=device, dtype=dtype) for S in (Sq, Sk, Sk))
        call = make_call(q, k, v, heads=H)
        ref, _ = attention_reference(call.q4, call.k4, call.v4, scale=call.scale)
        ref = ref.transpose(1, 2).reshape(B, Sq, H * D)
        case = f"B={B} H={H} Sq={Sq} Sk={Sk} D={D}"
        for b in router.backends:
            entry = {"backend": b.name, "case": case, "dtype": str(dtype).replace("torch.", ""), "ok": False,
                     "rel_error": None, "reason": None}
            reasons = [b.unavailable_reason()] if not b.available() else b.unsupported_reasons(call)
            if reasons:
                entry["reason"] = "; ".join(r for r in reasons if r)
                entry["ok"] = None  # not applicable
            else:
                try:
                    out = b.run(call)
                    err = rel_error(out, ref)
                    entry["rel_error"] = err
                    entry["ok"] = err < REFERENCE_TOL.get(dtype, 1e-4)
                    if not entry["ok"]:
                        entry["reason"] = f"relative error {err:.2e} over {REFERENCE_TOL.get(dtype, 1e-4):.0e}"
                except Exception as e:  # noqa: BLE001
                    entry["reason"] = f"{type(e).__name__}: {e}"
            results.append(entry)
        # and once through the router, as a host would call it
        d = router.decide(call)
        out = router.run(call)
        err = rel_error(out, ref)
        ok = err < REFERENCE_TOL.get(dtype, 1e-4)
        results.append({"backend": f"router->{d.backend.name}", "case": case, "dtype": entry["dtype"], "ok": ok,
                        "rel_error": err, "reason": None if ok else f"relative error {err:.2e}"})
    return results


def format_results(results: list) -> str:
    lines = []
    for r in results:
        state = "n/a " if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
        err = f"{r['rel_error']:.1e}" if r["rel_error"] is not None else "-"
        lines.append(f"  {state} {r['backend']:<14} {r['case']:<28} {r['dtype']:<9} err {err:<8} {r['reason'] or ''}")
    return "\n".join(lines)


def passed(results: list) -> bool:
    """True when no applicable backend failed (and at least the fallback passed)."""
    return all(r["ok"] is not False for r in results) and any(r["ok"] for r in results)
