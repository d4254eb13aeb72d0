#!/usr/bin/env python3
"""GoogleNE expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/GoogleNE/train.py hparams/whisper_llrd.yaml --data_folder /path/to/GoogleNE"""

from aode.train import main
from data_prep.google_ne import prepare_google_ne

if __name__ == "__main__":
    main(prepare=prepare_google_ne, corpus="GoogleNE")
