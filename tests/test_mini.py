"""The miniature experiment: the shipped generalist, the calibration of the domains, and a
reduced run of README's main job through the real driver."""

import csv
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERALIST = os.path.join(ROOT, "aode", "mini_generalist")
sys.path.insert(0, os.path.join(ROOT, "recipes", "average"))

# Fresh utterances: seed 1 draws new texts, voices and prosody from the same domain
# distributions as the seed-0 corpus the generalist was pretrained on.
HELD_OUT = {
    "general": {"test_clean": 40, "test_other": 40},
    "vctk": {"test": 40},
    "coraal": {"test": 40},
    "jl": {"test": 40},
    "ne": {"test": 40},
}


def test_generalist_is_a_small_parakeet_and_loads():
    from transformers import ParakeetForCTC

    model = ParakeetForCTC.from_pretrained(GENERALIST)
    assert sum(p.numel() for p in model.parameters()) < 5e6


@pytest.fixture(scope="module")
def held_out_wer(tmp_path_factory):
    """The shipped generalist's WER on freshly generated (seed 1) test sets of every domain."""
    from aode.evaluate import evaluate_model
    from aode.mini.corpus import generate_corpus

    folder = tmp_path_factory.mktemp("held_out")
    generate_corpus(str(folder / "corpus"), seed=1, config=HELD_OUT, progress=False)
    sets = {f"{d}/{s}": str(folder / "corpus" / d / f"{s}.csv") for d, splits in HELD_OUT.items() for s in splits}
    results = evaluate_model(GENERALIST, sets, str(folder / "eval"), batch_size=20, normalizer="basic", progress=False)
    return {name: r["wer"] for name, r in results.items()}


TARGETS = ("vctk/test", "coraal/test", "jl/test", "ne/test")


@pytest.mark.slow
def test_domains_differ_measurably_for_the_generalist(held_out_wer):
    assert held_out_wer["general/test_clean"] < 20  # its own domain (16.6 % on the 100-utterance seed-0 set)
    for target in TARGETS:
        assert held_out_wer[target] > 1.5 * held_out_wer["general/test_clean"], target


@pytest.mark.slow
def test_domains_are_hard_but_not_foreign(held_out_wer):
    """The issue's calibration: the harder general test about 30 % at most, every target within
    1-10x the generalist's clean WER (where the paper's targets sit) and below 100 %. The
    synthesis is not bit-reproducible (the same seed gives other audio from run to run), and on
    these 40 utterances test_other measured 29.75, 30.03 and 30.85 in three runs on 2026-12-06:
    the bound leaves that spread room instead of failing on one run in three."""
    assert held_out_wer["general/test_other"] < 32
    for target in TARGETS:
        assert held_out_wer[target] < min(100, 10 * held_out_wer["general/test_clean"]), target


@pytest.mark.slow
def test_reduced_main_job(tmp_path):
    import reproduce

    out = tmp_path / "mini"
    reproduce.main(
        [
            os.path.join(ROOT, "hparams", "mini.yaml"),
            "--output_folder",
            str(out),
            "--original",
            GENERALIST,
            "--synthetic_corpus",
            "{scale: 0.03}",
            "--train_overrides",
            "{steps_per_epoch: 3}",
            "--progressbar",
            "False",
        ]
    )
    rows = list(csv.DictReader(open(out / "table7" / "results.csv")))
    assert [r["model"] for r in rows] == [
        "Pretrained generalist",
        "Fine-tuned - vctk",
        "Fine-tuned - coraal",
        "Fine-tuned - jl",
        "Fine-tuned - ne",
        "AoDE",
        "AoDE with orig.",
    ]
    assert "Forgetting general_clean %" in rows[0] and "Gain kept" in rows[0]
    assert (out / "table7" / "results.png").stat().st_size > 10000
