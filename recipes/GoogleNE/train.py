#!/usr/bin/env python3
"""GoogleNE expert: prepare the corpus (main process, skipped when done), then fine-tune.

    python recipes/GoogleNE/train.py hparams/whisper_llrd.yaml --data_folder /path/to/GoogleNE
    python recipes/GoogleNE/train.py hparams/parakeet_llrd.yaml --data_folder DIR --lr 3e-5

Without --data_folder the manifests named by train_csv/valid_csv/test_csvs are used as
they are. The expert is exported to <output_folder>/expert/.
"""

from aode.train import main
from data_prep.google_ne import prepare_google_ne

if __name__ == "__main__":
    main(prepare=prepare_google_ne, corpus="GoogleNE")
