#!/usr/bin/env python3
"""GoogleNE expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/GoogleNE/train.py hparams/whisper_llrd.yaml --data_folder /path/to/GoogleNE"""

from aode.recipe import corpus_recipe

if __name__ == "__main__":  # --help answers before torch, SpeechBrain and transformers are imported
    corpus_recipe("data_prep.google_ne:prepare_google_ne", "GoogleNE", __doc__)
