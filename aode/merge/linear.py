"""Weighted parameter averaging: AoDE itself (paper III-C, "Average of Domain Experts").

    theta = sum_i w_i theta_i / sum_i w_i

Uniform weights give the paper's AoDE; including the original model as a member gives
"AoDE with orig."; weights [4, 1, 1, 1, 1] give Table VIII's 4/8 + 4 x 1/8 re-weighting.
Same convention as mergekit's ``linear`` with ``normalize: true``.

Exact expression (float32, members in the given order)::

    acc = w_1 * theta_1
    for i in 2..N: acc = acc + w_i * theta_i     # w_i a float32 scalar; w_i * t is
                                                  # skipped (t itself) when w_i == 1
    theta = acc / sum(w)                          # sum(w) = weights.sum() in float32

so with weights all 1 the result is bit-for-bit ``(((theta_1 + theta_2) + ...) + theta_N) / N``
as computed by hand in float32 (``torch.equal`` holds; the test does exactly this).

Option ``normalize`` (default True, the formula above). ``normalize=False`` returns the
unnormalised ``sum_i w_i theta_i`` (the same accumulation, without the division), as
mergekit's ``linear`` with ``normalize: false``. With ``normalize=True`` a zero weight sum is
a ValueError here; mergekit divides anyway (inf/NaN). mergekit accumulates with
``addcmul_`` from zeros, so with weights other than 1 its result can differ from ours in the
last bit (tests/test_mergekit_parity.py: allclose, 1e-6 relative).
"""

import torch

from .registry import MergekitMapping
from .registry import MergekitParam
from .registry import register

# The paper this project reproduces (average, most_extreme and least_extreme are its methods).
AODE_PAPER = 'Plantinga, Yoo, Girma & Dhir, "Parameter Averaging is All You Need to Prevent Forgetting", IEEE SLT 2024'


def weighted_average(tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i t_i / sum_i w_i`` accumulated in float32 in member order (see above)."""
    total = weights.sum()
    if total == 0:
        raise ValueError(f"the weights sum to zero ({weights.tolist()}); cannot average")
    acc = weighted_sum(tensors, weights)
    acc /= total
    return acc


def weighted_sum(tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i t_i`` accumulated in float32 in member order; always a new tensor."""
    acc = first = None
    for w, t in zip(weights.tolist(), tensors):
        # w * t with w == 1 is t itself, bit for bit: skip the multiply (and its temporary).
        term = t if w == 1.0 else torch.tensor(w, dtype=torch.float32) * t
        if first is None:
            first = term
        elif acc is None:
            acc = first + term  # a new tensor: the inputs are never modified
        else:
            acc += term
    if acc is None:
        acc = first.clone() if first is tensors[0] else first
    return acc


@register(
    "average",
    display_name="AoDE (average of domain experts)",
    reference=f"{AODE_PAPER}, III-C",
    elementwise=True,
    propagates_nonfinite=True,
    # mergekit's linear: base_model, when given, is one more member (weighted last)
    mergekit=MergekitMapping(
        {"weight": MergekitParam("input", float), "normalize": MergekitParam("shared", bool, True)},
        options={"normalize": "normalize"},
        method="linear",
        base_model="member",
    ),
)
def average(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """AoDE (paper III-C): the weighted element-wise mean ``sum_i w_i theta_i / sum_i w_i``.

    Option ``normalize`` (True; False: the unnormalised ``sum_i w_i theta_i``, mergekit's
    ``linear`` with ``normalize: false``). ``base`` is unused (pass ``include_base=True`` to
    the driver to average the original model in).
    """
    if normalize:
        return weighted_average(tensors, weights)
    return weighted_sum(tensors, weights)
