#!/usr/bin/env python3
"""Transcribe with a routed AoDE model (issue 20): each utterance decoded with its domain's delta.

    python recipes/route/transcribe.py <routed folder> <wav or manifest.csv>... \
        [--batch_size N] [--device cpu] [--route NAME] [--routes_out routes.csv]

Prints ``id<TAB>route<TAB>text`` per utterance. The routes come from the folder's router, or
``--route`` gives one for all (oracle routing). The logic is aode.routed's (transcribe_main).
"""

import sys

from aode.cli import run_main


def main(argv):
    from aode.routed import transcribe_main

    transcribe_main(argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
