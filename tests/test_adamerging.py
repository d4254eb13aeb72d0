"""AdaMerging (aode.merge.adamerging): the entropy against closed forms, the written merge
against task arithmetic computed by hand from the recorded coefficients, learning lowering
its objective, determinism, both families, and bad input before any output."""

import json
import os

import pytest
import torch
from conftest import perturbed_copy
from conftest import sample_rows
from safetensors.torch import load_file

from aode.manifest import write_manifest
from aode.merge import merge_models
from aode.models import masked_entropy


def test_masked_entropy_closed_forms():
    # uniform over 4 classes: log 4 per position; a near one-hot row: ~0
    uniform = torch.zeros(1, 3, 4)
    torch.testing.assert_close(
        masked_entropy(uniform, torch.tensor([3])), torch.tensor(float(torch.log(torch.tensor(4.0))))
    )
    peaked = torch.tensor([[[50.0, 0, 0, 0], [0, 0, 0, 0]]])
    # only the first position is valid: entropy ~ 0; both valid: (0 + log 4) / 2
    assert float(masked_entropy(peaked, torch.tensor([1]))) < 1e-12
    torch.testing.assert_close(masked_entropy(peaked, torch.tensor([2])), torch.log(torch.tensor(4.0)) / 2)
    # two classes with p = (0.25, 0.75): -(.25 ln .25 + .75 ln .75) = 0.5623351446
    logits = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert abs(float(masked_entropy(logits, torch.tensor([1]))) - 0.5623351446) < 1e-6


@pytest.fixture(scope="module")
def members(tiny_parakeet, tmp_path_factory):
    root = tmp_path_factory.mktemp("ada")
    return [perturbed_copy(tiny_parakeet, str(root / f"m{i}"), seed=i, scale=0.2) for i in range(2)]


@pytest.fixture(scope="module")
def dev_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ada_data")
    rows = sample_rows()
    paths = {}
    for name, part in (("target", rows[:2]), ("general", rows[2:4])):
        paths[name] = str(root / f"{name}.csv")
        write_manifest(paths[name], part)
    return paths


def _merge(members, base, data, out, **options):
    return merge_models(members, out, method="adamerging", base=base, options={"data": data, **options}, progress=False)


def test_written_merge_is_task_arithmetic_with_the_recorded_coefficients(members, tiny_parakeet, dev_sets, tmp_path):
    out = _merge(
        members, tiny_parakeet, dev_sets, str(tmp_path / "m"), steps=3, lr=0.05, batch_size=2, objective="loss"
    )
    record = json.load(open(os.path.join(out, "aode.json")))
    assert record["method"] == "adamerging"
    ada = record["adamerging"]
    assert ada["options"]["objective"] == "loss" and len(ada["objective"]) == 3
    coefficients = ada["coefficients"]
    assert coefficients and all(len(v) == 2 and all(0 <= c <= 1 for c in v) for v in coefficients.values())
    # the coefficients moved away from the 1/N start
    assert any(abs(c - 0.5) > 1e-3 for v in coefficients.values() for c in v)
    theta0 = load_file(os.path.join(tiny_parakeet, "model.safetensors"))
    thetas = [load_file(os.path.join(m, "model.safetensors")) for m in members]
    merged = load_file(os.path.join(out, "model.safetensors"))
    for name, t0 in theta0.items():
        if not t0.is_floating_point():
            continue
        if name in coefficients:
            l1, l2 = coefficients[name]
        else:  # no parameter (BatchNorm statistics) or unchanged: the plain average
            l1 = l2 = 0.5
        expected = t0 + l1 * (thetas[0][name] - t0) + l2 * (thetas[1][name] - t0)
        if "running" in name:
            expected = (thetas[0][name] + thetas[1][name]) / 2
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_learning_lowers_the_objective_and_is_deterministic(members, tiny_parakeet, dev_sets, tmp_path):
    # two utterances per set and batch_size 2: every step sees the same batches, so the objective
    # is a deterministic function of the coefficients and Adam must lower it
    from aode.merge.adamerging import learn_coefficients

    kwargs = dict(steps=8, lr=0.05, batch_size=2, progress=False)
    c1, trace1 = learn_coefficients(members, tiny_parakeet, dev_sets, seed=3, **kwargs)
    c2, trace2 = learn_coefficients(members, tiny_parakeet, dev_sets, seed=3, **kwargs)
    assert trace1["objective"] == trace2["objective"] and c1 == c2
    assert trace1["objective"][-1] < trace1["objective"][0]


def test_whisper_entropy_objective_runs(tiny_whisper, dev_sets, tmp_path):
    ms = [perturbed_copy(tiny_whisper, str(tmp_path / f"w{i}"), seed=i, scale=0.1) for i in range(2)]
    # random weights rarely emit end-of-text: cap the greedy hypotheses at 0.02 x 1500 frames
    out = _merge(ms, tiny_whisper, dev_sets, str(tmp_path / "merged"), steps=1, batch_size=2, max_decode_ratio=0.02)
    record = json.load(open(os.path.join(out, "aode.json")))["adamerging"]
    assert record["options"]["objective"] == "entropy" and len(record["objective"]) == 1
    assert record["options"]["max_decode_ratio"] == 0.02
    assert record["objective"][0] > 0


def test_bad_input_before_any_output(members, tiny_parakeet, dev_sets, tmp_path):
    out = str(tmp_path / "never")
    with pytest.raises(ValueError, match="needs data"):
        _merge(members, tiny_parakeet, None, out)
    with pytest.raises(ValueError, match="no such manifest"):
        _merge(members, tiny_parakeet, {"x": str(tmp_path / "nope.csv")}, out)
    with pytest.raises(ValueError, match="objective"):
        _merge(members, tiny_parakeet, dev_sets, out, objective="perplexity")
    with pytest.raises(ValueError, match="stepz"):
        _merge(members, tiny_parakeet, dev_sets, out, stepz=3)
    with pytest.raises(ValueError, match="include_original"):
        merge_models(
            members, out, method="adamerging", base=tiny_parakeet, include_base=True, options={"data": dev_sets}
        )
    with pytest.raises(ValueError, match="needs the original"):
        merge_models(members, out, method="adamerging", options={"data": dev_sets})
    assert not os.path.exists(out)


def test_data_weights_zero_drops_a_set(members, tiny_parakeet, dev_sets):
    """A set at weight 0 is left out of the objective: the same run as without it (the
    general set comes last, so the other sets' batch seeds are unchanged)."""
    from aode.merge.adamerging import learn_coefficients

    kwargs = dict(steps=2, lr=0.05, batch_size=2, progress=False, objective="loss")
    weighted, trace_w = learn_coefficients(
        members, tiny_parakeet, dev_sets, data_weights={"general": 0.0}, seed=1, **kwargs
    )
    alone, trace_a = learn_coefficients(members, tiny_parakeet, {"target": dev_sets["target"]}, seed=1, **kwargs)
    assert trace_w["objective"] == pytest.approx(trace_a["objective"]) and weighted == alone
    with pytest.raises(ValueError, match="data_weights names sets"):
        learn_coefficients(members, tiny_parakeet, dev_sets, data_weights={"genral": 1}, **kwargs)
