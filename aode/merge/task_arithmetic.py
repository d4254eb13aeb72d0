"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023).

    theta = theta_0 + lam * sum_i w_i (theta_i - theta_0)

The weights are NOT normalised (mergekit's ``task_arithmetic``: ``normalize`` defaults to
false); with weights all 1 and ``lam = 1/N`` this is the plain average. Exact expression
(float32, member order)::

    acc = zeros; for i: acc = acc + w_i * (theta_i - theta_0); theta = theta_0 + lam * acc

Option ``normalize`` (default False, the formula above). ``normalize=True`` divides the
weighted delta sum by the sum of ALL the weights, ``theta = theta_0 + lam * (acc / sum_i w_i)``,
as mergekit's ``task_arithmetic`` with ``normalize: true`` (``mergekit.merge_methods.
generalized_task_arithmetic``): a weight sum with ``|sum| < 1e-8`` leaves ``acc`` undivided
(mergekit's guard; no error). mergekit's methods without sign consensus (task_arithmetic,
dare_linear, breadcrumbs) divide by the sum of all the weights even where a sparsified
delta is zero; those with consensus (ties, dare_ties, breadcrumbs_ties) by the sum of the
agreeing weights (:func:`aode.merge.ties.elect_and_merge`). Matches mergekit 0.1.5 bit for
bit (tests/test_mergekit_parity.py).
"""

from typing import Callable

import torch

from .registry import MergekitMapping
from .registry import MergekitParam
from .registry import register

# mergekit's name for our option ``lam`` (the others have the same name in both).
MERGEKIT_NAMES = {"lam": "lambda"}


def require_base(base: torch.Tensor | None, method: str) -> None:
    """ValueError unless the task-vector method ``method`` got the original's tensor ``base``."""
    if base is None:
        raise ValueError(
            f"merge method {method!r} works on task vectors (theta_i - theta_0) and needs "
            "the original model: pass base=<folder of the pretrained model>"
        )


def weighted_delta_sum(deltas: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i delta_i`` accumulated in float32 in member order."""
    acc = torch.zeros_like(deltas[0], dtype=torch.float32)
    for w, d in zip(weights, deltas):
        acc += w * d
    return acc


def normalize_delta_sum(acc: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mergekit's ``normalize`` without consensus: ``acc / sum(weights)``, undivided if ~0."""
    total = weights.sum()
    if total.abs() < 1e-8:
        return acc
    return acc / total


def gta_mergekit(
    *options: str,
    normalize: bool,
    rescale: bool,
    gamma: bool = False,
    refused: dict | None = None,
    notes: Callable[[str, dict], list] | None = None,
) -> MergekitMapping:
    """The mapping of a method of mergekit's ``GeneralizedTaskArithmeticMerge``
    (``merge_methods/generalized_task_arithmetic.py``, mergekit 0.1.5): its parameters, with
    the method's defaults of ``normalize`` and ``rescale`` (and ``gamma`` for the breadcrumbs
    methods), onto our ``options`` of the same names (``lam``: mergekit's ``lambda``)."""
    parameters = {  # in the order they are read: the first that takes two values is named
        "lambda": MergekitParam("shared", float, 1.0),
        "normalize": MergekitParam("shared", bool, normalize),
        "rescale": MergekitParam("shared", bool, rescale),
        "weight": MergekitParam("non_base", float),
        "density": MergekitParam("non_base", float, 1.0),
        "int8_mask": MergekitParam("shared", bool, False),  # a memory saving, same result: read, not used
    }
    if gamma:
        parameters["gamma"] = MergekitParam("non_base", float, 0.01)
    return MergekitMapping(
        parameters,
        options={o: MERGEKIT_NAMES.get(o, o) for o in options},
        refused=refused or {},
        notes=notes,
    )


def _ignored_sparsity(method, values):
    if values["density"] != 1.0 or values["rescale"]:
        return [f"{method}: density and rescale are ignored (mergekit ignores them too)"]
    return []


@register(
    "task_arithmetic",
    display_name="Task arithmetic",
    reference='Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023',
    needs_base=True,
    elementwise=True,
    propagates_nonfinite=True,
    mergekit=gta_mergekit("lam", "normalize", normalize=False, rescale=False, notes=_ignored_sparsity),
)
def task_arithmetic(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    lam: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Task arithmetic: ``theta_0 + lam * sum_i w_i (theta_i - theta_0)``.

    Options ``lam`` (1.0), ``normalize`` (False; True divides the sum by ``sum_i w_i``).
    """
    require_base(base, "task_arithmetic")
    acc = torch.zeros_like(base, dtype=torch.float32)
    for w, t in zip(weights, tensors):
        acc += w * (t - base)
    if normalize:
        acc = normalize_delta_sum(acc, weights)
    return base + lam * acc
