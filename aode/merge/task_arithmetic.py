"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023).

    theta = theta_0 + lam * sum_i w_i (theta_i - theta_0)

The weights are NOT normalised (mergekit's ``task_arithmetic``: ``normalize`` defaults to
false); with weights all 1 and ``lam = 1/N`` this is the plain average. Exact expression
(float32, member order)::

    acc = zeros; for i: acc = acc + w_i * (theta_i - theta_0); theta = theta_0 + lam * acc
"""

import torch

from .registry import register


def require_base(base, method):
    if base is None:
        raise ValueError(
            f"merge method {method!r} works on task vectors (theta_i - theta_0) and needs "
            "the original model: pass base=<folder of the pretrained model>"
        )


def weighted_delta_sum(deltas, weights):
    """``sum_i w_i delta_i`` accumulated in float32 in member order."""
    acc = torch.zeros_like(deltas[0], dtype=torch.float32)
    for w, d in zip(weights, deltas):
        acc += w * d
    return acc


@register("task_arithmetic", needs_base=True, elementwise=True, propagates_nonfinite=True)
def task_arithmetic(tensors, weights, base, generator=None, lam=1.0):
    """Task arithmetic: ``theta_0 + lam * sum_i w_i (theta_i - theta_0)``. Option ``lam``."""
    require_base(base, "task_arithmetic")
    acc = torch.zeros_like(base, dtype=torch.float32)
    for w, t in zip(weights, tensors):
        acc += w * (t - base)
    return base + lam * acc
