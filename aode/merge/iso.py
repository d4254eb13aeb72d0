"""Iso-C and Iso-CTS: Marczak, Magistri, Cygert, Twardowski, Bagdanov & van de Weijer, "No Task
Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", ICML 2025;
reference implementation ``iso_c`` / ``iso_cts`` in ``src/utils/iso.py`` of
github.com/danielm1405/iso-merging (Apache-2.0).

For every matrix (2-D tensor), with task matrices ``Delta_i = s_i (theta_i - theta_0)`` of the
T members whose task matrix is not zero (``s_i`` from the merge weights, below), in float64,
``r = min(m, n)``:

**Iso-C** (``iso_c``)::

    Delta_TA = sum_i Delta_i = U S V^T                     (thin SVD, r singular values)
    sigma    = sum(S) / r                                  (mean over the full spectrum)
    Delta    = sigma * U V^T                               (numerically non-zero triplets)
    theta    = theta_0 + alpha * Delta

**Iso-CTS** (``iso_cts``), the reference's algorithm step by step:

1. sizes: ``c = int(r * common_space_fraction)``; ``p = round((r - c) / T)`` task-specific
   directions per task (Python's round, half to even); ``c = r - T p`` (the common space
   takes what the equal task shares leave);
2. common subspace: the top ``c`` triplets ``U_c, S_c, V_c`` of ``Delta_TA = sum_i Delta_i``;
3. task-specific subspaces: for each task, the residual outside the common left subspace
   ``R_i = Delta_i - U_c U_c^T Delta_i`` and its top ``p`` triplets ``U_i,p, S_i,p, V_i,p``;
4. ``U = [U_1,p .. U_T,p, U_c]``, ``V`` likewise, ``S`` the r singular values of all those
   triplets; orthogonalise ``U`` and ``V`` by their polar factors (``P Q^T`` of ``P Sigma Q^T``);
5. ``sigma = sum(S) / r``; ``Delta = sigma * U_perp V_perp^T``; ``theta = theta_0 + alpha * Delta``.

With ``common_space_fraction = 1`` Iso-CTS is Iso-C.

Every other tensor (biases, norms, scalars, and, unless ``reshape_conv``, convolutions) gets
the task-arithmetic average of the reference code, ``theta_0 + alpha * sum_i w_i Delta_i /
sum_i w_i``.

Options:

* ``alpha`` (1.0): the reference code picks alpha per setting on validation data (it searches
  (0, 3]); there is no single recommended value, so the default is 1.0. Any finite number.
* ``common_space_fraction`` (``iso_cts`` only, 0.8: the value of the reference's
  ``config/method/iso_cts.yaml`` and README), in [0, 1].
* ``reshape_conv`` (False): as for ``tsv`` (:mod:`aode.merge.tsv`): convolution kernels are
  averaged like in the reference, or, with ``True``, merged as ``shape[0] x prod(shape[1:])``
  matrices.
* ``device`` (None: the input's, the CPU): where the float64 SVDs run (e.g. ``"cuda"``); as for
  ``tsv``.

Merge weights and zero task vectors: as for ``tsv``. Each task vector is scaled by
``w_i / mean(w)`` over the positive weights (weights finite, non-negative, positive sum; a
weight of 0 leaves the member out); a member whose task matrix is
zero (the original appended by ``include_base``, a frozen layer, a weight of 0) is left out
before T is counted: Iso-C's sum does not change, and in Iso-CTS it takes no share of the task
directions (the reference would fill its ``p`` slots with arbitrary directions of singular value
0, which the isotropic scaling then raises to ``sigma``). With a positive weight it counts in
the non-matrix average.

Deviations from the reference code, and why:

* numerically zero triplets (``s <= max(m, n) * eps_float32 * ||X||_F``, X = ``Delta_TA`` for
  Iso-C's and Iso-CTS's common ones, ``Delta_i`` for task i's) are left out of ``U`` and ``V`` (their
  directions are arbitrary: in the reference, a rank-deficient ``Delta_TA``, e.g. from LoRA
  experts, gets arbitrary null-space directions scaled up to ``sigma``); they still count in the
  ``r`` that divides ``sum(S)``, as in the reference, so for full-rank task matrices nothing
  changes;
* ``p`` is capped at ``r // T`` (the reference's rounding can ask for more task directions than
  the rank, ``r = 2, T = 3``, and then indexes with a negative ``c``);
* every 2-D tensor is a matrix (the reference also averages CLIP's ``text_projection``).

Not element-wise: float64 SVDs of whole matrices (T + 3 per matrix for Iso-CTS, 1 for Iso-C).
"""

import torch

from .checks import interval
from .registry import register
from .tsv import SUBSPACE_CHECKS
from .tsv import numerical_tolerance
from .tsv import polar
from .tsv import subspace_merge

__all__ = ["iso_c", "iso_cts", "iso_c_matrices", "iso_cts_matrices"]

DEFAULT_COMMON_SPACE_FRACTION = 0.8
PAPER = (
    'Marczak, Magistri, Cygert, Twardowski, Bagdanov & van de Weijer, "No Task Left Behind: Isotropic Model '
    'Merging with Common and Task-Specific Subspaces", ICML 2025'
)


def iso_c_matrices(mats: list[torch.Tensor]) -> torch.Tensor:
    """Iso-C of non-zero float64 task matrices, without alpha."""
    total = torch.stack(mats).sum(0)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    sigma = s.sum() / s.numel()
    keep = s > numerical_tolerance(total)
    return sigma * (u[:, keep] @ vh[keep])


def iso_cts_sizes(r: int, tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """``(c, p)``: common directions and task-specific directions per task (step 1)."""
    common = int(r * common_space_fraction)
    per_task = min(round((r - common) / tasks), r // tasks)
    return r - per_task * tasks, per_task


def iso_cts_matrices(
    mats: list[torch.Tensor], common_space_fraction: float = DEFAULT_COMMON_SPACE_FRACTION
) -> torch.Tensor:
    """Iso-CTS of non-zero float64 task matrices (steps 1-5), without alpha."""
    m, n = mats[0].shape
    r = min(m, n)
    common, per_task = iso_cts_sizes(r, len(mats), common_space_fraction)
    total = torch.stack(mats).sum(0)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    u_c, s_c, vh_c = u[:, :common], s[:common], vh[:common]
    us, ss, vhs, kept = [], [], [], []
    for d in mats:
        residual = d - u_c @ (u_c.T @ d)
        ut, st, vht = torch.linalg.svd(residual, full_matrices=False)
        ut, st, vht = ut[:, :per_task], st[:per_task], vht[:per_task]
        us.append(ut)
        ss.append(st)
        vhs.append(vht)
        kept.append(st > numerical_tolerance(d))
    us.append(u_c)
    ss.append(s_c)
    vhs.append(vh_c)
    kept.append(s_c > numerical_tolerance(total))
    sigma = torch.cat(ss).sum() / r
    keep = torch.cat(kept)
    if not bool(keep.any()):
        return torch.zeros(m, n, dtype=torch.float64, device=mats[0].device)
    u_all = torch.cat(us, dim=1)[:, keep]
    vh_all = torch.cat(vhs, dim=0)[keep]
    return sigma * (polar(u_all) @ polar(vh_all))


@register("iso_c", display_name="Iso-C", reference=PAPER, needs_base=True, checks=SUBSPACE_CHECKS)
def iso_c(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    alpha: float = 1.0,
    reshape_conv: bool = False,
    device: str | None = None,
) -> torch.Tensor:
    """Iso-C (Marczak et al., ICML 2025): the task-arithmetic sum with a flat spectrum.
    Options ``alpha`` (1.0), ``reshape_conv`` (False), ``device`` (None); see the module docstring."""
    return subspace_merge(tensors, weights, base, "iso_c", alpha, reshape_conv, iso_c_matrices, device)


@register(
    "iso_cts",
    display_name="Iso-CTS",
    reference=PAPER,
    needs_base=True,
    checks={**SUBSPACE_CHECKS, "common_space_fraction": interval(0, 1)},
)
def iso_cts(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    alpha: float = 1.0,
    common_space_fraction: float = DEFAULT_COMMON_SPACE_FRACTION,
    reshape_conv: bool = False,
    device: str | None = None,
) -> torch.Tensor:
    """Iso-CTS (Marczak et al., ICML 2025): common plus task-specific subspaces, flat spectrum.
    Options ``alpha`` (1.0), ``common_space_fraction`` (0.8), ``reshape_conv`` (False), ``device``."""
    f = common_space_fraction
    return subspace_merge(
        tensors, weights, base, "iso_cts", alpha, reshape_conv, lambda mats: iso_cts_matrices(mats, f), device
    )
