#!/usr/bin/env python3
"""Cost of the data-aware merges on whisper-small-sized members, on CPU: the statistics passes
(Gram, Fisher) and the merges that read or make them (RegMean, RegMean++, AdaMerging), the
subspace merges (TSV-Merge, Iso-C) and the plain average as the reference (issue 12).

    python bench/data_aware.py                       # whisper-small-sized (~1.5-2 h on 2 busy cores)
    python bench/data_aware.py --quick               # tiny Whisper, the same commands (~5 min)
    python bench/data_aware.py --work /tmp/da --keep # keep models, statistics and merges
    python bench/data_aware.py --steps gram regmean  # a subset (--steps), e.g. to rerun one step

Members, built offline with random weights (nothing is downloaded): the original =
``aode.builders.build_whisper(folder, d_model=768, layers=12, heads=12, ffn=3072)`` (as
bench/full_size.py builds whisper-small.en: 241.7M parameters, the real 51864-token
vocabulary), and 4 "experts" = perturbed copies of it (Gaussian noise of relative scale
``--scale`` on every float tensor, as tests/conftest.py's ``perturbed_copy``). ``--quick``:
d_model 64, 2 layers, 2 heads, FFN 128. Data: a manifest of the real recordings in
tests/data/samples (10 utterances of 1.8-3.2 s, repeated with new IDs when a step needs more
rows; Whisper pads every input to 30 s, so each utterance costs 1500 encoder frames whatever its
length), written with ``aode.manifest.write_manifest``; every member's ``member_data`` and
every ``dev_sets`` entry names it (content does not matter for timing).

Every step is a subprocess of the command a user types where one exists (``python -m
aode.gram``, ``python recipes/average/merge.py <yaml> --method ...``), else a ``python -c``
call of the library function (Fisher: ``aode.fisher`` has no command line; one merge call of
``tsv``/``iso_c`` on random tensors of the model's matrix shapes). Per step: wall time, peak
RSS of the child (``os.wait4``'s ``ru_maxrss``), exit status, output file size, the 1-minute
load average when it started, and phase times read from the commands' own progress bars
(tqdm's clock, through ``TQDM_BAR_FORMAT``).

Steps (``--steps``, in this order):

* ``gram``: ``python -m aode.gram`` of expert 1 on ``--n_utterances`` utterances (batches of
  ``--batch_size``), written where the recipe looks (``<run>/statistics/expert1/``), then the
  other inputs' Grams (experts 2-4 and the original) on ``--other_utterances`` each;
* ``fisher``: ``aode.fisher.estimate_fisher`` of expert 1 on ``--fisher_utterances``;
* ``regmean``: the RegMean merge of the 4 experts + the original (``include_original``) from
  those Gram files: the merge alone (a merge that had to compute statistics is flagged);
* ``regmean_pp``: RegMean++ (4 experts + original), its own Grams group by group on
  ``--pp_utterances`` per input, then RegMean's merge;
* ``adamerging``: 4 experts on the original, ``steps`` 2, ``batch_size`` 2, 5 dev sets (the 4
  targets' and the general one: 5 batches per step), objective ``loss``; objective
  ``entropy`` too with ``--entropy`` (default with ``--quick``): Whisper's entropy objective
  greedy-decodes each batch and AdaMerging has no decode-length cap, so random weights decode
  to Whisper's 448-token limit;
* ``average``: the plain average of the 4 experts (the reference row);
* ``subspace``: one ``tsv`` and one ``iso_c`` call (4 task vectors, float64 SVDs, 1 thread as the
  merge driver) per distinct matrix shape of the model; the whole-model time is estimated from
  them (count x seconds per shape + the average merge's wall), and the whole-model ``tsv`` and
  ``iso_c`` merges through the recipe run when the estimate is within ``--subspace_budget``
  seconds (``--subspace_whole always|never`` overrides).

Appends a markdown table under a dated heading naming the machine to ``--results``
(default bench/RESULTS.md; with ``--quick`` default ``$TMPDIR/aode_data_aware_RESULTS_quick.md``,
a scratch file) and writes ``<work>/table.md``. A failing step is recorded with its error tail and the
bench goes on. Disk: about 30 GB for the full-size run (5 members, 5 Gram files of 1.3 GB,
RegMean++'s temporary Grams, 7 merges); each step's merged folder is removed once measured
unless ``--keep``.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time

import full_size  # the sibling bench: its runner and report helpers (python bench/data_aware.py)
from full_size import cpu_name
from full_size import error_tail
from full_size import mem_total_gib
from full_size import quote
from full_size import read
from full_size import versions_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join("recipes", "average", "merge.py")

SHAPES = full_size.WHISPER_SHAPES  # whisper-small, and the quick run's tiny Whisper
# The options' defaults, (full, quick) (the command line replaces them).
SIZE_DEFAULTS = {
    "n_utterances": (16, 4),
    "batch_size": (4, 2),
    "other_utterances": (4, 2),
    "fisher_utterances": (8, 4),
    "fisher_batch_size": (2, 2),
    "pp_utterances": (2, 2),
    "timeout": (5400, 600),
}
N_EXPERTS = 4
EXPERTS = [f"expert{i + 1}" for i in range(N_EXPERTS)]
ORIGINAL_NAME = "Pretrained"
ADA_OPTIONS = "steps: 2, batch_size: 2"
DEV_SETS = EXPERTS + ["general"]  # AdaMerging's sets: the targets' dev sets and the general one
ALL_STEPS = ["gram", "fisher", "regmean", "regmean_pp", "adamerging", "average", "subspace"]
SUBSPACE_METHODS = ("tsv", "iso_c")

# tqdm reads defaults from TQDM_* variables: every progress bar prints its description, count
# and exact elapsed seconds at every update, so the commands' phases can be timed.
TQDM_ENV = {"TQDM_BAR_FORMAT": "@@tqdm|{desc}|{n}|{total_fmt}|{elapsed_s:.3f}@@", "TQDM_MININTERVAL": "0"}
TQDM_RE = re.compile(r"@@tqdm\|([^|]*)\|(\d+)\|([^|]*)\|([\d.]+)@@")
THREADS = {}  # OMP/MKL threads of every command (--threads)

FISHER_CODE = """\
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
from aode.fisher import estimate_fisher
folder, manifest, out, n, b = sys.argv[1:6]
estimate_fisher(folder, manifest, out_path=out, n_utterances=int(n), batch_size=int(b), overwrite=True)
print("Fisher written to", out)
"""

# One merge call per matrix shape, as the driver makes it: float32 tensors, 1 torch thread.
SUBSPACE_CODE = """\
import json, sys, time, torch
from aode.merge.iso import iso_c
from aode.merge.tsv import tsv
method, shapes, n_tasks = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
fn = {"tsv": tsv, "iso_c": iso_c}[method]
gen = torch.Generator().manual_seed(0)
for shape in shapes:
    base = 0.02 * torch.randn(shape, generator=gen)
    tensors = [base + 0.002 * torch.randn(shape, generator=gen) for _ in range(n_tasks)]
    start = time.perf_counter()
    out = fn(tensors, torch.ones(n_tasks), base)
    seconds = time.perf_counter() - start
    assert out.shape == base.shape and bool(torch.isfinite(out).all())
    print("SUBSPACE " + json.dumps({"shape": shape, "seconds": seconds}), flush=True)
"""


# ----------------------------------------------------------------------------- inputs (child)
def perturbed_copy(src, dst, seed, scale):
    """A copy of model folder ``src`` with Gaussian noise of relative ``scale`` on its float
    tensors (a stand-in for an expert fine-tuned from it)."""
    import torch
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    state = load_file(path)
    gen = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if t.is_floating_point():
            state[name] = t + scale * (t.abs().mean() + 1e-3) * torch.randn(t.shape, generator=gen)
    save_file(state, path, metadata={"format": "pt"})
    del state


def sample_rows(n_rows):
    """The real recordings of tests/data/samples as manifest rows (the tests' own,
    tests/conftest.py), repeated (new IDs) up to ``n_rows`` rows (at least the 10 recordings once)."""
    sys.path.insert(0, full_size.TESTS)
    from conftest import sample_rows as recordings

    base = recordings()
    rows = []
    for k in range(max(1, -(-n_rows // len(base)))):
        rows += [dict(r, ID=r["ID"] if k == 0 else f"{r['ID']}_r{k}") for r in base]
    return rows


def matrix_shapes(path):
    """``{(rows, cols): count}`` of the 2-D tensors in a safetensors file (its header only)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    counts = {}
    for name, info in header.items():
        if name != "__metadata__" and len(info["shape"]) == 2:
            shape = tuple(info["shape"])
            counts[shape] = counts.get(shape, 0) + 1
    return counts


def build_main(work, size, scale, n_rows):
    """``--build``: the members and the manifest, in a process of their own (the bench keeps
    no model in memory, so its children's peak RSS is theirs alone)."""
    from aode.builders import build_whisper
    from aode.manifest import write_manifest

    models = os.path.join(work, "models")
    start = time.perf_counter()
    original = os.path.join(models, "original")
    shutil.rmtree(original, ignore_errors=True)
    build_whisper(original, **SHAPES[size])
    built = time.perf_counter() - start
    for i, name in enumerate(EXPERTS):
        perturbed_copy(original, os.path.join(models, name), seed=i + 1, scale=scale)
    weights = os.path.join(original, "model.safetensors")
    shapes = matrix_shapes(weights)
    with open(weights, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    params = 0
    for name, info in header.items():
        if name != "__metadata__":
            n = 1
            for d in info["shape"]:
                n *= d
            params += n
    manifest = os.path.join(work, "data", "samples.csv")
    os.makedirs(os.path.dirname(manifest), exist_ok=True)
    write_manifest(manifest, sample_rows(n_rows))
    info = {
        "size": size,
        "shape": SHAPES[size],
        "scale": scale,
        "params": params,
        "member_bytes": os.path.getsize(weights),
        "matrix_shapes": [[list(s), c] for s, c in sorted(shapes.items())],
        "build_seconds": round(built, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "manifest": manifest,
        "manifest_rows": n_rows,
    }
    with open(os.path.join(models, "bench_models.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    print(json.dumps(info))


# ----------------------------------------------------------------------------- running
def run_command(cmd, log_path, timeout):
    """bench/full_size.py's runner (exit status, wall seconds, peak RSS in GiB) with this
    bench's thread settings."""
    return full_size.run_command(cmd, log_path, timeout, env=THREADS)


def bars(text):
    """The progress bars of a log: ``[{"desc", "total", "ends": {n: elapsed s}}]`` in order."""
    out, current, last_n = [], None, None
    for m in TQDM_RE.finditer(text):
        desc, n, total, elapsed = m[1], int(m[2]), m[3], float(m[4])
        if current is None or desc != current["desc"] or n < last_n or total != current["total"]:
            current = {"desc": desc, "total": total, "ends": {}}
            out.append(current)
        current["ends"].setdefault(n, elapsed)
        last_n = n
    return out


def bar(text, prefix, last=False):
    """The first (or last) bar whose description starts with ``prefix``, or None."""
    found = [b for b in bars(text) if b["desc"].startswith(prefix)]
    return (found[-1] if last else found[0]) if found else None


def bar_seconds(b):
    return max(b["ends"].values()) if b and b["ends"] else None


def bar_steps(b):
    """Seconds of each unit of a bar (unit k ends at its first update showing n = k)."""
    if not b:
        return []
    times, prev = [], b["ends"].get(0, 0.0)
    for k in range(1, max(b["ends"]) + 1):
        if k not in b["ends"]:
            break
        times.append(b["ends"][k] - prev)
        prev = b["ends"][k]
    return times


def gib(nbytes):
    return nbytes / 2**30


def fmt_size(path):
    if not path or not os.path.exists(path):
        return "-"
    size = os.path.getsize(path)
    return f"{gib(size):.2f} GiB" if size >= 2**28 else f"{size / 2**20:.1f} MiB"


def load1():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ----------------------------------------------------------------------------- the bench
def error_row(key, step, error):
    """The table row of a step the bench itself failed in (no command's result)."""
    return {
        "key": key,
        "step": step,
        "cmd": "",
        "load": load1(),
        "wall": 0.0,
        "rss": 0.0,
        "exit": "bench error",
        "ok": False,
        "out": "-",
        "size": "-",
        "notes": [],
        "error": error,
    }


class Bench:
    def __init__(self, args):
        self.args = args
        self.size = "quick" if args.quick else "full"
        self.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="aode_data_aware_"))
        self.logs = os.path.join(self.work, "logs")
        self.runs = os.path.join(self.work, "runs")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.runs, exist_ok=True)
        self.rows, self.info, self.started = [], None, time.perf_counter()
        self.loadavg_start = os.getloadavg()
        self.subspace_estimate = {}

    def log(self, msg):
        print(f"[{time.perf_counter() - self.started:7.0f} s] {msg}", flush=True)

    def rel(self, path):
        """A path as the table shows it: relative to the work folder."""
        return os.path.relpath(path, self.work) if str(path).startswith(self.work) else str(path)

    def show(self, cmd):
        shown = []
        for c in cmd[1:]:
            c = str(c)
            shown.append(quote(self.rel(c) if c.startswith(self.work) else c))
        return "python " + " ".join(shown)

    # ---------------------------------------------------------------- inputs
    def build(self):
        a = self.args
        n_rows = max(10, a.n_utterances, a.other_utterances, a.fisher_utterances, a.pp_utterances)
        info_file = os.path.join(self.work, "models", "bench_models.json")
        if os.path.isfile(info_file):
            with open(info_file, encoding="utf-8") as f:
                info = json.load(f)
            if info["size"] == self.size and info["scale"] == a.scale and info["manifest_rows"] >= n_rows:
                self.info = info
                self.log(f"members found in {self.work}/models")
                return
        os.makedirs(os.path.join(self.work, "models"), exist_ok=True)
        self.log(f"building the original ({self.size}) and {N_EXPERTS} perturbed copies in {self.work}/models")
        cmd = [sys.executable, os.path.abspath(__file__), "--build", self.work, self.size, str(a.scale), str(n_rows)]
        rc, wall, rss = run_command(cmd, os.path.join(self.logs, "build.log"), a.timeout)
        if rc != 0:
            raise RuntimeError(f"building the members failed ({rc}):\n" + error_tail(read(self.logs + "/build.log")))
        with open(info_file, encoding="utf-8") as f:
            self.info = json.load(f)
        self.info["build_peak_gib"] = rss
        self.log(f"{self.info['params'] / 1e6:.1f}M parameters per member, built in {wall:.0f} s")

    def model(self, name):
        return os.path.join(self.work, "models", "original" if name == ORIGINAL_NAME else name)

    @property
    def manifest(self):
        return self.info["manifest"]

    def hparams(self):
        """The merge recipe's YAML every merge step uses (overridden per step on the command line)."""
        path = os.path.join(self.work, "bench.yaml")
        mapping = lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"  # noqa: E731
        text = "\n".join(
            [
                "# bench/data_aware.py: members and data for the data-aware merges",
                "title: data-aware bench",
                "seed: 0",
                f"output_folder: {os.path.join(self.runs, 'unused')}",
                f"original: {self.model(ORIGINAL_NAME)}",
                f"original_name: {ORIGINAL_NAME}",
                "experts: " + mapping({n: self.model(n) for n in EXPERTS}),
                "include_original: False",
                "method: average",
                "member_data: " + mapping({n: self.manifest for n in EXPERTS + [ORIGINAL_NAME]}),
                "dev_sets: " + mapping({n: self.manifest for n in DEV_SETS}),
                f"statistics_utterances: {self.args.other_utterances}",
                f"statistics_batch_size: {self.args.batch_size}",
                "test_sets: {}",
                "evaluate_experts: False",
                "progressbar: True",
                "",
            ]
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    # ---------------------------------------------------------------- one command
    def measure(self, key, label, cmd, out=None):
        """Run ``cmd``; returns the row (also recorded) and the log's text."""
        row = {"key": key, "step": label, "cmd": self.show(cmd), "load": load1(), "notes": []}
        log = os.path.join(self.logs, f"{key}.log")
        self.log(f"{key}: {row['cmd']}")
        rc, row["wall"], row["rss"] = run_command(cmd, log, self.args.timeout)
        text = read(log)
        row["exit"], row["ok"] = rc, rc == 0
        row["out"] = self.rel(out) if out else "-"
        row["size"] = fmt_size(out)
        if rc == 0 and out and not os.path.exists(out):
            row["ok"] = False
            row["error"] = f"no output {out}\n" + error_tail(text)
        elif rc != 0:
            row["error"] = error_tail(text)
        self.rows.append(row)
        self.log(
            f"{key}: exit {rc}, {row['wall']:.0f} s, peak RSS {row['rss']:.2f} GiB, output {row['size']}"
            + ("" if row["ok"] else "  FAILED:\n" + row.get("error", ""))
        )
        return row, text

    def recipe(self, key, label, method, output, *extra, merged_keep=False):
        shutil.rmtree(os.path.join(output, "merged"), ignore_errors=True)
        cmd = [sys.executable, RECIPE, self.hparams(), "--output_folder", output, "--method", method, *extra]
        weights = os.path.join(output, "merged", "model.safetensors")
        row, text = self.measure(key, label, cmd, weights)
        merge = bar(text, "merge (", last=True)
        if merge:
            row["notes"].append(f"driver's tensor loop {bar_seconds(merge):.1f} s")
        if not (self.args.keep or merged_keep):
            shutil.rmtree(os.path.join(output, "merged"), ignore_errors=True)
        return row, text

    # ---------------------------------------------------------------- steps
    def gram_file(self, name):
        return os.path.join(self.runs, "regmean", "statistics", name, "gram.safetensors")

    def gram_command(self, name, n):
        return [
            sys.executable,
            "-m",
            "aode.gram",
            self.model(name),
            self.manifest,
            "--n_utterances",
            str(n),
            "--batch_size",
            str(self.args.batch_size),
            "--out",
            self.gram_file(name),
        ]

    def step_gram(self):
        a = self.args
        shutil.rmtree(os.path.join(self.runs, "regmean"), ignore_errors=True)
        first = EXPERTS[0]
        row, text = self.measure(
            "gram",
            f"Gram, {first}, {a.n_utterances} utterances",
            self.gram_command(first, a.n_utterances),
            self.gram_file(first),
        )
        self.gram_notes(row, text, a.n_utterances)
        self.other_grams()

    def other_grams(self):
        """The other inputs' Grams (experts 2-4 and the original) on few utterances: one row."""
        a = self.args
        walls, peaks, loops, failed = [], [], [], []
        for name in EXPERTS[1:] + [ORIGINAL_NAME]:
            if os.path.isfile(self.gram_file(name)):
                continue
            row, text = self.measure(
                f"gram_{name}", f"Gram, {name}", self.gram_command(name, a.other_utterances), self.gram_file(name)
            )
            self.rows.remove(row)  # summarised below
            walls.append(row["wall"])
            peaks.append(row["rss"])
            loops.append(bar_seconds(bar(text, "Gram")) or float("nan"))
            if not row["ok"]:
                failed.append(f"{name}: exit {row['exit']}\n{row.get('error', '')}")
        if not walls:
            return
        n = len(walls)
        self.rows.append(
            {
                "key": "gram_others",
                "step": f"Gram, {n} other inputs, {a.other_utterances} utterances each",
                "cmd": f"{n} x " + self.show(self.gram_command(ORIGINAL_NAME, a.other_utterances)),
                "load": float("nan"),
                "wall": sum(walls),
                "rss": max(peaks),
                "exit": 0 if not failed else "see below",
                "ok": not failed,
                "error": "\n".join(failed),
                "out": f"{n} files",
                "size": fmt_size(self.gram_file(ORIGINAL_NAME)) + " each",
                "notes": [
                    f"wall per input {', '.join(f'{w:.0f}' for w in walls)} s; utterance loop "
                    f"{', '.join(f'{s:.1f}' for s in loops)} s "
                    f"({sum(loops) / n / a.other_utterances:.2f} s/utterance); "
                    f"peak RSS per input {', '.join(f'{p:.2f}' for p in peaks)} GiB"
                ],
            }
        )
        self.compare_gram_memory()

    def gram_notes(self, row, text, n):
        b = bar(text, "Gram")
        loop = bar_seconds(b)
        if loop is not None:
            batches = bar_steps(b)
            row["loop"] = loop
            row["notes"].append(
                f"utterance loop {loop:.1f} s = {loop / n:.2f} s/utterance (batches of {self.args.batch_size}: "
                + ", ".join(f"{s:.1f}" for s in batches)
                + f" s); imports, model load and save {row['wall'] - loop:.0f} s"
            )

    def compare_gram_memory(self):
        first = next((r for r in self.rows if r["key"] == "gram"), None)
        others = next((r for r in self.rows if r["key"] == "gram_others"), None)
        if first and others and first["ok"] and others["ok"]:
            growth = first["rss"] - others["rss"]
            others["notes"].append(
                f"peak RSS {first['rss']:.2f} GiB with {self.args.n_utterances} utterances vs "
                f"{others['rss']:.2f} GiB with {self.args.other_utterances}"
                + " (same batch size): "
                + (f"+{growth:.2f} GiB" if growth > 0.05 else "no growth with utterances")
            )

    def step_fisher(self):
        a = self.args
        first = EXPERTS[0]
        out = os.path.join(self.runs, "fisher", first, "fisher.safetensors")
        shutil.rmtree(os.path.join(self.runs, "fisher"), ignore_errors=True)
        os.makedirs(os.path.dirname(out))
        cmd = [
            sys.executable,
            "-c",
            FISHER_CODE,
            self.model(first),
            self.manifest,
            out,
            str(a.fisher_utterances),
            str(a.fisher_batch_size),
        ]
        row, text = self.measure("fisher", f"Fisher, {first}, {a.fisher_utterances} utterances", cmd, out)
        row["cmd"] = (
            "python -c 'from aode.fisher import estimate_fisher; estimate_fisher("
            f"{self.rel(self.model(first))}, {self.rel(self.manifest)}, out_path={self.rel(out)}, "
            f"n_utterances={a.fisher_utterances}, batch_size={a.fisher_batch_size})'"
        )
        b = bar(text, "Fisher")
        loop = bar_seconds(b)
        if loop is not None:
            row["notes"].append(
                f"backward loop {loop:.1f} s = {loop / a.fisher_utterances:.2f} s/utterance (batches of "
                f"{a.fisher_batch_size}: " + ", ".join(f"{s:.1f}" for s in bar_steps(b)) + " s)"
            )

    def step_regmean(self):
        missing = [n for n in EXPERTS + [ORIGINAL_NAME] if not os.path.isfile(self.gram_file(n))]
        if missing:  # the gram step was not run (--steps): the inputs' Grams on few utterances
            self.log(f"regmean: computing the Grams of {missing} first")
            if EXPERTS[0] in missing:
                self.all_grams_few()
            else:
                self.other_grams()
        row, text = self.recipe(
            "regmean",
            f"RegMean merge, {N_EXPERTS} experts + original, from Gram files",
            "regmean",
            os.path.join(self.runs, "regmean"),
            "--include_original",
            "True",
        )
        if "[aode] gram statistics of" in text:
            row["notes"].append("FLAG: the recipe computed statistics: the wall includes them")
        else:
            row["notes"].append("statistics found by the recipe: the merge alone")

    def all_grams_few(self):
        for name in EXPERTS:
            if not os.path.isfile(self.gram_file(name)):
                self.measure(
                    f"gram_{name}",
                    f"Gram, {name}, {self.args.other_utterances} utterances",
                    self.gram_command(name, self.args.other_utterances),
                    self.gram_file(name),
                )
        self.other_grams()

    def step_regmean_pp(self):
        a = self.args
        output = os.path.join(self.runs, "regmean_pp")
        shutil.rmtree(output, ignore_errors=True)
        row, text = self.recipe(
            "regmean_pp",
            f"RegMean++, {N_EXPERTS} experts + original, {a.pp_utterances} utterances per input",
            "regmean_pp",
            output,
            "--include_original",
            "True",
            "--statistics_utterances",
            str(a.pp_utterances),
            "--statistics_batch_size",
            str(a.batch_size),
        )
        b = bar(text, "RegMean++")
        passes = bar_steps(b)
        if passes:
            inputs = N_EXPERTS + 1
            loop = bar_seconds(b)
            row["notes"].insert(
                0,
                f"Gram passes: {len(passes) // inputs} groups x {inputs} inputs = {len(passes)} passes in "
                f"{loop:.0f} s ({loop / len(passes):.1f} s/pass, first group {sum(passes[:inputs]):.1f} s, "
                f"last group {sum(passes[-inputs:]):.1f} s)",
            )

    def step_adamerging(self):
        objectives = ["loss"] + (["entropy"] if self.args.entropy else [])
        for objective in objectives:
            output = os.path.join(self.runs, f"adamerging_{objective}")
            shutil.rmtree(output, ignore_errors=True)
            row, text = self.recipe(
                f"adamerging_{objective}",
                f"AdaMerging ({objective}), {N_EXPERTS} experts, {len(DEV_SETS)} dev sets",
                "adamerging",
                output,
                "--method_options",
                f"{{objective: {objective}, {ADA_OPTIONS}}}",
            )
            b = bar(text, "AdaMerging")
            steps = bar_steps(b)
            if steps:
                row["steps"] = steps
                row["notes"].insert(
                    0,
                    f"s/step {', '.join(f'{s:.1f}' for s in steps)} (each step: {len(DEV_SETS)} batches of 2, "
                    "forward + backward)",
                )
                merge = bar_seconds(bar(text, "merge (", last=True)) or 0.0
                row["notes"].append(
                    f"the rest (imports, base model, the members' task vectors, data, write) "
                    f"{row['wall'] - sum(steps) - merge:.0f} s"
                )

    def step_average(self):
        self.recipe(
            "average",
            f"average, {N_EXPERTS} experts (reference)",
            "average",
            os.path.join(self.runs, "average"),
        )

    def step_subspace(self):
        a = self.args
        shapes = [(tuple(s), c) for s, c in self.info["matrix_shapes"]]
        reference = next((r for r in self.rows if r["key"] == "average" and r["ok"]), None)
        for method in SUBSPACE_METHODS:
            cmd = [sys.executable, "-c", SUBSPACE_CODE, method, json.dumps([list(s) for s, _ in shapes]), "4"]
            row, text = self.measure(
                f"{method}_call", f"{method}: one merge call per matrix shape, 4 task vectors", cmd
            )
            row["cmd"] = (
                f"python -c 'aode.merge.{'iso' if method == 'iso_c' else 'tsv'}.{method}(tensors, weights, base)' "
                "on random float32 tensors, torch threads 1 (as the driver)"
            )
            timed = {
                tuple(json.loads(m)["shape"]): json.loads(m)["seconds"]
                for m in re.findall(r"(?m)^SUBSPACE (\{.*\})$", text)
            }
            per_shape = [f"{s[0]}x{s[1]}: {timed[s]:.2f} s (x{c})" for s, c in shapes if s in timed]
            if per_shape:
                row["notes"].append("; ".join(per_shape))
            if len(timed) == len(shapes):
                matrices = sum(timed[s] * c for s, c in shapes)
                io = reference["wall"] if reference else 0.0
                estimate = matrices + io
                self.subspace_estimate[method] = estimate
                row["notes"].append(
                    f"whole-model estimate {estimate / 60:.1f} min = matrices {matrices / 60:.1f} min"
                    + (f" + the average merge's wall {io:.0f} s" if reference else " (no average row: I/O not added)")
                )
            whole = a.subspace_whole == "always" or (
                a.subspace_whole == "auto" and self.subspace_estimate.get(method, float("inf")) <= a.subspace_budget
            )
            if whole:
                self.recipe(
                    f"{method}", f"{method}, {N_EXPERTS} experts, whole model", method, self.runs + f"/{method}"
                )
            else:
                reason = (
                    "--subspace_whole never"
                    if a.subspace_whole == "never"
                    else f"estimate {self.subspace_estimate.get(method, float('nan')) / 60:.1f} min > budget "
                    f"{a.subspace_budget / 60:.0f} min"
                )
                row["notes"].append(f"whole-model merge not run ({reason})")

    def run_all(self):
        steps = [s for s in ALL_STEPS if s in self.args.steps]
        for step in steps:
            try:
                getattr(self, f"step_{step}")()
            except Exception as err:  # a broken bench step is recorded too
                import traceback

                self.rows.append(error_row(step, step, "".join(traceback.format_exception(err))[-2000:]))
                self.log(f"{step}: bench error {err!r}")

    # ---------------------------------------------------------------- report
    def table(self):
        a, info = self.args, self.info or {}
        cpu = cpu_name()
        end = os.getloadavg()
        loads = lambda t: " / ".join(f"{x:.2f}" for x in t)  # noqa: E731
        total = time.perf_counter() - self.started
        shape = SHAPES[self.size]
        lines = [
            f"\n## Data-aware merges, whisper-small-sized members (CPU){' -- QUICK (tiny Whisper)' if a.quick else ''}"
            f": {datetime.date.today()}, {platform.platform()}, {cpu}, {os.cpu_count()} CPUs\n",
            f"Machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs, {mem_total_gib():.0f} GiB RAM, "
            f"no GPU, shared with other jobs. {versions_line()}. "
            f"Load average (1 / 5 / 15 min) at start {loads(self.loadavg_start)}, at end {loads(end)}. "
            f"Torch threads per command: {THREADS.get('OMP_NUM_THREADS')} (OMP/MKL; the merge driver uses 1). "
            f"Whole bench: {total / 60:.1f} min wall.\n",
        ]
        if info:
            lines.append(
                f"Members: the original = `build_whisper(d_model={shape['d_model']}, layers={shape['layers']}, "
                f"heads={shape['heads']}, ffn={shape['ffn']})` (random weights, {info['params'] / 1e6:.1f}M "
                f"parameters, {gib(info['member_bytes']):.2f} GiB fp32) and {N_EXPERTS} experts = copies with "
                f"Gaussian noise of relative scale {info['scale']} on every float tensor; built in "
                f"{info['seconds']:.0f} s. Data: the 10 recordings of tests/data/samples (1.8-3.2 s; Whisper "
                "pads every input to 30 s = 1500 encoder frames), as a manifest of "
                f"{info['manifest_rows']} rows (repeated with new IDs), named by every member's `member_data` "
                f"and by {len(DEV_SETS)} `dev_sets` (the {N_EXPERTS} targets' and the general one). Merges: "
                "`python recipes/average/merge.py <bench.yaml> --method <m>` with `test_sets: {}` "
                "(no evaluation).\n"
            )
        lines.append(
            "Columns: **exit** the exit status; **wall s** the whole command (imports, model load, work, write); "
            "**peak RSS** wait4's `ru_maxrss` of the command; **output** the file it writes and its size; "
            "**load** the 1-minute load average when it started; **details** phase times read from the command's "
            "own progress bars (tqdm's clock via `TQDM_BAR_FORMAT`).\n"
        )
        lines += [
            "| step | exit | wall s | peak RSS GiB | output | load | details |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            status = f"{r['exit']}" + ("" if r.get("ok") else " FAILED")
            output = f"{r['out']} ({r['size']})" if r.get("out", "-") != "-" else "-"
            load = "-" if r["load"] != r["load"] else f"{r['load']:.1f}"
            lines.append(
                f"| {r['step']} | {status} | {r['wall']:.0f} | {r['rss']:.2f} | {output} | {load} | "
                f"{'; '.join(r['notes']) or '-'} |"
            )
        lines += ["", "Commands (paths relative to the work folder):", ""]
        lines += [f"- {r['step']}: `{r['cmd']}`" for r in self.rows if r.get("cmd")]
        lines += ["", *self.findings()]
        for r in self.rows:
            if not r.get("ok"):
                lines += [
                    "",
                    f"**{r['step']} failed** (exit {r['exit']}): `{r.get('cmd', '')}`",
                    "",
                    "```",
                    (r.get("error") or "").strip()[-3000:],
                    "```",
                ]
        lines.append(
            "\nReproduce: `python bench/data_aware.py` (`--quick` for a tiny Whisper, `--steps` to pick steps, "
            "`--work DIR --keep` to keep the members and outputs).\n"
        )
        return "\n".join(lines)

    def findings(self):
        """What the measured commands lack, read from their sources (so the note stays true)."""
        out = []
        if "__main__" not in read(os.path.join(ROOT, "aode", "fisher.py")):
            out.append(
                "- `aode.fisher` has no command line (unlike `python -m aode.gram`): the Fisher row calls "
                "`estimate_fisher` through `python -c`; users get Fisher files only through the merge recipe "
                "(`--method fisher` with `member_data`)."
            )
        if "max_decode_ratio" not in read(os.path.join(ROOT, "aode", "merge", "adamerging.py")):
            ran = any(r["key"] == "adamerging_entropy" for r in self.rows)
            out.append(
                "- AdaMerging has no decode-length option: its entropy objective loads the model with "
                "`max_decode_ratio=1.0`, so Whisper's greedy decode of each batch runs to the 448-token limit when "
                "the model never emits end-of-text (random weights here; a badly merged model in real use). "
                + (
                    "The entropy row measures that worst case."
                    if ran
                    else "Only the `loss` objective is measured (`--entropy` adds it)."
                )
            )
        return (["Findings:", "", *out]) if out else []


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build"]:
        work, size, scale, n_rows = argv[1:5]
        return build_main(work, size, float(scale), int(n_rows))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny Whisper (d_model 64, 2 layers), few utterances")
    parser.add_argument("--steps", nargs="+", default=ALL_STEPS, choices=ALL_STEPS)
    parser.add_argument("--work", help="work folder (models, statistics, merges, logs); default a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and every merged model")
    parser.add_argument("--results", help="markdown file to append to (default bench/RESULTS.md; --quick: scratch)")
    parser.add_argument("--no-append", dest="append", action="store_false", help="write <work>/table.md only")
    parser.add_argument("--n_utterances", type=int, help="utterances of the measured Gram (16; quick 4)")
    parser.add_argument("--batch_size", type=int, help="Gram / RegMean++ batch size (4; quick 2)")
    parser.add_argument(
        "--other_utterances", type=int, help="utterances of the other inputs' Grams (4; quick 2: one batch)"
    )
    parser.add_argument("--fisher_utterances", type=int, help="utterances of the Fisher (8; quick 4)")
    parser.add_argument("--fisher_batch_size", type=int, help="Fisher batch size (2)")
    parser.add_argument("--pp_utterances", type=int, help="RegMean++ utterances per input (2)")
    parser.add_argument("--scale", type=float, default=0.05, help="relative noise of the experts (0.05)")
    parser.add_argument(
        "--entropy",
        action="store_true",
        default=None,
        help="also AdaMerging's entropy objective (default: only with --quick; full size decodes 448 tokens a batch)",
    )
    parser.add_argument("--subspace_whole", choices=["auto", "always", "never"], default="auto")
    parser.add_argument(
        "--subspace_budget", type=float, default=900, help="seconds: run whole-model tsv/iso_c when estimated below"
    )
    parser.add_argument("--timeout", type=int, help="seconds per command (5400; quick 600)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per command (default 1: shared cores)")
    args = parser.parse_args(argv)
    for key, (full, quick) in SIZE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.entropy is None:
        args.entropy = args.quick
    for key in ("n_utterances", "batch_size", "other_utterances", "fisher_utterances", "fisher_batch_size"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1, got {getattr(args, key)}")
    if args.pp_utterances < 1 or args.timeout < 1:
        parser.error("--pp_utterances and --timeout must be at least 1")
    THREADS.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    bench = Bench(args)
    results = args.results or (
        os.path.join(tempfile.gettempdir(), "aode_data_aware_RESULTS_quick.md")
        if args.quick
        else os.path.join(ROOT, "bench", "RESULTS.md")
    )
    bench.log(f"work folder {bench.work}; steps {args.steps}; results to {results if args.append else '-'}")
    try:
        bench.build()
        bench.run_all()
    except Exception as err:
        bench.log(f"bench stopped: {err}")
        bench.rows.append(error_row("build", "build the members", str(err)[-3000:]))
    text = bench.table()
    print(text)
    with open(os.path.join(bench.work, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    if args.append:
        with open(results, "a", encoding="utf-8") as f:
            f.write(text)
        bench.log(f"appended to {results}")
    if not (args.work or args.keep):
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0 if bench.rows and all(r.get("ok") for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
