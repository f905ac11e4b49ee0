"""python -m arcattn {doctor,selftest,bench,tune}"""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _doctor(args) -> int:
    from . import env
    from .api import get_router
    from .install_check import old_torch_note
    from .selftest import format_results, passed, run_selftest

    router = get_router()
    info = env.versions()
    report = {"versions": info, "backends": [], "policy": {"prefer": router.prefer, "disabled": sorted(router.disabled)}}
    for b in router.backends:
        why = b.unavailable_reason()
        details = b.details() if callable(getattr(b, "details", None)) else None
        report["backends"].append({"name": b.name, "available": why is None, "reason": why,
                                   "disabled": b.name in router.disabled, "capabilities": b.capabilities(),
                                   "description": b.description, "details": details})
    results = run_selftest() if not args.no_selftest else []
    report["selftest"] = results
    report["telemetry"] = router.telemetry()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0 if not results or passed(results) else 1
    print(f"arcattn {info['arcattn']}: {env.describe()}")
    note = old_torch_note(info["torch"])
    if note:
        print(f"note: {note}")
    print("backends (priority order):")
    for b in report["backends"]:
        state = "disabled" if b["disabled"] else ("available" if b["available"] else "unavailable")
        c = b["capabilities"]
        print(f"  {b['name']:<7} {state}" + (f": {b['reason']}" if b["reason"] else ""))
        shown = b["details"] if b["details"] and (b["available"] or b["details"].get("path")) else {}
        for key, value in shown.items():
            if value not in (None, {}, ""):
                print(f"          {key}: {value}")
        if not c:
            continue
        caps = (f"devices {'/'.join(c['devices'])}; dtypes {'/'.join(c['dtypes'])}; head dim <= {c['max_head_dim']};"
                f" mask {'yes' if c['mask'] else 'no'}; causal {'yes' if c['causal'] else 'no'};"
                f" lse {'yes' if c['lse'] else 'no'}")
        print(f"          {caps}")
    if router.prefer or router.disabled:
        print(f"settings: ARCATTN_BACKEND={router.prefer or ''} ARCATTN_DISABLE={','.join(sorted(router.disabled))}")
    if results:
        print("self-test (float64 reference, fresh random inputs):")
        print(format_results(results))
        print("telemetry of this run:")
        _print_telemetry(report["telemetry"])
        return 0 if passed(results) else 1
    return 0


def _print_telemetry(t: dict) -> None:
    for name, v in t.items():
        passed_on = sum(v["declined"].values()) + sum(v["failed"].values())
        print(f"  {name:<7} served {v['served']:>6}  passed on {passed_on:>6}")
        for reason, n in {**v["declined"], **v["failed"]}.items():
            print(f"          {n:>6} x {reason}")


def _selftest(args) -> int:
    from . import env
    from .selftest import format_results, passed, run_selftest

    print(env.describe())
    results = run_selftest(device=args.device)
    print(format_results(results))
    ok = passed(results)
    print("self-test passed" if ok else "self-test FAILED")
    return 0 if ok else 1


def _bench(argv) -> int:
    from . import bench
    return bench.main(argv)


def _tune(argv) -> int:
    from . import tune
    return tune.main(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m arcattn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log arcattn's decisions (debug level)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("doctor", help="device, versions, each backend available or why not, a self-test")
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-selftest", action="store_true")
    s = sub.add_parser("selftest", help="check every available backend against a float64 reference")
    s.add_argument("--device", default=None)
    sub.add_parser("bench", help="attention shapes x backends: median us, TFLOP/s, ratio to host-style SDPA",
                   add_help=False)
    sub.add_parser("tune", help="measure the backends per shape ahead of time (policy auto)", add_help=False)
    # bench and tune own their arguments
    if argv and argv[0] in ("bench", "tune") or (len(argv) > 1 and argv[0] in ("-v", "--verbose")
                                                 and argv[1] in ("bench", "tune")):
        verbose = argv[0] in ("-v", "--verbose")
        rest = argv[1:] if verbose else argv
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(name)s: %(message)s")
        return _bench(rest[1:]) if rest[0] == "bench" else _tune(rest[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    return {"doctor": _doctor, "selftest": _selftest}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
