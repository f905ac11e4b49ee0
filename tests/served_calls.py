"""Calls arcattn has served: for the host probes that run as scripts in the host's own process (the real-host diff
scripts, the probe of tests/test_forge_real.py), which import this after putting arcattn on their path, and for
the tests themselves."""
import arcattn


def served_total() -> int:
    """Calls arcattn has served so far, all backends together."""
    return sum(v["served"] for v in arcattn.telemetry().values())
