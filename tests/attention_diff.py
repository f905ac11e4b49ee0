"""Shared by the real-host diff scripts (real_ldm_patched_attention_diff.py, real_forge_attention_diff.py): one
host function against arcattn's wrapper of it, case by case, and q in tiles beside whole k and v (HyperTile)."""
import torch

from arcattn.reference import rel_error
from served_calls import served_total


def draw(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (1,), generator=g))


def new_record() -> dict:
    return {"cases": 0, "both_answered": 0, "worst": 0.0, "host_only_raised": 0, "arcattn_only_raised": [],
            "mismatches": []}


def compare(r: dict, fn, wrapper, args: tuple, kwargs: dict, label: list) -> None:
    """Call the host's function and the wrapper alike; record whether each answered and how far apart they are."""
    outs = []
    for f in (fn, wrapper):
        try:
            outs.append(f(*args, **kwargs))
        except Exception as e:  # noqa: BLE001
            outs.append(e)
    host, ours = outs
    r["cases"] += 1
    if isinstance(host, Exception):
        r["host_only_raised"] += not isinstance(ours, Exception)
        return
    if isinstance(ours, Exception):
        r["arcattn_only_raised"].append([label[0], repr(ours)[:200]])
        return
    r["both_answered"] += 1
    err = rel_error(ours, host.double()) if ours.shape == host.shape else float("inf")
    r["worst"] = max(r["worst"], err)
    if err >= 1e-5:
        r["mismatches"].append(label + [err])


def tiled(pairs: dict, g: torch.Generator, per_function: int = 6) -> dict:
    """pairs: name -> (host function, wrapper). q of (B * T, S / T, C) beside k and v of (B, S, C), as HyperTile
    passes them: each host function reads k and v by q's batch, and the wrapper must answer the same."""
    t = {"cases": 0, "worst": 0.0, "mismatches": []}
    served_before = served_total()
    with torch.no_grad():
        for name, (fn, wrapper) in pairs.items():
            for i in range(per_function):
                B, T, H, D, St = draw(g, 1, 3), (2, 4, 16)[i % 3], draw(g, 1, 6), 8 * draw(g, 1, 6), draw(g, 1, 17)
                q = torch.randn(B * T, St, H * D, generator=g)
                k, v = (torch.randn(B, St * T, H * D, generator=g) for _ in range(2))
                err = rel_error(wrapper(q, k, v, H), fn(q, k, v, H).double())
                t["cases"] += 1
                t["worst"] = max(t["worst"], err)
                if err >= 1e-5:
                    t["mismatches"].append([name, B, T, H, D, St, err])
    t["served"] = served_total() - served_before
    return t
