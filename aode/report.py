"""The paper's tables from a WER table: Average, Forgetting %, and plots.

* Average = unweighted mean of the WER columns (paper Tables VII/VIII).
* Forgetting % = 100 * (sum of the forgetting sets' WER / the same sum for the
  baseline - 1); with LibriSpeech test-clean and test-other this is the paper's
  100 * ((WER_clean + WER_other) / (WER_clean_pre + WER_other_pre) - 1).
* Per forgetting set, the relative increase in %, as extra columns.
* Gain kept (issue: merging beyond the mean) = mean over target domains of
  (WER_pre - WER_model) / (WER_pre - WER_expert).

Command line::

    python -m aode.report wer.csv [--baseline NAME] [--forgetting COL ...] [--csv OUT]
"""

import argparse
import csv
import json
import math
import os
import sys

from aode.atomic import atomic_open
from aode.scenarios import default_forgetting_sets

DERIVED = ("Average", "Forgetting %")


def read_wer_csv(path):
    """(model names in order, set names, {model: {set: wer}}); derived columns ignored."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WER table not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise ValueError(f"{path}: expected a header 'model,<test set>,...'")
        sets = [h for h in header[1:] if h not in DERIVED and not h.startswith(("Forgetting", "Gain kept"))]
        index = {h: i for i, h in enumerate(header)}
        names, table = [], {}
        for row in reader:
            if not row:
                continue
            try:
                table[row[0]] = {s: float(row[index[s]]) for s in sets}
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path}: bad row {row!r}: {err}") from err
            names.append(row[0])
    if not names:
        raise ValueError(f"{path}: no rows")
    return names, sets, table


def forgetting(row, baseline_row, forgetting_sets):
    total = sum(row[s] for s in forgetting_sets)
    base = sum(baseline_row[s] for s in forgetting_sets)
    return 100.0 * (total / base - 1.0)


def summarize(table, baseline, forgetting_sets=None, sets=None, expert_of=None, lookup=None, more_forgetting_sets=()):
    """Rows ``{model, <sets>, Average, Forgetting %, Forgetting <set> %, [Gain kept]}``.

    ``more_forgetting_sets`` get a ``Forgetting <set> %`` column each but stay out of the
    headline ``Forgetting %`` (a second figure, e.g. synthetic general sets beside real speech).

    ``expert_of`` maps a target test set to the model name of its domain's expert; it
    enables the "Gain kept" column. Experts are looked up in ``lookup`` (default: ``table``),
    so a table without expert rows can still show the column.
    """
    lookup = lookup or table
    if baseline not in table:
        raise ValueError(f"baseline {baseline!r} is not a row; rows: {list(table)}")
    sets = sets or list(next(iter(table.values())))
    forgetting_sets = forgetting_sets or default_forgetting_sets(sets)
    missing = [s for s in forgetting_sets if s not in sets]
    if missing or not forgetting_sets:
        raise ValueError(f"forgetting sets {forgetting_sets} must be columns of the table: {sets}")
    base = table[baseline]
    rows = []
    for name, wers in table.items():
        row = {"model": name, **{s: wers[s] for s in sets}}
        row["Average"] = sum(wers[s] for s in sets) / len(sets)
        row["Forgetting %"] = forgetting(wers, base, forgetting_sets)
        for s in [*forgetting_sets, *more_forgetting_sets]:
            row[f"Forgetting {s} %"] = 100.0 * (wers[s] / base[s] - 1.0)
        if expert_of:
            row["Gain kept"] = gain_kept(wers, base, {s: lookup[e] for s, e in expert_of.items() if e in lookup})
        rows.append(row)
    return rows


def gain_kept(wers, base, experts):
    """Mean over target sets of (WER_pre - WER_model) / (WER_pre - WER_expert).

    A set whose expert did not improve on the generalist (WER_pre - WER_expert <= 0) has no
    gain to keep: its share is undefined and left out of the mean (:func:`undefined_gains`
    names those sets); NaN when no set has a gain."""
    shares = [(base[s] - wers[s]) / (base[s] - expert[s]) for s, expert in experts.items() if base[s] > expert[s]]
    return sum(shares) / len(shares) if shares else float("nan")


def undefined_gains(base, experts):
    """``{set: (WER_pre, WER_expert)}`` of the target sets whose expert did not improve on the
    generalist: Gain kept leaves them out."""
    return {s: (base[s], expert[s]) for s, expert in experts.items() if not base[s] > expert[s]}


def _fmt(value, digits=2):
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(rows):
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows, path):
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v, 4) for k, v in row.items()})


def write_wer_csv(table, path, sets=None):
    sets = sets or list(next(iter(table.values())))
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model"] + sets)
        for name, wers in table.items():
            writer.writerow([name] + [f"{wers[s]:.4f}" for s in sets])


def pareto_front(points):
    """Indices of the points no other point beats on both coordinates (lower is better on
    both), ordered by the first coordinate."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated and not any(math.isnan(v) for v in (x, y)):
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _scatter(ax, rows, x_key, y_key, lower_y_is_better=True):
    points = [(row[x_key], row[y_key] if lower_y_is_better else -row[y_key]) for row in rows]
    front = pareto_front(points)
    for i, row in enumerate(rows):
        ax.scatter(row[x_key], row[y_key], color="C3" if i in front else "C0", s=18)
        ax.annotate(row["model"], (row[x_key], row[y_key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if len(front) > 1:
        ax.plot([rows[i][x_key] for i in front], [rows[i][y_key] for i in front], color="C3", lw=0.8, ls="--")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("Forgetting %  (lower is better)")


def plot(rows, sets, path, title="AoDE"):
    """WER per set per model (bars); Average against Forgetting % and, when known, Gain kept
    against Forgetting % (scatters, the Pareto front in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gain = "Gain kept" in rows[0]
    fig, axes = plt.subplots(
        1,
        3 if gain else 2,
        figsize=(21 if gain else 15, 6),
        gridspec_kw={"width_ratios": [3, 2, 2] if gain else [3, 2]},
    )
    ax1, ax2 = axes[0], axes[1]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        ax1.bar([j + i * width for j in range(len(sets))], [row[s] for s in sets], width, label=row["model"])
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(sets))])
    ax1.set_xticklabels(sets, rotation=20)
    ax1.set_ylabel("WER %")
    ax1.set_title("WER per test set")
    ax1.legend(fontsize=6, ncol=2)
    _scatter(ax2, rows, "Forgetting %", "Average")
    ax2.set_ylabel("Average WER %  (lower is better)")
    ax2.set_title("Average against forgetting")
    if gain:
        _scatter(axes[2], [r for r in rows if not math.isnan(r["Gain kept"])], "Forgetting %", "Gain kept", False)
        axes[2].set_ylabel("Gain kept  (higher is better; experts = 1)")
        axes[2].set_title("Gain kept against forgetting")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_notes(table, baseline, expert_of=None, lookup=None, counts=None):
    """The lines under a table that say what its numbers leave out: Gain kept's undefined sets,
    and every WER scored on fewer utterances than its manifest holds (``counts``: ``{model:
    {set: (scored, in the manifest)}}``, as :func:`aode.evaluate.evaluate_models` fills it)."""
    lookup = lookup or table
    notes = []
    if expert_of:
        experts = {s: lookup[e] for s, e in expert_of.items() if e in lookup}
        for s, (pre, expert) in undefined_gains(table[baseline], experts).items():
            notes.append(
                f"Gain kept leaves out {s}: its expert did not improve on {baseline} there "
                f"(WER {pre:.2f} -> {expert:.2f}), so there is no gain to keep (undefined, not counted in the mean)."
            )
    for model, per_set in (counts or {}).items():
        for s, (scored, total) in per_set.items():
            if model in table and scored < total:
                notes.append(
                    f"{model} on {s} ({SHORT_MARK}): scored on {scored} of the manifest's {total} utterances "
                    "(the others were unreadable and skipped on request, or longer than max_duration)."
                )
    return notes


SHORT_MARK = "†"  # a WER cell scored on fewer utterances than its manifest holds


def write_report(
    table,
    folder,
    baseline,
    forgetting_sets=None,
    expert_of=None,
    title="AoDE",
    sets=None,
    lookup=None,
    counts=None,
    more_forgetting_sets=(),
):
    """wer.csv, results.csv, results.md, results.json, results.png in ``folder``.

    ``counts`` (``{model: {set: (scored, in the manifest)}}``) marks the WERs scored on fewer
    utterances than their manifest holds, in results.md (with a note) and results.json."""
    os.makedirs(folder, exist_ok=True)
    sets = sets or list(next(iter(table.values())))
    write_wer_csv(table, os.path.join(folder, "wer.csv"), sets)
    rows = summarize(table, baseline, forgetting_sets, sets, expert_of, lookup, more_forgetting_sets)
    write_csv(rows, os.path.join(folder, "results.csv"))
    short = {(model, s) for model, per_set in (counts or {}).items() for s, (n, total) in per_set.items() if n < total}
    shown = [
        {k: (f"{_fmt(v)} {SHORT_MARK}" if (row["model"], k) in short else v) for k, v in row.items()} for row in rows
    ]
    text = markdown(shown)
    notes = report_notes(table, baseline, expert_of, lookup, counts)
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    with atomic_open(os.path.join(folder, "results.md")) as f:
        f.write(
            f"# {title}\n\nWER % per test set; Average = mean of the columns; Forgetting % against "
            f"{baseline!r} on {', '.join(forgetting_sets or default_forgetting_sets(sets))}.\n\n" + text
        )
    record = {"baseline": baseline, "rows": rows, "notes": notes}
    if counts:
        record["utterances"] = {m: {s: list(c) for s, c in per_set.items()} for m, per_set in counts.items()}
    with atomic_open(os.path.join(folder, "results.json")) as f:
        json.dump(record, f, indent=1)
    plot(rows, sets, os.path.join(folder, "results.png"), title)
    return rows, text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m aode.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("wer_csv", help="CSV: model,<test set>,... (Average/Forgetting columns are recomputed)")
    parser.add_argument("--baseline", help="row that forgetting is measured against (default: the first)")
    parser.add_argument("--forgetting", nargs="+", help="forgetting columns (default: the clean/other sets)")
    parser.add_argument("--csv", help="write the table with Average and Forgetting %% columns here")
    args = parser.parse_args(argv)
    try:
        names, sets, table = read_wer_csv(args.wer_csv)
        rows = summarize(table, args.baseline or names[0], args.forgetting, sets)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(rows), end="")
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    from aode.cli import run_main

    sys.exit(run_main(main))
