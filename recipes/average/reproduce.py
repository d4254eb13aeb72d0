#!/usr/bin/env python3
"""Every scenario of the paper from one driver.

    python recipes/average/reproduce.py hparams/mini.yaml            # the miniature (CPU, minutes)
    python recipes/average/reproduce.py hparams/mini_full.yaml       # every row of Tables VII/VIII
    python recipes/average/reproduce.py hparams/<experiment>.yaml --output_folder DIR
    python recipes/average/reproduce.py hparams/mini_full.yaml --scenarios "[iterative]"   # any subset
    python recipes/average/reproduce.py hparams/mini.yaml --launcher local --jobs 2        # 2 trainings at a time
    python recipes/average/reproduce.py hparams/mini_full.yaml --launcher "{kind: slurm, partition: gpu}"

Scenario ids, labels and what each needs: aode/scenarios.py (SCENARIOS); a scenario pulls in
the ones it needs. The hparams are checked (aode.config.ExperimentConfig) before any work.
Stages are resumable: rerunning skips finished experts, merges and evaluations.
``--launcher local|slurm`` runs a stage's independent trainings as parallel jobs (aode.launcher);
a mapping (``--launcher "{kind: ..., ...}"``) replaces the YAML's ``launcher`` as a whole.
A configuration error exits with status 2 before any work, with one line ``error: ...``
(``AODE_DEBUG=1`` adds the traceback); a failed training job with status 1, naming its log,
before anything is merged. ``--help`` lists every key of the experiment YAML.
"""

import logging
import sys

from aode.cli import answer_help
from aode.cli import run_main

if __name__ == "__main__":  # --help answers before the heavy imports below (torch, SpeechBrain)
    answer_help(sys.argv[1:], "ExperimentConfig", description=__doc__)

from aode.config import parse_command_line
from aode.experiment import Experiment


def main(argv):
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hparams = parse_command_line(argv)[0]
    experiment = Experiment(hparams)
    outputs = experiment.run()
    for name, text in outputs.items():
        print(f"\n## {name} ({experiment.out}/{name}/results.md)\n")
        print(text)
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in experiment.timings.items())
    print(f"time: {timings}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
