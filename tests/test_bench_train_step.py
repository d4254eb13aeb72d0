"""bench/train_step.py drives the Brain as training does (its constructor changed once without
the benchmark noticing: this runs one step of the smallest config)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_step_of_the_tiny_config():
    spec = importlib.util.spec_from_file_location("bench_train_step", os.path.join(ROOT, "bench", "train_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.run("tiny_ctc", steps=1, warmup=0, device="cpu")
    assert row["config"] == "tiny_ctc" and row["brain"] > 0 and row["bare"] > 0
