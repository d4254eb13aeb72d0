"""Fisher-weighted averaging (Matena & Raffel, "Merging Models with Fisher-Weighted
Averaging", NeurIPS 2022), with their diagonal-Fisher floor.

    theta = sum_i w_i F_i' theta_i / sum_i w_i F_i',   F_i' = max(F_i, eps)

``F_i`` is member i's diagonal Fisher for this tensor (same shape). The floor ``eps``
(option, default 1e-6; Matena & Raffel's ``fisher_floor``) keeps the denominator positive:
where every Fisher is ~0 the result is the plain weighted average. Where a Fisher is missing
for this tensor in any member, the tensor falls back to the plain weighted average
(:func:`aode.merge.linear.weighted_average`). mergekit has no Fisher merge.

Fishers are stored as one safetensors file per member, keyed like the model's tensors,
float32 (the format is :mod:`aode.fisher_file`; :func:`aode.merge.save_fisher` writes it).
The driver finds them through the option ``fisher_files`` (one path per member, None for
none; with ``include_base`` the base is the last member) or, by default,
``fisher.safetensors`` inside each member's folder.

Options: ``fisher_files`` (driver), ``eps`` (1e-6).
"""

import logging
import os

import torch

from aode.fisher_file import fisher_path

from .linear import weighted_average
from .read import SafetensorsFile
from .registry import register

logger = logging.getLogger(__name__)


def _setup(member_dirs, options):
    options = dict(options)
    files = options.pop("fisher_files", None)
    if files is None:
        files = [fisher_path(d) for d in member_dirs]
        files = [f if os.path.isfile(f) else None for f in files]
    elif len(files) != len(member_dirs):
        raise ValueError(f"fisher_files has {len(files)} entries for {len(member_dirs)} members")
    sources = []
    for d, f in zip(member_dirs, files):
        if f is None:
            logger.warning("no Fisher for member %s: its tensors use the plain weighted average", d)
            sources.append(None)
        else:
            sources.append(SafetensorsFile(f))
    return options, {"fishers": sources}


@register(
    "fisher",
    display_name="Fisher merging",
    reference='Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022',
    elementwise=True,
    propagates_nonfinite=True,
    setup=_setup,
    statistics="fisher",
    options={"fisher_files": None},
    aligned=("fishers",),
)
def fisher(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    fishers: list[torch.Tensor | None] | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Fisher merging: ``sum_i w_i F_i theta_i / sum_i w_i F_i`` (F floored at ``eps``)."""
    if fishers is None or any(f is None for f in fishers):
        return weighted_average(tensors, weights)
    num = torch.zeros_like(tensors[0])
    den = torch.zeros_like(tensors[0])
    for w, f, t in zip(weights, fishers, tensors):
        c = w * f.float().clamp_min(eps)
        num += c * t
        den += c
    return num / den
