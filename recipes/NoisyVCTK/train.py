#!/usr/bin/env python3
"""NoisyVCTK expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/NoisyVCTK/train.py hparams/whisper_llrd.yaml --data_folder /path/to/NoisyVCTK"""

from aode.recipe import corpus_recipe

if __name__ == "__main__":  # --help answers before torch, SpeechBrain and transformers are imported
    corpus_recipe("data_prep.noisy_vctk:prepare_noisy_vctk", "NoisyVCTK", __doc__)
