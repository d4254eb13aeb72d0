"""Choosing merge weights from data: a search over weightings on the dev sets.

AoDE averages the experts uniformly (paper III-C); Table VIII emphasises one member x4.
:func:`search_weights` tries a small, seeded set of weightings, merges each, scores it on
held-out dev sets (never the test sets) and picks one:

* candidates: the uniform weights, each member emphasised x2 and x4, and ``n_random``
  seeded Dirichlet(1) draws; with ``include_base`` the same again with the original model
  as one more member (the base is the last weight, as in :func:`aode.merge.merge_models`);
* score: Average WER over all evaluated dev sets (the domains' dev sets and the forgetting
  dev sets, as the paper's Average spans all columns) and Forgetting % against the original
  on the forgetting dev sets (:func:`aode.report.forgetting`);
* objective ``"average"``: the lowest Average; ``"constrained"``: the lowest Average among
  the candidates with Forgetting % <= ``max_forgetting`` (if none qualifies, the one with the
  lowest Forgetting %, and the result says so).

Output in ``out_folder``: ``candidates/<id>/`` (merged models), ``eval/<id>/<set>.json``
(cached WERs, :mod:`aode.evaluate`), ``search.json`` (every candidate with weights,
include_base, per-set WER, Average, Forgetting %, Pareto and chosen flags) and ``search.png``
(Average against Forgetting %, the Pareto front, the chosen point, the uniform AoDE).
Everything is resumable: merges are skipped when their folder exists, evaluations are cached
and, with ``keep_merges=False``, the scores of deleted candidates are reused from search.json.

The greedy soup (Wortsman et al. 2022) is in :meth:`aode.experiment.Experiment.greedy_soup`.
"""

import collections
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aode.atomic import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["search_weights", "SearchSettings", "candidate_weights", "pareto_front", "select_candidate", "plot_search"]

OBJECTIVES = ("average", "constrained")
BASE_NAME = "original"
PathLike = str | os.PathLike


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of ``[(x, y), ...]``, both lower-is-better.

    A point is dominated when another is no worse in both coordinates and better in one;
    equal points do not dominate each other (all are kept). Points with a NaN coordinate
    are never on the front. Returned in order of increasing x (then y, then index), i.e.
    along the front.
    """
    pts = [(float(x), float(y)) for x, y in points]
    valid = [i for i, (x, y) in enumerate(pts) if not (math.isnan(x) or math.isnan(y))]
    front = []
    for i in valid:
        xi, yi = pts[i]
        dominated = any(
            pts[j][0] <= xi and pts[j][1] <= yi and (pts[j][0] < xi or pts[j][1] < yi) for j in valid if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1], i))


def candidate_weights(
    n_members: int,
    n_random: int = 8,
    seed: int = 0,
    include_base_choices: Sequence[bool] = (False, True),
    emphasis: Sequence[float] = (2.0, 4.0),
) -> list[dict]:
    """The default candidates: ``[{"label", "weights", "include_base"}, ...]``.

    Per ``include_base`` choice (inputs = the members, plus the original last): uniform
    (all 1, the AoDE), each input x2 and x4 (others 1; with the original, it too is
    emphasised), and ``n_random`` Dirichlet(1) draws scaled to sum to the number of inputs.
    Draws are seeded by ``seed`` and the choice, so they do not depend on the other choices.
    """
    import numpy as np

    out = []
    for include_base in include_base_choices:
        include_base = bool(include_base)
        n = n_members + (1 if include_base else 0)
        names = [f"m{i}" for i in range(n_members)] + ([BASE_NAME] if include_base else [])
        suffix = "+orig" if include_base else ""
        out.append({"label": f"uniform{suffix}", "weights": [1.0] * n, "include_base": include_base})
        if n > 1:
            for factor in emphasis:
                for i in range(n):
                    w = [1.0] * n
                    w[i] = float(factor)
                    out.append({"label": f"{names[i]}x{factor:g}{suffix}", "weights": w, "include_base": include_base})
        rng = np.random.default_rng([int(seed), int(include_base)])
        for k in range(n_random):
            w = rng.dirichlet(np.ones(n)) * n
            out.append(
                {
                    "label": f"dirichlet{k}{suffix}",
                    "weights": [round(float(v), 6) for v in w],
                    "include_base": include_base,
                }
            )
    return out


def _normalise_candidates(candidates, n_members):
    """User candidates (dicts or weight lists) as ``{"label", "weights", "include_base"}``."""
    out = []
    for k, c in enumerate(candidates):
        if isinstance(c, dict):
            weights = [float(v) for v in c["weights"]]
            include_base = bool(c.get("include_base", len(weights) == n_members + 1))
            label = c.get("label") or f"candidate{k}"
        else:
            weights = [float(v) for v in c]
            include_base = len(weights) == n_members + 1
            label = f"candidate{k}"
        want = n_members + (1 if include_base else 0)
        if len(weights) != want:
            raise ValueError(
                f"candidate {label!r}: {len(weights)} weights for {want} inputs "
                f"({n_members} members{' + the original' if include_base else ''})"
            )
        out.append({"label": label, "weights": weights, "include_base": include_base})
    return out


def _digest(obj, n=10):
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _candidate_id(cand, identity):
    label = "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in cand["label"])
    key = {**identity, "weights": [round(w, 9) for w in cand["weights"]], "include_base": cand["include_base"]}
    return f"{label}-{_digest(key, 8)}"


def _forgetting(row, base_row, sets):
    from aode.report import forgetting

    if not sets:
        return None
    if sum(base_row[s] for s in sets) == 0:
        return 0.0 if sum(row[s] for s in sets) == 0 else math.inf
    return forgetting(row, base_row, sets)


def select_candidate(
    candidates: Sequence[Mapping], objective: str = "average", max_forgetting: float | None = None
) -> tuple[int, bool | None]:
    """``(index, constraint_met)`` of the chosen candidate (dicts with ``average``, ``forgetting``).

    Ties go to the lower Forgetting %, then to the earlier candidate. ``constraint_met`` is
    None for the ``"average"`` objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not candidates:
        raise ValueError("no candidates")

    def forg(c):
        return math.inf if c.get("forgetting") is None else c["forgetting"]

    order = range(len(candidates))
    if objective == "average":
        return min(order, key=lambda i: (candidates[i]["average"], forg(candidates[i]), i)), None
    if max_forgetting is None:
        raise ValueError('objective "constrained" needs max_forgetting (a Forgetting % bound)')
    if any(c.get("forgetting") is None for c in candidates):
        raise ValueError('objective "constrained" needs forgetting sets')
    ok = [i for i in order if candidates[i]["forgetting"] <= max_forgetting]
    if ok:
        return min(ok, key=lambda i: (candidates[i]["average"], candidates[i]["forgetting"], i)), True
    return min(order, key=lambda i: (candidates[i]["forgetting"], candidates[i]["average"], i)), False


def plot_search(result: Mapping, path: PathLike) -> None:
    """Average WER against Forgetting % for every candidate of a search result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = result["candidates"]
    xs = [c["forgetting"] if c["forgetting"] is not None else 0.0 for c in cands]
    xs = [x if math.isfinite(x) else float("nan") for x in xs]  # inf: the original had 0 errors
    ys = [c["average"] for c in cands]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for include_base, color, label in ((False, "tab:blue", "experts only"), (True, "tab:orange", "with the original")):
        idx = [i for i, c in enumerate(cands) if c["include_base"] == include_base]
        if idx:
            ax.scatter(
                [xs[i] for i in idx], [ys[i] for i in idx], s=22, color=color, alpha=0.7, label=f"candidates, {label}"
            )
    front = [i for i, c in enumerate(cands) if c["pareto"]]
    front.sort(key=lambda i: (xs[i], ys[i]))
    if front:
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            "-o",
            color="tab:green",
            ms=8,
            mfc="none",
            lw=1.2,
            label="Pareto front",
        )
    for i, c in enumerate(cands):
        if c["label"] in ("uniform", "uniform+orig"):
            text = "AoDE (uniform)" if c["label"] == "uniform" else "AoDE with orig. (uniform)"
            ax.scatter([xs[i]], [ys[i]], marker="D", s=45, facecolors="none", edgecolors="black", zorder=4)
            ax.annotate(text, (xs[i], ys[i]), fontsize=8, xytext=(5, -12), textcoords="offset points")
    chosen = next(i for i, c in enumerate(cands) if c["chosen"])
    ax.scatter(
        [xs[chosen]],
        [ys[chosen]],
        marker="*",
        s=260,
        color="tab:red",
        zorder=5,
        label=f"chosen: {cands[chosen]['label']}",
    )
    base = result.get("base_wer")
    if base and result.get("base_average") is not None:
        ax.scatter([0.0], [result["base_average"]], marker="s", color="grey", label="original")
    if result.get("objective") == "constrained" and result.get("max_forgetting") is not None:
        ax.axvline(
            result["max_forgetting"],
            color="tab:red",
            lw=0.8,
            ls="--",
            label=f"Forgetting bound {result['max_forgetting']:g} %",
        )
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("Forgetting %  (dev sets, lower is better)")
    ax.set_ylabel("Average WER %  (dev sets, lower is better)")
    ax.set_title(f"Merge weight search ({result['method']}, objective: {result['objective']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _previous_scores(path, eval_key):
    """Scores of an earlier search.json with the same evaluation key, by candidate id."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}
    if old.get("eval_key") != eval_key:
        return {}
    return {c["id"]: c["wer"] for c in old.get("candidates", []) if c.get("wer")}


@dataclass
class SearchSettings:
    """How :func:`search_weights` searches: its keyword arguments after ``out_folder``.

    * ``method``: the merge method (:func:`aode.merge.available_methods`); ``merge_options`` its options.
    * ``objective``: ``"average"`` or ``"constrained"`` (with ``max_forgetting``, in %).
    * ``candidates``: explicit candidates instead of the default ones: weight lists (one per
      member, plus the original's last for include_base) or dicts ``{"weights",
      "include_base", "label"}``.
    * ``n_random``, ``seed``, ``include_base_choices``: the default candidates
      (:func:`candidate_weights`); ``seed`` also seeds the merges.
    * ``eval_kwargs``: passed to :func:`aode.evaluate.evaluate_models` (batch_size, normalizer,
      device, ...).
    * ``keep_merges``: False deletes every candidate folder but the chosen one at the end (disk);
      their scores stay in search.json and are reused on a rerun.
    * ``progress``: progress bars (the merges', and the evaluations' unless ``eval_kwargs`` says).
    """

    method: str = "average"
    objective: str = "average"
    max_forgetting: float | None = None
    candidates: Sequence | None = None
    n_random: int = 8
    seed: int = 0
    include_base_choices: Sequence[bool] = (False, True)
    eval_kwargs: dict | None = None
    merge_options: dict | None = None
    keep_merges: bool = True
    progress: bool = True


# What search.json records of each candidate.
RECORDED = ("id", "label", "weights", "include_base", "folder", "wer", "average", "forgetting", "pareto", "chosen")


def search_weights(
    members: Sequence[PathLike],
    base: PathLike,
    dev_sets: Mapping[str, str],
    forgetting_sets: Mapping[str, str] | None,
    out_folder: PathLike,
    **settings: Any,
) -> dict:
    """Search merge weights on dev sets; returns the chosen candidate (module docstring).

    Args:
        members: the experts' model folders.
        base: the original model folder (Forgetting % reference; a member with include_base).
        dev_sets: ``{name: manifest}`` of the target domains' dev sets.
        forgetting_sets: ``{name: manifest}`` of dev sets that measure forgetting (e.g. a
            LibriSpeech dev split); may be empty for the ``"average"`` objective.
        out_folder: where candidates, evaluations, search.json and search.png go.
        settings: the keywords of :class:`SearchSettings` (method, objective, max_forgetting,
            candidates, n_random, seed, include_base_choices, eval_kwargs, merge_options,
            keep_merges, progress).

    Returns the chosen candidate: ``{"id", "label", "weights", "include_base", "folder",
    "wer", "average", "forgetting", "pareto", "chosen", "constraint_met"}``.
    """
    search = _Search(members, base, dev_sets, forgetting_sets, out_folder, SearchSettings(**settings))
    cands = search.candidates()
    base_wer = search.score(cands)
    chosen, met = _choose(cands, search.settings.objective, search.settings.max_forgetting)
    winner = cands[chosen]
    search.keep_only(cands, winner)
    winner["constraint_met"] = met
    search.report(cands, winner, met, base_wer)
    return dict(winner)


class _Search:
    """One weight search: its inputs, checked, and its steps (the seams of :func:`search_weights`):
    :meth:`candidates`, :meth:`score` on the dev sets, :meth:`keep_only` the chosen merge,
    :meth:`report`."""

    def __init__(self, members, base, dev_sets, forgetting_sets, out_folder, settings):
        self.members = [os.path.abspath(os.fspath(m)) for m in members]
        self.base = os.path.abspath(os.fspath(base))
        self.dev_sets = collections.OrderedDict(dev_sets)
        self.forgetting_sets = collections.OrderedDict(forgetting_sets or {})
        objective = settings.objective
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if objective == "constrained" and (settings.max_forgetting is None or not self.forgetting_sets):
            raise ValueError('objective "constrained" needs max_forgetting and forgetting_sets')
        if not self.dev_sets:
            raise ValueError("no dev sets to search on")
        both = set(self.dev_sets) & set(self.forgetting_sets)
        if both:
            raise ValueError(f"set names {sorted(both)} are both dev and forgetting sets")
        self.all_sets = collections.OrderedDict(list(self.dev_sets.items()) + list(self.forgetting_sets.items()))
        self.settings = settings
        self.eval_kwargs = dict(settings.eval_kwargs or {})
        self.eval_kwargs.setdefault("progress", settings.progress)
        self.merge_options = dict(settings.merge_options or {})
        self.out_folder = out_folder
        self.eval_folder = os.path.join(out_folder, "eval")
        self.json_path = os.path.join(out_folder, "search.json")
        self.eval_key = None

    def candidates(self):
        """The candidates (default or given), each with its ``id``; repeated ones dropped."""
        from aode.reuse import model_fingerprint

        s = self.settings
        if s.candidates is None:
            cands = candidate_weights(len(self.members), s.n_random, s.seed, s.include_base_choices)
        else:
            cands = _normalise_candidates(s.candidates, len(self.members))
        # Candidates are named by what they are made from: the members' and the base's weights by
        # content, so a retrained expert at the same path makes new candidates, never reuses old ones.
        identity = {
            "members": [model_fingerprint(m) for m in self.members],
            "base": model_fingerprint(self.base),
            "method": s.method,
            "options": self.merge_options,
            "seed": s.seed,
        }
        seen, unique = set(), []
        for c in cands:
            c["id"] = _candidate_id(c, identity)
            if c["id"] not in seen:
                seen.add(c["id"])
                unique.append(c)
        return unique

    def score(self, cands):
        """Merge and evaluate every candidate (or reuse its scores of an earlier search.json);
        sets each one's ``folder``, ``wer``, ``average`` and ``forgetting``. Returns the
        original's WERs."""
        from aode.evaluate import evaluate_models
        from aode.reuse import file_fingerprint

        os.makedirs(self.out_folder, exist_ok=True)
        self.eval_key = _digest(
            {
                "sets": {s: file_fingerprint(m) for s, m in self.all_sets.items()},
                "eval": {k: v for k, v in self.eval_kwargs.items() if k != "progress"},
            }
        )
        previous = _previous_scores(self.json_path, self.eval_key)
        base_wer = self._evaluate(evaluate_models, BASE_NAME, self.base)
        for k, c in enumerate(cands):
            folder = self._folder(c)
            if c["id"] in previous and not os.path.isdir(folder):
                c["wer"] = previous[c["id"]]  # deleted with keep_merges=False, scored before
            else:
                folder = self.merge(c)
                c["wer"] = self._evaluate(evaluate_models, c["id"], folder)
            c["folder"] = folder
            c["average"] = self._average(c["wer"])
            c["forgetting"] = _forgetting(c["wer"], base_wer, list(self.forgetting_sets))
            logger.info(
                "search %d/%d %s: Average %.2f, Forgetting %s",
                k + 1,
                len(cands),
                c["label"],
                c["average"],
                c["forgetting"],
            )
        return base_wer

    def _evaluate(self, evaluate_models, name, folder):
        return evaluate_models({name: folder}, self.all_sets, self.eval_folder, **self.eval_kwargs)[name]

    def _average(self, wer):
        return sum(wer[s] for s in self.all_sets) / len(self.all_sets)

    def _folder(self, c):
        return os.path.join(self.out_folder, "candidates", c["id"])

    def merge(self, c):
        """Candidate ``c``'s merged folder, merged unless it is there already."""
        from aode.merge import merge_models

        folder = self._folder(c)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            logger.info(
                "search: merging candidate %s (weights %s%s)",
                c["id"],
                c["weights"],
                ", with the original" if c["include_base"] else "",
            )
            if os.path.exists(folder):  # an incomplete folder from elsewhere
                shutil.rmtree(folder)
            merge_models(
                self.members,
                folder,
                method=self.settings.method,
                weights=c["weights"],
                base=self.base,
                include_base=c["include_base"],
                options=self.merge_options,
                seed=self.settings.seed,
                progress=self.settings.progress,
            )
        return folder

    def keep_only(self, cands, winner):
        """The chosen merge on disk (merged again if it was deleted since it was scored); with
        ``keep_merges=False`` the other candidates' folders deleted."""
        if not os.path.isfile(os.path.join(winner["folder"], "config.json")):
            winner["folder"] = self.merge(winner)  # scored earlier, its folder deleted since
        if not self.settings.keep_merges:
            for c in cands:
                if not c["chosen"] and os.path.isdir(c["folder"]):
                    shutil.rmtree(c["folder"])

    def report(self, cands, winner, met, base_wer):
        """search.json, search.png and a line on stdout."""
        s = self.settings
        result = {
            "method": s.method,
            "merge_options": self.merge_options,
            "objective": s.objective,
            "max_forgetting": s.max_forgetting,
            "constraint_met": met,
            "note": None
            if met is not False
            else f"no candidate met Forgetting % <= {s.max_forgetting}; chose the lowest Forgetting %",
            "members": self.members,
            "base": self.base,
            "dev_sets": dict(self.dev_sets),
            "forgetting_sets": dict(self.forgetting_sets),
            "eval_key": self.eval_key,
            "base_wer": base_wer,
            "base_average": self._average(base_wer),
            "chosen": winner["id"],
            "candidates": [{k: c.get(k) for k in RECORDED} for c in cands],
        }
        atomic_write_json(self.json_path, result, indent=1)
        plot_search(result, os.path.join(self.out_folder, "search.png"))
        print(
            f"[aode] weight search ({s.method}, {s.objective}): chose {winner['label']} "
            f"(weights {winner['weights']}{', with the original' if winner['include_base'] else ''}): "
            f"dev Average {winner['average']:.2f}, Forgetting {winner['forgetting']}",
            flush=True,
        )


def _choose(cands, objective, max_forgetting):
    """``(index, constraint_met)`` of the chosen candidate (:func:`select_candidate`, with a
    warning when no candidate meets the bound); marks each candidate's ``pareto`` and ``chosen``."""
    chosen, met = select_candidate(cands, objective, max_forgetting)
    if met is False:
        logger.warning(
            "no candidate has Forgetting %% <= %s; chose the one with the lowest Forgetting %% (%s, %.2f %%)",
            max_forgetting,
            cands[chosen]["label"],
            cands[chosen]["forgetting"],
        )
    front = set(pareto_front([(c["forgetting"] if c["forgetting"] is not None else 0.0, c["average"]) for c in cands]))
    for i, c in enumerate(cands):
        c["pareto"] = i in front
        c["chosen"] = i == chosen
    return chosen, met
