#!/usr/bin/env python3
"""CORAAL expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/CORAAL/train.py hparams/whisper_llrd.yaml --data_folder /path/to/CORAAL"""

from aode.train import main
from data_prep.coraal import prepare_coraal

if __name__ == "__main__":
    main(prepare=prepare_coraal, corpus="CORAAL")
