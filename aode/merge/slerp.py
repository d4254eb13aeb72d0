"""Spherical linear interpolation of two models (Shoemake 1985; as in mergekit's ``slerp``).

Per tensor, over the flattened tensor, between ``v0`` (first member) and ``v1`` (second):

    cos = <v0/|v0|, v1/|v1|>           (a vector of norm <= 1e-8 is left unnormalised)
    if |cos| > 1 - eps:  theta = (1 - t) v0 + t v1                 (near-parallel: lerp)
    else: Omega = arccos(cos);
          theta = sin((1 - t) Omega)/sin(Omega) v0 + sin(t Omega)/sin(Omega) v1

``t`` is the option ``t`` when given; otherwise it comes from the weights,
``t = w_2 / (w_1 + w_2)``, so uniform weights give 0.5 and ``weight_rules`` can give each
part of the model its own ``t``. ``eps`` defaults to 5e-4 (mergekit's DOT_THRESHOLD 0.9995).
The cosine is computed in float64 (mergekit: float32 numpy; outputs differ by at most one
float32 ulp). Exactly two members. mergekit interpolates from its ``base_model`` to the other
model; here from the first member to the second: list the base first for the same result.

Options: ``t`` (None -> from the weights), ``eps`` (5e-4).
"""

import math

import torch

from .registry import MergekitMapping
from .registry import MergekitParam
from .registry import register


@register(
    "slerp",
    display_name="SLERP",
    reference='Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH 1985',
    min_members=2,
    max_members=2,
    # mergekit's slerp: base_model is the t = 0 end; t gives our t, or weights [1 - t, t] per tensor
    mergekit=MergekitMapping({"t": MergekitParam("shared", float)}, base_model="start", weights=False),
)
def slerp(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    t: float | None = None,
    eps: float = 5e-4,
) -> torch.Tensor:
    """SLERP between the two members; falls back to linear interpolation when near-parallel."""
    if len(tensors) != 2:
        raise ValueError(f"slerp merges exactly two members, got {len(tensors)}")
    v0, v1 = tensors
    if t is None:
        total = float(weights[0] + weights[1])
        if total == 0:
            raise ValueError("slerp: the two weights sum to zero; give the option t")
        t = float(weights[1]) / total
    t = float(t)
    a = v0.reshape(-1).double()
    b = v1.reshape(-1).double()
    na = torch.linalg.vector_norm(a).item()
    nb = torch.linalg.vector_norm(b).item()
    dot = torch.dot(a, b).item()
    del a, b
    cos = dot / ((na if na > 1e-8 else 1.0) * (nb if nb > 1e-8 else 1.0))
    if abs(cos) > 1 - eps:
        return (1 - t) * v0 + t * v1
    omega = math.acos(max(-1.0, min(1.0, cos)))
    sin_omega = math.sin(omega)
    s0 = math.sin((1 - t) * omega) / sin_omega
    s1 = math.sin(t * omega) / sin_omega
    return s0 * v0 + s1 * v1
