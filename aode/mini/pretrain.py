"""The miniature's generalist (recipes/mini/pretrain.py): the synthetic corpus generated if
missing, a fresh ParakeetForCTC built from the hparams, trained on the general domain with the
same Brain as every expert (no LLRD: from scratch), and the exported folder shipped."""

import os
import shutil
from collections.abc import Mapping
from typing import Any

__all__ = ["pretrain_generalist"]

ARCHITECTURE = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "subsampling_factor")


def pretrain_generalist(hparams: Mapping[str, Any], run_opts=None) -> str:
    """Train the generalist for hparams validated by :class:`aode.config.MiniPretrainConfig`;
    returns its exported model folder (copied to ``ship_to`` when set)."""
    from aode.builders import build_parakeet_ctc
    from aode.config import TrainingConfig
    from aode.mini.corpus import generate_corpus
    from aode.train import train_expert

    hparams = dict(hparams)
    corpus = hparams["corpus_folder"]
    generate_corpus(corpus, seed=hparams["corpus_seed"], scale=hparams["corpus_scale"])
    init = os.path.join(hparams["output_folder"], "init")
    if not os.path.isdir(init):
        build_parakeet_ctc(init, **{key: hparams[key] for key in ARCHITECTURE + ("conv_kernel_size", "seed")})
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
