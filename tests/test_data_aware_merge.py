"""The data-aware merges through the command line users type: statistics (Gram, Fisher) and
dev sets come from the manifests named in the YAML, are computed once into
<output_folder>/statistics/, and a member without data is refused before any work."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import perturbed_copy
from conftest import sample_rows
from safetensors.torch import load_file

from aode.gram import load_gram
from aode.manifest import write_manifest
from aode.merge.regmean import regmean_linear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "average", "merge.py")


@pytest.fixture(scope="module")
def setup(tiny_parakeet, tmp_path_factory):
    root = tmp_path_factory.mktemp("data_aware")
    rows = sample_rows()
    manifests = {}
    for name, part in (("a", rows[:2]), ("b", rows[2:4]), ("general", rows[4:6])):
        manifests[name] = str(root / f"{name}.csv")
        write_manifest(manifests[name], part)
    experts = {n: perturbed_copy(tiny_parakeet, str(root / n), seed=i, scale=0.1) for i, n in enumerate("ab")}
    return root, experts, manifests


def _run(root, name, text, *args):
    hp = root / f"{name}.yaml"
    hp.write_text(text)
    return subprocess.run(
        [sys.executable, RECIPE, str(hp), *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def _yaml(root, name, original, experts, extra):
    return f"""
output_folder: {root / name}
original: {original}
experts:
    A: {experts["a"]}
    B: {experts["b"]}
test_sets: {{}}
progressbar: False
{extra}
"""


def test_regmean_with_original_computes_statistics_from_member_data(setup, tiny_parakeet):
    root, experts, m = setup
    extra = f"""
include_original: True
member_data: {{A: {m["a"]}, B: {m["b"]}, original: {m["general"]}}}
statistics_utterances: 2
statistics_batch_size: 1
"""
    done = _run(root, "regmean", _yaml(root, "regmean", tiny_parakeet, experts, extra), "--method", "regmean")
    assert done.returncode == 0, done.stderr[-3000:]
    stats = root / "regmean" / "statistics"
    files = [stats / n / "gram.safetensors" for n in ("A", "B", "Pretrained")]
    assert all(f.is_file() for f in files)
    merged = load_file(str(root / "regmean" / "merged" / "model.safetensors"))
    members = [load_file(os.path.join(f, "model.safetensors")) for f in (experts["a"], experts["b"], tiny_parakeet)]
    grams = [load_gram(str(f)) for f in files]
    name = "encoder.layers.1.feed_forward1.linear1.weight"
    want = regmean_linear([x[name] for x in members], torch.ones(3), [g[name] for g in grams])
    torch.testing.assert_close(merged[name], want, rtol=1e-5, atol=1e-6)
    provenance = json.load(open(root / "regmean" / "merged" / "aode.json"))
    assert provenance["options"]["gram_files"] == [str(f) for f in files]
    assert provenance["option_defaults"] == {"alpha": 0.9, "ridge": 1e-4}  # what ran, though not passed
    # the original's Gram is on the general data: 2 utterances of it
    from safetensors import safe_open

    with safe_open(str(files[2]), "pt") as f:
        meta = f.metadata()
    assert meta["manifest"] == os.path.abspath(m["general"]) and meta["utterances"] == "2"


def test_fisher_from_member_data(setup, tiny_parakeet):
    root, experts, m = setup
    extra = f"member_data: {{A: {m['a']}, B: {m['b']}}}\nstatistics_utterances: 2"
    done = _run(root, "fisher", _yaml(root, "fisher", tiny_parakeet, experts, extra), "--method", "fisher")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "fisher" / "statistics" / "A" / "fisher.safetensors").is_file()
    # the expert folders were not written to
    assert not os.path.exists(os.path.join(experts["a"], "fisher.safetensors"))


def test_adamerging_fits_on_dev_sets(setup, tiny_parakeet):
    root, experts, m = setup
    extra = f"""
dev_sets: {{A: {m["a"]}, B: {m["b"]}, general: {m["general"]}}}
method_options: {{objective: loss, steps: 2, batch_size: 2}}
"""
    done = _run(root, "ada", _yaml(root, "ada", tiny_parakeet, experts, extra), "--method", "adamerging")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.load(open(root / "ada" / "merged" / "aode.json"))
    assert record["method"] == "adamerging"
    assert sorted(record["adamerging"]["options"]["data"]) == ["A", "B", "general"]
    assert len(record["adamerging"]["objective"]) == 2


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("regmean", "include_original: True\nmember_data: {A: MA, B: MB}", "no manifest for \\['Pretrained'\\]"),
        ("fisher", "member_data: {A: MA}", "no manifest for \\['B'\\]"),
        ("regmean", "member_data: {A: MA, B: /nonexistent.csv}", "no such manifest: /nonexistent.csv"),
        ("adamerging", "", "dev_sets"),
        ("average", "member_data: {C: MA}", "member_data entry"),
    ],
)
def test_bad_input_exits_2_before_any_work(setup, tiny_parakeet, method, extra, message):
    import re

    root, experts, m = setup
    name = f"bad_{method}_{abs(hash(extra)) % 1000}"
    extra = extra.replace("MA", m["a"]).replace("MB", m["b"])
    done = _run(root, name, _yaml(root, name, tiny_parakeet, experts, extra), "--method", method)
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.search(message, done.stderr), done.stderr[-2000:]
    assert not (root / name).exists()


def test_fisher_command_line(setup, tmp_path):
    from aode.fisher import load_fisher

    root, experts, m = setup
    out = str(tmp_path / "f.safetensors")
    command = [sys.executable, "-m", "aode.fisher", experts["a"], m["a"], "--n_utterances", "1", "--out", out]
    done = subprocess.run(command + ["--no_progress"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"written to {out}" in done.stdout
    fisher = load_fisher(out)
    assert fisher and all(torch.isfinite(t).all() and (t >= 0).all() for t in fisher.values())
