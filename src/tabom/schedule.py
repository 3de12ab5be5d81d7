"""The learning-rate schedule of ``tabom pretrain`` and ``tabom train``: linear warmup, then
cosine decay to a floor, counted in optimizer steps (DESIGN §6)."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The factor on the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup`` steps to 1, then cosine decay to ``min_ratio`` at ``total``
    (and held there past it). For ``torch.optim.lr_scheduler.LambdaLR``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


__all__ = ["lr_factor"]
