"""For the host probes that run as scripts in the host's own process (tests/real_comfyui_attention_diff.py,
tests/real_ldm_patched_attention_diff.py, the probe of tests/test_forge_real.py): each imports this after putting
arcattn on its path."""
import arcattn


def served_total() -> int:
    """Calls arcattn has served so far, all backends together."""
    return sum(v["served"] for v in arcattn.telemetry().values())
