"""Slanted triangular learning rates (STLR, Howard & Ruder 2018; paper III-A).

Linear warm-up to the peak at ``peak_fraction`` of the steps, then linear decay; the
factor runs from ``1 / ratio`` to 1 and back. It multiplies each parameter group's own
``initial_lr``, so LLRD's per-group ratios are the same at every step (SpeechBrain's
schedulers write one rate into every group, which would erase them).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import speechbrain as sb

if TYPE_CHECKING:
    import torch


def stlr_factor(step: int, total_steps: int, peak_fraction: float = 0.1, ratio: float = 32.0) -> float:
    """The STLR multiplier at optimizer step ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError("STLR needs total_steps > 0")
    if not 0 < peak_fraction < 1:
        raise ValueError(f"peak_fraction must be in (0, 1), got {peak_fraction}")
    cut = max(1, int(total_steps * peak_fraction))
    t = min(step, total_steps)
    if t < cut:
        p = t / cut
    else:
        p = max(0.0, 1 - (t - cut) / max(1, total_steps - cut))
    return (1 + p * (ratio - 1)) / ratio


@sb.utils.checkpoints.register_checkpoint_hooks
class STLR:
    """Sets every group's ``lr`` to ``initial_lr * stlr_factor(step)``; checkpointable.

    The Brain calls :meth:`apply` before every batch (so a run resumed from a checkpoint starts
    at the right rate) and :meth:`step` after every optimizer update.
    """

    def __init__(self, total_steps, peak_fraction=0.1, ratio=32.0):
        self.total_steps = int(total_steps)
        self.peak_fraction = peak_fraction
        self.ratio = ratio
        self.current_step = 0

    def factor(self) -> float:
        return stlr_factor(self.current_step, self.total_steps, self.peak_fraction, self.ratio)

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        factor = self.factor()
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor

    def step(self, optimizer: torch.optim.Optimizer) -> float:
        self.current_step += 1
        return self.apply(optimizer)

    @sb.utils.checkpoints.mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        import torch

        torch.save({"current_step": self.current_step, "total_steps": self.total_steps}, path)

    @sb.utils.checkpoints.mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = False) -> None:
        import torch

        state = torch.load(path, weights_only=True)
        self.current_step = state["current_step"]
