"""The miniature's generalist (recipes/mini/pretrain.py): the synthetic corpus generated if
missing, a fresh ParakeetForCTC built from the hparams, trained on the general domain with the
same Brain as every expert (no LLRD: from scratch), and the exported folder shipped."""

import os
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aode.config import MiniPretrainConfig

__all__ = ["pretrain_generalist"]


def pretrain_generalist(config: "MiniPretrainConfig", run_opts=None) -> str:
    """Train the generalist for a validated :class:`aode.config.MiniPretrainConfig`; returns its
    exported model folder (copied to ``ship_to`` when set)."""
    from aode.builders import build_parakeet_ctc
    from aode.config import TrainingConfig
    from aode.mini.corpus import generate_corpus
    from aode.train import train_expert

    generate_corpus(config.corpus_folder, seed=config.corpus_seed, scale=config.corpus_scale)
    init = os.path.join(config.output_folder, "init")
    if not os.path.isdir(init):
        build_parakeet_ctc(
            init,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            subsampling_factor=config.subsampling_factor,
            conv_kernel_size=config.conv_kernel_size,
            seed=config.seed,
        )
    general = os.path.join(config.corpus_folder, "general")
    # The training run is a TrainingConfig: the keys it shares with this one (the corpus's and
    # the architecture's are this recipe's own), and the corpus's manifests.
    training = config.model_dump(include=set(TrainingConfig.model_fields))
    training.update(
        model_source=init,
        domain="general",
        train_csv=os.path.join(general, "train.csv"),
        valid_csv=os.path.join(general, "valid.csv"),
        test_csv=os.path.join(general, "test_clean.csv"),
        extra_test_csvs={"test_other": os.path.join(general, "test_other.csv")},
    )
    folder = train_expert(training, run_opts, corpus="general")
    if config.ship_to:
        if os.path.isdir(config.ship_to):
            shutil.rmtree(config.ship_to)
        shutil.copytree(folder, config.ship_to)
        print(f"generalist shipped to {config.ship_to}")
    return folder
