#!/usr/bin/env python3
"""Average domain experts into one model and test every model on every test set.

    python recipes/average/merge.py hparams/aode.yaml
    python recipes/average/merge.py hparams/aode.yaml --method ties --output_folder results/ties

Writes <output_folder>/merged/ (a transformers model folder), eval/<model>/<set>.json (cached
hypotheses and WER), and wer.csv, results.{csv,md,json,png} in the paper's format.
"""

import collections
import logging
import os
import sys

from aode.config import parse_command_line
from aode.evaluate import evaluate_models
from aode.merge import merge_models
from aode.models import resolve_model_folder
from aode.report import write_report


def main(argv):
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hp = parse_command_line(argv)[0]
    experts = collections.OrderedDict(hp["experts"])
    if not experts:
        raise ValueError("hparams name no experts to merge")
    # Before any work: every member and the original must be reachable (a hub id through the
    # Hugging Face cache, as from_pretrained finds it).
    original = resolve_model_folder(hp["original"])
    experts = collections.OrderedDict((name, resolve_model_folder(path)) for name, path in experts.items())
    out = hp["output_folder"]
    merged = os.path.join(out, "merged")
    weights = hp.get("weights")
    if isinstance(weights, dict):
        weights = [weights[name] for name in experts] + ([weights.get("original", 1.0)]
                                                         if hp.get("include_original") else [])
    if not os.path.isfile(os.path.join(merged, "config.json")):
        merge_models(list(experts.values()), merged, method=hp.get("method", "average"), weights=weights,
                     base=original, include_base=hp.get("include_original", False),
                     options=hp.get("method_options"), weight_rules=hp.get("weight_rules"), seed=hp.get("seed", 0))
        print(f"merged model written to {merged}")
    else:
        print(f"merged model found in {merged}")
    models = collections.OrderedDict([(hp.get("original_name", "original"), original)])
    if hp.get("evaluate_experts", True):
        models.update(experts)
    models.update(hp.get("extra_models") or {})
    models[hp.get("merged_name", "merged")] = merged
    test_sets = collections.OrderedDict(hp["test_sets"])
    if not test_sets:
        print("no test sets named: nothing evaluated")
        return
    table = evaluate_models(models, test_sets, os.path.join(out, "eval"), batch_size=hp.get("eval_batch_size", 8),
                            normalizer=hp.get("normalizer", "whisper"), beam_size=hp.get("beam_size", 1),
                            device=hp.get("device", "cpu"), progress=hp.get("progressbar", True))
    expert_of = {s: name for s, name in (hp.get("expert_of_test_set") or {}).items()}
    _, text = write_report(table, out, next(iter(models)), hp.get("forgetting_sets"), expert_of=expert_of or None,
                           title=hp.get("title", "AoDE"))
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
