"""Choosing merge weights on dev sets (aode.search)."""

import json
import math
import os

import pytest
from conftest import perturbed_copy
from conftest import sample_rows

from aode.manifest import write_manifest
from aode.search import candidate_weights
from aode.search import pareto_front
from aode.search import search_weights
from aode.search import select_candidate

# --- pure functions ------------------------------------------------------------------------


def test_pareto_front_hand_cases():
    assert pareto_front([]) == []
    assert pareto_front([(1, 1)]) == [0]
    # (2, 2) is dominated by (1, 1); (0, 3) and (3, 0) trade off against (1, 1)
    assert pareto_front([(2, 2), (1, 1), (0, 3), (3, 0)]) == [2, 1, 3]
    # equal points do not dominate each other; (1, 2) is dominated by (1, 1) (equal x, lower y)
    assert pareto_front([(1, 1), (1, 1), (1, 2)]) == [0, 1]
    # a chain: every point dominates the next
    assert pareto_front([(3, 3), (2, 2), (1, 1)]) == [2]
    # all on one trade-off line
    assert pareto_front([(0, 4), (1, 3), (2, 2), (3, 1)]) == [0, 1, 2, 3]
    # NaN is never on the front, and does not dominate
    assert pareto_front([(float("nan"), 0), (1, 1)]) == [1]
    # negative forgetting (better than the original) is fine
    assert pareto_front([(-5, 10), (0, 8), (-1, 12)]) == [0, 1]


def test_select_candidate():
    c = [
        {"average": 10.0, "forgetting": 5.0},
        {"average": 9.0, "forgetting": 8.0},
        {"average": 11.0, "forgetting": 1.0},
        {"average": 9.0, "forgetting": 7.0},
    ]
    assert select_candidate(c, "average") == (3, None)  # tie on average: lower forgetting
    assert select_candidate(c, "constrained", 7.0) == (3, True)
    assert select_candidate(c, "constrained", 5.0) == (0, True)
    assert select_candidate(c, "constrained", 0.5) == (2, False)  # none qualifies: lowest forgetting
    with pytest.raises(ValueError):
        select_candidate(c, "constrained")
    with pytest.raises(ValueError):
        select_candidate(c, "best")


def test_candidate_weights():
    cands = candidate_weights(2, n_random=2, seed=0)
    labels = [c["label"] for c in cands]
    assert labels[0] == "uniform" and "uniform+orig" in labels
    assert len(cands) == (1 + 4 + 2) + (1 + 6 + 2)
    assert {"m0x4", "m1x2", "originalx4+orig"} <= set(labels)
    for c in cands:
        assert len(c["weights"]) == 2 + c["include_base"]
        if c["label"].startswith("dirichlet"):
            assert math.isclose(sum(c["weights"]), len(c["weights"]), rel_tol=1e-5)
    assert candidate_weights(2, 2, seed=0) == cands
    assert candidate_weights(2, 2, seed=1) != cands
    # the draws without the original do not depend on whether the original is also searched
    only = candidate_weights(2, 2, seed=0, include_base_choices=(False,))
    assert only == [c for c in cands if not c["include_base"]]


# --- on a tiny model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_parakeet, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    rows = sample_rows()
    sets = {}
    for name, keep in (
        ("dom_a", lambda r: r["spk_id"] == "spk1"),
        ("dom_b", lambda r: r["spk_id"] == "spk2"),
        ("libri_dev", lambda r: r["ID"].endswith(("snt1", "snt2"))),
    ):
        path = str(root / f"{name}.csv")
        write_manifest(path, [r for r in rows if keep(r)])
        sets[name] = path
    experts = [perturbed_copy(tiny_parakeet, root / f"expert{i}", seed=i + 1, scale=0.05) for i in range(2)]
    return {
        "root": root,
        "base": tiny_parakeet,
        "experts": experts,
        "dev": {k: sets[k] for k in ("dom_a", "dom_b")},
        "forgetting": {"libri_dev": sets["libri_dev"]},
    }


EVAL = {"batch_size": 8}


def _search(setup, out, **settings):
    """The search of the setup's experts into ``out``: two random draws, seed 0."""
    return search_weights(
        setup["experts"],
        setup["base"],
        setup["dev"],
        setup["forgetting"],
        out,
        n_random=2,
        seed=0,
        eval_kwargs=EVAL,
        progress=False,
        **settings,
    )


@pytest.fixture(scope="module")
def searched(setup):
    out = str(setup["root"] / "out")
    return out, _search(setup, out)


def _load(out):
    with open(os.path.join(out, "search.json")) as f:
        return json.load(f)


def test_search_outputs(searched):
    out, chosen = searched
    assert os.path.isfile(os.path.join(out, "search.json")) and os.path.getsize(os.path.join(out, "search.png")) > 0
    result = _load(out)
    cands = result["candidates"]
    assert len(cands) == 16 and len({c["id"] for c in cands}) == 16
    assert sum(c["chosen"] for c in cands) == 1 and result["chosen"] == chosen["id"]
    for c in cands:
        assert set(c["wer"]) == {"dom_a", "dom_b", "libri_dev"}
        assert math.isclose(c["average"], sum(c["wer"].values()) / 3)
        assert os.path.isfile(os.path.join(c["folder"], "model.safetensors"))
        with open(os.path.join(c["folder"], "aode.json")) as f:
            prov = json.load(f)
        assert prov["include_base"] == c["include_base"]
        assert prov["weights"] == pytest.approx(c["weights"])
    # the objective "average": the chosen one has the lowest Average of everything tried
    assert chosen["average"] == min(c["average"] for c in cands)
    assert any(c["pareto"] for c in cands)
    assert os.path.isdir(chosen["folder"]) and chosen["constraint_met"] is None
    assert set(result["base_wer"]) == {"dom_a", "dom_b", "libri_dev"}


def test_rerun_constrained_does_not_remerge(setup, searched):
    out, _ = searched
    before = {
        c["id"]: os.path.getmtime(os.path.join(c["folder"], "model.safetensors")) for c in _load(out)["candidates"]
    }
    bound = sorted(c["forgetting"] for c in _load(out)["candidates"])[8]
    chosen = _search(setup, out, objective="constrained", max_forgetting=bound)
    result = _load(out)
    after = {c["id"]: os.path.getmtime(os.path.join(c["folder"], "model.safetensors")) for c in result["candidates"]}
    assert after == before
    ok = [c for c in result["candidates"] if c["forgetting"] <= bound]
    assert chosen["constraint_met"] is True and chosen["forgetting"] <= bound
    assert chosen["average"] == min(c["average"] for c in ok)


# --- objectives with controlled scores (real merges, scored from their provenance) ----------


@pytest.fixture
def fake_eval(monkeypatch, setup):
    """WERs from a merge's weights: expert 0 helps dom_a, expert 1 dom_b, the original libri_dev."""
    import aode.evaluate

    calls = []

    def evaluate_models(models, test_sets, eval_folder, **kwargs):
        table = {}
        for name, folder in models.items():
            calls.append(name)
            if os.path.abspath(folder) == os.path.abspath(setup["base"]):
                table[name] = {"dom_a": 40.0, "dom_b": 40.0, "libri_dev": 10.0}
                continue
            with open(os.path.join(folder, "aode.json")) as f:
                prov = json.load(f)
            w = prov["weights"] + ([] if prov["include_base"] else [0.0])
            share = [x / sum(w) for x in w]
            table[name] = {
                "dom_a": 40.0 - 30.0 * share[0],
                "dom_b": 40.0 - 25.0 * share[1],
                "libri_dev": 10.0 + 10.0 * (1.0 - share[2]),
            }
        return table

    monkeypatch.setattr(aode.evaluate, "evaluate_models", evaluate_models)
    return calls


def test_constrained_objective(setup, fake_eval, tmp_path):
    args = (setup["experts"], setup["base"], setup["dev"], setup["forgetting"], str(tmp_path))
    cands = [[1, 1], [3, 1], {"weights": [1, 1, 1], "label": "third"}, [1, 1, 6]]
    # Forgetting %: [1,1] and [3,1] 100, [1,1,1] 66.7, [1,1,6] 25; Averages 24.2, 23.75, 26.1, 28.5
    best = search_weights(*args, candidates=cands, progress=False)
    assert best["weights"] == [3.0, 1.0] and best["include_base"] is False
    limited = search_weights(*args, candidates=cands, objective="constrained", max_forgetting=70, progress=False)
    assert limited["label"] == "third" and limited["constraint_met"] is True
    assert limited["forgetting"] == pytest.approx(200 / 3)
    fallback = search_weights(*args, candidates=cands, objective="constrained", max_forgetting=10, progress=False)
    assert fallback["weights"] == [1.0, 1.0, 6.0] and fallback["constraint_met"] is False
    result = _load(str(tmp_path))
    assert result["constraint_met"] is False and "no candidate" in result["note"]
    assert [c["pareto"] for c in result["candidates"]] == [False, True, True, True]
    with pytest.raises(ValueError):
        search_weights(*args, candidates=[[1, 1, 1, 1]], progress=False)


def test_keep_merges_false_reuses_scores(setup, fake_eval, tmp_path):
    args = (setup["experts"], setup["base"], setup["dev"], setup["forgetting"], str(tmp_path))
    cands = [[1, 1], [3, 1], [1, 3]]
    chosen = search_weights(*args, candidates=cands, keep_merges=False, progress=False)
    left = os.listdir(tmp_path / "candidates")
    assert left == [os.path.basename(chosen["folder"])]
    n_calls = len(fake_eval)
    again = search_weights(*args, candidates=cands, keep_merges=False, progress=False)
    assert os.listdir(tmp_path / "candidates") == left
    assert again["id"] == chosen["id"]
    assert len(fake_eval) - n_calls == 2  # the original and the kept winner (cached for real)
