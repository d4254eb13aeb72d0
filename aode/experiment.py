"""Every scenario of the paper from one driver (recipes/average/reproduce.py).

A scenario has a stable id (the YAML's ``scenarios``), a label for people and the scenarios
whose models it starts from (:data:`SCENARIOS`). Any subset runs: asking for a scenario pulls
in what it needs (``iterative`` alone trains the experts and makes both AoDEs first), and the
experts always run, as every table's Gain kept is measured against them. The hparams are
checked against :class:`aode.config.ExperimentConfig` before any work starts.

Every model is a :class:`Row`: a stable id (lookups and evaluation folders), the label the
tables print and its model folder. Row ids: ``original``, ``expert_<domain>``,
``seq_<d1>-<d2>-...``, ``aode``, ``aode_orig``, ``combined``, ``resampled``, ``iter<k>``,
``iter<k>_orig``, ``x4_<domain>``, ``lora_<domain>``, ``lora_aode``, ``method_<merges folder>``,
``fisher``, ``weight_search``, ``greedy_soup``, ``oracle_ft``, ``oracle_lora``.

Stages (each resumable: a finished expert, merge or evaluation is a complete folder or file,
written under a temporary name and renamed, and is not redone): the data (the ``prepare``
steps, the miniature's synthetic corpus among them, then each domain's ``prepare``), the
experts, then the scenarios' models in the order of SCENARIOS (every merge through
:func:`aode.pipeline.merge_members`, as the merge recipe's; Fishers estimated on each expert's
training data; weight search and greedy soup on the dev sets), then one evaluation of every
model folder on every test set (rows that share a folder, such as resampled = combined data or
a one-member soup = that expert, share its results), the oracle rows and the tables.

Trainings: the independent ones of a stage (the experts; the LoRA experts; each iteration's
fine-tunes) run one after the other here, or as parallel jobs with ``launcher: local`` or
``slurm`` (aode.launcher; merges and evaluations stay in this process).

Folder: ``experts/<name>/expert``, ``merges/<name>``, ``eval/<row id>/<set>.json``,
``eval_dev/<row id>/`` (greedy soup), ``search/`` (weight search), ``table7/`` (Table
VII-style), ``table8/`` (each member x4), ``methods/`` (merge methods), each with wer.csv,
results.{csv,md,json,png}; ``greedy_soup.json``, ``timings.json``. Results folders from
before row ids cached evaluations under ``eval/<label>/``; a rerun copies them to
``eval/<row id>/``, and the cache key decides, as always, whether they are reused.
"""

import collections
import csv
import dataclasses
import importlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Optional
from typing import Union

from aode.atomic import atomic_folder
from aode.atomic import atomic_open
from aode.atomic import atomic_write_json
from aode.config import ConfigError
from aode.config import ExperimentConfig
from aode.config import TrainingConfig
from aode.config import load_yaml
from aode.config import validate
from aode.manifest import write_manifest
from aode.pipeline import evaluation_options
from aode.pipeline import merge_members
from aode.report import write_report
from aode.reuse import may_reuse
from aode.reuse import recorded_stamp
from aode.reuse import training_stamp
from aode.scenarios import ALWAYS
from aode.scenarios import SCENARIO_BY_ID
from aode.scenarios import SCENARIO_IDS
from aode.scenarios import SCENARIOS
from aode.scenarios import TABLES
from aode.scenarios import Scenario

__all__ = [
    "Experiment",
    "Row",
    "resolve_scenarios",
    # the scenario table, declared in aode.scenarios (below aode.config, which checks the ids)
    "Scenario",
    "SCENARIOS",
    "SCENARIO_BY_ID",
    "SCENARIO_IDS",
    "ALWAYS",
    "TABLES",
]

logger = logging.getLogger(__name__)

Sets = dict[str, str]  # {set name: manifest}
Folders = dict[str, str]  # {domain: model folder}
Table = dict[str, dict[str, float]]  # {row id (or domain): {set name: WER %}}


def resolve_scenarios(requested: Iterable[str]) -> tuple[str, ...]:
    """``requested`` with what they need (transitively) and :data:`ALWAYS`, in table order."""
    wanted, todo = set(), [*ALWAYS, *requested]
    while todo:
        scenario = todo.pop()
        if scenario not in SCENARIO_BY_ID:
            raise ConfigError(f"unknown scenario {scenario!r}; known: {SCENARIO_IDS}")
        if scenario not in wanted:
            wanted.add(scenario)
            todo.extend(SCENARIO_BY_ID[scenario].needs)
    return tuple(s for s in SCENARIO_IDS if s in wanted)


@dataclasses.dataclass(frozen=True)
class Row:
    """A row of the tables: ``id`` (stable: lookups, evaluation folder), ``label`` (what the
    table prints), the ``scenario`` that made it (None: the original) and its model
    ``folder`` (None: derived from other rows' results, the oracle)."""

    id: str
    label: str
    scenario: Optional[str]
    folder: Optional[str] = None


def _import(dotted):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _same_router(folder: str, router: Any) -> bool:
    """Whether ``folder`` holds ``router``: the same training stamp and decision rule."""
    from aode.route import Router

    if not os.path.isfile(os.path.join(folder, "router.json")):
        return False
    saved = Router.load(folder)
    return (saved.threshold, saved.general_bias, saved.info.get("made_from")) == (
        router.threshold,
        router.general_bias,
        router.info.get("made_from"),
    )


def _folder_name(name):
    return name.replace(" ", "_").replace("/", "-")


def _average(wers):
    return sum(wers.values()) / len(wers)


def _adopt(folder, legacy):
    """Copy the first existing folder of ``legacy`` (earlier names of ``folder``) to ``folder``."""
    if os.path.isdir(folder):
        return
    for old in legacy:
        if os.path.isdir(old) and os.path.abspath(old) != os.path.abspath(folder):
            with atomic_folder(folder) as tmp:
                for name in os.listdir(old):
                    if os.path.isfile(os.path.join(old, name)):
                        shutil.copy2(os.path.join(old, name), os.path.join(tmp, name))
            logger.info("evaluations of %s reused from %s", folder, old)
            return


class Experiment:
    """The scenario driver; ``hparams`` as loaded from hparams/<experiment>.yaml."""

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.cfg = validate(ExperimentConfig, hparams, "experiment hparams")
        self.out = self.cfg.output_folder
        self.original = self.cfg.original
        self.domains = collections.OrderedDict(self.cfg.domains)
        self.forgetting_sets = collections.OrderedDict(self.cfg.forgetting_sets)
        self.scenarios = resolve_scenarios(self.cfg.scenarios)
        self.rows = collections.OrderedDict()  # row id -> Row, in table order
        self.eval_folders = {}  # row id -> the eval folder holding its per-utterance errors
        self.counts = {}  # row id -> {set: (utterances scored, in the manifest)}
        self._predicted = {}  # operating points: row id -> (the WERs its sweep predicted, its report folder)
        self.add_row("original", self.cfg.original_name, None, self.original)
        adapt = self.cfg.adapt_original
        if adapt:  # the original as shipped is a row of its own; "original" becomes the adapted one
            self.add_row("pretrained", adapt.shipped_name, None, self.original)
        self.timings = collections.OrderedDict()
        self.launcher = self.cfg.launcher  # how a stage's independent trainings run (aode.launcher)
        os.makedirs(self.out, exist_ok=True)

    # ------------------------------------------------------------------ helpers
    def _timed(self, stage, fn, *args, **kwargs):
        start = time.time()
        result = fn(*args, **kwargs)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.time() - start
        return result

    def add_row(self, row_id: str, label: str, scenario: Optional[str], folder: Optional[str] = None) -> Optional[str]:
        """Register a table row; returns ``folder``. Ids and labels are unique."""
        if row_id in self.rows or label in {r.label for r in self.rows.values()}:
            raise ConfigError(f"two rows with the id {row_id!r} or the label {label!r}; rename a merge method")
        self.rows[row_id] = Row(row_id, label, scenario, folder)
        return folder

    def test_sets(self) -> Sets:
        sets = collections.OrderedDict((d, spec.test_csv) for d, spec in self.domains.items())
        sets.update(self.forgetting_sets)
        sets.update(self.cfg.more_forgetting_sets)
        return sets

    def dev_sets(self) -> Sets:
        """The domains' dev sets and the original domain's (greedy soup)."""
        sets = collections.OrderedDict((d, spec.valid_csv) for d, spec in self.domains.items())
        sets.update(self.cfg.forgetting_dev_sets)
        return sets

    def train_hparams(
        self,
        name: str,
        train_csv: str,
        valid_csv: str,
        init_from: Optional[str],
        lora: bool = False,
        overrides: Optional[Mapping[str, Any]] = None,
    ) -> dict[str, Any]:
        """The training YAML of expert ``name`` (the LoRA one with ``lora``) as loaded, with the
        experiment's overrides: a mapping, as a job is handed to aode.train.train_expert (which
        validates it as a TrainingConfig)."""
        given = self.cfg.lora_overrides if lora else self.cfg.train_overrides
        overrides = {**given, **(overrides or {})}
        overrides.update(
            output_folder=os.path.join(self.out, "experts", name),
            train_csv=train_csv,
            valid_csv=valid_csv,
            test_csv=None,
            model_source=self.original,
            init_from=init_from,
            domain=name,
            data_folder=None,
            overwrite=self.cfg.overwrite,
            skip_unreadable_audio=self.cfg.skip_unreadable_audio,
        )
        return load_yaml(self.cfg.lora_hparams_file if lora else self.cfg.train_hparams_file, overrides)

    def expert(
        self, name: str, train_csv: str, valid_csv: str, init_from: Optional[str] = None, lora: bool = False
    ) -> str:
        """Train (or find) the expert ``name``; returns its model folder."""
        spec = dict(train_csv=train_csv, valid_csv=valid_csv, init_from=init_from, lora=lora)
        return self.experts({name: spec})[name]

    def experts(self, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Train (or find) independent experts ``{name: expert()'s keyword arguments}``; returns
        ``{name: model folder}``. Those without an exported folder are trained one after the
        other here (``launcher: serial``) or as one batch of jobs (:meth:`train_many`)."""
        from aode.train import EXPERT_DIR

        folders, todo = {}, collections.OrderedDict()
        for name, spec in specs.items():
            folder = os.path.join(self.out, "experts", name, EXPERT_DIR)
            init_from = spec.get("init_from")
            hparams = self.train_hparams(
                name,
                spec["train_csv"],
                spec["valid_csv"],
                init_from if init_from != self.original else None,
                spec.get("lora", False),
                spec.get("overrides"),
            )
            if os.path.isfile(os.path.join(folder, "config.json")):
                stamp = training_stamp(validate(TrainingConfig, hparams, f"training hparams of {name}"))
                if may_reuse(f"expert {name}", folder, recorded_stamp(folder), stamp, self.cfg.overwrite):
                    logger.info("expert %s: done with the same settings and data, skipping", name)
                    folders[name] = folder
                    continue
            print(f"[aode] training expert {name} (init: {init_from or 'original'})", flush=True)
            if self.launcher.kind == "serial":
                folders.update(self.train_many({name: hparams}))
            else:
                todo[name] = hparams
        folders.update(self.train_many(todo))
        return {name: folders[name] for name in specs}

    def train_many(self, jobs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
        """Train ``{name: train_hparams()}`` (aode.train.train_expert, ``corpus=name``) with the
        experiment's ``launcher`` (aode.launcher); returns ``{name: exported folder}``. A failed
        job raises :class:`aode.launcher.LaunchError` (its log named) once the batch has ended."""
        from aode.launcher import run_jobs

        if not jobs:
            return {}
        if self.launcher.kind == "serial":
            from aode.train import train_expert

            return {name: self._timed("train", train_expert, hparams, corpus=name) for name, hparams in jobs.items()}
        return self._timed(
            "train", run_jobs, jobs, self.launcher, self.launcher.folder or os.path.join(self.out, "jobs")
        )

    def merge(
        self,
        name: str,
        members: list[str],
        weights: Optional[Union[list[float], dict[str, float]]] = None,
        include_original: bool = False,
        method: str = "average",
        options: Optional[dict[str, Any]] = None,
        weight_rules: Optional[list[Any]] = None,
        data_members: Optional[Folders] = None,
    ) -> str:
        """Merge (or find) ``merges/<name>`` (:func:`aode.pipeline.merge_members`, as the merge
        recipe does); returns its model folder. ``data_members``: the members by domain name,
        for methods that need statistics (from each expert's training data; the original's from
        ``general_data``) or dev sets (the domains' and the general ones)."""
        member_data = dev_sets = None
        if data_members is not None:
            named = dict(data_members)
            member_data = {d: self.domains[d].train_csv for d in data_members}
            if self.cfg.general_data or self.cfg.forgetting_dev_sets:
                member_data[self.cfg.original_name] = self.general_data
            dev_sets = self.dev_sets()
        else:
            named = {folder: folder for folder in members}
        return merge_members(
            named,
            os.path.join(self.out, "merges", _folder_name(name)),
            original=self.original,
            original_name=self.cfg.original_name,
            method=method,
            options=options,
            include_original=include_original,
            weights=weights,
            weight_rules=weight_rules,
            seed=self.cfg.seed,
            member_data=member_data,
            dev_sets=dev_sets,
            statistics_folder=os.path.join(self.out, "statistics"),
            beside_members=True,
            n_utterances=self.cfg.fisher_utterances,
            device=self.cfg.device,
            progress=self.cfg.progressbar,
            overwrite=self.cfg.overwrite,
            what=f"merge {name!r}",
            announce=f"[aode] merging {name} ({method}, {len(members)} members"
            f"{' + original' if include_original else ''})",
            timed=self._timed,
        ).folder

    @property
    def general_data(self) -> str:
        """General-domain data for the original's statistics: ``general_data``, else the first
        forgetting dev set."""
        if self.cfg.general_data:
            return self.cfg.general_data
        dev = self.cfg.forgetting_dev_sets
        if not dev:
            raise ValueError("the original's statistics need general-domain data: set general_data")
        return next(iter(dev.values()))

    def combined_manifest(self, split: str, balanced: bool = False) -> str:
        """All domains' ``split`` rows in one manifest; ``balanced`` repeats the smaller
        domains' rows (seeded) until every domain has as many rows as the largest."""
        per_domain = {d: _read_rows(getattr(spec, f"{split}_csv")) for d, spec in self.domains.items()}
        rows = []
        rng = random.Random(self.cfg.seed)
        most = max(len(r) for r in per_domain.values())
        for domain, domain_rows in per_domain.items():
            chosen = list(domain_rows)
            if balanced and split == "train":
                while len(chosen) < most:
                    chosen += rng.sample(domain_rows, min(len(domain_rows), most - len(chosen)))
            for i, row in enumerate(chosen):
                rows.append({**row, "ID": f"{domain}__{i}__{row['ID']}"})
        name = f"{'resampled' if balanced else 'combined'}_{split}.csv"
        path = os.path.join(self.out, "manifests", name)
        write_manifest(path, rows)
        return path

    def _eval_kwargs(self):
        return evaluation_options(self.cfg)

    def evaluate_folders(
        self, models: Mapping[str, str], sets: Sets, root: str, legacy: Optional[Mapping[str, list[str]]] = None
    ) -> Table:
        """``{id: {set: WER}}`` for ``{id: model folder}`` on ``{set: manifest}``.

        Each folder is decoded once per set, cached in ``<out>/<root>/<id>/`` under the first
        id that names it (ids that share a folder share its results). ``legacy`` maps a folder
        to the names earlier versions cached it under in ``root`` (adopted when present).
        """
        from aode.evaluate import evaluate_model
        from aode.evaluate import scored_counts

        first = collections.OrderedDict()
        for model_id, folder in models.items():
            first.setdefault(os.path.normpath(folder), model_id)
        wers, counts = {}, {}
        for key, model_id in first.items():
            cache = os.path.join(self.out, root, model_id)
            _adopt(cache, [os.path.join(self.out, root, n) for n in (legacy or {}).get(models[model_id], ())])
            results = self._timed(
                "evaluate", evaluate_model, models[model_id], sets, cache, label=model_id, **self._eval_kwargs()
            )
            wers[key] = {s: results[s]["wer"] for s in sets}
            counts[key] = scored_counts(results)
        for model_id, folder in models.items():
            self.eval_folders[model_id] = os.path.join(self.out, root, first[os.path.normpath(folder)])
            if root == "eval":  # the test sets' counts, for the tables
                self.counts[model_id] = counts[os.path.normpath(folder)]
        return {model_id: wers[os.path.normpath(folder)] for model_id, folder in models.items()}

    # ------------------------------------------------------------------ stages
    def prepare_data(self) -> None:
        """Every ``prepare`` step (the miniature's synthetic corpus among them: the schema makes
        ``synthetic_corpus`` one), then each domain's ``prepare``."""
        for step in self.cfg.prepare:
            where = {} if step.data_folder is None else {"data_folder": step.data_folder}
            self._timed("prepare", _import(step.function), save_folder=step.save_folder, **where, **step.options)
        for spec in self.domains.values():
            if spec.prepare and spec.data_folder:
                prepare = _import(spec.prepare)
                prepare(data_folder=spec.data_folder, save_folder=spec.prep_folder, **spec.prep_options)

    def prepare_original(self) -> None:
        """Convert the original from CTranslate2 when asked and missing; adapt it to the
        general domain when asked (the adapted model is then the original of every stage)."""
        source = self.cfg.original_from_ct2
        if source and not os.path.isdir(self.original):
            from aode.convert_ct2 import convert_ct2_whisper

            print(f"[aode] converting {source} (CTranslate2) into {self.original}", flush=True)
            self._timed("convert", convert_ct2_whisper, source, self.original)
        adapt = self.cfg.adapt_original
        if adapt:
            print(f"[aode] adapting the original to the general domain ({adapt.train_csv})", flush=True)
            spec = dict(train_csv=adapt.train_csv, valid_csv=adapt.valid_csv, overrides=adapt.overrides)
            self.original = self.experts({"generalist": spec})["generalist"]
            self.rows["original"] = dataclasses.replace(self.rows["original"], folder=self.original)

    def run(self) -> dict[str, str]:
        start = time.time()
        added = [s for s in self.scenarios if s not in self.cfg.scenarios]
        if added:
            print(f"[aode] scenarios {self.cfg.scenarios} also run {added} (their models are needed)", flush=True)
        if self.cfg.original_from_ct2 and not os.path.isdir(self.original):
            from aode.convert_ct2 import ct2_source_folder

            ct2_source_folder(self.cfg.original_from_ct2)  # missing weights refused before any work
        self.prepare_data()
        self.prepare_original()
        experts = collections.OrderedDict()
        trained = self.experts({d: dict(train_csv=s.train_csv, valid_csv=s.valid_csv) for d, s in self.domains.items()})
        for d in self.domains:
            experts[d] = self.add_row(f"expert_{d}", f"Fine-tuned - {d}", "experts", trained[d])
        members = list(experts.values())
        if "sequential" in self.scenarios:
            self.sequential(experts)
        if "aode" in self.scenarios:
            self.add_row("aode", "AoDE", "aode", self.merge("AoDE", members))
        if "aode_with_original" in self.scenarios:
            self.add_row(
                "aode_orig",
                "AoDE with orig.",
                "aode_with_original",
                self.merge("AoDE with orig", members, include_original=True),
            )
        if "combined" in self.scenarios or "resampled" in self.scenarios:
            self.combined_data()
        if "iterative" in self.scenarios:
            self.iterate()
        if "weighted" in self.scenarios:
            self.weighted(experts)
        lora_experts = self.lora() if "lora" in self.scenarios else {}
        if "methods" in self.scenarios:
            for name, spec in self.cfg.merge_methods.items():
                self.add_row(
                    f"method_{_folder_name(name)}",
                    name,
                    "methods",
                    self.merge(
                        name,
                        members,
                        method=spec.method,
                        options=spec.options or None,
                        include_original=spec.include_original,
                        weights=spec.weights,
                        weight_rules=spec.weight_rules,
                        data_members=experts,
                    ),
                )
        if "fisher" in self.scenarios:
            self.fisher_merge(experts)
        if "weight_search" in self.scenarios:
            self.weight_search(experts)
        if "greedy_soup" in self.scenarios:
            self.greedy_soup(experts, self.dev_table(experts))
        routed = self.routed(experts, lora_experts) if "routed" in self.scenarios else {}
        table = self.evaluate()
        if routed:
            if self.cfg.routing.operating_points:
                routed = routed | self.operating_points(table, experts, lora_experts)
            self.evaluate_routed(table, routed)
            self._check_operating_points(table)
        self.timings["total"] = time.time() - start
        return self.report(table, experts, lora_experts)

    def sequential(self, experts: Folders) -> None:
        """Fine-tune in each of ``sequential_orders``, each step from the previous (scenario 2)."""
        for order in self.cfg.sequential_orders:
            previous = experts[order[0]]  # the first step is that domain's expert itself
            for i, d in enumerate(order[1:], start=1):
                spec = self.domains[d]
                previous = self.expert(
                    f"seq_{'-'.join(order[: i + 1])}", spec.train_csv, spec.valid_csv, init_from=previous
                )
            self.add_row(f"seq_{'-'.join(order)}", f"Sequential FT - {';'.join(order)}", "sequential", previous)

    def combined_data(self) -> None:
        """One fine-tune on all domains' data, and on the same data balanced by resampling; the
        resampled model is the combined one when balancing changes nothing."""
        valid = self.combined_manifest("valid")
        combined = self.combined_manifest("train")
        if "combined" in self.scenarios:
            self.add_row("combined", "Combined data", "combined", self.expert("combined", combined, valid))
        if "resampled" not in self.scenarios:
            return
        resampled = self.combined_manifest("train", balanced=True)
        if "combined" in self.rows and _read_rows(resampled) == _read_rows(combined):
            print(
                "[aode] resampled data = combined data (every domain has as many training rows); "
                "reusing the combined model",
                flush=True,
            )
            folder = self.rows["combined"].folder
        else:
            folder = self.expert("resampled", resampled, valid)
        self.add_row("resampled", "Resampled data", "resampled", folder)

    def iterate(self) -> None:
        """Iterative AoDE (paper III-C): fine-tune the average on each domain, average again."""
        for with_original, start, scenario in ((False, "aode", "aode"), (True, "aode_orig", "aode_with_original")):
            if scenario not in self.cfg.iterated:
                continue
            current = self.rows[start].folder
            for k in range(2, self.cfg.iterations + 1):
                tag = f"iter{k}{'_orig' if with_original else ''}"
                members = list(
                    self.experts(
                        {
                            f"{tag}_{d}": dict(train_csv=spec.train_csv, valid_csv=spec.valid_csv, init_from=current)
                            for d, spec in self.domains.items()
                        }
                    ).values()
                )
                current = self.merge(
                    f"AoDE iteration {k}{' with orig' if with_original else ''}",
                    members,
                    include_original=with_original,
                )
                self.add_row(tag, f"AoDE - iteration {k}{' w/ orig.' if with_original else ''}", "iterative", current)

    def weighted(self, experts: Folders) -> None:
        """Table VIII: one member at 4/8 of the total, the others (the original among them,
        which is what makes the shares add up with four experts) at 1/8 each."""
        for i, d in enumerate(experts):
            weights = [4.0 if j == i else 1.0 for j in range(len(experts))] + [1.0]
            self.add_row(
                f"x4_{d}",
                f"AoDE w/ orig. - {d} x4",
                "weighted",
                self.merge(f"AoDE with orig {d} x4", list(experts.values()), weights=weights, include_original=True),
            )

    def lora(self) -> Folders:
        """LoRA experts (merged into the weights) and their average."""
        lora_experts = collections.OrderedDict()
        trained = self.experts(
            {
                f"lora_{d}": dict(train_csv=s.train_csv, valid_csv=s.valid_csv, lora=True)
                for d, s in self.domains.items()
            }
        )
        for d in self.domains:
            lora_experts[d] = self.add_row(f"lora_{d}", f"LoRA - {d}", "lora", trained[f"lora_{d}"])
        self.add_row("lora_aode", "LoRA AoDE", "lora", self.merge("LoRA AoDE", list(lora_experts.values())))
        return lora_experts

    def fisher_merge(self, experts: Folders) -> None:
        """Fisher-weighted averaging (Matena & Raffel 2022), each expert's diagonal Fisher
        estimated on ``fisher_utterances`` of its own training data."""
        self.add_row(
            "fisher",
            "Fisher-weighted",
            "fisher",
            self.merge("Fisher-weighted", list(experts.values()), method="fisher", data_members=experts),
        )

    def weight_search(self, experts: Folders) -> None:
        """Member weights chosen on the dev sets (aode.search), the original optional."""
        from aode.search import search_weights

        spec = self.cfg.weight_search
        dev_sets = collections.OrderedDict((d, s.valid_csv) for d, s in self.domains.items())
        print("[aode] weight search on the dev sets", flush=True)
        result = self._timed(
            "search",
            search_weights,
            list(experts.values()),
            self.original,
            dev_sets,
            self.cfg.forgetting_dev_sets,
            os.path.join(self.out, "search"),
            method=spec.method,
            objective=spec.objective,
            max_forgetting=spec.max_forgetting,
            n_random=spec.n_random,
            seed=self.cfg.seed,
            eval_kwargs=self._eval_kwargs(),
            progress=self.cfg.progressbar,
        )
        label = spec.objective
        if spec.max_forgetting is not None:
            label += f", forgetting <= {spec.max_forgetting} %"
        self.add_row("weight_search", f"Weight search ({label})", "weight_search", result["folder"])

    def dev_table(self, experts: Folders) -> Table:
        """``{domain: {dev set: WER}}``: each expert on the dev sets (cached in eval_dev/)."""
        ids = {d: f"expert_{d}" for d in experts}
        table = self.evaluate_folders(
            {ids[d]: folder for d, folder in experts.items()},
            self.dev_sets(),
            "eval_dev",
            legacy={folder: [d] for d, folder in experts.items()},
        )
        return {d: table[ids[d]] for d in experts}

    def greedy_soup(self, experts: Folders, dev: Table) -> None:
        """Greedy soup (Wortsman et al. 2022) on the dev sets: add experts in order of their dev
        Average WER in ``dev`` (:meth:`dev_table`), keep one only if the soup's dev Average improves."""
        order = sorted(experts, key=lambda d: _average(dev[d]))
        soup, best = [order[0]], _average(dev[order[0]])
        log = [{"members": list(soup), "dev_average": best, "kept": True}]
        for d in order[1:]:
            trial = soup + [d]
            name = "+".join(trial)
            folder = self.merge(f"soup {name}", [experts[x] for x in trial])
            average = _average(
                self.evaluate_folders({f"soup_{name}": folder}, self.dev_sets(), "eval_dev")[f"soup_{name}"]
            )
            kept = average < best
            log.append({"members": trial, "dev_average": average, "kept": kept})
            if kept:
                soup, best = trial, average
        atomic_write_json(os.path.join(self.out, "greedy_soup.json"), log, indent=1)
        name = "+".join(soup)
        folder = experts[soup[0]] if len(soup) == 1 else self.merge(f"soup {name}", [experts[x] for x in soup])
        self.add_row("greedy_soup", f"Greedy soup ({name})", "greedy_soup", folder)

    def routed(self, experts: Folders, lora_experts: Folders) -> dict[str, tuple[str, Optional[dict[str, str]]]]:
        """The routed scenario (issue 20; :mod:`aode.route`, :mod:`aode.routed`): a router on the
        original's encoder states (domains and general data as classes); per delta form of
        ``routing.forms`` a routed model and two rows, routed by the router and by the oracle
        (each domain's set by its own delta, the forgetting sets by the base); with
        ``routing.held_out``, a second router without those domains and a row of the first
        form routed by it. Returns ``{row id: (routed folder, routes per set or None)}``."""
        from aode.route import GENERAL
        from aode.route import router_report
        from aode.route import train_router
        from aode.routed import BASE_ROUTE

        routing = self.cfg.routing
        root = os.path.join(self.out, "routed")
        features = os.path.join(root, "features")
        routers = {"router": list(self.domains)}
        if routing.held_out:
            without = "router_without_" + "-".join(routing.held_out)
            routers[without] = [d for d in self.domains if d not in routing.held_out]
        general_train = routing.general_data or [self.general_data]
        general_dev = list(self.cfg.router_dev_sets().values())
        if not (routing.general_data or self.cfg.general_data):
            print(
                f"[aode] routing: general_data is not set; the router's general class is trained on the "
                f"forgetting dev set {self.general_data} (and its thresholds are not validated on general data)",
                flush=True,
            )
        truth = {d: d for d in self.domains} | {
            s: GENERAL for s in (*self.forgetting_sets, *self.cfg.more_forgetting_sets)
        }
        for name, domains in routers.items():
            print(f"[aode] routing: {name} ({', '.join(domains)}, {GENERAL})", flush=True)
            general = general_train[0] if len(general_train) == 1 else general_train  # one: the stamp as before
            classes = {d: self.domains[d].train_csv for d in domains} | {GENERAL: general}
            valid = {d: self.domains[d].valid_csv for d in domains}
            if general_dev:  # never the data the general class was trained on
                valid[GENERAL] = general_dev[0] if len(general_dev) == 1 else general_dev
            router = self._timed(
                "routed",
                train_router,
                self.original,
                classes,
                os.path.join(root, name),
                **({} if routing.layers is None else {"layers": routing.layers}),
                utterances_per_class=routing.utterances_per_class,
                threshold=routing.threshold,
                batch_size=self.cfg.eval_batch_size,
                device=self.cfg.device,
                seed=self.cfg.seed,
                progress=self.cfg.progressbar,
                valid_manifests=valid,
                overwrite=self.cfg.overwrite,
                feature_cache=features,
            )
            self._timed(
                "routed",
                router_report,
                router,
                self.original,
                self.test_sets(),
                os.path.join(root, name, "test_report"),
                labels=truth,
                held_out=[d for d in self.domains if d not in domains],
                batch_size=self.cfg.eval_batch_size,
                device=self.cfg.device,
                progress=self.cfg.progressbar,
                feature_cache=features,
            )
        oracle_routes = {d: d for d in self.domains} | {s: BASE_ROUTE for s, c in truth.items() if c == GENERAL}
        rows = {}
        for label, form in routing.forms.items():
            members = experts if form.form == "svd" else lora_experts
            folder = self._routed_model(_folder_name(label), form, members, os.path.join(root, "router"))
            row_id = f"routed_{_folder_name(label)}"
            self.add_row(row_id, f"Routed ({label})", "routed")
            self.add_row(f"oracle_{row_id}", f"Oracle routed ({label})", "routed")
            rows[row_id], rows[f"oracle_{row_id}"] = (folder, None), (folder, oracle_routes)
            if len(routers) > 1 and label == next(iter(routing.forms)):  # the first form, without the held-out
                name = list(routers)[1]
                folder = self._routed_model(f"{_folder_name(label)}_{name}", form, members, os.path.join(root, name))
                self.add_row(f"{row_id}_{name}", f"Routed ({label}, {name.replace('_', ' ')})", "routed")
                rows[f"{row_id}_{name}"] = (folder, None)
        return rows

    def operating_points(
        self, table: Table, experts: Folders, lora_experts: Folders
    ) -> dict[str, tuple[str, Optional[dict[str, str]]]]:
        """``routing.operating_points`` (:mod:`aode.operating`): per delta form, every test and
        validation set decoded once per route, every rule of the grid scored from those costs,
        the rule with the most validation gain within ``routing.forgetting_budget`` chosen, and
        a routed model with that rule as a row of its own (``routed/operating/<form>/``)."""
        from aode.operating import choose
        from aode.operating import forgetting_and_gain
        from aode.operating import route_costs
        from aode.operating import row_of_rule
        from aode.operating import rule_of
        from aode.operating import sweep
        from aode.operating import write_operating_report
        from aode.route import Router
        from aode.route import set_features
        from aode.routed import read_routed_info

        routing = self.cfg.routing
        root = os.path.join(self.out, "routed")
        router = Router.load(os.path.join(root, "router"))
        tests = self.test_sets()
        general_dev = self.cfg.router_dev_sets()
        valids = {f"{d} valid": spec.valid_csv for d, spec in self.domains.items()} | general_dev
        features = self._timed(
            "routed",
            set_features,
            router,
            self.original,
            tests | valids,
            os.path.join(root, "features"),
            batch_size=self.cfg.eval_batch_size,
            device=self.cfg.device,
            progress=self.cfg.progressbar,
        )
        expert_wers = {d: table[f"expert_{d}"][d] for d in self.domains}
        marks = {
            label: forgetting_and_gain(
                table[row_id], table["original"], list(self.forgetting_sets), expert_wers, experts
            )
            for row_id, label in (("aode_orig", "AoDE with orig."), ("aode", "AoDE"))
            if row_id in table
        }
        rows = {}
        for label, form in routing.forms.items():
            name = _folder_name(label)
            folder = os.path.join(root, name)
            out = os.path.join(root, "operating", name)
            print(f"[aode] operating points of routed {label}: every set decoded once per route", flush=True)
            costs = self._timed(
                "routed", route_costs, folder, tests | valids, os.path.join(out, "costs"), **self._eval_kwargs()
            )
            route_of_class = read_routed_info(folder)["route_of_class"]
            valid_rows = sweep(
                router,
                {s: features[s] for s in valids},
                costs,
                route_of_class,
                forgetting_sets=list(general_dev),
                target_sets={f"{d} valid": d for d in self.domains},
            )
            test_rows = sweep(
                router,
                {s: features[s] for s in tests},
                costs,
                route_of_class,
                forgetting_sets=list(self.forgetting_sets),
                target_sets={d: d for d in self.domains},
                reference=expert_wers,
            )
            chosen = choose(valid_rows, routing.forgetting_budget)
            write_operating_report(
                valid_rows,
                test_rows,
                chosen,
                out,
                budget=routing.forgetting_budget,
                title=f"{self.cfg.title}: routed {label}, rules of the router",
                marks=marks,
            )
            if chosen is None:
                print(f"[aode] routed {label}: no rule within {routing.forgetting_budget} % on validation", flush=True)
                continue
            tuned = router.with_rule(threshold=chosen["threshold"], general_bias=chosen["general_bias"])
            router_folder = os.path.join(root, f"router_{name}_chosen")
            if not _same_router(router_folder, tuned):  # kept as it is: the routed model made from it is reused
                tuned.save(router_folder)
            fallback = self.cfg.routing.fallback if chosen["fallback"] == "fallback" else "base"
            members = experts if form.form == "svd" else lora_experts
            tuned_folder = self._routed_model(f"{name}_chosen", form, members, router_folder, fallback=fallback)
            row_id = f"routed_{name}_chosen"
            self.add_row(row_id, f"Routed ({label}, rule chosen on validation)", "routed")
            rows[row_id] = (tuned_folder, None)
            self._predicted[row_id] = (row_of_rule(test_rows, rule_of(chosen))["WER"], out)
        return rows

    def _check_operating_points(self, table: Table) -> None:
        """The chosen rule's row, decoded, against the WERs its sweep predicted: a difference
        means the cost table or the rule's routes are not what the routed model does (features
        batched differently can move an utterance sitting on the threshold)."""
        for row_id, (predicted, out) in self._predicted.items():
            diff = {s: round(table[row_id][s] - w, 4) for s, w in predicted.items()}
            worst = max(abs(d) for d in diff.values())
            with open(os.path.join(out, "operating.md"), "a", encoding="utf-8") as f:
                f.write(
                    f"\nDecoded as a routed model of its own ({self.rows[row_id].label}): largest difference from "
                    f"the WERs the sweep predicted {worst:.4f} (per set: {diff}).\n"
                )
            if worst > 0.01:
                print(f"[aode] warning: {row_id} decoded differs from its sweep by up to {worst:.2f} WER", flush=True)

    def _routed_model(self, name: str, form: Any, members: Folders, router: str, fallback: Optional[str] = None) -> str:
        """``<out>/routed/<name>``: the routed model of ``members`` with ``router``, reused when
        made from the same models, form and router (:mod:`aode.reuse`)."""
        from aode.reuse import file_fingerprint
        from aode.reuse import model_fingerprint
        from aode.reuse import read_stamp_file
        from aode.reuse import write_stamp_file
        from aode.routed import build_routed_model

        fallback = fallback or self.cfg.routing.fallback
        folder = os.path.join(self.out, "routed", name)
        stamp = {
            "base": model_fingerprint(self.original),
            "experts": {d: model_fingerprint(f) for d, f in members.items()},
            "form": form.model_dump(),
            "fallback": fallback,
            "router": {
                f: file_fingerprint(os.path.join(router, f))
                for f in sorted(os.listdir(router))
                if f.startswith("router.")
            },
        }
        if os.path.isdir(folder) and may_reuse(
            f"routed model {name}", folder, read_stamp_file(folder), stamp, self.cfg.overwrite
        ):
            return folder
        print(f"[aode] routed model {name} ({form.form}, rank {form.rank})", flush=True)
        self._timed(
            "routed",
            build_routed_model,
            self.original,
            members,
            folder,
            form=form.form,
            rank=form.rank if form.form == "svd" else None,
            energy=form.energy,
            router=router,
            fallback=fallback,
            overwrite=True,
        )
        write_stamp_file(folder, stamp)
        return folder

    def evaluate_routed(self, table: Table, rows: Mapping[str, tuple[str, Optional[dict[str, str]]]]) -> None:
        """The routed rows' WERs into ``table`` (each row's results cached in ``eval/<row id>/``
        under the routed folder's content and its routing), then ``routed/routing.md``: per
        routed model, the router's share of right routes per set, memory and decoding throughput
        against one model."""
        from aode.evaluate import scored_counts
        from aode.routed import evaluate_routed

        sets = self.test_sets()
        routed_by_router = {}  # row id -> (folder, {set: the route of each utterance})
        for row_id, (folder, routes_of_set) in rows.items():
            cache = os.path.join(self.out, "eval", row_id)
            results = self._timed(
                "evaluate",
                evaluate_routed,
                folder,
                sets,
                cache,
                routes_of_set=routes_of_set,
                label=row_id,
                **self._eval_kwargs(),
            )
            table[row_id] = {s: results[s]["wer"] for s in sets}
            self.counts[row_id] = scored_counts(results)
            self.eval_folders[row_id] = cache
            if routes_of_set is None:
                routed_by_router[row_id] = (folder, {s: list(results[s]["routes"].values()) for s in sets})
        self._timed("routed", self.routing_table, routed_by_router)

    def routing_table(self, rows: Mapping[str, tuple[str, Mapping[str, list[str]]]]) -> None:
        """``routed/routing.md`` and ``.json``: per routed row, the share of each test set's
        utterances that went to its own route (the forgetting sets': the general route), the
        share sent to the fallback, the model folder's size, memory and throughput against one
        model (measured on ``routing.throughput_utterances`` test utterances, cached)."""
        from aode.report import markdown
        from aode.reuse import read_stamp_file
        from aode.reuse import write_stamp_file
        from aode.routed import measure_throughput
        from aode.routed import read_routed_info

        root = os.path.join(self.out, "routed")
        subset = self._throughput_subset(os.path.join(root, "throughput"))
        records = []
        for row_id, (folder, routes_by_set) in rows.items():
            info = read_routed_info(folder)
            general = info["general_route"]
            shares = {}
            for s, routes in routes_by_set.items():
                own = s if s in self.domains else general
                shares[s] = (
                    sum(r == own for r in routes) / len(routes),
                    sum(r == "fallback" for r in routes) / len(routes),
                )
            measured = os.path.join(root, f"throughput_{row_id}.json")
            stamp = {
                "routed": read_stamp_file(folder),
                "utterances": subset,
                "batch_size": self.cfg.eval_batch_size,
                "protocol": "warm-up, then median of 3",
            }
            if os.path.isfile(measured) and may_reuse("throughput", measured, read_stamp_file(measured), stamp, True):
                with open(measured, encoding="utf-8") as f:
                    speed = json.load(f)
            else:
                speed = measure_throughput(
                    folder, subset, batch_size=self.cfg.eval_batch_size, device=self.cfg.device, oracle=False
                )
                atomic_write_json(measured, speed, indent=1)
                write_stamp_file(measured, stamp)
            sizes = info["sizes"]
            records.append(
                {
                    "row": self.rows[row_id].label,
                    **{f"to own route: {s}": round(100 * own, 1) for s, (own, _) in shares.items()},
                    "to fallback %": round(100 * sum(fb for _, fb in shares.values()) / len(shares), 1),
                    "deltas / model size": round(sizes["all_deltas_bytes"] / sizes["model_bytes"], 3),
                    "memory / one model": round(speed["memory"]["ratio_to_one_model"], 3),
                    "throughput / one model": round(speed["routed_utt_per_s"] / speed["base_utt_per_s"], 3),
                }
            )
        atomic_write_json(os.path.join(root, "routing.json"), records, indent=1)
        with atomic_open(os.path.join(root, "routing.md")) as f:
            f.write(markdown(records) + "\n")

    def _throughput_subset(self, folder: str) -> dict[str, str]:
        """``{domain: manifest}`` of the first rows of each domain's test set, together
        ``routing.throughput_utterances`` utterances (decoded mixed, in a seeded order)."""
        per_set = max(1, self.cfg.routing.throughput_utterances // len(self.domains))
        subset = {}
        for d, spec in self.domains.items():
            with open(spec.test_csv, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows, columns = list(reader)[:per_set], reader.fieldnames
            subset[d] = os.path.join(folder, f"{d}.csv")
            with atomic_open(subset[d], newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        return subset

    def evaluate(self) -> Table:
        """``{row id: {test set: WER}}`` for every row with a model folder, each folder once."""
        models = collections.OrderedDict((r.id, r.folder) for r in self.rows.values() if r.folder)
        legacy = collections.defaultdict(list)  # eval/<label>/, as results folders before row ids have it
        for r in self.rows.values():
            legacy[r.folder].append(r.label)
        print(
            f"[aode] evaluating {len(set(map(os.path.normpath, models.values())))} models on "
            f"{len(self.test_sets())} test sets (cached)",
            flush=True,
        )
        return self.evaluate_folders(models, self.test_sets(), "eval", legacy=legacy)

    def add_oracle(self, table: Table, row_id: str, label: str, model_of_set: Mapping[str, str]) -> None:
        """Hot swap (scenario 4): each target set decoded by its domain's model (``model_of_set``:
        set -> row id), the forgetting sets by the original."""
        table[row_id] = {s: table[model_of_set.get(s, "original")][s] for s in self.test_sets()}
        self.add_row(row_id, label, "oracle")

    def report(self, table: Table, experts: Folders, lora_experts: Folders) -> dict[str, str]:
        from aode.spread import write_spread

        if "oracle" in self.scenarios:
            self.add_oracle(table, "oracle_ft", "Oracle domain (FT)", {d: f"expert_{d}" for d in experts})
            if lora_experts:
                self.add_oracle(table, "oracle_lora", "Oracle domain (LoRA)", {d: f"lora_{d}" for d in lora_experts})
        by_label = {r.label: table[r.id] for r in self.rows.values()}
        original = self.rows["original"].label
        fine_tuned = {d: self.rows[f"expert_{d}"].label for d in experts}
        averages = [self.rows[i].label for i in ("aode", "aode_orig") if i in self.rows]
        title = self.cfg.title
        outputs = {}
        for name, subtitle in TABLES.items():
            rows = [
                r.label
                for r in self.rows.values()
                if (SCENARIO_BY_ID[r.scenario].table if r.scenario else "table7") == name and r.id != "original"
            ]
            if name != "table7" and not rows:
                continue
            labels = [original] + ([] if name == "table7" else averages) + rows
            outputs[name] = write_report(
                {n: by_label[n] for n in labels},
                os.path.join(self.out, name),
                original,
                list(self.forgetting_sets),
                expert_of=fine_tuned,
                lookup=by_label,
                title=f"{title}: {subtitle}",
                counts={r.label: self.counts[r.id] for r in self.rows.values() if r.id in self.counts},
                more_forgetting_sets=list(self.cfg.more_forgetting_sets),
            )[1]
            ids = {r.label: r.id for r in self.rows.values()}
            write_spread(
                {n: self.eval_folders[ids[n]] for n in labels if ids[n] in self.eval_folders},
                list(self.test_sets()),
                os.path.join(self.out, name),
                original,
                list(self.forgetting_sets),
                reference=averages[-1] if averages else None,
                seed=self.cfg.seed,
            )
        atomic_write_json(os.path.join(self.out, "timings.json"), self.timings, indent=1)
        return outputs
