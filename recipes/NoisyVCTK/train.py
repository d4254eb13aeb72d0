#!/usr/bin/env python3
"""NoisyVCTK expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/NoisyVCTK/train.py hparams/whisper_llrd.yaml --data_folder /path/to/NoisyVCTK"""

from aode.train import main
from data_prep.noisy_vctk import prepare_noisy_vctk

if __name__ == "__main__":
    main(prepare=prepare_noisy_vctk, corpus="NoisyVCTK")
