"""The backend contract: each backend declares what it can serve and says why it can't.

A backend is a small object with
  name                         short id used by the router, env vars, the CLI and hosts' UIs
  unavailable_reason()         None when usable on this machine, else one sentence why not (cached)
  unsupported_reasons(call)    [] when it can serve this call, else the reasons (human-readable)
  slower_reasons(call)         [] unless it can serve the call but measured slower than the fallback there
  run(call)                    output in the caller's layout; (output, lse) when call.want_lse

Capabilities are class attributes so that `doctor` and the README can print one table from them; anything
they cannot express goes in `extra_reasons`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..call import AttentionCall

Result = Union[torch.Tensor, "tuple[torch.Tensor, torch.Tensor]"]


class Backend:
    name: str = "?"
    description: str = ""
    is_fallback: bool = False
    device_types: tuple = ("cpu", "cuda", "xpu")
    dtypes: tuple = (torch.float16, torch.bfloat16, torch.float32)
    max_head_dim: int = 256
    supports_mask: bool = False
    supports_causal: bool = False
    supports_lse: bool = False
    supports_dv_ne_d: bool = False  # value head dim different from query/key head dim
    supports_grad: bool = False  # has a backward: may serve calls whose inputs need gradients (training)

    _unavailable: "Optional[str] | type" = ...  # ... = not probed yet

    def unavailable_reason(self) -> Optional[str]:
        if self._unavailable is ...:
            try:
                self._unavailable = self.probe()
            except Exception as e:  # a probe must never take the plugin down
                self._unavailable = f"probe failed: {type(e).__name__}: {e}"
        return self._unavailable

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def probe(self) -> Optional[str]:
        """Check the machine once: None if usable, else why not."""
        return None

    def unsupported_reasons(self, call: AttentionCall) -> list:
        reasons = []
        if call.device.type not in self.device_types:
            reasons.append(f"device {call.device.type} not in {self.device_types}")
        if call.dtype not in self.dtypes:
            reasons.append(f"dtype {str(call.dtype).replace('torch.', '')} not supported")
        if max(call.D, call.Dv) > self.max_head_dim:
            reasons.append(f"head dim {max(call.D, call.Dv)} > {self.max_head_dim}")
        if call.Dv != call.D and not self.supports_dv_ne_d:
            reasons.append(f"value head dim {call.Dv} != query head dim {call.D}")
        if call.mask is not None and not self.supports_mask:
            reasons.append("attention mask not supported")
        if call.causal and not self.supports_causal:
            reasons.append("causal not supported")
        if call.want_lse and not self.supports_lse:
            reasons.append("log-sum-exp output not supported")
        if call.needs_grad and not self.supports_grad:
            reasons.append("inputs require grad and this backend has no backward")
        reasons.extend(self.extra_reasons(call))
        return reasons

    def extra_reasons(self, call: AttentionCall) -> list:
        return []

    def slower_reasons(self, call: AttentionCall) -> list:
        """Why this backend, though able to serve the call, is known (measured) to be slower than the fallback.
        Only the fixed-priority policy heeds these; a forced backend and the measured policy ignore them."""
        return []

    def run(self, call: AttentionCall) -> Result:
        raise NotImplementedError

    def capabilities(self) -> dict:
        return {
            "devices": list(self.device_types),
            "dtypes": [str(d).replace("torch.", "") for d in self.dtypes],
            "max_head_dim": self.max_head_dim,
            "mask": self.supports_mask,
            "causal": self.supports_causal,
            "lse": self.supports_lse,
            "grad": self.supports_grad,
        }

    def __repr__(self) -> str:
        return f"<arcattn backend {self.name}>"
