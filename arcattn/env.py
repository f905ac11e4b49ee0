"""What machine this is: device, torch/Triton/arcattn versions. Printed by doctor, bench and install.py."""
from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from ._version import __version__


ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """An on/off switch from the environment: 1/true/yes/on or 0/false/no/off (any case); unset, empty or
    anything else keeps the default. (scripts/arcattn_forge.py reads ARCATTN_FORGE with the same words itself,
    because it must decide before importing arcattn.)"""
    value = os.environ.get(name, "").strip().lower()
    if value in ON_WORDS:
        return True
    if value in OFF_WORDS:
        return False
    return default


def default_device() -> torch.device:
    """The accelerator a host would use: XPU first (Arc is why arcattn exists), then CUDA, else CPU."""
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CPU: nothing to wait for). Timing code uses this around its samples."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def device_name(device: Optional[torch.device] = None) -> str:
    device = torch.device(device) if device is not None else default_device()
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        if device.type == "xpu":
            return torch.xpu.get_device_name(device)
    except Exception as e:  # noqa: BLE001
        return f"{device.type} (name unavailable: {e})"
    return platform.processor() or platform.machine() or "cpu"


def triton_version() -> Optional[str]:
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


def versions(device: Optional[torch.device] = None) -> dict:
    device = torch.device(device) if device is not None else default_device()
    info = {
        "arcattn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version(),
        "device": device.type,
        "device_name": device_name(device),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if device.type == "xpu":
        try:
            props = torch.xpu.get_device_properties(device)
            info["driver"] = getattr(props, "driver_version", None)
        except Exception:  # noqa: BLE001
            pass
    return info


def describe(device: Optional[torch.device] = None) -> str:
    v = versions(device)
    extra = "".join(f" {k} {v[k]}" for k in ("cuda", "cudnn", "driver") if v.get(k))
    return (f"device {v['device']} ({v['device_name']}), torch {v['torch']}, triton {v['triton'] or 'absent'},"
            f" arcattn {v['arcattn']}, python {v['python']}{extra}")
