"""Random weights for the real-host models of the tests (no download): small, with the norms' scales near 1, and
the attention's q and k projections (`to_q`, `to_k`, as ComfyUI's and Forge's UNets name them) scaled so that
attention scores spread, std about 2 for inputs of std 1. With small q and k every softmax is near uniform and
attention barely changes a model's output: a wrong key, scale or mask would go unseen."""
from __future__ import annotations

import torch

SCORE_SPREAD = 1.4  # q and k entries of this std give scores (q . k / sqrt(d)) of std SCORE_SPREAD ** 2


def randomise(module: torch.nn.Module, gen: torch.Generator, std: float = 0.05) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("to_q.weight", "to_k.weight")):
                noise = torch.randn(p.shape, generator=gen) * (SCORE_SPREAD / p.shape[1] ** 0.5)
            else:
                noise = torch.randn(p.shape, generator=gen) * std
                if "norm" in name and name.endswith("weight"):
                    noise += 1.0
            p.copy_(noise.to(p.dtype))
