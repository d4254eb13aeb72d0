"""Domain experts as compact deltas from the base model they were fine-tuned from (issue 20).

A :class:`Delta` holds ``expert - base`` tensor by tensor, under the model folder's tensor
names (what :func:`aode.merge.read.open_model` reads):

* **factored** tensors: a weight of two or more dimensions, seen as the matrix
  ``shape[0] x prod(shape[1:])``, as two factors ``U`` (rows x r) and ``V`` (cols x r) with
  ``delta = (U @ V.T).reshape(shape)``;
* **dense** tensors: the exact float32 difference, for what is not worth factoring: vectors
  (biases, norm scales and shifts, BatchNorm statistics), matrices smaller than
  ``min_factored`` elements (a depthwise convolution's C x K kernel, Whisper's tiny
  embeddings of positions in test models) and matrices whose rank-r factors would take at
  least as many bytes as the matrix itself;
* tensors equal to the base are left out; non-float tensors (BatchNorm's step counters) are
  never part of a delta: the base's value is kept, and those that differ are named in
  ``meta["ignored"]``.

Two forms:

* ``svd`` (:func:`svd_delta`): the truncated SVD of each difference at rank ``rank`` (the
  singular values folded into ``U``), optionally fewer directions: the smallest rank that
  keeps ``energy`` of the squared Frobenius norm;
* ``lora`` (:func:`lora_delta_of`): a peft LoRA adapter folder read natively as its factors
  (``U = scaling * B``, ``V = A.T``; ``fan_in_fan_out`` and embedding adapters transposed), no
  SVD (a convolution's adapter as factors of its ``out x in/groups * K`` matrix);
  ``modules_to_save`` copies become dense differences. An expert folder whose LoRA was folded
  in at export (``aode.json`` ``lora_merged_modules``) has no factors left on disk: ``lora`` then takes the SVD at the
  rank it was trained with, which is exact for the adapted matrices up to float rounding.

A weighted sum of deltas (:func:`combine`; e.g. AoDE with the original, ``base + sum_d
delta_d / (n + 1)``) is exact without a new SVD: the factors concatenate
(``[w1 U1, w2 U2] @ [V1, V2].T = w1 U1 V1.T + w2 U2 V2.T``) and the dense parts add. The routed
model (:mod:`aode.routed`) never even concatenates: it applies the terms one by one.

Refusals (:class:`CompactError`, a user error: one ``error:`` line on the command lines): an
expert whose architecture, tensor names or shapes differ from the base's; an expert or LoRA
adapter that records another base model (:mod:`aode.lineage`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import torch

from aode.atomic import atomic_path
from aode.config import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMS",
    "CompactError",
    "Delta",
    "check_expert",
    "svd_delta",
    "lora_delta_of",
    "compact_delta",
    "combine",
    "apply_delta",
    "materialise",
    "folder_weight_bytes",
]

FORMS = ("svd", "lora")
DEFAULT_MIN_FACTORED = 4096  # elements: smaller matrices are stored dense
_U, _V, _DENSE = "::U", "::V", "::dense"


class CompactError(ConfigError):
    """An expert that cannot be a delta of this base (architecture, tensors, lineage), or a
    delta that does not fit a model."""


@dataclass
class Delta:
    """``expert - base`` of one expert (module docstring). Keys are the folder's tensor names.

    ``factors``: ``{name: (U, V)}`` float32, ``delta = (U @ V.T).reshape(shapes[name])``;
    ``dense``: ``{name: difference}`` float32; ``errors``: ``{name: relative Frobenius error
    of the stored difference}`` (0 for dense tensors); ``meta``: form, rank, energy, source.
    """

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(set(self.factors) | set(self.dense))

    def rank_of(self, name: str) -> int | None:
        return self.factors[name][0].shape[1] if name in self.factors else None

    def tensor(self, name: str) -> torch.Tensor:
        """The difference of tensor ``name`` (float32, the weight's shape)."""
        if name in self.dense:
            return self.dense[name]
        u, v = self.factors[name]
        return (u @ v.T).reshape(self.shapes[name])

    def nbytes(self) -> int:
        """Bytes of the stored tensors (factors and dense differences)."""
        tensors = [t for pair in self.factors.values() for t in pair] + list(self.dense.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def scaled(self, weight: float) -> Delta:
        """``weight * delta`` (factors: ``U`` scaled; no copy when ``weight`` is 1)."""
        if weight == 1.0:
            return self
        return Delta(
            {n: (u * weight, v) for n, (u, v) in self.factors.items()},
            {n: d * weight for n, d in self.dense.items()},
            dict(self.shapes),
            {},
            {**self.meta, "scaled": weight},
        )

    def summary(self, model_bytes: int | None = None) -> dict[str, Any]:
        """Sizes and reconstruction errors, as ``routed.json`` and the reports give them."""
        errors = [e for e in self.errors.values()]
        out = {
            "bytes": self.nbytes(),
            "factored_tensors": len(self.factors),
            "dense_tensors": len(self.dense),
            "max_relative_error": max(errors) if errors else 0.0,
            "mean_relative_error": sum(errors) / len(errors) if errors else 0.0,
        }
        if model_bytes:
            out["model_bytes"] = model_bytes
            out["fraction_of_model"] = out["bytes"] / model_bytes
        return out

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file (atomically): ``<name>::U``, ``<name>::V``, ``<name>::dense``;
        shapes, errors and meta in its metadata."""
        from safetensors.torch import save_file

        tensors = {}
        for name, (u, v) in self.factors.items():
            tensors[name + _U] = u.contiguous()
            tensors[name + _V] = v.contiguous()
        for name, d in self.dense.items():
            tensors[name + _DENSE] = d.contiguous()
        metadata = {
            "format": "pt",
            "aode_delta": json.dumps(
                {"shapes": {n: list(s) for n, s in self.shapes.items()}, "errors": self.errors, "meta": self.meta}
            ),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Delta:
        from safetensors import safe_open

        if not os.path.isfile(path):
            raise CompactError(f"delta file {path} does not exist")
        with safe_open(os.fspath(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("aode_delta", "null") or "null")
            if info is None:
                raise CompactError(f"{path} is not an AoDE delta file (no aode_delta metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        delta = cls(shapes={n: tuple(s) for n, s in info["shapes"].items()}, errors=info["errors"], meta=info["meta"])
        for key, t in tensors.items():
            if key.endswith(_U):
                name = key[: -len(_U)]
                delta.factors[name] = (t, tensors[name + _V])
            elif key.endswith(_DENSE):
                delta.dense[key[: -len(_DENSE)]] = t
        return delta


# ----------------------------------------------------------------------------- checks


def _fingerprint(folder: str | os.PathLike) -> str | None:
    from aode.reuse import model_fingerprint

    return model_fingerprint(folder)


def check_expert(base: str | os.PathLike, expert: str | os.PathLike, name: str | None = None) -> None:
    """Refuse (:class:`CompactError` or :class:`aode.lineage.ForeignOriginalError`) an expert
    whose architecture differs from ``base``'s, or that records another base model (its
    ``aode.json``; for a peft adapter folder also its ``base_model_name_or_path``)."""
    from aode.lineage import check_original
    from aode.model_folder import is_lora_folder
    from aode.models import check_same_architecture
    from aode.models import load_hf_config

    name = name or os.fspath(expert)
    if is_lora_folder(expert):
        from aode.merge.read import _resolve_adapter_base

        with open(os.path.join(expert, "adapter_config.json"), encoding="utf-8") as f:
            adapter_base = _resolve_adapter_base(os.fspath(expert), json.load(f).get("base_model_name_or_path"))
        if _fingerprint(adapter_base) != _fingerprint(base):
            raise CompactError(
                f"LoRA adapter {name!r} ({expert}) was trained on {adapter_base}, not on the base {os.fspath(base)!r}"
            )
        config_folder = adapter_base
    else:
        config_folder = expert
    try:
        check_same_architecture(
            load_hf_config(base), load_hf_config(config_folder), f"base {os.fspath(base)!r}", f"expert {name!r}"
        )
    except ValueError as err:
        raise CompactError(str(err)) from None
    check_original(os.fspath(base), {name: os.fspath(expert)})


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def _factor_worth_it(shape: tuple[int, ...], rank: int, min_factored: int) -> bool:
    if len(shape) < 2 or math.prod(shape) < min_factored:
        return False
    rows, cols = _matrix_shape(shape)
    return rank * (rows + cols) < rows * cols


def _relative_error(diff: torch.Tensor, approx: torch.Tensor) -> float:
    norm = float(diff.norm())
    return float((diff - approx).norm()) / norm if norm > 0 else 0.0


def _truncated(diff: torch.Tensor, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U * S, V) of the first k singular directions of ``diff`` (a matrix): k = ``rank``, or
    fewer when ``energy`` of the squared norm is kept by fewer."""
    u, s, vh = torch.linalg.svd(diff.double(), full_matrices=False)
    k = s.numel() if rank is None else min(rank, s.numel())
    if energy is not None:
        cumulative = torch.cumsum(s**2, 0) / (s**2).sum().clamp(min=1e-300)
        k = min(k, int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype)).item()) + 1)
    k = max(k, 1)
    return (u[:, :k] * s[:k]).float(), vh[:k].T.float()


def _open_pair(base, expert):
    from aode.merge.read import open_model

    base_source = open_model(base, label=f"base {os.fspath(base)}")
    expert_source = open_model(expert, label=f"expert {os.fspath(expert)}")
    missing = sorted(set(base_source.infos) ^ set(expert_source.infos))
    if missing:
        base_source.close()
        expert_source.close()
        raise CompactError(
            f"expert {os.fspath(expert)} and base {os.fspath(base)} hold different tensors "
            f"({len(missing)} differ, e.g. {missing[:3]})"
        )
    for name, info in base_source.infos.items():
        if tuple(expert_source.infos[name].shape) != tuple(info.shape):
            base_source.close()
            expert_source.close()
            raise CompactError(
                f"tensor {name!r} has shape {list(expert_source.infos[name].shape)} in expert {os.fspath(expert)} "
                f"and {list(info.shape)} in base {os.fspath(base)}"
            )
    return base_source, expert_source


def svd_delta(
    base: str | os.PathLike,
    expert: str | os.PathLike,
    rank: int | None = 16,
    energy: float | None = None,
    min_factored: int = DEFAULT_MIN_FACTORED,
    check: bool = True,
) -> Delta:
    """The ``svd`` form of ``expert - base`` (module docstring). ``rank`` None: full rank
    (exact up to float rounding); ``energy`` (0 < e <= 1): at most the rank that keeps that
    fraction of each difference's squared Frobenius norm. ``min_factored``: matrices with fewer
    elements are stored dense."""
    if rank is not None and rank < 1:
        raise CompactError(f"rank must be at least 1, not {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise CompactError(f"energy must be in (0, 1], not {energy}")
    if check:
        check_expert(base, expert)
    base_source, expert_source = _open_pair(base, expert)
    delta = Delta(meta={"form": "svd", "rank": rank, "energy": energy, "source": os.fspath(expert)})
    ignored = []
    try:
        for name, info in base_source.infos.items():
            b, e = base_source.read(name), expert_source.read(name)
            if not info.dtype.is_floating_point:
                if not torch.equal(b, e):
                    ignored.append(name)
                continue
            diff = e.float() - b.float()
            if not diff.any():
                continue
            shape = tuple(info.shape)
            factored = None
            if len(shape) >= 2 and math.prod(shape) >= min_factored:
                matrix = diff.reshape(_matrix_shape(shape))
                u, v = _truncated(matrix, rank, energy)
                if _factor_worth_it(shape, u.shape[1], min_factored):  # else dense: smaller and exact
                    factored = (u.contiguous(), v.contiguous())
            if factored is not None:
                delta.factors[name] = factored
                delta.shapes[name] = shape
                delta.errors[name] = _relative_error(matrix, factored[0] @ factored[1].T)
            else:
                delta.dense[name] = diff.contiguous()
                delta.errors[name] = 0.0
    finally:
        base_source.close()
        expert_source.close()
    delta.meta["ignored"] = ignored
    return delta


def _merged_lora_rank(expert: str | os.PathLike) -> int | None:
    from aode.model_folder import read_provenance

    info = read_provenance(expert) or {}
    if not info.get("lora_merged_modules"):
        return None
    hparams = info.get("hparams") or {}
    rank = hparams.get("lora_rank") or (hparams.get("lora") or {}).get("rank")
    return int(rank) if rank else None


def lora_delta_of(
    base: str | os.PathLike, adapter: str | os.PathLike, min_factored: int = DEFAULT_MIN_FACTORED, check: bool = True
) -> Delta:
    """The ``lora`` form (module docstring): a peft adapter folder's own factors, or, for an
    expert folder whose LoRA was folded in at export, the SVD at its recorded LoRA rank."""
    from aode.merge.read import LoraSource
    from aode.merge.read import open_model
    from aode.model_folder import is_lora_folder

    if check:
        check_expert(base, adapter)
    if not is_lora_folder(adapter):
        rank = _merged_lora_rank(adapter)
        if rank is None:
            raise CompactError(
                f"{os.fspath(adapter)} is neither a peft LoRA adapter folder (adapter_config.json) nor an expert "
                "whose aode.json records a folded-in LoRA (lora_merged_modules, hparams.lora_rank); use form 'svd'"
            )
        delta = svd_delta(base, adapter, rank=rank, min_factored=min_factored, check=False)
        delta.meta.update(form="lora", lora="folded in at export: SVD at the LoRA rank")
        return delta
    source = open_model(adapter, label=f"LoRA {os.fspath(adapter)}")
    assert isinstance(source, LoraSource)
    delta = Delta(meta={"form": "lora", "rank": None, "energy": None, "source": os.fspath(adapter)})
    try:
        ranks = set()
        for name, (a, b, scaling, transpose) in source.adapted.items():
            shape = tuple(source.infos[name].shape)
            if transpose and len(shape) == 2:  # embedding / fan_in_fan_out: delta = (scaling * B @ A).T
                u, v = a.float().T, scaling * b.float()
            elif transpose:
                raise CompactError(f"{os.fspath(adapter)}: transposed adapter on {len(shape)}-D tensor {name!r}")
            else:  # scaling * B @ A, a convolution's as its (out, in/groups * K) matrix
                u, v = scaling * b.float().flatten(1), a.float().flatten(1).T
            delta.factors[name] = (u.contiguous(), v.contiguous())
            delta.shapes[name] = shape
            delta.errors[name] = 0.0
            ranks.add(u.shape[1])
        for name, t in source.replaced.items():
            diff = t.float() - source.base.read(name).float()
            if diff.any():
                delta.dense[name] = diff.contiguous()
                delta.errors[name] = 0.0
        delta.meta["rank"] = max(ranks) if ranks else None
        delta.meta["ignored"] = []
    finally:
        source.close()
    return delta


def compact_delta(
    base: str | os.PathLike,
    expert: str | os.PathLike,
    form: str = "svd",
    rank: int | None = 16,
    energy: float | None = None,
    min_factored: int = DEFAULT_MIN_FACTORED,
    check: bool = True,
) -> Delta:
    """:func:`svd_delta` or :func:`lora_delta_of` by ``form``."""
    if form == "svd":
        return svd_delta(base, expert, rank=rank, energy=energy, min_factored=min_factored, check=check)
    if form == "lora":
        return lora_delta_of(base, expert, min_factored=min_factored, check=check)
    raise CompactError(f"unknown delta form {form!r}; choose one of {FORMS}")


def combine(terms: Iterable[tuple[float, Delta]]) -> Delta:
    """``sum_i w_i delta_i`` exactly: factors concatenated along the rank, dense parts added
    (a factored tensor that another term stores dense is added to the dense part)."""
    terms = list(terms)
    factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    dense: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for weight, delta in terms:
        for name, (u, v) in delta.factors.items():
            factors.setdefault(name, []).append((weight * u, v))
            shapes[name] = delta.shapes[name]
        for name, d in delta.dense.items():
            dense[name] = dense[name] + weight * d if name in dense else weight * d
    out = Delta(meta={"form": "combination", "terms": [w for w, _ in terms]})
    for name, pairs in factors.items():
        if name in dense:
            dense[name] = dense[name] + sum(u @ v.T for u, v in pairs).reshape(shapes[name])
        else:
            out.factors[name] = (torch.cat([u for u, _ in pairs], 1), torch.cat([v for _, v in pairs], 1))
            out.shapes[name] = shapes[name]
    out.dense = dense
    return out


def apply_delta(tensors: Mapping[str, torch.Tensor], delta: Delta) -> dict[str, torch.Tensor]:
    """``{name: tensor + delta}`` (in the tensor's dtype) for a state of folder tensor names;
    names the delta does not touch are passed through."""
    out = dict(tensors)
    for name in delta.names():
        if name not in out:
            raise CompactError(f"the delta changes tensor {name!r}, which the model does not have")
        t = out[name]
        out[name] = (t.float() + delta.tensor(name)).to(t.dtype)
    return out


def materialise(base: str | os.PathLike, delta: Delta, out_folder: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``base + delta`` as a dense model folder (the base's config, processor files and
    tensor names), atomically: what a route computes, as one ordinary model."""
    import shutil

    from safetensors.torch import save_file

    from aode.atomic import atomic_folder
    from aode.merge.read import open_model
    from aode.model_folder import CONFIG_FILE
    from aode.model_folder import copy_processor_files

    source = open_model(base)
    try:
        state = {name: source.read(name).clone() for name in source.infos}
        folder = source.model_folder
    finally:
        source.close()
    state = apply_delta(state, delta)
    with atomic_folder(out_folder, overwrite=overwrite) as tmp:
        save_file(
            {n: t.contiguous() for n, t in state.items()},
            os.path.join(tmp, "model.safetensors"),
            metadata={"format": "pt"},
        )
        shutil.copy2(os.path.join(folder, CONFIG_FILE), os.path.join(tmp, CONFIG_FILE))
        copy_processor_files(folder, tmp)
    return os.fspath(out_folder)


def folder_weight_bytes(folder: str | os.PathLike) -> int:
    """Bytes of a model folder's tensors (what one model weighs, the reference of the sizes)."""
    from aode.merge.read import open_model

    source = open_model(folder)
    try:
        return sum(math.prod(i.shape) * i.dtype.itemsize for i in source.infos.values())
    finally:
        source.close()
