#!/usr/bin/env python3
"""CORAAL expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/CORAAL/train.py hparams/whisper_llrd.yaml --data_folder /path/to/CORAAL"""

from aode.recipe import corpus_recipe

if __name__ == "__main__":  # --help answers before torch, SpeechBrain and transformers are imported
    corpus_recipe("data_prep.coraal:prepare_coraal", "CORAAL", __doc__)
