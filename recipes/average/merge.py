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

import logging
import sys

from aode.cli import answer_help
from aode.cli import run_main

if __name__ == "__main__":  # --help answers before the heavy imports below (torch, SpeechBrain)
    answer_help(sys.argv[1:], "MergeConfig", description=__doc__)

from aode.config import MergeConfig
from aode.config import parse_command_line
from aode.config import validate
from aode.pipeline import merge_and_evaluate
from aode.pipeline import read_mergekit_config


def main(argv):
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hp, _, hparams_file, overrides = parse_command_line(argv)
    hp, mergekit = read_mergekit_config(hp, overrides)  # the merge part from a mergekit config, before any work
    config = validate(MergeConfig, hp, hparams_file)  # before any work, the method's options among them
    merge_and_evaluate(config, mergekit)  # aode.pipeline: merge, evaluate, report, card


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
