"""Model Stock (Jang, Yun, Han, "Model Stock: All we need is just a few fine-tuned models",
ECCV 2024), with mergekit's conventions (``filter_wise: false``).

Per tensor, flattened, with task vectors ``delta_i = theta_i - theta_0`` of N >= 2 members:

    cos_ij = clamp(<delta_i, delta_j> / max(|delta_i| |delta_j|, 1e-6), -1, 1)
    cos    = mean over pairs i < j of cos_ij
    t      = N cos / (1 + (N - 1) cos)                   (unclamped, like mergekit)
    theta  = t * avg(theta_i) + (1 - t) * theta_0

``avg`` is the weighted mean ``sum_i w_i theta_i / sum_i w_i``; with the default uniform
weights it is mergekit's plain mean (mergekit ignores weights). All-zero task vectors give
cos = 0, t = 0: the base. A cosine of exactly -1/(N-1) makes t infinite: an error (mergekit
returns the base whenever that denominator is below 1e-6; ours refuses only below 1e-12).
Options: none.
"""

import torch

from .linear import weighted_average
from .registry import MergekitMapping
from .registry import MergekitParam
from .registry import register
from .task_arithmetic import require_base


def stock_ratio(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Model Stock's interpolation ratio ``t`` for a list of task vectors (float)."""
    n = len(deltas)
    flat = [d.reshape(-1) for d in deltas]
    norms = [torch.linalg.vector_norm(f) for f in flat]
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            prod = (norms[i] * norms[j]).clamp(min=1e-6)
            cosines.append(((flat[i] * flat[j]).sum() / prod).clamp(-1, 1))
    cos = torch.stack(cosines).mean()
    denom = 1 + (n - 1) * cos
    if denom.abs() < 1e-12:
        raise ValueError(f"model_stock: mean cosine {cos.item():.6g} = -1/(N-1) makes t infinite")
    return n * cos / denom


@register(
    "model_stock",
    display_name="Model Stock",
    reference='Jang, Yun & Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024',
    needs_base=True,
    min_members=2,
    mergekit=MergekitMapping(
        {"filter_wise": MergekitParam("shared", bool, False)},
        weights=False,  # mergekit's model_stock ignores weights
        refused={"filter_wise": "(ours: one ratio per tensor)"},
    ),
)
def model_stock(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Model Stock: ``t * mean(theta_i) + (1 - t) * theta_0``, ``t`` from the mean cosine."""
    require_base(base, "model_stock")
    if len(tensors) < 2:
        raise ValueError("model_stock needs at least two members besides the base")
    t = stock_ratio([x - base for x in tensors])
    return t * weighted_average(tensors, weights) + (1 - t) * base
