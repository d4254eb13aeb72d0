"""How much of a difference between two rows of a results table is evaluation noise: a paired
bootstrap over the test utterances (Bisani & Ney, "Bootstrap estimates for confidence
intervals in ASR performance evaluation", ICASSP 2004).

Each resample draws, per test set, as many utterances as the set has, with replacement, and
the same draw for every model (paired: the models are compared on the same utterances). A
set's WER in a resample is ``100 * sum(errors) / sum(reference words)`` over the drawn
utterances; Average and Forgetting % are computed from those WERs as in
:mod:`aode.report` (the baseline's WERs from the same draw). The 95 % interval is the 2.5th
to 97.5th percentile over the resamples; a difference whose interval excludes 0 is unlikely
to be evaluation noise (it says nothing about training noise: another seed of the experts
moves every row).

The per-utterance errors are the evaluation's own (SpeechBrain's ``ErrorRateStats``, written
to ``<eval folder>/<set>_utterances.csv`` by :mod:`aode.evaluate`), so the point estimates
equal the table's.
"""

import csv
import math
import os
from typing import Mapping
from typing import Optional
from typing import Sequence

import numpy as np

from aode.atomic import atomic_open
from aode.report import forgetting

__all__ = ["read_utterance_errors", "paired_bootstrap", "spread_markdown", "write_spread", "utterance_file"]

CONFIDENCE = 95.0


def utterance_file(eval_folder: str, test_set: str) -> str:
    """Where :func:`aode.evaluate.evaluate_model` writes a set's per-utterance errors."""
    return os.path.join(eval_folder, f"{test_set}_utterances.csv")


def read_utterance_errors(path: str) -> dict[str, tuple[int, int]]:
    """``{utterance id: (word errors, reference words)}`` of an ``*_utterances.csv``."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["ID"]] = (int(row["errors"]), int(row["words"]))
    if not out:
        raise ValueError(f"{path}: no utterances")
    return out


def paired_bootstrap(
    errors: Mapping[str, Mapping[str, Mapping[str, tuple[int, int]]]],
    baseline: str,
    forgetting_sets: Sequence[str],
    reference: Optional[str] = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Point estimates and 95 % intervals of each model's Average and Forgetting %, and of
    its difference from ``reference`` (same draws).

    Args:
        errors: ``{model: {test set: {utterance id: (errors, reference words)}}}``; every model
            must have the same sets and utterances.
        baseline: the model Forgetting % is measured against.
        reference: the model the differences are taken from (None: no differences).

    Returns ``{model: {"Average", "Average lo", "Average hi", "Forgetting %", ... ,
    "dAverage", "dAverage lo", "dAverage hi", "dForgetting", ...}}``.
    """
    models = list(errors)
    for name in (baseline, reference):
        if name is not None and name not in errors:
            raise ValueError(f"{name!r} has no per-utterance errors; models: {models}")
    sets = list(errors[baseline])
    rng = np.random.default_rng(seed)
    full, draws = {m: {} for m in models}, {m: {} for m in models}
    for s in sets:
        ids = sorted(errors[baseline][s])
        for m in models:
            if s not in errors[m] or sorted(errors[m][s]) != ids:
                raise ValueError(f"{m!r} and {baseline!r} were not scored on the same utterances of {s!r}")
        words = np.array([errors[baseline][s][i][1] for i in ids], dtype=np.int64)
        pick = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
        drawn_words = words[pick].sum(1)
        for m in models:
            e = np.array([errors[m][s][i][0] for i in ids], dtype=np.int64)
            full[m][s] = 100.0 * e.sum() / max(words.sum(), 1)
            draws[m][s] = 100.0 * e[pick].sum(1) / np.maximum(drawn_words, 1)
    out = {}
    low, high = (100 - CONFIDENCE) / 2, 100 - (100 - CONFIDENCE) / 2

    def average(table):
        return sum(table[s] for s in sets) / len(sets)

    drawn = {}  # model -> (Average, Forgetting %) of every resample
    for m in models:
        with np.errstate(divide="ignore", invalid="ignore"):
            # a draw where the baseline makes no error on the forgetting sets leaves Forgetting %
            # undefined: such draws are left out of its interval (and counted)
            d_forg = _finite_or_nan(forgetting(draws[m], draws[baseline], forgetting_sets))
            point = float(_finite_or_nan(np.array(forgetting(full[m], full[baseline], forgetting_sets))))
        d_avg = average(draws[m])
        out[m] = {"Average": average(full[m]), "Forgetting %": point}
        out[m]["Average lo"], out[m]["Average hi"] = np.percentile(d_avg, [low, high])
        out[m]["Forgetting % lo"], out[m]["Forgetting % hi"] = _nan_percentiles(d_forg, [low, high])
        out[m]["undefined draws"] = int(np.isnan(d_forg).sum())
        drawn[m] = (d_avg, d_forg)
    if reference is not None:
        ref_avg, ref_forg = drawn[reference]
        for m in models:
            d_avg, d_forg = drawn[m]
            out[m]["dAverage"] = out[m]["Average"] - out[reference]["Average"]
            out[m]["dForgetting"] = out[m]["Forgetting %"] - out[reference]["Forgetting %"]
            out[m]["dAverage lo"], out[m]["dAverage hi"] = np.percentile(d_avg - ref_avg, [low, high])
            out[m]["dForgetting lo"], out[m]["dForgetting hi"] = _nan_percentiles(d_forg - ref_forg, [low, high])
    return {m: {k: float(v) for k, v in row.items()} for m, row in out.items()}


def _finite_or_nan(values):
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


def _nan_percentiles(values, qs):
    """Percentiles over the defined draws; NaN when none is defined."""
    values = values[~np.isnan(values)]
    return np.percentile(values, qs) if len(values) else (float("nan"), float("nan"))


def _num(value, fmt):
    return "-" if math.isnan(value) else format(value, fmt)


def _interval(lo, hi):
    return "-" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.2f}, {hi:.2f}]"


def spread_markdown(spread: Mapping[str, Mapping[str, float]], reference: Optional[str] = None) -> str:
    """The bootstrap table: each model's Average and Forgetting % with 95 % intervals, and its
    difference from ``reference`` (a difference is marked * when its interval excludes 0)."""
    columns = ["model", "Average", "95 % CI", "Forgetting %", "95 % CI"]
    if reference is not None:
        columns += [f"Average - {reference}", "95 % CI ", f"Forgetting - {reference}", "95 % CI  "]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for model, r in spread.items():
        cells = [
            model,
            f"{r['Average']:.2f}",
            _interval(r["Average lo"], r["Average hi"]),
            _num(r["Forgetting %"], ".1f"),
            _interval(r["Forgetting % lo"], r["Forgetting % hi"]),
        ]
        if reference is not None:
            for key in ("dAverage", "dForgetting"):
                significant = model != reference and (r[f"{key} lo"] > 0 or r[f"{key} hi"] < 0)
                mark = "*" if significant else ""
                cells += [_num(r[key], "+.2f") + mark, _interval(r[f"{key} lo"], r[f"{key} hi"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_spread(
    eval_folders: Mapping[str, str],
    test_sets: Sequence[str],
    folder: str,
    baseline: str,
    forgetting_sets: Sequence[str],
    reference: Optional[str] = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Optional[str]:
    """``spread.md`` and ``spread.json`` in ``folder`` for ``{model: its eval folder}``; models
    without per-utterance files (composed rows such as the oracle) are left out. Returns the
    markdown, or None when the baseline has no per-utterance files."""
    import json

    errors = {}
    for model, eval_folder in eval_folders.items():
        paths = {s: utterance_file(eval_folder, s) for s in test_sets}
        if all(os.path.isfile(p) for p in paths.values()):
            errors[model] = {s: read_utterance_errors(p) for s, p in paths.items()}
    if baseline not in errors:
        return None
    if reference not in errors:
        reference = None
    spread = paired_bootstrap(errors, baseline, forgetting_sets, reference, n_resamples, seed)
    text = spread_markdown(spread, reference)
    header = (
        f"# Evaluation spread\n\nPaired bootstrap over the test utterances ({n_resamples} resamples, seed {seed}): "
        f"{CONFIDENCE:.0f} % intervals of Average WER and Forgetting % (against {baseline!r})"
        + (f", and of each row's difference from {reference!r} (* : the interval excludes 0)" if reference else "")
        + ".\n\n"
    )
    os.makedirs(folder, exist_ok=True)
    with atomic_open(os.path.join(folder, "spread.md")) as f:
        f.write(header + text)
    with atomic_open(os.path.join(folder, "spread.json")) as f:
        json.dump({"baseline": baseline, "reference": reference, "n_resamples": n_resamples, "rows": spread}, f)
    return text
