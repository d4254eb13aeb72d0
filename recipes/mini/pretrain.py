#!/usr/bin/env python3
"""Pretrain the miniature's generalist on the synthetic general domain, then ship it.

    python recipes/mini/pretrain.py hparams/mini_pretrain.yaml [--number_of_epochs 12]

Generates the corpus if missing, builds a fresh ParakeetForCTC from the hparams, trains it
with the same Brain as every expert (no LLRD: from scratch), and copies the exported
model folder to ``ship_to`` (aode/mini_generalist, the start of hparams/mini.yaml).
"""

import logging
import sys

from aode.cli import answer_help
from aode.cli import run_main


def main(argv):
    from aode.config import MiniPretrainConfig
    from aode.config import validate
    from aode.mini.pretrain import pretrain_generalist
    from aode.train import load_hparams

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hparams, run_opts, hparams_file, _ = load_hparams(argv)
    config = validate(MiniPretrainConfig, hparams, hparams_file)  # before any work
    return pretrain_generalist(config, run_opts)  # aode.mini.pretrain


if __name__ == "__main__":
    answer_help(sys.argv[1:], "MiniPretrainConfig", description=__doc__)  # before torch is imported
    run_main(main, sys.argv[1:])
