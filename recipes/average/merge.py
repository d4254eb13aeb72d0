#!/usr/bin/env python3
"""Average domain experts into one model and test every model on every test set.

    python recipes/average/merge.py hparams/aode.yaml
    python recipes/average/merge.py hparams/aode.yaml --method ties --output_folder results/ties
    python recipes/average/merge.py hparams/aode.yaml --mergekit_config merge.yml

With ``--mergekit_config`` the merge (members, base, method, weights, options) comes from a
mergekit YAML config (:mod:`aode.merge.mergekit_config`) and replaces the hparams' experts,
original (when the config has a base_model), method, weights, method_options,
include_original and weight_rules; everything else still comes from the hparams.

Writes <output_folder>/merged/ (a transformers model folder), eval/<model>/<set>.json (cached
hypotheses and WER), and wer.csv, results.{csv,md,json,png} in the paper's format.

The hparams, the method's options, the models and the output folder are checked before any
work; a user error exits with status 2 and one line ``error: ...`` (``AODE_DEBUG=1`` adds the
traceback). ``--help`` lists every key of the merge YAML.
"""

import collections
import logging
import os
import sys

from aode.cli import answer_help
from aode.cli import run_main

if __name__ == "__main__":  # --help answers before the heavy imports below (torch, SpeechBrain)
    answer_help(sys.argv[1:], "MergeConfig", description=__doc__)

from aode.config import ConfigError
from aode.config import MergeConfig
from aode.config import parse_command_line
from aode.config import validate
from aode.evaluate import evaluate_models
from aode.lineage import check_original
from aode.merge import merge_models
from aode.merge.inputs import data_options
from aode.merge.mergekit_config import MergekitConfigError
from aode.merge.mergekit_config import hparams_from_mergekit
from aode.merge.mergekit_config import prepare_merge
from aode.model_card import check_hub_token
from aode.model_card import push_to_hub
from aode.model_card import write_model_card
from aode.models import resolve_model_folder
from aode.report import write_report
from aode.reuse import STAMP_KEY
from aode.reuse import may_reuse
from aode.reuse import merge_stamp
from aode.reuse import recorded_stamp


def main(argv):
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hp, _, hparams_file, overrides = parse_command_line(argv)
    mergekit = None
    if hp.get("mergekit_config"):  # the merge part from a mergekit config, read before any work
        try:
            hp, mergekit = hparams_from_mergekit(hp, hp["mergekit_config"], overrides)
        except MergekitConfigError as err:
            raise ConfigError(f"{hp['mergekit_config']}: {err}") from None
    hp = validate(MergeConfig, hp, hparams_file)  # before any work
    check_hub_token(hp["push_to_hub"])  # --push_to_hub without a token: exit 2 before any work
    experts = collections.OrderedDict(hp["experts"])
    # Before any work: every member and the original must be reachable (a hub id through the
    # Hugging Face cache, as from_pretrained finds it).
    original = resolve_model_folder(hp["original"])
    experts = collections.OrderedDict((name, resolve_model_folder(path)) for name, path in experts.items())
    if mergekit is not None:  # members' headers: checks and per-tensor weights, before any work
        try:
            prepared = prepare_merge(mergekit, list(experts.values()), original, hp["include_original"], hp["seed"])
        except MergekitConfigError as err:
            raise ConfigError(f"{hp['mergekit_config']}: {err}") from None
        hp["weights"], hp["weight_rules"] = prepared["weights"], prepared["weight_rules"]
    check_original(original, experts, hp["allow_foreign_original"])  # before any work
    out = hp["output_folder"]
    merged = os.path.join(out, "merged")
    weights = hp["weights"]
    if isinstance(weights, dict):
        weights = [weights[name] for name in experts] + (
            [weights.get("original", 1.0)] if hp["include_original"] else []
        )
    member_data = dict(hp["member_data"])
    if "original" in member_data:
        member_data.setdefault(hp["original_name"], member_data.pop("original"))
    reads = {**member_data, **{f"dev {n}": p for n, p in hp["dev_sets"].items()}}
    stamp = merge_stamp(
        list(experts.values()),
        original,
        hp["method"],
        hp["include_original"],
        hp["method_options"],
        weights,
        hp["weight_rules"],
        hp["seed"],
        data=reads,
        statistics_utterances=hp["statistics_utterances"],
    )
    found = os.path.isfile(os.path.join(merged, "config.json"))
    if found and may_reuse("merged model", merged, recorded_stamp(merged), stamp, hp["overwrite"]):
        print(f"merged model found in {merged}, made from the same members and settings: reused")
    else:
        # Fisher/Gram statistics and dev sets for the data-aware methods, before the merge.
        try:
            options = data_options(
                hp["method"],
                hp["method_options"],
                experts,
                original=original,
                original_name=hp["original_name"],
                include_original=hp["include_original"],
                member_data=member_data,
                dev_sets=hp["dev_sets"],
                statistics_folder=os.path.join(out, "statistics"),
                n_utterances=hp["statistics_utterances"],
                batch_size=hp["statistics_batch_size"],
                seed=hp["seed"],
                device=hp["device"],
                progress=hp["progressbar"],
                overwrite=hp["overwrite"],
            )
        except ValueError as err:  # a member without data, a missing manifest: before any work
            raise ConfigError(str(err)) from None
        merge_models(
            list(experts.values()),
            merged,
            method=hp["method"],
            weights=weights,
            base=original,
            include_base=hp["include_original"],
            options=options,
            weight_rules=hp["weight_rules"],
            seed=hp["seed"],
            overwrite=found,
            progress=hp["progressbar"],
            extra_provenance={STAMP_KEY: stamp},
        )
        print(f"merged model written to {merged}")
    models = collections.OrderedDict([(hp["original_name"], original)])
    if hp["evaluate_experts"]:
        models.update(experts)
    models.update(hp["extra_models"] or {})
    models[hp["merged_name"]] = merged
    test_sets = collections.OrderedDict(hp["test_sets"])
    if not test_sets:
        print("no test sets named: nothing evaluated")
        push_to_hub(merged, hp["push_to_hub"])
        return
    counts = {}
    table = evaluate_models(
        models,
        test_sets,
        os.path.join(out, "eval"),
        counts=counts,
        batch_size=hp["eval_batch_size"],
        normalizer=hp["normalizer"],
        beam_size=hp["beam_size"],
        device=hp["device"],
        progress=hp["progressbar"],
        skip_unreadable_audio=hp["skip_unreadable_audio"],
    )
    write_model_card(merged, table[hp["merged_name"]])  # the card, with the merged model's WER on each test set
    expert_of = {s: name for s, name in (hp["expert_of_test_set"] or {}).items()}
    _, text = write_report(
        table,
        out,
        next(iter(models)),
        hp["forgetting_sets"],
        expert_of=expert_of or None,
        title=hp["title"],
        counts=counts,
    )
    print(text)
    push_to_hub(merged, hp["push_to_hub"])  # the finished folder, its card with the WERs and aode.json


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
