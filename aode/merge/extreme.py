"""Per-element "most extreme" / "least extreme" aggregation (paper Table IV).

    most_extreme:  theta[k] = theta_j[k],  j = argmax_i |theta_i[k]|
    least_extreme: theta[k] = theta_j[k],  j = argmin_i |theta_i[k]|

Ties go to the first member in the given order (strict comparisons while scanning members
in order). The weights are ignored. mergekit has no equivalent method.
"""

import torch

from .linear import AODE_PAPER
from .registry import register


def _extreme(tensors, largest):
    out = tensors[0].clone()
    mag = out.abs()
    for t in tensors[1:]:
        m = t.abs()
        take = m > mag if largest else m < mag
        out = torch.where(take, t, out)
        mag = torch.where(take, m, mag)
    return out


@register("most_extreme", display_name="Most extreme", reference=f"{AODE_PAPER}, Table IV", elementwise=True)
def most_extreme(
    tensors: list[torch.Tensor],
    weights: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Table IV "most extreme": per element the member value of largest magnitude."""
    return _extreme(tensors, largest=True)


@register("least_extreme", display_name="Least extreme", reference=f"{AODE_PAPER}, Table IV", elementwise=True)
def least_extreme(
    tensors: list[torch.Tensor],
    weights: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Table IV "least extreme": per element the member value of smallest magnitude."""
    return _extreme(tensors, largest=False)
