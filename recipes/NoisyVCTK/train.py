#!/usr/bin/env python3
"""NoisyVCTK expert: prepare the corpus (main process, skipped when done), then fine-tune.

    python recipes/NoisyVCTK/train.py hparams/whisper_llrd.yaml --data_folder /path/to/NoisyVCTK
    python recipes/NoisyVCTK/train.py hparams/parakeet_llrd.yaml --data_folder DIR --lr 3e-5

Without --data_folder the manifests named by train_csv/valid_csv/test_csvs are used as
they are. The expert is exported to <output_folder>/expert/.
"""

from aode.train import main
from data_prep.noisy_vctk import prepare_noisy_vctk

if __name__ == "__main__":
    main(prepare=prepare_noisy_vctk, corpus="NoisyVCTK")
