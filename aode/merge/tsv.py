"""TSV-Merge: Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri & Rodola, "Task Singular
Vectors: Reducing Task Interference in Model Merging", CVPR 2025; reference implementation
``compute_and_sum_svd_mem_reduction`` in ``src/utils/TSVM_utils.py`` of
github.com/AntoAndGar/task_singular_vectors (Apache-2.0).

For every matrix (2-D tensor), with task matrices ``Delta_i = s_i (theta_i - theta_0)`` (``s_i``
the merge weights, below) of the T members whose task matrix is not zero, in float64:

1. ``Delta_i = U_i S_i V_i^T`` (thin SVD); keep each task's top ``k = max(1, floor(fraction *
   min(m, n)))`` singular triplets (``fraction`` default ``1 / T``, the paper's choice);
2. concatenate them: ``U = [U_1,k .. U_T,k]`` (m x Tk), ``S = diag(S_1,k .. S_T,k)``,
   ``V = [V_1,k .. V_T,k]`` (n x Tk);
3. decorrelate: replace ``U`` and ``V`` by their closest orthogonal matrices (orthogonal
   Procrustes / polar factor: ``U = P Sigma Q^T -> U_perp = P Q^T``, likewise ``V_perp``);
4. ``Delta = U_perp S V_perp^T`` and ``theta = theta_0 + alpha * Delta``.

Every other tensor (biases, norms, scalars, and, unless ``reshape_conv``, convolutions) gets
the task-arithmetic average of the reference code, ``theta_0 + alpha * sum_i w_i Delta_i /
sum_i w_i`` (with uniform weights the plain mean of the task vectors; ``alpha = 1``: the plain
weighted average of the members).

Options:

* ``alpha`` (1.0): the paper's main results use alpha = 1; its code also tunes alpha on
  validation data over (0, 3]. Any finite number.
* ``fraction`` (None = 1/T): the share of each task's rank kept, ``0 < fraction <= 1``. With
  ``fraction * T > 1`` the concatenated bases have more columns than fit orthogonally (the
  polar factor is then a partial isometry); allowed, not the paper's setting.
* ``reshape_conv`` (False): tensors of 3 or more dimensions (convolution kernels
  ``out x in x k..``) are, like in both reference implementations (which average CLIP's
  patch-embedding convolution), averaged as above. With ``True`` they are viewed as
  ``shape[0] x prod(shape[1:])`` matrices (``out`` x ``in * k``, the map a convolution applies
  to one input window) and merged as matrices; a Conformer's pointwise convolutions
  (``out x in x 1``) are linear maps, for which that is the natural reading.
* ``device`` (None: where the driver's tensors are, the CPU): where the float64 SVDs run, e.g.
  ``"cuda"``; the result comes back to the input's device. (On a busy 2-core CPU one float64
  SVD of a 1024 x 1024 matrix took ~8 s; the driver's default ``num_threads=1`` slows them
  further.)

Merge weights (same rule in ``tsv``, ``iso_c``, ``iso_cts``): they must be finite and
non-negative with a positive sum; each task vector is scaled by ``s_i = w_i / mean(w)``, the mean
taken over the positive weights, before the merge: uniform weights change nothing (the
reference has no weights), and a weight of 0 is the same as leaving the member out (also from
the non-matrix tensors, which get ``sum_i w_i Delta_i / sum_i w_i``). The matrix methods sum
(scaled) task matrices and the non-matrix rule averages them, as in the reference code.

Zero task vectors: a member equal to the base (the original appended by the driver's
``include_base``, a frozen layer, or a weight of 0) has no singular directions; it is left out
of the matrices before T is counted, so it contributes nothing there and takes no share of the
rank (the reference would give it ``k`` arbitrary directions of singular value 0 that still
steer the orthogonalisation of the others' directions). In the non-matrix average a zero task
vector with a positive weight counts like any member (the original joining with
``include_base`` shrinks the mean of the task vectors, as it does for ``average``).

Deviations from the reference code, and why:

* ``k = max(1, ...)``: the reference's ``int(min(m, n) / T)`` is 0 for matrices of rank below T
  (a 1 x n weight), which then merge to the base;
* singular triplets whose singular value is numerically zero (``s <= max(m, n) * eps_float32 *
  ||Delta_i||_F``: below what float32 inputs resolve) are dropped before the orthogonalisation:
  their directions are arbitrary (not determined by the matrix) and would rotate the others
  in the polar factor; their contribution to the sum is negligible anyway;
* the polar factor of a rank-deficient concatenation (two tasks sharing a direction exactly)
  is not unique; :func:`polar` takes the one supported on the range (same tolerance);
* every 2-D tensor is a matrix (the reference also averages CLIP's ``text_projection``; the
  method sees no names); zero task vectors and weights as above.

The method is not element-wise: memory and time are those of float64 SVDs of the largest
matrix (T + 2 SVDs per matrix, on ``device``). BatchNorm running statistics never reach the
method (the driver averages them).
"""

import math
from typing import Callable

import torch

from .checks import boolean
from .checks import finite_number
from .checks import interval
from .checks import torch_device
from .registry import register
from .task_arithmetic import require_base

__all__ = ["tsv", "subspace_merge", "polar", "numerical_tolerance", "task_scales"]


# The options every subspace merge takes, and their checks (iso_c and iso_cts declare them too).
SUBSPACE_CHECKS = {"alpha": finite_number, "reshape_conv": boolean, "device": torch_device}


def task_scales(weights: torch.Tensor, method: str) -> torch.Tensor:
    """The factors ``w_i / mean(w_j > 0)`` (float64) by which the task vectors are scaled."""
    w = weights.to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(
            f"merge method {method!r}: the weights must be finite and non-negative with a positive sum; "
            f"got {weights.tolist()}"
        )
    return w / w[w > 0].mean()


def numerical_tolerance(mat: torch.Tensor) -> float:
    """Singular values at or below this are numerically zero for a matrix from float32 data."""
    return max(mat.shape) * torch.finfo(torch.float32).eps * float(torch.linalg.matrix_norm(mat))


def polar(x: torch.Tensor) -> torch.Tensor:
    """The closest matrix with orthonormal columns (rows, if wide) to ``x``: ``P Q^T`` of
    ``x = P Sigma Q^T`` (orthogonal Procrustes). For a rank-deficient ``x`` (two tasks sharing a
    direction exactly) ``P Q^T`` is not unique; only the triplets with a singular value above
    ``max(shape) * eps_float32 * sigma_max`` are used: the unique partial isometry on the range."""
    p, sigma, qh = torch.linalg.svd(x, full_matrices=False)
    keep = sigma > max(x.shape) * torch.finfo(torch.float32).eps * float(sigma.max())
    return p[:, keep] @ qh[keep]


def _matrix_shape(shape, reshape_conv):
    if len(shape) == 2:
        return tuple(shape)
    if reshape_conv and len(shape) >= 3:
        return (shape[0], math.prod(shape[1:]))
    return None


def subspace_merge(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    method: str,
    alpha: float,
    reshape_conv: bool,
    merge_matrices: Callable[[list[torch.Tensor]], torch.Tensor],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Shared frame of ``tsv``, ``iso_c``, ``iso_cts``: base, weights, zero task vectors and
    the non-matrix average; ``merge_matrices(list of non-zero m x n float64 task matrices)``
    returns the merged m x n task matrix. Returns float32 of the input shape, on the input's
    device (the work is done on ``device``, default the input's). The options are checked by
    the methods' registrations (:data:`SUBSPACE_CHECKS`)."""
    require_base(base, method)
    alpha = float(alpha)
    device = base.device if device is None else torch.device(device)
    scales = task_scales(weights, method)
    if len(tensors) != len(scales):
        raise ValueError(f"merge method {method!r}: {len(tensors)} tensors but {len(scales)} weights")
    if base.numel() == 0:
        return base.clone().float()
    base64 = base.to(device, torch.float64)
    deltas = [(t.to(device, torch.float64) - base64) * s for t, s in zip(tensors, scales.tolist())]
    mshape = _matrix_shape(tuple(base.shape), reshape_conv)
    if mshape is None:
        # sum_i s_i Delta_i / #(w_i > 0) = sum_i w_i Delta_i / sum_i w_i
        merged = torch.stack(deltas).sum(0) / int((scales > 0).sum())
    else:
        mats = [d.reshape(mshape) for d in deltas if bool(d.any())]
        merged = merge_matrices(mats).reshape(base.shape) if mats else torch.zeros_like(base64)
    return (base64 + alpha * merged).to(base.device, torch.float32)


def tsv_matrices(mats: list[torch.Tensor], fraction: float | None = None) -> torch.Tensor:
    """TSV-Merge of non-zero float64 task matrices (steps 1-4 of the module docstring, without
    alpha)."""
    m, n = mats[0].shape
    frac = 1.0 / len(mats) if fraction is None else fraction
    k = max(1, int(frac * min(m, n)))
    us, ss, vhs = [], [], []
    for d in mats:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        u, s, vh = u[:, :k], s[:k], vh[:k]
        keep = s > numerical_tolerance(d)
        us.append(u[:, keep])
        ss.append(s[keep])
        vhs.append(vh[keep])
    s = torch.cat(ss)
    if s.numel() == 0:
        return torch.zeros(m, n, dtype=torch.float64, device=mats[0].device)
    u_perp = polar(torch.cat(us, dim=1))
    vh_perp = polar(torch.cat(vhs, dim=0))
    return (u_perp * s) @ vh_perp


@register(
    "tsv",
    display_name="TSV-Merge",
    reference=(
        'Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri & Rodola, "Task Singular Vectors: Reducing Task '
        'Interference in Model Merging", CVPR 2025'
    ),
    needs_base=True,
    checks={**SUBSPACE_CHECKS, "fraction": interval(0, 1, open_low=True, allow_none=True)},
)
def tsv(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None,
    generator: torch.Generator | None = None,
    alpha: float = 1.0,
    fraction: float | None = None,
    reshape_conv: bool = False,
    device: str | None = None,
) -> torch.Tensor:
    """TSV-Merge (Gargiulo et al., CVPR 2025). Options ``alpha`` (1.0), ``fraction`` (None:
    1/T), ``reshape_conv`` (False), ``device`` (None); see the module docstring."""
    return subspace_merge(
        tensors, weights, base, "tsv", alpha, reshape_conv, lambda mats: tsv_matrices(mats, fraction), device
    )
