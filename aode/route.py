"""Route, don't only merge: send each utterance to its domain's expert (issue 20).

A :class:`Router` reads the original model's encoder (:meth:`aode.models.ASRModel.encoder_states`),
pools the chosen layers' hidden states over each utterance's valid frames (mean and standard
deviation per dimension, concatenated layer after layer), standardises them and classifies
them with a multinomial logistic regression (L2, full-batch LBFGS in float64 from zeros:
deterministic). Its classes are the domain names plus :data:`GENERAL`; an utterance whose top
class probability is below ``threshold`` is routed to :data:`FALLBACK` (the caller's safe
model: the original or the merge).

Measured on the miniature (``docs/results/router_mini.md``: original ``aode/mini_generalist``,
200 training utterances per class, test sets of the synthetic corpus): the default layers are
:data:`DEFAULT_LAYERS`; the numbers are in that file and in :func:`train_router`'s docstring.

Files (:meth:`Router.save`): ``router.json`` (classes, layers, threshold, what it was made
from, training and validation numbers) and ``router.safetensors`` (standardisation and the
classifier's weights), each written atomically, the JSON last. :func:`train_router` also keeps
the pooled features of every encoder state per manifest under ``features/`` (stamped, so a
change of layers, threshold or classifier refits without running the model again), and with
validation manifests ``thresholds.csv`` / ``thresholds.md``. :func:`router_report` writes the
confusion matrix (CSV, Markdown, PNG), per-set numbers and per-utterance routes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import torch
import torch.nn.functional as F

from aode.atomic import atomic_open
from aode.atomic import atomic_path
from aode.atomic import atomic_write_json
from aode.reuse import file_fingerprint
from aode.reuse import may_reuse
from aode.reuse import model_fingerprint
from aode.reuse import read_stamp_file
from aode.reuse import write_stamp_file

if TYPE_CHECKING:
    from aode.models import ASRModel

logger = logging.getLogger(__name__)

__all__ = [
    "FALLBACK",
    "GENERAL",
    "DEFAULT_LAYERS",
    "DEFAULT_THRESHOLD",
    "Router",
    "train_router",
    "router_report",
    "pooled_states",
    "set_features",
]

FALLBACK = "fallback"  # what route() returns when the router is unsure
GENERAL = "general"  # the class of general-domain data

ROUTER_FILE = "router.json"
WEIGHTS_FILE = "router.safetensors"
FORMAT_VERSION = 1
POOLING = "mean_std"  # per dimension, over valid frames; population standard deviation
# Chosen on the miniature (docs/results/router_mini.md; original aode/mini_generalist, 4 layers,
# 200 utterances per class, 600 test utterances, threshold 0.5): routed right, all test sets
# together: layer 2 and the last 92.5 %, last only 91.7 %, middle (2) only 90.2 %, front end
# (0) 89.8 %, all five states 92.8 % (2.5 times the features). 2 is the middle of a 4-layer
# encoder: pass layers for deeper ones. Negative indices count from the last encoder state.
DEFAULT_LAYERS: tuple[int, ...] = (2, -1)
DEFAULT_THRESHOLD = 0.5
DEFAULT_L2 = 1e-3
VALIDATION_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


# ------------------------------------------------------------------------------ features


def _pool(state: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(batch, 2 * dim)``: mean and population standard deviation of ``state``
    (``batch x frames x dim``) over each row's first ``valid[b]`` frames, in float32."""
    state = state.float()
    mask = (torch.arange(state.shape[1], device=state.device)[None, :] < valid.to(state.device)[:, None]).float()
    count = mask.sum(1, keepdim=True).clamp(min=1.0)
    mask = mask.unsqueeze(-1)
    mean = (state * mask).sum(1) / count
    var = (((state - mean.unsqueeze(1)) ** 2) * mask).sum(1) / count
    return torch.cat([mean, var.clamp(min=0).sqrt()], dim=-1)


def _model_device(asr: torch.nn.Module) -> torch.device:
    return next(asr.parameters()).device


def _check_layers(layers: Sequence[int], num_states: int) -> list[int]:
    """``layers`` as non-negative indices of ``num_states`` encoder states; ValueError naming
    the valid range otherwise."""
    if not layers:
        raise ValueError("layers is empty: name at least one encoder state to pool")
    resolved = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layers must be integers (indices of encoder_states), got {layer!r}")
        if not -num_states <= layer < num_states:
            raise ValueError(
                f"layer {layer} is out of range: the model gives {num_states} encoder states "
                f"(0 = the front end's output, 1-{num_states - 1} = its layers; negative counts from the last)"
            )
        resolved.append(layer % num_states)
    return resolved


@torch.no_grad()
def _pooled(
    asr: ASRModel, wavs: torch.Tensor, wav_lens: torch.Tensor, layers: Sequence[int] | None
) -> tuple[list[torch.Tensor], int]:
    was_training = asr.training
    asr.eval()
    try:
        device = _model_device(asr)
        num_states = len(asr.encoder_layers()) + 1
        chosen = range(num_states) if layers is None else _check_layers(layers, num_states)
        # the encoder stops at the highest state read: a router on middle layers costs part of a pass
        states, valid = asr.encoder_states(wavs.to(device), wav_lens.to(device), up_to=max(chosen))
        return [_pool(states[i], valid).cpu() for i in chosen], num_states
    finally:
        asr.train(was_training)


def pooled_states(
    asr: ASRModel, wavs: torch.Tensor, wav_lens: torch.Tensor, layers: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """The pooled features (``(batch, 2 * dim)`` each, float32 on the CPU) of the encoder
    states ``layers`` (default: all) of a padded batch, computed without gradients in eval
    mode (the model's mode is restored)."""
    return _pooled(asr, wavs, wav_lens, layers)[0]


# -------------------------------------------------------------------------------- router


class Router:
    """Standardisation + multinomial logistic regression over pooled encoder states.

    ``classes``: the domain names plus :data:`GENERAL`; ``layers``: the
    :meth:`~aode.models.ASRModel.encoder_states` entries pooled (negative: from the last);
    ``threshold``: below this top-class probability :meth:`route` answers :data:`FALLBACK`.
    ``general_bias``: log-odds added to :data:`GENERAL`'s score before the softmax: a
    positive bias sends an utterance to an expert only when the router is surer (a wrong
    expert costs forgetting, a missed one only gain; :mod:`aode.operating` measures both).
    ``num_states``: how many encoder states the model it was trained on gives (checked).
    ``info``: what :func:`train_router` records (stamp, numbers), saved in ``router.json``.
    """

    def __init__(
        self,
        classes: Sequence[str],
        layers: Sequence[int],
        threshold: float,
        mean: torch.Tensor,
        std: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        num_states: int | None = None,
        info: Mapping[str, Any] | None = None,
        general_bias: float = 0.0,
    ) -> None:
        self.classes: tuple[str, ...] = tuple(classes)
        self.layers: tuple[int, ...] = tuple(int(i) for i in layers)
        self.threshold: float = float(threshold)
        self.general_bias: float = float(general_bias)
        # kept at float32 precision (what router.safetensors stores), computed in float64: a
        # loaded router predicts exactly as the one that was saved
        self.mean, self.std, self.weight, self.bias = (
            t.detach().cpu().float().double() for t in (mean, std, weight, bias)
        )
        self.num_states = num_states
        self.info: dict[str, Any] = dict(info or {})
        if FALLBACK in self.classes:
            raise ValueError(f"{FALLBACK!r} is the router's answer when unsure, not a class")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"a router needs at least two distinct classes, got {self.classes}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {self.threshold}")
        if self.general_bias and GENERAL not in self.classes:
            raise ValueError(f"general_bias {self.general_bias} needs a {GENERAL!r} class; classes {self.classes}")
        dim = self.mean.shape[0]
        if (
            self.std.shape != (dim,)
            or self.weight.shape != (len(self.classes), dim)
            or self.bias.shape != (len(self.classes),)
        ):
            raise ValueError(
                f"inconsistent router tensors: mean {tuple(self.mean.shape)}, std {tuple(self.std.shape)}, "
                f"weight {tuple(self.weight.shape)}, bias {tuple(self.bias.shape)} for {len(self.classes)} classes"
            )

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_parameters(self) -> int:
        """Numbers stored (standardisation and classifier): what the routed model's memory
        budget counts (float32 on disk: 4 bytes each)."""
        return 2 * self.feature_dim + self.weight.numel() + self.bias.numel()

    def features(self, asr: ASRModel, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """``(batch, F)`` float32 on the CPU: mean and standard deviation over each utterance's
        valid frames of each of :attr:`layers`' encoder states, concatenated in that order."""
        pooled, num_states = _pooled(asr, wavs, wav_lens, self.layers)
        if self.num_states is not None and num_states != self.num_states:
            raise ValueError(
                f"this router was trained on a model with {self.num_states} encoder states; "
                f"this model gives {num_states}: route with the original it was trained on"
            )
        return torch.cat(pooled, dim=-1)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, classes)`` class probabilities (float32) of :meth:`features`' rows."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features of shape {tuple(features.shape)} do not fit this router: it takes "
                f"(batch, {self.feature_dim}) from Router.features"
            )
        z = (features.detach().cpu().double() - self.mean) / self.std
        logits = z @ self.weight.T + self.bias
        if self.general_bias:
            logits[:, self.classes.index(GENERAL)] += self.general_bias
        return torch.softmax(logits, dim=-1).float()

    def with_rule(self, threshold: float | None = None, general_bias: float | None = None) -> Router:
        """This router with another decision rule (the same fitted classifier)."""
        return Router(
            self.classes,
            self.layers,
            self.threshold if threshold is None else threshold,
            self.mean,
            self.std,
            self.weight,
            self.bias,
            num_states=self.num_states,
            info=self.info,
            general_bias=self.general_bias if general_bias is None else general_bias,
        )

    def predict(self, features: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """The top class of each row (never :data:`FALLBACK`) and its probability ``(batch,)``."""
        probs = self.probabilities(features)
        top, index = probs.max(dim=-1)
        return [self.classes[i] for i in index.tolist()], top

    def decide(self, features: torch.Tensor) -> list[str]:
        """:meth:`predict`'s classes, :data:`FALLBACK` where the probability is below
        :attr:`threshold`."""
        names, probs = self.predict(features)
        return [n if p >= self.threshold else FALLBACK for n, p in zip(names, probs.tolist())]

    def route(self, asr: ASRModel, wavs: torch.Tensor, wav_lens: torch.Tensor) -> list[str]:
        """The class of each utterance of a padded 16 kHz batch, or :data:`FALLBACK` when the
        top probability is below :attr:`threshold`."""
        return self.decide(self.features(asr, wavs, wav_lens))

    def save(self, folder: str | os.PathLike) -> None:
        """``router.safetensors`` then ``router.json`` into ``folder``, each atomically."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        tensors = {
            "mean": self.mean.float().contiguous(),
            "std": self.std.float().contiguous(),
            "weight": self.weight.float().contiguous(),
            "bias": self.bias.float().contiguous(),
        }
        with atomic_path(os.path.join(folder, WEIGHTS_FILE)) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
        record = {
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "layers": list(self.layers),
            "threshold": self.threshold,
            "general_bias": self.general_bias,
            "pooling": POOLING,
            "classifier": "logistic",
            "feature_dim": self.feature_dim,
            "num_states": self.num_states,
            "num_parameters": self.num_parameters,
            **{k: v for k, v in self.info.items() if k not in ("classes", "layers", "threshold", "general_bias")},
        }
        atomic_write_json(os.path.join(folder, ROUTER_FILE), record, indent=1)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Router:
        """The router saved in ``folder`` (float32 tensors, as saved: predictions equal)."""
        from safetensors.torch import load_file

        path = os.path.join(folder, ROUTER_FILE)
        if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
            raise FileNotFoundError(f"{folder} holds no router ({ROUTER_FILE} and {WEIGHTS_FILE})")
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("format_version") != FORMAT_VERSION or record.get("pooling") != POOLING:
            raise ValueError(f"{path}: unsupported router format {record.get('format_version')!r}")
        tensors = load_file(os.path.join(folder, WEIGHTS_FILE))
        info = {
            k: v for k, v in record.items() if k not in ("classes", "layers", "threshold", "num_states", "general_bias")
        }
        return cls(
            record["classes"],
            record["layers"],
            record["threshold"],
            tensors["mean"],
            tensors["std"],
            tensors["weight"],
            tensors["bias"],
            num_states=record.get("num_states"),
            info=info,
            general_bias=record.get("general_bias", 0.0),  # routers saved before it had none
        )

    def __repr__(self) -> str:
        return (
            f"Router(classes={self.classes}, layers={self.layers}, threshold={self.threshold}, "
            f"general_bias={self.general_bias}, features={self.feature_dim})"
        )


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = DEFAULT_L2, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, weight, bias)``: standardisation of ``x`` (``N x F``) and a multinomial
    logistic regression on it, classes weighted to count equally (mean cross-entropy per
    class) plus ``l2 / 2 * |weight|^2``; LBFGS from zeros in float64: no randomness."""
    x = x.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mean) / std
    counts = torch.bincount(y, minlength=n_classes).double()
    if (counts == 0).any():
        empty = [i for i, c in enumerate(counts.tolist()) if c == 0]
        raise ValueError(f"no training features for class indices {empty}")
    class_weight = counts.sum() / (n_classes * counts)
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y, weight=class_weight) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return mean, std, weight.detach(), bias.detach()


# ------------------------------------------------------------------------- feature cache

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _cache_name(name: str, manifest: str) -> str:
    digest = hashlib.sha256(os.path.abspath(manifest).encode()).hexdigest()[:8]
    return f"{_SAFE.sub('_', name)}-{digest}"


def _count_rows(manifest: str) -> int:
    from aode.manifest import read_manifest

    return len(read_manifest(manifest))


class _LazyModel:
    """The original model, loaded on first use only (cached features need none)."""

    def __init__(self, source: str, device: str) -> None:
        self.source, self.device, self._asr = source, device, None
        self.fingerprint = model_fingerprint(source)

    def get(self) -> ASRModel:
        if self._asr is None:
            from aode.models import load_asr_model

            self._asr = load_asr_model(self.source).to(self.device).eval()
        return self._asr


def _manifest_features(
    model: _LazyModel,
    name: str,
    manifest: str,
    cache_folder: str,
    n_utterances: int | None,
    seed: int,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Pooled features of every encoder state for a seeded choice of up to ``n_utterances``
    of ``manifest``'s rows (None: all), cached under ``cache_folder`` with a stamp (model and
    manifest by content, the choice); ``{"ids", "states": [(N, 2 dim) per state],
    "seconds", "audio_seconds"}``."""
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    path = os.path.join(cache_folder, _cache_name(name, manifest) + ".safetensors")
    stamp = {
        "model": model.fingerprint,
        "manifest": file_fingerprint(manifest),
        "n_utterances": n_utterances,
        "seed": seed,
        "pooling": POOLING,
    }
    recorded = read_stamp_file(path)
    if os.path.isfile(path) and recorded is not None and recorded.get("stamp") == json.loads(json.dumps(stamp)):
        tensors = load_file(path)
        states = [tensors[f"state_{i}"] for i in range(len(tensors))]
        return {"ids": recorded["ids"], "states": states, "seconds": 0.0, "audio_seconds": recorded["audio_seconds"]}
    if not _count_rows(manifest):
        raise ValueError(f"{name}: manifest {manifest} has no rows")
    from tqdm import tqdm

    from aode.data import subset_loader

    asr = model.get()
    loader, chosen = subset_loader(manifest, asr, n_utterances or sys.maxsize, batch_size, seed)
    ids, pooled, audio_seconds = [], None, 0.0
    start = time.perf_counter()
    for batch in tqdm(loader, desc=f"router features {name}", unit="batch", disable=not progress, dynamic_ncols=True):
        wavs, wav_lens = batch.sig
        audio_seconds += float((wav_lens * wavs.shape[1]).sum()) / 16000
        states = pooled_states(asr, wavs, wav_lens)
        pooled = [[s] for s in states] if pooled is None else [p + [s] for p, s in zip(pooled, states)]
        ids.extend(batch.id)
    seconds = time.perf_counter() - start
    states = [torch.cat(p).contiguous() for p in pooled]
    os.makedirs(cache_folder, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({f"state_{i}": s for i, s in enumerate(states)}, tmp, metadata={"format": "pt"})
    write_stamp_file(
        path, {"stamp": stamp, "ids": ids, "audio_seconds": audio_seconds, "seconds": seconds, "utterances": chosen}
    )
    logger.info("%s: %d utterances' features in %.1f s (%.1f utt/s)", name, len(ids), seconds, len(ids) / seconds)
    return {"ids": ids, "states": states, "seconds": seconds, "audio_seconds": audio_seconds}


def set_features(
    router: Router,
    original: str | os.PathLike,
    sets: Mapping[str, str],
    feature_cache: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, tuple[list[str], torch.Tensor]]:
    """``{set: (utterance IDs, router features)}`` of every utterance of each manifest, from
    (and into) the feature cache that :func:`train_router` and :func:`router_report` share."""
    model = _LazyModel(os.fspath(original), device)
    out = {}
    for name, manifest in sets.items():
        feats = _manifest_features(model, name, manifest, os.fspath(feature_cache), None, 0, batch_size, progress)
        out[name] = (feats["ids"], _select(feats["states"], router.layers))
    return out


def _select(states: list[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    return torch.cat([states[i] for i in _check_layers(layers, len(states))], dim=-1)


# ------------------------------------------------------------------------------ training


ClassManifests = Mapping[str, "str | Sequence[str]"]


def _sources(manifests: str | Sequence[str]) -> list[str]:
    """A class's manifests as a list: one path, or several sources of the same class."""
    return [os.fspath(manifests)] if isinstance(manifests, (str, os.PathLike)) else [os.fspath(m) for m in manifests]


def _check_classes(class_manifests: ClassManifests, what: str = "class") -> None:
    if FALLBACK in class_manifests:
        raise ValueError(f"{FALLBACK!r} is the router's answer when unsure and cannot be a class")
    for name, manifests in class_manifests.items():
        if not _sources(manifests):
            raise ValueError(f"{what} {name!r}: no manifest")
        for manifest in _sources(manifests):
            if not os.path.isfile(manifest):
                raise FileNotFoundError(f"{what} {name!r}: manifest {manifest} does not exist")
            if not _count_rows(manifest):
                raise ValueError(f"{what} {name!r}: manifest {manifest} has no rows")


def _fingerprints(manifests: str | Sequence[str]) -> Any:
    """One manifest's fingerprint as before (a stamp made by an earlier version stays valid),
    a list for several."""
    sources = _sources(manifests)
    return (
        file_fingerprint(sources[0])
        if isinstance(manifests, (str, os.PathLike))
        else [file_fingerprint(m) for m in sources]
    )


def threshold_table(
    router: Router, features: torch.Tensor, labels: Sequence[str], thresholds: Sequence[float] = VALIDATION_THRESHOLDS
) -> list[dict[str, Any]]:
    """For each threshold: the fraction sent to :data:`FALLBACK`, the accuracy among the
    routed ones, and the fraction routed to the right class (FALLBACK counted as not)."""
    names, probs = router.predict(features)
    right = torch.tensor([n == t for n, t in zip(names, labels)])
    rows = []
    for threshold in thresholds:
        routed = probs >= threshold
        n_routed = int(routed.sum())
        rows.append(
            {
                "threshold": float(threshold),
                "fallback_fraction": 1.0 - n_routed / len(labels),
                "accuracy_of_routed": float((right & routed).sum()) / n_routed if n_routed else float("nan"),
                "routed_right_fraction": float((right & routed).sum()) / len(labels),
            }
        )
    return rows


def train_router(
    original: str | os.PathLike,
    class_manifests: ClassManifests,
    out_folder: str | os.PathLike,
    *,
    layers: Sequence[int] = DEFAULT_LAYERS,
    utterances_per_class: int = 200,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 8,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    valid_manifests: ClassManifests | None = None,
    l2: float = DEFAULT_L2,
    overwrite: bool = True,
    feature_cache: str | os.PathLike | None = None,
) -> Router:
    """Train a router on the original model's encoder states and save it to ``out_folder``.

    ``class_manifests``: ``{class: manifest}``, the domains and :data:`GENERAL` (its training
    manifest); a list of manifests for a class of several sources (a general class of
    synthetic and of real speech), each source sampled alike. Up to ``utterances_per_class``
    rows of each manifest are drawn with ``seed``
    (:func:`aode.data.subset_loader`, the sampling of the Fisher and Gram statistics), pooled
    (:data:`POOLING` of ``layers``) and fitted (:func:`fit_logistic`, ``l2``).

    Reuse: the router is stamped with the original and the manifests by content and every
    setting that changes it (``batch_size`` and ``device`` change the features by float
    rounding only and are left out); a second call with the same stamp loads it. A changed
    input is redone, saying what changed (``overwrite=False``: refused instead,
    :class:`aode.reuse.StaleOutputError`). The pooled features of every encoder state are
    cached per manifest (``features/``), so another ``layers``, ``threshold`` or ``l2`` only
    refits. ``feature_cache``: another folder for that cache (default ``out_folder/features``),
    shared by routers of one original, e.g. to compare layer choices.

    Default ``layers`` (:data:`DEFAULT_LAYERS`): the middle (2) and the last encoder state,
    measured best for its size on the miniature: 92.5 % of the 600 test utterances routed
    right (vctk 97, coraal 100, jl 99, ne 100, general test_clean 74, test_other 85 %),
    against 91.7 % for the last layer alone and 90.2 % for the middle alone.

    ``threshold``: how to pick it. With ``valid_manifests`` (``{class: manifest}``, classes of
    the router) the router folder gets ``thresholds.csv``/``.md``: for each threshold the
    fraction of validation utterances sent to :data:`FALLBACK`, the accuracy among the routed
    ones and the fraction routed right. Take the smallest threshold whose accuracy among the
    routed is what the routed model can afford (a wrong expert costs more than the fallback's
    lost gain); the default 0.5 means "more likely this class than all others together". On
    the miniature the in-domain validation sets are routed with high confidence, so the
    threshold matters mostly for domains the router never saw (held out: see
    ``docs/results/router_mini.md``).
    """
    original = os.fspath(original)
    out_folder = os.fspath(out_folder)
    if len(class_manifests) < 2:
        raise ValueError(f"a router needs at least two classes, got {list(class_manifests)}")
    _check_classes(class_manifests)
    if valid_manifests:
        unknown = sorted(set(valid_manifests) - set(class_manifests))
        if unknown:
            raise ValueError(f"valid_manifests name classes the router does not have: {unknown}")
        _check_classes(valid_manifests, "validation class")
    if utterances_per_class < 1:
        raise ValueError(f"utterances_per_class must be positive, got {utterances_per_class}")
    model = _LazyModel(original, device)
    stamp = {
        "original": model.fingerprint,
        "classes": list(class_manifests),
        **{f"manifest {name}": _fingerprints(m) for name, m in class_manifests.items()},
        **{f"valid manifest {name}": _fingerprints(m) for name, m in (valid_manifests or {}).items()},
        "layers": list(layers),
        "utterances_per_class": utterances_per_class,
        "threshold": float(threshold),
        "seed": seed,
        "l2": l2,
        "pooling": POOLING,
        "format_version": FORMAT_VERSION,
    }
    router_json = os.path.join(out_folder, ROUTER_FILE)
    if os.path.isfile(router_json):
        with open(router_json, encoding="utf-8") as f:
            recorded = json.load(f).get("made_from")
        if may_reuse("router", out_folder, recorded, stamp, overwrite):
            logger.info("reusing the router in %s", out_folder)
            return Router.load(out_folder)

    cache = os.fspath(feature_cache) if feature_cache else os.path.join(out_folder, "features")
    classes = tuple(class_manifests)
    xs, ys, extraction = [], [], {"utterances": 0, "seconds": 0.0, "audio_seconds": 0.0}
    num_states = None
    for index, (name, manifests) in enumerate(class_manifests.items()):
        for manifest in _sources(manifests):
            feats = _manifest_features(model, name, manifest, cache, utterances_per_class, seed, batch_size, progress)
            num_states = len(feats["states"])
            xs.append(_select(feats["states"], layers))
            ys.append(torch.full((len(feats["ids"]),), index, dtype=torch.long))
            if feats["seconds"]:
                extraction["utterances"] += len(feats["ids"])
                extraction["seconds"] += feats["seconds"]
                extraction["audio_seconds"] += feats["audio_seconds"]
    x, y = torch.cat(xs), torch.cat(ys)
    start = time.perf_counter()
    mean, std, weight, bias = fit_logistic(x, y, len(classes), l2)
    fit_seconds = time.perf_counter() - start
    info = {
        "made_from": stamp,
        "original": original,
        "manifests": {
            name: os.fspath(m) if isinstance(m, (str, os.PathLike)) else _sources(m)
            for name, m in class_manifests.items()
        },
        "training": {
            "utterances": {c: int((y == i).sum()) for i, c in enumerate(classes)},
            "l2": l2,
            "fit_seconds": round(fit_seconds, 3),
        },
    }
    if extraction["seconds"]:
        extraction["utterances_per_second"] = extraction["utterances"] / extraction["seconds"]
        extraction["audio_seconds_per_second"] = extraction["audio_seconds"] / extraction["seconds"]
        info["training"]["feature_extraction"] = extraction
    router = Router(classes, layers, threshold, mean, std, weight, bias, num_states=num_states, info=info)
    names, _ = router.predict(x)
    info["training"]["accuracy"] = sum(n == classes[i] for n, i in zip(names, y.tolist())) / len(names)
    if valid_manifests:
        vx, labels = [], []
        for name, manifests in valid_manifests.items():
            for manifest in _sources(manifests):
                feats = _manifest_features(
                    model, f"valid_{name}", manifest, cache, utterances_per_class, seed, batch_size, progress
                )
                vx.append(_select(feats["states"], layers))
                labels += [name] * len(feats["ids"])
        rows = threshold_table(router, torch.cat(vx), labels)
        info["validation"] = {"utterances": len(labels), "thresholds": rows}
        _write_table(rows, os.path.join(out_folder, "thresholds"))
    router.info = info
    router.save(out_folder)
    return router


# ------------------------------------------------------------------------------- reports


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_table(rows: Sequence[Mapping[str, Any]], stem: str) -> None:
    """``<stem>.csv`` and ``<stem>.md``, atomically."""
    with atomic_open(stem + ".csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    with atomic_open(stem + ".md") as f:
        f.write(_markdown(rows))


def confusion_matrix(
    true: Sequence[str], routed: Sequence[str], rows: Sequence[str], columns: Sequence[str]
) -> list[list[int]]:
    """Counts: ``matrix[i][j]`` utterances of true class ``rows[i]`` routed to ``columns[j]``."""
    index = {c: j for j, c in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in rows]
    row_index = {r: i for i, r in enumerate(rows)}
    for t, r in zip(true, routed):
        matrix[row_index[t]][index[r]] += 1
    return matrix


def _heatmap(matrix: list[list[int]], rows: Sequence[str], columns: Sequence[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(matrix, dtype=torch.float64)
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(columns), 1.0 + 0.6 * len(rows)))
    ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("routed to")
    ax.set_ylabel("true class")
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(
                j,
                i,
                str(matrix[i][j]),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def router_report(
    router: Router,
    original: str | os.PathLike,
    test_sets: Mapping[str, str],
    out_folder: str | os.PathLike,
    *,
    labels: Mapping[str, str] | None = None,
    held_out: Sequence[str] = (),
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    title: str | None = None,
    feature_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Route every utterance of each test set and write what happened to ``out_folder``.

    ``test_sets``: ``{name: manifest}``; a set's true class is ``labels[name]`` when given,
    else the part of ``name`` before the first ``/`` (``"general/test_clean"`` is a
    :data:`GENERAL` set, ``"vctk"`` a vctk set). A true class that is not one of the
    router's is refused unless it is in ``held_out`` (domains the router never saw, reported
    as rows of their own: where they go, how many to :data:`FALLBACK`).

    Writes ``confusion.csv``/``.md`` (rows: true classes; columns: the router's classes and
    FALLBACK; counts), ``confusion.png`` (a heatmap, shares per row, counts written),
    ``sets.csv``/``.md`` (per set: utterances, accuracy, fallback fraction, accuracy among
    the routed), ``routes.csv`` (per utterance) and ``report.json``; returns the numbers:
    ``{"sets": {name: {...}}, "confusion": {"rows", "columns", "counts"}, "accuracy",
    "feature_extraction"}``. Pooled features are cached under ``feature_cache`` (default
    ``out_folder/features``; keyed by the model and manifest contents).
    """
    labels = dict(labels or {})
    truth = {name: labels.get(name, name.split("/", 1)[0]) for name in test_sets}
    unknown = sorted({c for c in truth.values() if c not in router.classes and c not in held_out})
    if unknown:
        raise ValueError(
            f"test_sets name classes the router does not have: {unknown} (its classes: {list(router.classes)}); "
            "label each set with one of them (labels=, or a name '<class>/<set>'), or list a domain the router "
            "never saw in held_out="
        )
    for name, manifest in test_sets.items():
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"test set {name!r}: manifest {manifest} does not exist")
        if not _count_rows(manifest):
            raise ValueError(f"test set {name!r}: manifest {manifest} has no rows")
    out_folder = os.fspath(out_folder)
    model = _LazyModel(os.fspath(original), device)
    cache = os.fspath(feature_cache) if feature_cache else os.path.join(out_folder, "features")
    true_all, routed_all, sets, route_rows = [], [], {}, []
    extraction = {"utterances": 0, "seconds": 0.0, "audio_seconds": 0.0}
    for name, manifest in test_sets.items():
        feats = _manifest_features(model, name, manifest, cache, None, 0, batch_size, progress)
        if feats["seconds"]:
            extraction["utterances"] += len(feats["ids"])
            extraction["seconds"] += feats["seconds"]
            extraction["audio_seconds"] += feats["audio_seconds"]
        if len(feats["states"]) != router.num_states and router.num_states is not None:
            raise ValueError(
                f"this router was trained on a model with {router.num_states} encoder states; "
                f"{original} gives {len(feats['states'])}"
            )
        x = _select(feats["states"], router.layers)
        names, probs = router.predict(x)
        routed = router.decide(x)
        true = truth[name]
        n = len(routed)
        counts = {c: routed.count(c) for c in (*router.classes, FALLBACK)}
        n_routed = n - counts[FALLBACK]
        right = counts.get(true, 0) if true in router.classes else 0
        sets[name] = {
            "class": true,
            "utterances": n,
            "accuracy": right / n if true in router.classes else float("nan"),
            "fallback_fraction": counts[FALLBACK] / n,
            "accuracy_of_routed": (right / n_routed if n_routed else float("nan"))
            if true in router.classes
            else float("nan"),
            "routed": counts,
        }
        true_all += [true] * n
        routed_all += routed
        route_rows += [
            {"test_set": name, "ID": i, "class": true, "top_class": c, "probability": p, "routed": r}
            for i, c, p, r in zip(feats["ids"], names, probs.tolist(), routed)
        ]
    row_names = [c for c in router.classes if c in truth.values()] + [c for c in held_out if c in truth.values()]
    columns = [*router.classes, FALLBACK]
    matrix = confusion_matrix(true_all, routed_all, row_names, columns)
    known = [(t, r) for t, r in zip(true_all, routed_all) if t in router.classes]
    result = {
        "router": {"classes": list(router.classes), "layers": list(router.layers), "threshold": router.threshold},
        "sets": sets,
        "confusion": {"rows": row_names, "columns": columns, "counts": matrix},
        "accuracy": sum(t == r for t, r in known) / len(known) if known else float("nan"),
    }
    if extraction["seconds"]:
        extraction["utterances_per_second"] = extraction["utterances"] / extraction["seconds"]
        extraction["audio_seconds_per_second"] = extraction["audio_seconds"] / extraction["seconds"]
        result["feature_extraction"] = extraction
    os.makedirs(out_folder, exist_ok=True)
    _write_table(
        [{"true class": r, **{c: matrix[i][j] for j, c in enumerate(columns)}} for i, r in enumerate(row_names)],
        os.path.join(out_folder, "confusion"),
    )
    _write_table(
        [
            {
                "test set": name,
                "class": s["class"],
                "utterances": s["utterances"],
                "accuracy": s["accuracy"],
                "fallback": s["fallback_fraction"],
                "accuracy of routed": s["accuracy_of_routed"],
            }
            for name, s in sets.items()
        ],
        os.path.join(out_folder, "sets"),
    )
    with atomic_open(os.path.join(out_folder, "routes.csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(route_rows[0]))
        writer.writeheader()
        writer.writerows(route_rows)
    _heatmap(
        matrix,
        row_names,
        columns,
        os.path.join(out_folder, "confusion.png"),
        title or f"router: layers {list(router.layers)}, threshold {router.threshold:g}",
    )
    atomic_write_json(os.path.join(out_folder, "report.json"), result, indent=1)
    return result
