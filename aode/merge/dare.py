"""DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
Models as a Free Lunch", ICML 2024): Drop And REscale task vectors before merging.

Each element of each task vector ``delta_i = theta_i - theta_0`` is dropped with
probability ``p = 1 - density`` and the kept ones are rescaled by ``1 / (1 - p)``:

    keep_i = U_i < density   (U_i ~ uniform[0, 1) from the per-tensor generator, member order)
    tau_i  = delta_i * keep_i / density

* ``dare_linear``: ``theta_0 + lam * sum_i w_i tau_i`` (task arithmetic on the ``tau_i``;
  weights not normalised, as mergekit);
* ``dare_ties``: TIES' sign election and disjoint mean on the ``tau_i``
  (see :mod:`aode.merge.ties`), then ``theta_0 + lam * merged``.

With ``density = 1`` (p = 0) nothing is drawn and ``dare_linear`` equals task arithmetic
bit for bit. The driver seeds the generator per tensor from the merge seed and the tensor
name, so a merge is reproducible and independent of the order of the tensors.

Options: ``density`` (0.5), ``lam`` (1.0), ``rescale`` (True); ``dare_ties`` also
``normalize``. Deviation from mergekit: its ``dare_ties`` defaults to ``normalize: false``
(sum of the agreeing deltas); here it defaults to True (the disjoint mean, as TIES), pass
``normalize=False`` for mergekit's behaviour. mergekit's ``density`` defaults to 1.0 (no
drop); ours to 0.5. mergekit's ``rescale`` restores the task vector's L1 norm after the drop;
ours divides by ``density`` (the DARE paper's rescaling; equal in expectation). mergekit
takes ``density`` and ``weight`` per model; ours one ``density`` for all members. Parity
at ``density: 1`` is exact (tests/test_mergekit_parity.py). mergekit draws the mask with
``torch.bernoulli`` from the global RNG; here it is ``torch.rand(generator) < density``.
"""

import torch

from .checks import fraction
from .registry import register
from .task_arithmetic import gta_mergekit
from .task_arithmetic import require_base
from .task_arithmetic import weighted_delta_sum
from .ties import elect_and_merge

DARE_PAPER = (
    'Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch", '
    "ICML 2024"
)


def _mask_note(method, values):
    if values["density"] < 1:
        return [
            f"{method}: density {values['density']} < 1: our masks come from a per-tensor generator (seeded by the "
            "merge seed) and rescale divides by the density; mergekit draws from its global RNG and restores the L1 "
            "norm: the result is not mergekit's bit for bit (see aode.merge.dare)"
        ]
    return []


def drop_and_rescale(
    delta: torch.Tensor, density: float, generator: torch.Generator | None, rescale: bool = True
) -> torch.Tensor:
    """DARE: zero each element with probability ``1 - density``; rescale kept by 1/density."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    out = delta * keep
    if rescale:
        out = out / density
    return out


# What both methods declare besides their mergekit mapping.
REGISTRATION = dict(reference=DARE_PAPER, needs_base=True, checks={"density": fraction})


@register(
    "dare_linear",
    display_name="DARE + task arithmetic",
    **REGISTRATION,
    mergekit=gta_mergekit(
        "density",
        "lam",
        "rescale",
        normalize=False,
        rescale=True,
        refused={"normalize": "(ours sums the weighted task vectors, mergekit's default); remove it or use dare_ties"},
        notes=_mask_note,
    ),
)
def dare_linear(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    density: float = 0.5,
    lam: float = 1.0,
    rescale: bool = True,
) -> torch.Tensor:
    """DARE + task arithmetic: ``theta_0 + lam * sum_i w_i DARE(theta_i - theta_0)``."""
    require_base(base, "dare_linear")
    deltas = [drop_and_rescale(t - base, density, generator, rescale) for t in tensors]
    return base + lam * weighted_delta_sum(deltas, weights)


@register(
    "dare_ties",
    display_name="DARE + TIES",
    **REGISTRATION,
    mergekit=gta_mergekit("density", "lam", "rescale", "normalize", normalize=False, rescale=True, notes=_mask_note),
)
def dare_ties(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    density: float = 0.5,
    lam: float = 1.0,
    rescale: bool = True,
    normalize: bool = True,
) -> torch.Tensor:
    """DARE + TIES: drop and rescale each task vector, then sign election + disjoint mean."""
    require_base(base, "dare_ties")
    deltas = [drop_and_rescale(t - base, density, generator, rescale) for t in tensors]
    return base + lam * elect_and_merge(deltas, weights, normalize=normalize)
