"""Operating points of a routed model (issue 20): how the router's decision rule trades
forgetting for in-domain gain, measured exactly rather than by decoding every rule.

A routed model decodes each utterance with one route (:mod:`aode.routed`), and WER sums
word errors over utterances. So decoding every set once per route gives each utterance's
errors under each route (:func:`route_costs`), and the WER of any decision rule is a sum of
table lookups: Σ errors(utterance, rule(utterance)) / Σ words. A rule is the router's
``threshold``, its ``general_bias`` (log-odds added to the general class: route to an expert
only when surer) and the fallback route of the unsure (the routed folder's fallback, AoDE
with the original, or the base). :func:`sweep` scores a grid of rules on validation sets (to
choose) and on test sets (to report), :func:`choose` picks the rule with the most gain kept
within a forgetting budget on validation, and :func:`write_operating_report` writes the
table and a plot. The driver decodes the chosen rule as a routed model of its own
(``routing.operating_points``), whose WERs the sweep predicted.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

from aode.atomic import atomic_path

__all__ = [
    "Rule",
    "rule_of",
    "row_of_rule",
    "route_costs",
    "rule_routes",
    "forgetting_and_gain",
    "sweep",
    "choose",
    "write_operating_report",
]

BIASES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)

Costs = dict[str, dict[str, dict[str, tuple[int, int]]]]  # {set: {route: {utterance: (errors, words)}}}


class Rule(NamedTuple):
    """How a router's probabilities become routes: its threshold, the general class's bias and
    the route of the unsure."""

    threshold: float
    general_bias: float
    fallback: str

    def label(self) -> str:
        return f"threshold {self.threshold:g}, general bias {self.general_bias:g}, unsure -> {self.fallback}"


def rule_of(row: Mapping[str, Any]) -> Rule:
    """The rule a row of :func:`sweep` (or of the report) was scored under."""
    return Rule(*(row[k] for k in Rule._fields))


def row_of_rule(rows: Sequence[Mapping[str, Any]], rule: Rule) -> Mapping[str, Any]:
    """The row of ``rows`` scored under ``rule`` (the same rule on another set of sets)."""
    return next(r for r in rows if rule_of(r) == rule)


def _read_utterance_costs(path: str) -> dict[str, tuple[int, int]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["ID"]: (int(row["errors"]), int(row["words"])) for row in csv.DictReader(f)}


def route_costs(
    folder: str | os.PathLike,
    sets: Mapping[str, str],
    out_folder: str | os.PathLike,
    *,
    routes: Sequence[str] | None = None,
    **evaluation: Any,
) -> Costs:
    """Each utterance's word errors and reference words under each route (default: every
    route of the routed ``folder``): every set decoded once per route with that route fixed
    (:func:`aode.routed.evaluate_routed`, cached in ``out_folder/<route>/``). The sums are
    checked against the WER the decoding reported: a cost table that does not add up to it
    would make every rule's number wrong."""
    from aode.routed import evaluate_routed
    from aode.routed import read_routed_info

    routes = list(routes or read_routed_info(folder)["routes"])
    costs: Costs = {name: {} for name in sets}
    for route in routes:
        where = os.path.join(os.fspath(out_folder), route)
        results = evaluate_routed(
            folder, sets, where, routes_of_set={name: route for name in sets}, label=f"route {route}", **evaluation
        )
        for name in sets:
            table = _read_utterance_costs(os.path.join(where, f"{name}_utterances.csv"))
            errors, words = (sum(c[i] for c in table.values()) for i in (0, 1))
            if not words or not math.isclose(100.0 * errors / words, results[name]["wer"], abs_tol=1e-6):
                raise ValueError(
                    f"route {route} on {name}: the per-utterance costs ({errors} errors / {words} words) do not "
                    f"give the decoded WER {results[name]['wer']}"
                )
            costs[name][route] = table
    return costs


def rule_routes(
    router: Any, features: Mapping[str, tuple[list[str], Any]], rule: Rule, route_of_class: Mapping[str, str]
):
    """``{set: {utterance: route}}`` under ``rule``: the router's decision (with the rule's
    threshold and general bias) mapped to routes, the unsure to the rule's fallback route."""
    from aode.route import FALLBACK

    decide = router.with_rule(threshold=rule.threshold, general_bias=rule.general_bias)
    out = {}
    for name, (ids, x) in features.items():
        out[name] = {i: rule.fallback if c == FALLBACK else route_of_class[c] for i, c in zip(ids, decide.decide(x))}
    return out


def _wer(costs: Mapping[str, Mapping[str, tuple[int, int]]], routes: Mapping[str, str]) -> float:
    errors = words = 0
    for utterance, route in routes.items():
        e, w = costs[route][utterance]
        errors, words = errors + e, words + w
    return 100.0 * errors / words


def forgetting_and_gain(
    wers: Mapping[str, float],
    base: Mapping[str, float],
    forgetting_sets: Sequence[str],
    reference: Mapping[str, float],
    target_sets: Sequence[str],
) -> tuple[float, float]:
    """Forgetting % (summed WER over the forgetting sets against the base's) and Gain kept
    (mean over target sets of the share of the reference's gain over the base), as the tables
    compute them (:mod:`aode.report`)."""
    from aode.report import forgetting
    from aode.report import gain_kept

    experts = {s: {s: reference[s]} for s in target_sets}  # gain_kept reads each expert's WER on its set
    return forgetting(wers, base, forgetting_sets), gain_kept(wers, base, experts)


def sweep(
    router: Any,
    features: Mapping[str, tuple[list[str], Any]],
    costs: Costs,
    route_of_class: Mapping[str, str],
    *,
    forgetting_sets: Sequence[str],
    target_sets: Mapping[str, str],
    reference: Mapping[str, float] | None = None,
    fallbacks: Sequence[str] = ("fallback", "base"),
    thresholds: Sequence[float] = THRESHOLDS,
    biases: Sequence[float] = BIASES,
) -> list[dict[str, Any]]:
    """One row per rule: its WER per set (``WER``), Forgetting %, Gain kept, the share of utterances
    sent to an expert route, and the rule. ``target_sets``: ``{set: its domain's route}``;
    ``reference``: the WER whose gain counts as whole per target set (default: the set's own
    route, the oracle routing of this routed model); the base is the ``base`` route."""
    from aode.routed import BASE_ROUTE

    missing = [s for s in features if s not in costs]
    if missing:
        raise ValueError(f"no route costs for {missing}")
    base = {s: _wer(costs[s], {i: BASE_ROUTE for i in features[s][0]}) for s in features}
    if reference is None:
        reference = {s: _wer(costs[s], {i: r for i in features[s][0]}) for s, r in target_sets.items()}
    rows = []
    for fallback in fallbacks:
        for threshold in thresholds:
            for bias in biases:
                rule = Rule(float(threshold), float(bias), fallback)
                routes = rule_routes(router, features, rule, route_of_class)
                wers = {s: _wer(costs[s], routes[s]) for s in features}
                forget, kept = forgetting_and_gain(wers, base, forgetting_sets, reference, target_sets)
                n = sum(len(r) for r in routes.values())
                to_expert = sum(r not in (BASE_ROUTE, fallback) for rs in routes.values() for r in rs.values())
                rows.append(
                    {
                        "threshold": rule.threshold,
                        "general_bias": rule.general_bias,
                        "fallback": fallback,
                        "WER": wers,
                        "Forgetting %": forget,
                        "Gain kept": kept,
                        "to an expert": to_expert / n,
                    }
                )
    return rows


def choose(rows: Sequence[Mapping[str, Any]], budget: float) -> dict[str, Any] | None:
    """The row with the most Gain kept whose Forgetting % is at most ``budget`` (ties, and a
    Gain kept undefined because no expert gained: the least forgetting, then the rule listed
    first); None when no rule is within it."""
    within = [r for r in rows if r["Forgetting %"] <= budget]
    if not within:
        return None
    return max(within, key=lambda r: (-math.inf if math.isnan(r["Gain kept"]) else r["Gain kept"], -r["Forgetting %"]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"
    return str(value)


def write_operating_report(
    valid_rows: Sequence[Mapping[str, Any]],
    test_rows: Sequence[Mapping[str, Any]],
    chosen: Mapping[str, Any] | None,
    out_folder: str | os.PathLike,
    *,
    budget: float,
    title: str,
    marks: Mapping[str, tuple[float, float]] = {},
) -> None:
    """``operating.csv`` (every rule: validation and test Forgetting % and Gain kept),
    ``operating.md`` (the chosen rule and the test Pareto front) and ``operating.png``
    (test Gain kept against Forgetting % for every rule, the front, the chosen rule and the
    ``marks``: ``{label: (forgetting, gain kept)}`` of other rows, e.g. AoDE with orig.)."""
    out_folder = os.fspath(out_folder)
    os.makedirs(out_folder, exist_ok=True)
    merged = []
    for v, t in zip(valid_rows, test_rows):
        if rule_of(v) != rule_of(t):
            raise ValueError("validation and test rows are not the same rules in the same order")
        merged.append(
            {
                **rule_of(t)._asdict(),
                "valid Forgetting %": v["Forgetting %"],
                "valid Gain kept": v["Gain kept"],
                "test Forgetting %": t["Forgetting %"],
                "test Gain kept": t["Gain kept"],
                "test to an expert": t["to an expert"],
                **{f"test WER {name}": wer for name, wer in t["WER"].items()},
            }
        )
    with atomic_path(os.path.join(out_folder, "operating.csv")) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(merged[0]))
            writer.writeheader()
            writer.writerows(merged)
    front = _pareto(merged)
    lines = [f"# {title}", ""]
    if chosen is None:
        lines.append(f"No rule forgets at most {budget:g} % on the validation sets.")
    else:
        match = row_of_rule(merged, rule_of(chosen))
        lines += [
            f"Chosen on validation (most Gain kept at Forgetting <= {budget:g} %): {rule_of(chosen).label()}.",
            f"Validation: Forgetting {_fmt(match['valid Forgetting %'])} %, Gain kept {_fmt(match['valid Gain kept'])} "
            f"(of this routed model's oracle gain). Test: Forgetting {_fmt(match['test Forgetting %'])} %, "
            f"Gain kept {_fmt(match['test Gain kept'])}.",
        ]
    lines += ["", "Test Pareto front (no rule forgets less and keeps more):", ""]
    header = [h for h in merged[0] if not h.startswith("test WER ")]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_fmt(r[h]) for h in header) + " |" for r in front]
    with atomic_path(os.path.join(out_folder, "operating.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    _plot(merged, front, chosen, os.path.join(out_folder, "operating.png"), title, budget, marks)


def _pareto(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    ordered = sorted(rows, key=lambda r: (r["test Forgetting %"], -r["test Gain kept"]))
    front, best = [], -math.inf
    for r in ordered:
        if r["test Gain kept"] > best:
            front.append(r)
            best = r["test Gain kept"]
    return front


def _plot(rows, front, chosen, path, title, budget, marks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for fallback, color in zip(dict.fromkeys(r["fallback"] for r in rows), ("tab:blue", "tab:orange", "tab:green")):
        pts = [r for r in rows if r["fallback"] == fallback]
        ax.scatter(
            [r["test Forgetting %"] for r in pts],
            [r["test Gain kept"] for r in pts],
            s=14,
            alpha=0.6,
            color=color,
            label=f"rules, unsure -> {fallback}",
        )
    ax.plot([r["test Forgetting %"] for r in front], [r["test Gain kept"] for r in front], color="grey", lw=1)
    if chosen is not None:
        match = row_of_rule(rows, rule_of(chosen))
        ax.scatter(
            [match["test Forgetting %"]],
            [match["test Gain kept"]],
            s=90,
            marker="*",
            color="red",
            label="chosen on validation",
            zorder=3,
        )
    for (label, (x, y)), marker in zip(marks.items(), "sDP^v"):
        ax.scatter([x], [y], s=50, marker=marker, color="black", label=label, zorder=3)
    ax.axvline(budget, color="red", lw=0.8, ls="--")
    ax.set_xlabel("Forgetting % (test)")
    ax.set_ylabel("Gain kept (test)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
