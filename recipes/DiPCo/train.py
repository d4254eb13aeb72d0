#!/usr/bin/env python3
"""DiPCo expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/DiPCo/train.py hparams/whisper_llrd.yaml --data_folder /path/to/DiPCo"""

from aode.train import main
from data_prep.dipco import prepare_dipco

if __name__ == "__main__":
    main(prepare=prepare_dipco, corpus="DiPCo")
