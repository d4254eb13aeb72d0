"""Weighted parameter averaging: AoDE itself (paper III-C, "Average of Domain Experts").

    theta = sum_i w_i theta_i / sum_i w_i

Uniform weights give the paper's AoDE; including the original model as a member gives
"AoDE with orig."; weights [4, 1, 1, 1, 1] give Table VIII's 4/8 + 4 x 1/8 re-weighting.
Same convention as mergekit's ``linear`` with ``normalize: true``.

Exact expression (float32, members in the given order)::

    acc = zeros_like(theta_1)
    for i in 1..N: acc = acc + w_i * theta_i     # w_i a float32 scalar tensor
    theta = acc / sum(w)                          # sum(w) = weights.sum() in float32

so with weights all 1 the result is bit-for-bit ``((theta_1 + theta_2) + ...) / N``.
"""

import torch

from .registry import register


def weighted_average(tensors, weights):
    """``sum_i w_i t_i / sum_i w_i`` accumulated in float32 in member order (see above)."""
    total = weights.sum()
    if total == 0:
        raise ValueError(f"the weights sum to zero ({weights.tolist()}); cannot average")
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for w, t in zip(weights, tensors):
        acc += w * t
    return acc / total


@register("average", elementwise=True)
def average(tensors, weights, base=None, generator=None):
    """AoDE (paper III-C): the weighted element-wise mean ``sum_i w_i theta_i / sum_i w_i``.

    Options: none. ``base`` is unused (pass ``include_base=True`` to the driver to average
    the original model in).
    """
    return weighted_average(tensors, weights)
