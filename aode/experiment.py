"""Every scenario of the paper from one driver (recipes/average/reproduce.py).

Stages (each resumable: a finished expert, merge or evaluation is a complete folder or
file, written under a temporary name and renamed, and is not redone):

1. corpus    - the miniature's synthetic corpus, generated when missing (optional);
               or each domain's data prep (``prepare``/``data_folder``)
2. experts   - one expert per domain from the original (scenario 1)
3. sequential- fine-tune in the given orders, each step from the previous (scenario 2)
4. aode      - average of the experts; with the original as one more member (scenario 2)
5. combined  - one fine-tune on all domains' data; "resampled" balances the domains (3)
6. iterative - fine-tune the average again on each domain and average again (3)
7. weighted  - each expert weighted x4: 4/8 for it, 1/8 for each other expert and the original
               (Table VIII)
8. lora      - LoRA experts (merged into the weights) and their average
9. methods   - other merge methods (aode.merge registry), Fisher-weighted averaging (Fishers
               estimated on each expert's training data), weight search on the dev sets,
               greedy soup
10. evaluate - every model on every test set (cached), oracle hot swap rows, tables

Folder: ``experts/<name>/expert``, ``merges/<name>``, ``eval/<model>/<set>.json``,
``table7/`` (Table VII-style), ``table8/`` (weighted), ``methods/`` (merge methods),
each with wer.csv, results.{csv,md,json,png}.
"""

import collections
import csv
import importlib
import json
import logging
import os
import random
import time

from hyperpyyaml import load_hyperpyyaml

from aode.evaluate import evaluate_models
from aode.manifest import write_manifest
from aode.report import write_report

logger = logging.getLogger(__name__)

SCENARIOS = ("experts", "sequential", "aode", "aode_with_original", "combined", "resampled", "iterative",
             "weighted", "lora", "oracle", "methods", "fisher", "weight_search", "greedy_soup")


def _import(dotted):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Experiment:
    """The scenario driver; ``hparams`` as loaded from hparams/<experiment>.yaml."""

    def __init__(self, hparams):
        self.hp = hparams
        self.out = hparams["output_folder"]
        self.original = hparams["original"]
        self.domains = collections.OrderedDict(hparams["domains"])
        self.forgetting_sets = collections.OrderedDict(hparams["forgetting_sets"])
        unknown = [s for s in hparams.get("scenarios", []) if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; known: {SCENARIOS}")
        self.scenarios = set(hparams.get("scenarios", ["experts", "aode", "aode_with_original"]))
        self.rows = collections.OrderedDict([(hparams.get("original_name", "Pretrained"), self.original)])
        self.method_rows = []  # rows of the merge-methods table
        self.timings = collections.OrderedDict()
        os.makedirs(self.out, exist_ok=True)

    # ------------------------------------------------------------------ helpers
    def _timed(self, stage, fn, *args, **kwargs):
        start = time.time()
        result = fn(*args, **kwargs)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.time() - start
        return result

    def test_sets(self):
        sets = collections.OrderedDict((d, spec["test_csv"]) for d, spec in self.domains.items())
        sets.update(self.forgetting_sets)
        return sets

    def train_hparams(self, name, train_csv, valid_csv, init_from, lora=False):
        key = "lora" if lora else "train"
        file = self.hp[f"{key}_hparams_file"]
        overrides = dict(self.hp.get(f"{key}_overrides") or {})
        overrides.update(output_folder=os.path.join(self.out, "experts", name), train_csv=train_csv,
                         valid_csv=valid_csv, test_csv=None, model_source=self.original, init_from=init_from,
                         domain=name, data_folder=None)
        with open(file, encoding="utf-8") as f:
            return load_hyperpyyaml(f, overrides)

    def expert(self, name, train_csv, valid_csv, init_from=None, lora=False):
        """Train (or find) the expert ``name``; returns its model folder."""
        from aode.train import EXPERT_DIR, train_expert

        folder = os.path.join(self.out, "experts", name, EXPERT_DIR)
        if os.path.isfile(os.path.join(folder, "config.json")):
            logger.info("expert %s: done, skipping", name)
            return folder
        print(f"[aode] training expert {name} (init: {init_from or 'original'})", flush=True)
        hparams = self.train_hparams(name, train_csv, valid_csv, init_from if init_from != self.original else None,
                                     lora)
        return self._timed("train", train_expert, hparams, corpus=name)

    def merge(self, name, members, weights=None, include_original=False, method="average", options=None,
              weight_rules=None):
        from aode.merge import merge_models

        folder = os.path.join(self.out, "merges", name.replace(" ", "_").replace("/", "-"))
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
        print(f"[aode] merging {name} ({method}, {len(members)} members"
              f"{' + original' if include_original else ''})", flush=True)
        return self._timed("merge", merge_models, members, folder, method=method, weights=weights,
                           base=self.original, include_base=include_original, options=options,
                           weight_rules=weight_rules, seed=self.hp.get("seed", 0))

    def combined_manifest(self, split, balanced=False):
        """All domains' ``split`` rows in one manifest; ``balanced`` repeats the smaller
        domains' rows (seeded) until every domain has as many rows as the largest."""
        per_domain = {d: _read_rows(spec[f"{split}_csv"]) for d, spec in self.domains.items()}
        rows = []
        rng = random.Random(self.hp.get("seed", 0))
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

    # ------------------------------------------------------------------ stages
    def prepare_data(self):
        corpus = self.hp.get("synthetic_corpus")
        if corpus:
            from aode.mini.corpus import generate_corpus

            print(f"[aode] synthetic corpus in {corpus['folder']}", flush=True)
            self._timed("corpus", generate_corpus, corpus["folder"], seed=corpus.get("seed", 0),
                        config=corpus.get("config"), scale=corpus.get("scale", 1.0))
        for domain, spec in self.domains.items():
            if spec.get("prepare") and spec.get("data_folder"):
                prepare = _import(spec["prepare"])
                prepare(data_folder=spec["data_folder"], save_folder=spec["prep_folder"], **(spec.get("prep_options")
                                                                                                 or {}))

    def run(self):
        start = time.time()
        self.prepare_data()
        domains = list(self.domains)
        experts = collections.OrderedDict()
        for d in domains:
            spec = self.domains[d]
            experts[d] = self.expert(d, spec["train_csv"], spec["valid_csv"])
            self.rows[f"Fine-tuned - {d}"] = experts[d]
        orders = (self.hp.get("sequential_orders") or []) if "sequential" in self.scenarios else []
        for order in orders:
            previous = experts[order[0]]  # the first step is that domain's expert itself
            for i, d in enumerate(order[1:], start=1):
                spec = self.domains[d]
                previous = self.expert(f"seq_{'-'.join(order[:i + 1])}", spec["train_csv"], spec["valid_csv"],
                                       init_from=previous)
            self.rows[f"Sequential FT - {';'.join(order)}"] = previous
        members = list(experts.values())
        if "aode" in self.scenarios:
            self.rows["AoDE"] = self.merge("AoDE", members)
        if "aode_with_original" in self.scenarios:
            self.rows["AoDE with orig."] = self.merge("AoDE with orig", members, include_original=True)
        if "combined" in self.scenarios or "resampled" in self.scenarios:
            self.combined_data()
        if "iterative" in self.scenarios:
            self.iterate(experts)
        if "weighted" in self.scenarios:
            # Table VIII: one member at 4/8 of the total, the others (the original among them,
            # which is what makes the shares add up with four experts) at 1/8 each
            for i, d in enumerate(domains):
                weights = [4.0 if j == i else 1.0 for j in range(len(domains))] + [1.0]
                self.rows[f"AoDE w/ orig. - {d} x4"] = self.merge(f"AoDE with orig {d} x4", members, weights=weights,
                                                                  include_original=True)
        lora_experts = collections.OrderedDict()
        if "lora" in self.scenarios:
            for d in domains:
                spec = self.domains[d]
                lora_experts[d] = self.expert(f"lora_{d}", spec["train_csv"], spec["valid_csv"], lora=True)
                self.rows[f"LoRA - {d}"] = lora_experts[d]
            self.rows["LoRA AoDE"] = self.merge("LoRA AoDE", list(lora_experts.values()))
        if "methods" in self.scenarios:
            for name, spec in (self.hp.get("merge_methods") or {}).items():
                self.rows[name] = self.merge(name, members, method=spec["method"], options=spec.get("options"),
                                             include_original=spec.get("include_original", False),
                                             weights=spec.get("weights"), weight_rules=spec.get("weight_rules"))
                self.method_rows.append(name)
        if "fisher" in self.scenarios:
            self.fisher_merge(experts)
        if "weight_search" in self.scenarios:
            self.weight_search(experts)
        table = self.evaluate()
        if "greedy_soup" in self.scenarios:
            table = self.greedy_soup(experts, table)
        self.timings["total"] = time.time() - start
        return self.report(table, experts, lora_experts)

    def combined_data(self):
        """One fine-tune on all domains' data, and on the same data balanced by resampling; the
        resampled model is the combined one when balancing changes nothing."""
        valid = self.combined_manifest("valid")
        combined = self.combined_manifest("train")
        if "combined" in self.scenarios:
            self.rows["Combined data"] = self.expert("combined", combined, valid)
        if "resampled" not in self.scenarios:
            return
        resampled = self.combined_manifest("train", balanced=True)
        if "Combined data" in self.rows and _read_rows(resampled) == _read_rows(combined):
            print("[aode] resampled data = combined data (every domain has as many training rows); "
                  "reusing the combined model", flush=True)
            self.rows["Resampled data"] = self.rows["Combined data"]
        else:
            self.rows["Resampled data"] = self.expert("resampled", resampled, valid)

    def iterate(self, experts):
        """Iterative AoDE (paper III-C): fine-tune the average on each domain, average again."""
        for with_original in (False, True):
            suffix = " w/ orig." if with_original else ""
            current = self.rows["AoDE with orig." if with_original else "AoDE"]
            for k in range(2, self.hp.get("iterations", 3) + 1):
                tag = f"iter{k}{'_orig' if with_original else ''}"
                members = [self.expert(f"{tag}_{d}", spec["train_csv"], spec["valid_csv"], init_from=current)
                           for d, spec in self.domains.items()]
                current = self.merge(f"AoDE iteration {k}{' with orig' if with_original else ''}", members,
                                     include_original=with_original)
                self.rows[f"AoDE - iteration {k}{suffix}"] = current

    def _eval_kwargs(self):
        return dict(batch_size=self.hp.get("eval_batch_size", 16), normalizer=self.hp.get("normalizer", "whisper"),
                    device=self.hp.get("device", "cpu"), progress=self.hp.get("progressbar", True))

    def fisher_merge(self, experts):
        """Fisher-weighted averaging (Matena & Raffel 2022), each expert's diagonal Fisher
        estimated on ``fisher_utterances`` of its own training data."""
        from aode.fisher import estimate_fisher

        for d, folder in experts.items():
            print(f"[aode] Fisher of expert {d}", flush=True)
            self._timed("fisher", estimate_fisher, folder, self.domains[d]["train_csv"],
                        n_utterances=self.hp.get("fisher_utterances", 200), seed=self.hp.get("seed", 0),
                        device=self.hp.get("device", "cpu"), progress=self.hp.get("progressbar", True))
        self.rows["Fisher-weighted"] = self.merge("Fisher-weighted", list(experts.values()), method="fisher")
        self.method_rows.append("Fisher-weighted")

    def weight_search(self, experts):
        """Member weights chosen on the dev sets (aode.search), the original optional."""
        from aode.search import search_weights

        spec = self.hp.get("weight_search") or {}
        dev_sets = collections.OrderedDict((d, s["valid_csv"]) for d, s in self.domains.items())
        forgetting = self.hp.get("forgetting_dev_sets")
        if not forgetting:
            raise ValueError("weight_search needs forgetting_dev_sets (dev sets of the original domain)")
        print("[aode] weight search on the dev sets", flush=True)
        result = self._timed("search", search_weights, list(experts.values()), self.original, dev_sets, forgetting,
                             os.path.join(self.out, "search"), method=spec.get("method", "average"),
                             objective=spec.get("objective", "average"), max_forgetting=spec.get("max_forgetting"),
                             n_random=spec.get("n_random", 8), seed=self.hp.get("seed", 0),
                             eval_kwargs=self._eval_kwargs(), progress=self.hp.get("progressbar", True))
        label = spec.get("objective", "average")
        if spec.get("max_forgetting") is not None:
            label += f", forgetting <= {spec['max_forgetting']} %"
        name = f"Weight search ({label})"
        self.rows[name] = result["folder"]
        self.method_rows.append(name)

    def evaluate(self, rows=None):
        rows = rows or self.rows
        print(f"[aode] evaluating {len(rows)} models on {len(self.test_sets())} test sets (cached)", flush=True)
        return self._timed("evaluate", evaluate_models, rows, self.test_sets(), os.path.join(self.out, "eval"),
                           **self._eval_kwargs())

    def greedy_soup(self, experts, table):
        """Greedy soup (Wortsman et al. 2022) on the dev sets: add experts in order of their
        dev Average WER, keep one only if the soup's dev Average improves."""
        dev_sets = collections.OrderedDict((d, spec["valid_csv"]) for d, spec in self.domains.items())
        dev_sets.update(self.hp.get("forgetting_dev_sets") or {})
        dev_eval = os.path.join(self.out, "eval_dev")
        kw = self._eval_kwargs()
        dev = evaluate_models(dict(experts), dev_sets, dev_eval, **kw)
        order = sorted(experts, key=lambda d: sum(dev[d].values()) / len(dev_sets))
        soup, best = [order[0]], sum(dev[order[0]].values()) / len(dev_sets)
        log = [{"members": list(soup), "dev_average": best, "kept": True}]
        for d in order[1:]:
            trial = soup + [d]
            folder = self.merge(f"soup {'+'.join(trial)}", [experts[x] for x in trial])
            score = evaluate_models({f"soup_{'+'.join(trial)}": folder}, dev_sets, dev_eval, **kw)
            average = sum(next(iter(score.values())).values()) / len(dev_sets)
            kept = average < best
            log.append({"members": trial, "dev_average": average, "kept": kept})
            if kept:
                soup, best = trial, average
        with open(os.path.join(self.out, "greedy_soup.json"), "w", encoding="utf-8") as f:
            json.dump(log, f, indent=1)
        folder = experts[soup[0]] if len(soup) == 1 else self.merge(f"soup {'+'.join(soup)}", [experts[x] for x in soup])
        self.rows[f"Greedy soup ({'+'.join(soup)})"] = folder
        self.method_rows.append(f"Greedy soup ({'+'.join(soup)})")
        return self.evaluate()

    def oracle_rows(self, table, experts_by_domain, label):
        """Hot swap (scenario 4): each target set decoded by its domain's model, the
        forgetting sets by the original."""
        original = table[next(iter(self.rows))]
        row = {}
        for s in self.test_sets():
            row[s] = table[experts_by_domain[s]][s] if s in experts_by_domain else original[s]
        return {label: row}

    def report(self, table, experts, lora_experts):
        original_name = next(iter(self.rows))
        fine_tuned = {d: f"Fine-tuned - {d}" for d in experts}
        if "oracle" in self.scenarios:
            table.update(self.oracle_rows(table, fine_tuned, "Oracle domain (FT)"))
            if lora_experts:
                table.update(self.oracle_rows(table, {d: f"LoRA - {d}" for d in lora_experts}, "Oracle domain (LoRA)"))
        forgetting = list(self.forgetting_sets)
        weighted = [n for n in table if " x4" in n]
        methods = [n for n in self.method_rows if n in table]
        main_rows = [n for n in table if n not in weighted and n not in methods]
        title = self.hp.get("title", "AoDE")
        outputs = {}
        rows, text = write_report({n: table[n] for n in main_rows}, os.path.join(self.out, "table7"), original_name,
                                  forgetting, expert_of=fine_tuned, title=f"{title}: Table VII")
        outputs["table7"] = text
        if weighted:
            keep = [original_name] + [n for n in ("AoDE", "AoDE with orig.") if n in table] + weighted
            outputs["table8"] = write_report({n: table[n] for n in keep}, os.path.join(self.out, "table8"),
                                             original_name, forgetting, expert_of=fine_tuned, lookup=table,
                                             title=f"{title}: Table VIII (each member x4)")[1]
        if methods:
            keep = [original_name] + [n for n in ("AoDE", "AoDE with orig.") if n in table] + methods
            outputs["methods"] = write_report({n: table[n] for n in keep}, os.path.join(self.out, "methods"),
                                              original_name, forgetting, expert_of=fine_tuned, lookup=table,
                                              title=f"{title}: merge methods")[1]
        with open(os.path.join(self.out, "timings.json"), "w", encoding="utf-8") as f:
            json.dump(self.timings, f, indent=1)
        return outputs
