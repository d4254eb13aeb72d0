#!/usr/bin/env python3
"""JLCorpus expert, as every corpus recipe (see aode.train.main and README, "Using it on real data"):
python recipes/JLCorpus/train.py hparams/whisper_llrd.yaml --data_folder /path/to/JLCorpus"""

from aode.recipe import corpus_recipe

if __name__ == "__main__":  # --help answers before torch, SpeechBrain and transformers are imported
    corpus_recipe("data_prep.jl_corpus:prepare_jl_corpus", "JLCorpus", __doc__)
