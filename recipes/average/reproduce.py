#!/usr/bin/env python3
"""Every scenario of the paper from one driver.

    python recipes/average/reproduce.py hparams/mini.yaml            # the miniature (CPU, minutes)
    python recipes/average/reproduce.py hparams/mini_full.yaml       # every row of Tables VII/VIII
    python recipes/average/reproduce.py hparams/<experiment>.yaml --output_folder DIR
    python recipes/average/reproduce.py hparams/mini_full.yaml --scenarios "[iterative]"   # any subset

Scenario ids, labels and what each needs: aode/experiment.py (SCENARIOS); a scenario pulls in
the ones it needs. The hparams are checked (aode.config.ExperimentConfig) before any work.
Stages are resumable: rerunning skips finished experts, merges and evaluations.
"""

import logging
import sys

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
    main(sys.argv[1:])
