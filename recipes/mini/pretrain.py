#!/usr/bin/env python3
"""Pretrain the miniature's generalist on the synthetic general domain, then ship it.

    python recipes/mini/pretrain.py hparams/mini_pretrain.yaml [--number_of_epochs 12]

Generates the corpus if missing, builds a fresh ParakeetForCTC from the hparams, trains it
with the same Brain as every expert (no LLRD: from scratch), and copies the exported
model folder to ``ship_to`` (aode/mini_generalist, the start of hparams/mini.yaml).
"""

import logging
import os
import shutil
import sys

from aode.cli import answer_help
from aode.cli import run_main


def main(argv):
    from aode.builders import build_parakeet_ctc
    from aode.config import MiniPretrainConfig
    from aode.config import TrainingConfig
    from aode.config import validate
    from aode.train import load_hparams
    from aode.train import train_expert

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hparams, run_opts, hparams_file, _ = load_hparams(argv)
    hparams = validate(MiniPretrainConfig, hparams, hparams_file)  # before any work
    from aode.mini.corpus import generate_corpus

    corpus = hparams["corpus_folder"]
    generate_corpus(corpus, seed=hparams["corpus_seed"], scale=hparams["corpus_scale"])
    init = os.path.join(hparams["output_folder"], "init")
    if not os.path.isdir(init):
        architecture = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "subsampling_factor")
        build_parakeet_ctc(init, **{key: hparams[key] for key in architecture + ("conv_kernel_size", "seed")})
    general = os.path.join(corpus, "general")
    hparams.update(
        model_source=init,
        domain="general",
        train_csv=os.path.join(general, "train.csv"),
        valid_csv=os.path.join(general, "valid.csv"),
        test_csv=os.path.join(general, "test_clean.csv"),
        extra_test_csvs={"test_other": os.path.join(general, "test_other.csv")},
    )
    training = {key: hparams[key] for key in TrainingConfig.model_fields}
    folder = train_expert(training, run_opts, corpus="general")
    if hparams["ship_to"]:
        if os.path.isdir(hparams["ship_to"]):
            shutil.rmtree(hparams["ship_to"])
        shutil.copytree(folder, hparams["ship_to"])
        print(f"generalist shipped to {hparams['ship_to']}")
    return folder


if __name__ == "__main__":
    answer_help(sys.argv[1:], "MiniPretrainConfig", description=__doc__)  # before torch is imported
    run_main(main, sys.argv[1:])
