#!/usr/bin/env python3
"""DiPCo expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/DiPCo/train.py hparams/whisper_llrd.yaml --data_folder /path/to/DiPCo"""

from aode.recipe import corpus_recipe

if __name__ == "__main__":  # --help answers before torch, SpeechBrain and transformers are imported
    corpus_recipe("data_prep.dipco:prepare_dipco", "DiPCo", __doc__)
