"""The paired bootstrap (aode.spread) against hand computations, the normal approximation
and a real evaluation's own WER."""

import math

import numpy as np
import pytest

from aode.spread import paired_bootstrap
from aode.spread import spread_markdown
from aode.spread import write_spread


def table(errors_by_set, words=10):
    return {s: {f"u{i}": (e, words) for i, e in enumerate(errs)} for s, errs in errors_by_set.items()}


def test_point_estimates_are_the_hand_computed_table():
    base = table({"clean": [1, 2, 3], "target": [5, 5, 0]})
    model = table({"clean": [1, 2, 3], "target": [1, 0, 0]})
    out = paired_bootstrap({"base": base, "model": model}, "base", ["clean"], reference="base", n_resamples=50)
    # clean: both 6/30 = 20 %; target: base 10/30 = 33.33 %, model 1/30 = 3.33 %
    assert out["base"]["Average"] == pytest.approx((20 + 100 / 3) / 2)
    assert out["model"]["Average"] == pytest.approx((20 + 10 / 3) / 2)
    assert out["model"]["Forgetting %"] == pytest.approx(0.0)
    assert out["model"]["dAverage"] == pytest.approx(-15.0)
    # the model has the same clean errors and never more target errors, utterance by utterance:
    # every paired draw lowers its Average
    assert out["model"]["dAverage hi"] <= 0 and out["base"]["dAverage lo"] == out["base"]["dAverage hi"] == 0


def test_identical_models_differ_by_exactly_zero_and_one_utterance_has_no_spread():
    a = table({"clean": [1, 4, 2, 0, 3], "other": [2, 2, 5, 1, 0]})
    out = paired_bootstrap({"a": a, "b": a}, "a", ["clean", "other"], reference="a", n_resamples=200)
    assert out["b"]["dAverage lo"] == out["b"]["dAverage hi"] == 0
    assert out["b"]["dForgetting lo"] == out["b"]["dForgetting hi"] == 0
    single = table({"clean": [3]})
    out = paired_bootstrap({"a": single}, "a", ["clean"], n_resamples=20)
    assert out["a"]["Average lo"] == out["a"]["Average hi"] == out["a"]["Average"] == 30.0


def test_interval_width_matches_the_normal_approximation():
    # one set of 400 utterances of 10 words: the bootstrap standard error of the WER is
    # 100 / 10 * std(errors) / sqrt(400); the 95 % interval is about +-1.96 of it
    rng = np.random.default_rng(1)
    errs = rng.integers(0, 6, size=400).tolist()
    out = paired_bootstrap({"m": table({"clean": errs})}, "m", ["clean"], n_resamples=4000, seed=2)
    se = 10 * np.std(errs) / math.sqrt(400)
    half = (out["m"]["Average hi"] - out["m"]["Average lo"]) / 2
    assert half == pytest.approx(1.96 * se, rel=0.1)


def test_mismatched_utterances_are_refused():
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap({"a": table({"clean": [1, 2]}), "b": table({"clean": [1]})}, "a", ["clean"])


def test_from_a_real_evaluation(tiny_parakeet, sample_manifest, tmp_path):
    from aode.evaluate import evaluate_model

    sets = {"clean": sample_manifest, "target": sample_manifest}
    results = evaluate_model(tiny_parakeet, sets, str(tmp_path / "eval" / "m"), batch_size=4, progress=False)
    text = write_spread({"m": str(tmp_path / "eval" / "m")}, list(sets), str(tmp_path / "t"), "m", ["clean"])
    assert text is not None and "| m |" in text
    import json

    spread = json.load(open(tmp_path / "t" / "spread.json"))["rows"]["m"]
    # the per-utterance errors reproduce SpeechBrain's WER of the evaluation
    assert spread["Average"] == pytest.approx(results["clean"]["wer"], abs=1e-6)
    assert "95 % CI" in spread_markdown({"m": spread})


def test_pareto_front_by_hand():
    from aode.report import pareto_front

    # (forgetting, average): b beats a on both; c and b trade off; d is beaten by b
    points = [(5.0, 50.0), (2.0, 48.0), (-1.0, 49.0), (3.0, 48.5), (float("nan"), 1.0)]
    assert pareto_front(points) == [2, 1]


def test_draws_where_the_baseline_makes_no_error_are_left_out(tmp_path):
    """A tiny forgetting set on which the baseline is mostly right: some draws make its WER 0 and
    Forgetting % undefined; they are counted and left out, the rest still give an interval."""
    base = table({"clean": [0, 0, 1], "target": [3, 4, 5]})
    model = table({"clean": [1, 0, 1], "target": [1, 2, 3]})
    out = paired_bootstrap({"base": base, "model": model}, "base", ["clean"], reference="base", n_resamples=400)
    # P(no draw of u2 in 3 draws) = (2/3)^3 = 0.30: about 120 of 400 draws are undefined
    assert 60 < out["model"]["undefined draws"] < 180
    assert out["model"]["Forgetting %"] == pytest.approx(100.0)  # 2 errors against 1
    assert out["model"]["Forgetting % lo"] <= 100.0 <= out["model"]["Forgetting % hi"]
    # all draws undefined (a baseline without errors): no interval, no crash
    perfect = table({"clean": [0, 0], "target": [1, 2]})
    other = table({"clean": [1, 0], "target": [1, 1]})
    out = paired_bootstrap({"p": perfect, "o": other}, "p", ["clean"], reference="p", n_resamples=50)
    assert math.isnan(out["o"]["Forgetting %"]) and out["o"]["undefined draws"] == 50
    assert "| o |" in spread_markdown(out, "p")
