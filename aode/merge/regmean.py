"""RegMean: Jin, Ren, Preotiuc-Pietro & Cheng, "Dataless Knowledge Fusion by Merging Weights
of Language Models", ICLR 2023.

For every linear layer ``y = x W^T`` (PyTorch stores ``W`` as ``out x in``), RegMean picks
the weight whose outputs are closest to every member's on that member's own inputs,

    W* = argmin_W  sum_i w_i || X_i W^T - X_i W_i^T ||^2,

in closed form with the members' Gram matrices ``G_i = X_i^T X_i`` (``in x in``)::

    W*^T = (sum_i w_i G~_i + lam I)^-1 (sum_i w_i G~_i W_i^T + lam Wbar^T)
    G~_i = alpha G_i + (1 - alpha) diag(G_i)
    lam  = ridge * mean(diag(sum_i w_i G~_i))
    Wbar = sum_i w_i W_i / sum_i w_i                  (the plain weighted average)

solved in float64 (Cholesky) and transposed back to ``out x in``.

* ``alpha`` (option, default 0.9): the paper's scaling of the off-diagonal Gram entries
  (alpha = 1: the exact least-squares merge; alpha = 0: each input feature on its own, a
  per-column weighted average by ``diag(G_i)``). The paper and the prototype of issue 12
  found 0.9-1.0 good.
* ``ridge`` (option, default 1e-4): a ridge towards the plain average, relative to the mean
  diagonal of the summed Gram. Real Grams are often rank-deficient (inputs that are always
  zero, such as some features of Parakeet's subsampling linear; low-rank inputs such as the
  relative-position projections): there the Grams say nothing, and the ridge makes the
  result the plain average on exactly those directions (for ``v`` with ``G_i v = 0`` for
  all i, ``W* v = Wbar v``) while moving well-determined directions by a relative ~ridge.
  ``ridge = 0`` is the exact formula; a singular sum of Grams is then an error. A layer whose
  Grams are all zero gets the plain average.
* ``w_i``: the merge weights (the driver's ``weights`` / ``weight_rules``) multiply the Grams;
  they must be non-negative.

Every other tensor (biases, norms, convolutions, embeddings, tied weights, BatchNorm
statistics) gets the plain weighted average (:func:`aode.merge.linear.weighted_average`).

The Grams come from :mod:`aode.gram` (``python -m aode.gram <member folder> <manifest>``):
per-frame means ``X_i^T X_i / n_i`` over the member's own training data (the original, when it
joins with ``include_base``, over general-domain data), so utterance length does not weight
the members. The driver finds them like Fisher files: option ``gram_files`` (one path per
member, the base last with ``include_base``; ``None``: the default) or, by default,
``gram.safetensors`` in each member's folder.
A member without one is an error before any output is written. The method needs whole
matrices (not element-wise): memory is about members x (``out x in`` + ``in x in``) for the
largest Linear.

Options: ``gram_files`` (driver), ``alpha`` (0.9), ``ridge`` (1e-4). aode.json records the
options as passed under ``options`` and the defaults that applied under ``option_defaults``; the
absolute ridge of each layer is ``ridge`` times its summed Gram's mean diagonal, so the
relative ``ridge`` and the Gram files determine it.
"""

import logging
import os

import torch

from aode.gram import gram_command
from aode.gram import gram_path

from .checks import MergeError
from .linear import weighted_average
from .read import SafetensorsFile
from .read import open_model
from .registry import register

logger = logging.getLogger(__name__)

__all__ = ["regmean", "regmean_linear"]

DEFAULT_ALPHA = 0.9
DEFAULT_RIDGE = 1e-4


class _GramSource:
    """A member's Gram file as a tensor source aligned with its weights (``read(name)``: the
    ``in x in`` Gram of weight ``name``).

    ``keys()`` is what the driver's generic aligned-shape check walks (same shape as the
    weight, true of Fishers); a Gram is ``in x in``, not ``out x in``, so it is empty here and
    :func:`_setup` checks the Grams' shapes against the weights itself. ``names()`` lists them.
    """

    def __init__(self, path):
        self.path = path
        self._file = SafetensorsFile(path)

    def names(self):
        return self._file.keys()

    def keys(self):
        return []

    def __contains__(self, name):
        return name in self._file

    def info(self, name):
        return self._file.info(name)

    def read(self, name, start=None, stop=None, buffer=None):
        if start is not None or stop is not None:
            raise MergeError("regmean reads whole Gram matrices (it is not element-wise)")
        return self._file.read(name, buffer=buffer)

    def close(self):
        self._file.close()


# The option checks of the registration (RegMean++ checks its alpha and ridge with them too).
CHECKS = {
    "alpha": lambda value: None if 0.0 <= float(value) <= 1.0 else "must lie in [0, 1]",
    "ridge": lambda value: None if float(value) >= 0.0 else "must be >= 0",
}


def _check_options(alpha, ridge):
    """ValueError ``regmean: <option> <problem>, got <value>`` unless :data:`CHECKS` accept
    ``alpha`` and ``ridge``."""
    for name, value in (("alpha", alpha), ("ridge", ridge)):
        if (problem := CHECKS[name](value)) is not None:
            raise ValueError(f"regmean: {name} {problem}, got {value}")


def _setup(member_dirs, options):
    options = dict(options)
    files = options.pop("gram_files", None)
    if files is None:
        files = [None] * len(member_dirs)
    elif len(files) != len(member_dirs):
        raise ValueError(
            f"gram_files has {len(files)} entries for {len(member_dirs)} members (with include_base the base is last)"
        )
    files = [gram_path(d) if f is None else os.fspath(f) for d, f in zip(member_dirs, files)]
    missing = [(d, f) for d, f in zip(member_dirs, files) if not os.path.isfile(f)]
    if missing:
        lines = [f"  member {d}: no Gram file {f}; make it with: {gram_command(d, out=f)}" for d, f in missing]
        raise MergeError(
            "regmean needs each member's Gram matrices (the original's from general-domain data):\n"
            + "\n".join(lines)
            + "\n(or pass the option gram_files: one path per member, the original last)"
        )
    sources = []
    try:
        for f in files:
            sources.append(_GramSource(f))
        _check_grams(member_dirs, sources)
    except BaseException:
        for s in sources:
            s.close()
        raise
    return options, {"grams": sources}


def _check_grams(member_dirs, sources):
    """Same Gram names in every member, each ``in x in`` for a 2-D weight ``out x in``."""
    ref = set(sources[0].names())
    for d, src in zip(member_dirs, sources):
        names = set(src.names())
        if names != ref:
            diff = sorted(names ^ ref)
            raise MergeError(
                f"Gram file {src.path} (member {d}) covers other Linears than {sources[0].path} "
                f"(first difference: {diff[0]!r}); recompute them with the same model family"
            )
        model = open_model(d)
        try:
            for name in sorted(names):
                info = model.infos.get(name)
                if info is None or len(info.shape) != 2:
                    raise MergeError(f"Gram file {src.path}: {name!r} is no 2-D weight of member {d}")
                want = (info.shape[1], info.shape[1])
                if tuple(src.info(name).shape) != want:
                    raise MergeError(
                        f"Gram file {src.path}: {name!r} has shape {list(src.info(name).shape)}, "
                        f"the weight {list(info.shape)} needs {list(want)}"
                    )
        finally:
            model.close()
    if not ref:
        logger.warning("the Gram files name no Linear: regmean is the plain weighted average")


def regmean_linear(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    grams: list[torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
    ridge: float = DEFAULT_RIDGE,
) -> torch.Tensor:
    """RegMean of one linear weight (module docstring): ``tensors`` ``out x in``, ``grams``
    ``in x in`` (one per member), ``weights`` non-negative. Returns float32 ``out x in``."""
    _check_options(alpha, ridge)
    w = weights.double()
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"regmean needs non-negative weights with a positive sum, got {weights.tolist()}")
    n_in = tensors[0].shape[1]
    a = torch.zeros(n_in, n_in, dtype=torch.float64)
    b = torch.zeros(n_in, tensors[0].shape[0], dtype=torch.float64)
    for wi, g, t in zip(w.tolist(), grams, tensors):
        if wi == 0:
            continue
        g = g.double()
        gt = g * alpha
        gt.diagonal().copy_(g.diagonal())  # alpha G + (1 - alpha) diag(G)
        a.add_(gt, alpha=wi)
        b.addmm_(gt, t.double().T, alpha=wi)
    average = weighted_average(tensors, weights)
    scale = float(a.diagonal().mean())
    if scale <= 0:  # no input ever reached this layer: nothing to fit
        return average
    lam = float(ridge) * scale
    if lam > 0:
        a.diagonal().add_(lam)
        b.add_(average.double().T, alpha=lam)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise ValueError(
            "regmean: the weighted sum of the Gram matrices is singular (inputs that never vary); use ridge > 0"
        )
    return torch.cholesky_solve(b, chol).T.float().contiguous()


@register(
    "regmean",
    display_name="RegMean",
    reference=(
        'Jin, Ren, Preotiuc-Pietro & Cheng, "Dataless Knowledge Fusion by Merging Weights of Language Models", '
        "ICLR 2023"
    ),
    setup=_setup,
    statistics="gram",
    options={"gram_files": None},
    aligned=("grams",),
    checks=CHECKS,
)
def regmean(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grams: list[torch.Tensor | None] | None = None,
    alpha: float = DEFAULT_ALPHA,
    ridge: float = DEFAULT_RIDGE,
) -> torch.Tensor:
    """RegMean (module docstring): the closed-form merge of each Linear weight from the
    members' Gram matrices; every other tensor the plain weighted average."""
    if grams is None or all(g is None for g in grams) or tensors[0].dim() != 2:
        return weighted_average(tensors, weights)
    if any(g is None for g in grams):
        raise MergeError("regmean: a Linear has Gram matrices from some members only")
    return regmean_linear(tensors, weights, grams, alpha=alpha, ridge=ridge)
