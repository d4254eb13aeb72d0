#!/usr/bin/env python3
"""JLCorpus expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/JLCorpus/train.py hparams/whisper_llrd.yaml --data_folder /path/to/JLCorpus"""

from aode.train import main
from data_prep.jl_corpus import prepare_jl_corpus

if __name__ == "__main__":
    main(prepare=prepare_jl_corpus, corpus="JLCorpus")
