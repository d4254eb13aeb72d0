#!/usr/bin/env python3
"""SPGISpeech expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/SPGISpeech/train.py hparams/whisper_llrd.yaml --data_folder /path/to/SPGISpeech"""

from aode.train import main
from data_prep.spgispeech import prepare_spgispeech

if __name__ == "__main__":
    main(prepare=prepare_spgispeech, corpus="SPGISpeech")
