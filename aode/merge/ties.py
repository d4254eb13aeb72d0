"""TIES-merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
NeurIPS 2023), with mergekit's numerical conventions.

With task vectors ``delta_i = theta_i - theta_0``:

1. trim: keep the top ``k = max(1, int(density * numel))`` entries of each ``delta_i`` by
   magnitude (per tensor), zero the rest -> ``tau_i``; ties in magnitude at the cut are
   broken by position (stable sort; mergekit's argsort is unstable, and asserts k > 0
   where we keep at least one entry);
2. elect: ``gamma = sign(sum_i w_i tau_i)``, where a zero sum elects ``+`` (mergekit's
   ``sign_weight >= 0``);
3. disjoint mean: member i agrees at an element when ``sign(w_i tau_i) == gamma`` (a trimmed
   zero never agrees); ``merged = sum_agree w_i tau_i / sum_agree w_i``, 0 where none
   agrees (``normalize=False`` leaves the sum undivided);
4. ``theta = theta_0 + lam * merged``.

Options: ``density`` (0.2), ``lam`` (1.0), ``normalize`` (True). mergekit's ``density``
defaults to 1.0 and it has an L1 ``rescale`` option that this module lacks; it takes
``density`` and ``weight`` per model, ours one ``density`` for all. With mergekit's values
passed, outputs are bit-identical (tests/test_mergekit_parity.py).
"""

import torch

from .checks import fraction
from .registry import register
from .task_arithmetic import gta_mergekit
from .task_arithmetic import require_base


def trim_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim: keep the ``max(1, int(density * numel))`` largest-magnitude entries."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    flat = delta.reshape(-1)
    k = max(1, int(density * flat.numel()))
    keep = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(delta.shape)


def elect_and_merge(deltas: list[torch.Tensor], weights: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """TIES sign election and disjoint (weighted) mean of already sparsified deltas."""
    total = torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas):
        total += w * d
    elected = torch.where(total >= 0, 1.0, -1.0)
    del total
    num = torch.zeros_like(deltas[0])
    den = torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas):
        wd = w * d
        agree = torch.sign(wd) == elected
        num += torch.where(agree, wd, 0.0)
        den += torch.where(agree, w, 0.0)
    if normalize:
        num = num / torch.where(den == 0, 1.0, den)
    return num


@register(
    "ties",
    display_name="TIES-merging",
    reference='Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023',
    needs_base=True,
    checks={"density": fraction},
    mergekit=gta_mergekit(
        "density",
        "lam",
        "normalize",
        normalize=True,
        rescale=False,
        refused={"rescale": "(ours has no L1 rescale); remove it"},
    ),
)
def ties(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    density: float = 0.2,
    lam: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES-merging: trim each task vector to ``density``, elect signs, disjoint mean."""
    require_base(base, "ties")
    deltas = [trim_magnitude(t - base, density) for t in tensors]
    return base + lam * elect_and_merge(deltas, weights, normalize=normalize)
