"""Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging
with Sparse Masks", ECCV 2024; arXiv 2312.06795), with mergekit's conventions
(``mergekit.sparsify.magnitude_outliers`` and ``merge_methods/generalized_task_arithmetic``).

Per tensor, for each task vector ``delta_i = theta_i - theta_0`` of ``n`` entries, drop the
largest-magnitude outliers and the smallest entries so that a fraction ``density`` remains:

    keep  = int(density * n)                 (no "at least one": 0 kept -> a zero delta)
    top   = int(gamma * n)                   outliers to drop
    bot   = max(0, n - keep - top)           smallest to drop
    tau_i = delta_i on the entries ranked top' .. top' + keep - 1 by decreasing magnitude,
            0 elsewhere, where top' = n - keep - bot = min(top, n - keep)

so when ``density + gamma > 1`` fewer outliers are dropped (the density wins), and
``density >= 1`` returns the delta untouched whatever ``gamma`` (mergekit returns early).
``rescale=True`` multiplies ``tau_i`` by ``|delta_i|_1 / |tau_i|_1`` (mergekit's
``RescaleNorm.l1``; skipped when either norm is below 1e-7).

* ``breadcrumbs``: task arithmetic on the ``tau_i``:
  ``theta_0 + lam * sum_i w_i tau_i`` (``normalize=True``: the sum divided by ``sum_i w_i``,
  undivided when that is below 1e-8 in magnitude; :func:`aode.merge.task_arithmetic.
  normalize_delta_sum`); no sign consensus.
* ``breadcrumbs_ties``: TIES' sign election and (with ``normalize=True``) disjoint mean on the
  ``tau_i`` (:func:`aode.merge.ties.elect_and_merge`), then ``theta_0 + lam * merged``.

Options, with mergekit's names and defaults except ``lam`` (mergekit's ``lambda``, the house
name): ``density`` (1.0), ``gamma`` (0.01), ``lam`` (1.0), ``normalize`` (False),
``rescale`` (False). NOTE: with mergekit's default ``density = 1`` nothing is dropped and
``breadcrumbs`` is plain task arithmetic: pass a ``density`` below 1 to get breadcrumbs.
mergekit takes ``density``/``gamma`` per member; here they are one value for all members
(as our ``ties``/``dare``).

Deviations from mergekit: mergekit ranks with an unstable ascending ``torch.sort``; here a
stable descending sort, so magnitude ties at a cut are broken by position (an earlier entry
counts as larger, as in our TIES trim). mergekit masks by multiplying (a dropped NaN stays
NaN, a dropped negative becomes -0.0); here dropped entries are +0.0. Deviations from the
paper: the paper ranks per layer by percentiles; mergekit (and this) per tensor by counts.
"""

import torch

from .checks import fraction
from .registry import register
from .task_arithmetic import gta_mergekit
from .task_arithmetic import normalize_delta_sum
from .task_arithmetic import require_base
from .task_arithmetic import weighted_delta_sum
from .ties import elect_and_merge

PAPER = (
    'Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", ECCV 2024 '
    "(arXiv 2312.06795)"
)
# What both methods declare: density and gamma are fractions; mergekit's parameters, with ours
# the same names and defaults (lam: lambda).
REGISTRATION = dict(
    reference=PAPER,
    needs_base=True,
    checks={"density": fraction, "gamma": fraction},
    mergekit=gta_mergekit(
        "density", "gamma", "lam", "normalize", "rescale", normalize=False, rescale=False, gamma=True
    ),
)


def l1_rescale(delta: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mergekit's ``RescaleNorm.l1``: scale ``masked`` to the L1 norm of ``delta``."""
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False) -> torch.Tensor:
    """Keep ``int(density * n)`` entries after dropping the ``int(gamma * n)`` largest and the
    smallest (fewer outliers when both do not fit); see the module docstring."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    n = flat.numel()
    keep = int(density * n)
    bot = max(0, n - keep - int(gamma * n))
    start = n - keep - bot
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[start : start + keep]
    out = torch.zeros_like(flat)
    out[order] = flat[order]
    out = out.reshape(delta.shape)
    if rescale:
        out = l1_rescale(delta, out)
    return out


def _masked_deltas(tensors, base, density, gamma, rescale):
    return [magnitude_outliers(t - base, density, gamma, rescale) for t in tensors]


@register("breadcrumbs", display_name="Model Breadcrumbs", **REGISTRATION)
def breadcrumbs(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    density: float = 1.0,
    gamma: float = 0.01,
    lam: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
) -> torch.Tensor:
    """Model Breadcrumbs: drop outliers and small entries of each task vector, then add them."""
    require_base(base, "breadcrumbs")
    acc = weighted_delta_sum(_masked_deltas(tensors, base, density, gamma, rescale), weights)
    if normalize:
        acc = normalize_delta_sum(acc, weights)
    return base + lam * acc


@register("breadcrumbs_ties", display_name="Model Breadcrumbs + TIES", **REGISTRATION)
def breadcrumbs_ties(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    density: float = 1.0,
    gamma: float = 0.01,
    lam: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
) -> torch.Tensor:
    """Model Breadcrumbs masks + TIES sign election and (``normalize``) disjoint mean."""
    require_base(base, "breadcrumbs_ties")
    deltas = _masked_deltas(tensors, base, density, gamma, rescale)
    return base + lam * elect_and_merge(deltas, weights, normalize=normalize)
