"""Operating points of a routed model (aode.operating): the WER, Forgetting % and Gain kept of
a decision rule, computed from per-utterance costs, against a hand computation on four
utterances; the choice within a budget; the report files. The driver's test
(test_experiment.py::test_reproduce_routed_operating_points) checks the sums against decoding."""

import csv
import math

import pytest
import torch

from aode.operating import Rule
from aode.operating import choose
from aode.operating import rule_routes
from aode.operating import sweep
from aode.operating import write_operating_report
from aode.route import GENERAL
from aode.route import Router


@pytest.fixture
def router():
    """One feature x; logits (x, -x): p(d) = sigmoid(2x) (with a general bias b: sigmoid(2x - b))."""
    return Router(
        ("d", GENERAL),
        (0,),
        0.5,
        torch.zeros(1),
        torch.ones(1),
        torch.tensor([[1.0], [-1.0]]),
        torch.zeros(2),
    )


# p(d) without bias: d1 0.982, d2 0.599, g1 0.119 (general 0.881), g2 0.690
FEATURES = {
    "d": (["d1", "d2"], torch.tensor([[2.0], [0.2]])),
    "gen": (["g1", "g2"], torch.tensor([[-1.0], [0.4]])),
}
# (errors, words) per route; the base route is the original model, "fallback" the merged one
COSTS = {
    "d": {
        "base": {"d1": (5, 10), "d2": (4, 10)},
        "d": {"d1": (1, 10), "d2": (2, 10)},
        "fallback": {"d1": (3, 10), "d2": (3, 10)},
    },
    "gen": {
        "base": {"g1": (1, 10), "g2": (2, 10)},
        "d": {"g1": (4, 10), "g2": (6, 10)},
        "fallback": {"g1": (2, 10), "g2": (3, 10)},
    },
}
ROUTE_OF_CLASS = {"d": "d", GENERAL: "base"}


def rows_of(router, **kw):
    rows = sweep(router, FEATURES, COSTS, ROUTE_OF_CLASS, forgetting_sets=["gen"], target_sets={"d": "d"}, **kw)
    return {(r["threshold"], r["general_bias"], r["fallback"]): r for r in rows}


def test_rules_against_a_hand_computation(router):
    rows = rows_of(router, thresholds=(0.0, 0.9), biases=(0.0, 1.0))
    assert len(rows) == 2 * 2 * 2
    # base: d 9/20 = 45 %, gen 3/20 = 15 %; the own route (the reference) on d: 3/20 = 15 %
    # argmax: d1 d, d2 d, g1 base, g2 d -> d 3/20, gen (1 + 6)/20
    r = rows[(0.0, 0.0, "fallback")]
    assert r["WER"] == pytest.approx({"d": 15.0, "gen": 35.0})
    assert r["Forgetting %"] == pytest.approx(100 * (35 / 15 - 1))
    assert r["Gain kept"] == pytest.approx(1.0)
    assert r["to an expert"] == pytest.approx(3 / 4)
    # general bias 1: p(d) = sigmoid(2x - 1): d1 0.95 -> d, d2 0.35 -> base, g2 0.45 -> base
    r = rows[(0.0, 1.0, "fallback")]
    assert r["WER"] == pytest.approx({"d": 25.0, "gen": 15.0})
    assert r["Forgetting %"] == pytest.approx(0.0)
    assert r["Gain kept"] == pytest.approx((45 - 25) / (45 - 15))
    # threshold 0.9: only d1 (0.982) is sure; the unsure go to the fallback route ...
    r = rows[(0.9, 0.0, "fallback")]
    assert r["WER"] == pytest.approx({"d": 20.0, "gen": 25.0})
    assert r["Forgetting %"] == pytest.approx(100 * (25 / 15 - 1))
    assert r["Gain kept"] == pytest.approx((45 - 20) / 30)
    # ... or to the base
    r = rows[(0.9, 0.0, "base")]
    assert r["WER"] == pytest.approx({"d": 25.0, "gen": 15.0})
    assert r["to an expert"] == pytest.approx(1 / 4)


def test_gain_against_a_given_reference(router):
    rows = rows_of(router, thresholds=(0.0,), biases=(0.0,), fallbacks=("fallback",), reference={"d": 5.0})
    assert rows[(0.0, 0.0, "fallback")]["Gain kept"] == pytest.approx((45 - 15) / (45 - 5))


def test_rule_routes_are_the_routers_decisions(router):
    routes = rule_routes(router, FEATURES, Rule(0.9, 0.0, "fallback"), ROUTE_OF_CLASS)
    assert routes == {"d": {"d1": "d", "d2": "fallback"}, "gen": {"g1": "fallback", "g2": "fallback"}}
    routes = rule_routes(router, FEATURES, Rule(0.0, 1.0, "base"), ROUTE_OF_CLASS)
    assert routes == {"d": {"d1": "d", "d2": "base"}, "gen": {"g1": "base", "g2": "base"}}


def test_choose_within_the_budget(router):
    rows = list(rows_of(router, thresholds=(0.0, 0.9), biases=(0.0, 1.0)).values())
    best = choose(rows, 2.0)
    assert best["Forgetting %"] <= 2.0 and best["Gain kept"] == pytest.approx(2 / 3)
    assert choose(rows, 1000.0)["Gain kept"] == pytest.approx(1.0)
    assert choose(rows, -1.0) is None
    no_gain = [dict(r, **{"Gain kept": math.nan}) for r in rows]  # no expert gained: the least forgetting
    assert choose(no_gain, 1000.0)["Forgetting %"] == pytest.approx(0.0)


def test_report_files(router, tmp_path):
    rows = sweep(
        router,
        FEATURES,
        COSTS,
        ROUTE_OF_CLASS,
        forgetting_sets=["gen"],
        target_sets={"d": "d"},
        thresholds=(0.0, 0.9),
        biases=(0.0, 1.0),
    )
    write_operating_report(rows, rows, choose(rows, 2.0), tmp_path, budget=2.0, title="t", marks={"AoDE": (5.0, 0.2)})
    table = list(csv.DictReader(open(tmp_path / "operating.csv")))
    assert len(table) == 8 and float(table[0]["test WER d"]) == pytest.approx(15.0)
    text = (tmp_path / "operating.md").read_text()
    assert "Chosen on validation" in text and "general bias 1" in text
    assert (tmp_path / "operating.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="same rules"):
        write_operating_report(rows, rows[::-1], None, tmp_path, budget=2.0, title="t")


def test_missing_costs_are_refused(router):
    with pytest.raises(ValueError, match="no route costs"):
        sweep(router, FEATURES, {"d": COSTS["d"]}, ROUTE_OF_CLASS, forgetting_sets=["gen"], target_sets={"d": "d"})


def test_general_bias_is_saved_and_loaded(router, tmp_path):
    biased = router.with_rule(general_bias=1.5)
    biased.save(tmp_path)
    loaded = Router.load(tmp_path)
    assert loaded.general_bias == 1.5
    x = torch.tensor([[0.3], [-0.2]])
    torch.testing.assert_close(loaded.probabilities(x), biased.probabilities(x))
    assert math.isclose(float(biased.probabilities(x)[0, 0]), 1 / (1 + math.exp(-(0.6 - 1.5))), rel_tol=1e-6)
    with pytest.raises(ValueError, match="general"):
        Router(("a", "b"), (0,), 0.5, torch.zeros(1), torch.ones(1), torch.zeros(2, 1), torch.zeros(2), general_bias=1)
