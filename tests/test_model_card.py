"""Model cards (aode.model_card) and --push_to_hub: every card is read back by
huggingface_hub's own parser (ModelCard.load), not by ours; the merge recipe's card carries the
WERs the recipe measured; a push without a token exits 2 before any work; a push uploads the
finished folder (the upload is mocked: nothing here reaches the hub)."""

import json
import os
import re
import runpy
import shutil
import sys

import huggingface_hub
import pytest
from conftest import SAMPLES
from conftest import perturbed_copy
from conftest import sample_rows
from huggingface_hub import ModelCard

from aode.manifest import write_manifest
from aode.merge import merge_models
from aode.model_card import model_card
from aode.model_card import write_model_card

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "average", "merge.py")
GENERIC_TAGS = {"aode", "speechbrain", "automatic-speech-recognition"}


@pytest.fixture(scope="module")
def setup(tiny_parakeet, tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    manifest = str(root / "small.csv")
    write_manifest(manifest, sample_rows()[:2])
    experts = {n: perturbed_copy(tiny_parakeet, str(root / n), seed=i, scale=0.1) for i, n in enumerate("ab")}
    return root, experts, manifest


def _metadata(folder):
    """The card's metadata as huggingface_hub parses it."""
    return ModelCard.load(os.path.join(folder, "README.md")).data.to_dict()


def _reported(metadata):
    """{test set: {metric: value}} from a parsed model-index."""
    (entry,) = metadata["model-index"]
    return {r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in entry["results"]}


class _Hub:
    """Mocks of the token look-up and of HfApi's repo creation and upload; ``uploads`` records
    what the folder held when the upload was called."""

    def __init__(self, monkeypatch, token="hf_test_token"):
        self.uploads, self.created = [], []
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", self._create)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", self._upload)

    def _create(self, repo_id, **kwargs):  # set on the class as a bound method: no HfApi self
        self.created.append(repo_id)

    def _upload(self, *, repo_id, folder_path, **kwargs):
        files = sorted(os.listdir(folder_path))
        readme = open(os.path.join(folder_path, "README.md"), encoding="utf-8").read() if "README.md" in files else ""
        self.uploads.append({"repo_id": repo_id, "folder": folder_path, "files": files, "readme": readme, **kwargs})
        return "commit"


# ------------------------------------------------------------------------------ merged folders


def test_merged_folder_card_parses_back(setup, tiny_parakeet, tmp_path):
    root, experts, _ = setup
    out = merge_models(
        [experts["a"], experts["b"]],
        tmp_path / "ties",
        method="ties",
        weights=[2.0, 1.0],
        base=tiny_parakeet,
        options={"density": 0.5},
        seed=3,
        progress=False,
    )
    assert {"README.md", "aode.json"} <= set(os.listdir(out))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    data = _metadata(out)
    assert data["base_model"] == "parakeet"  # a local original: its folder's name
    assert set(data["tags"]) == GENERIC_TAGS | {"model-merging", "ties"}
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "automatic-speech-recognition"
    assert "license" not in data and "model-index" not in data  # unknown license; nothing evaluated yet
    text = open(os.path.join(out, "README.md")).read()
    assert "| 1 | a | 2.0 |" in text and "| 2 | b | 1.0 |" in text
    assert '`{"density": 0.5}`' in text and "| Seed | 3 |" in text and "| Original included as a member | no |" in text

    write_model_card(out, {"clean": 12.5, "noisy": {"wer": 30.25, "cer": 10.5, "utterances": 2}})
    data = _metadata(out)
    assert data["model-index"][0]["name"] == "ties"
    assert _reported(data) == {"clean": {"wer": 12.5}, "noisy": {"wer": 30.25, "cer": 10.5}}
    assert data["base_model"] == "parakeet" and "ties" in data["tags"]


def test_original_included_is_listed_as_a_member(setup, tiny_parakeet, tmp_path):
    _, experts, _ = setup
    out = merge_models(
        [experts["a"]], tmp_path / "with_orig", weights=[3, 1], base=tiny_parakeet, include_base=True, progress=False
    )
    text = open(os.path.join(out, "README.md")).read()
    assert "| Original included as a member | yes |" in text
    assert f"| 2 | original | 1.0 | `{os.path.abspath(tiny_parakeet)}` |" in text
    assert set(_metadata(out)["tags"]) == GENERIC_TAGS | {"model-merging", "average"}


def _merge_of_two(method, weights, **info):
    """The aode.json of a merge of the members /x/a and /x/b."""
    return {"kind": "merge", "method": method, "members": ["/x/a", "/x/b"], "weights": weights, **info}


def _folder_with_provenance(tiny_parakeet, folder, info):
    os.makedirs(folder)
    shutil.copy(os.path.join(tiny_parakeet, "config.json"), folder)
    with open(os.path.join(folder, "aode.json"), "w") as f:
        json.dump(info, f)
    return str(folder)


def test_hub_original_is_named_by_its_id_and_its_license_kept(tiny_parakeet, tmp_path):
    # the original as resolve_model_folder finds a hub id: a snapshot in the Hugging Face cache
    snapshot = tmp_path / "hub" / "models--someorg--tiny-asr" / "snapshots" / "0123abc"
    shutil.copytree(tiny_parakeet, snapshot)
    (snapshot / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# tiny\n")
    merged = _folder_with_provenance(
        tiny_parakeet,
        tmp_path / "merged",
        _merge_of_two("average", [1, 1], base=str(snapshot)),
    )
    data = ModelCard(model_card(merged)).data.to_dict()
    assert data["base_model"] == "someorg/tiny-asr" and data["license"] == "cc-by-4.0"
    # no base given: the members' own provenance names the original
    no_base = _folder_with_provenance(
        tiny_parakeet,
        tmp_path / "no_base",
        _merge_of_two(
            "average",
            [1, 1],
            member_provenance=[{"kind": "expert", "base_model": "someorg/tiny-asr", "domain": d} for d in "AB"],
        ),
    )
    data = ModelCard(model_card(no_base)).data.to_dict()
    assert data["base_model"] == "someorg/tiny-asr" and "license" not in data
    assert "| 1 | A | 1 | `/x/a` |" in model_card(no_base)


def test_adamerging_card_summarises_the_learnt_coefficients(tiny_parakeet, tmp_path):
    names = [f"encoder.layers.{i}.secret_tensor_{i}.weight" for i in range(12)]
    coefficients = {n: [0.1 * (i % 3), 0.5 + 0.01 * i] for i, n in enumerate(names)}
    record = {
        "options": {
            "objective": "entropy",
            "steps": 4,
            "lr": 0.005,
            "data": {"dev_a": "/d/a.csv", "dev_b": "/d/b.csv"},
        },
        "coefficients": coefficients,
        "objective_first": 2.5,
        "objective_last": 1.25,
        "objective": [2.5, 2.0, 1.5, 1.25],
        "seconds": 3.0,
    }
    folder = _folder_with_provenance(
        tiny_parakeet,
        tmp_path / "ada",
        _merge_of_two(
            "adamerging",
            [0.5, 0.5],
            weight_rules=[[n, c] for n, c in coefficients.items()],
            base="/x/orig",
            options={"lam": 1.0},
            adamerging=record,
        ),
    )
    text = model_card(folder)
    # member 1: 0, 0.1, 0.2 four times each -> mean 0.1, min 0, max 0.2;
    # member 2: 0.5 + 0.01 i, i = 0..11 -> mean 0.555, min 0.5, max 0.61
    assert "| a | 0.1000 | 0.0000 | 0.2000 |" in text
    assert "| b | 0.5550 | 0.5000 | 0.6100 |" in text
    assert "from 2.5000 to 1.2500" in text and "dev_a, dev_b" in text and "| Weight rules | 12 " in text
    assert "secret_tensor" not in text  # a summary, not every coefficient
    assert "<12 tensors; see aode.json>" in text
    assert set(ModelCard(text).data.tags) == GENERIC_TAGS | {"model-merging", "adamerging"}


def test_usage_snippets_run(setup, tiny_parakeet, tmp_path):
    _, experts, _ = setup
    out = merge_models([experts["a"], experts["b"]], tmp_path / "m", base=tiny_parakeet, progress=False)
    snippets = re.findall(r"```python\n(.*?)```", open(os.path.join(out, "README.md")).read(), re.S)
    assert len(snippets) == 2
    wav = os.path.join(SAMPLES, "speech", "spk1_snt1.wav")
    for code in snippets:
        assert f'"{out}"' in code
        exec(compile(code.replace("audio.wav", wav), "<card snippet>", "exec"), {})  # prints a (random) transcript


# ------------------------------------------------------------------------------ the recipes


def _merge_yaml(root, name, original, experts, manifest, extra=""):
    path = root / f"{name}.yaml"
    path.write_text(
        f"""
output_folder: {root / name}
original: {original}
experts:
    A: {experts["a"]}
    B: {experts["b"]}
test_sets:
    small: {manifest}
forgetting_sets: [small]
evaluate_experts: False
progressbar: False
{extra}
"""
    )
    return str(path)


def test_merge_recipe_card_carries_the_measured_wers_and_is_uploaded(setup, tiny_parakeet, monkeypatch):
    root, experts, manifest = setup
    hub = _Hub(monkeypatch)
    hp = _merge_yaml(root, "recipe", tiny_parakeet, experts, manifest)
    monkeypatch.setattr(sys, "argv", [RECIPE, hp, "--push_to_hub", "someone/aode-merged"])
    runpy.run_path(RECIPE, run_name="__main__")
    merged = str(root / "recipe" / "merged")
    measured = json.load(open(root / "recipe" / "eval" / "merged" / "small.json"))["wer"]
    data = _metadata(merged)
    assert _reported(data) == {"small": {"wer": measured}}
    assert data["model-index"][0]["name"] == "aode-merged"  # named after the repo once pushed
    assert data["base_model"] == "parakeet"
    (upload,) = hub.uploads
    assert hub.created == ["someone/aode-merged"]
    assert upload["repo_id"] == "someone/aode-merged" and upload["folder"] == merged
    assert {"README.md", "aode.json", "config.json", "model.safetensors"} <= set(upload["files"])
    assert f"value: {measured}" in upload["readme"]
    assert 'model="someone/aode-merged"' in upload["readme"]  # the usage snippet loads the repo


def test_push_without_token_exits_2_before_any_work(setup, tiny_parakeet, tmp_path, monkeypatch, capsys):
    _, experts, manifest = setup
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    hp = _merge_yaml(tmp_path, "nothing", tiny_parakeet, experts, manifest)
    monkeypatch.setattr(sys, "argv", [RECIPE, hp, "--push_to_hub", "someone/repo"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(RECIPE, run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs a Hugging Face token" in err and "hf auth login" in err
    assert not os.path.exists(tmp_path / "nothing")


def _train_yaml(root, model, manifest):
    path = root / "train.yaml"
    path.write_text(
        f"""
output_folder: {root / "CORAAL"}
train_csv: {manifest}
valid_csv: {manifest}
model_source: {model}
family: ctc
lr: 0.003
llrd_alpha: 0.9
number_of_epochs: 1
steps_per_epoch: 1
batch_size: 2
progressbar: False
"""
    )
    return str(path)


@pytest.mark.parametrize(
    "repo, token, message",
    [("someone/x", None, "needs a Hugging Face token"), ("not a repo//id", "hf_t", "push_to_hub")],
)
def test_train_recipe_refuses_push_before_any_work(
    setup, tiny_parakeet, tmp_path, monkeypatch, capsys, repo, token, message
):
    from aode.train import main

    _, _, manifest = setup
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    with pytest.raises(SystemExit) as exit_info:
        main([_train_yaml(tmp_path, tiny_parakeet, manifest), "--push_to_hub", repo], corpus="CORAAL")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "CORAAL")


def test_trained_expert_card_and_upload(setup, tiny_parakeet, tmp_path, monkeypatch):
    from aode.train import main

    _, _, manifest = setup
    hub = _Hub(monkeypatch)
    argv = [_train_yaml(tmp_path, tiny_parakeet, manifest), "--push_to_hub", "someone/coraal-expert"]
    folder = main(argv, corpus="CORAAL")
    data = _metadata(folder)
    assert data["base_model"] == "parakeet" and set(data["tags"]) == GENERIC_TAGS
    assert data["library_name"] == "transformers" and "model-index" not in data
    text = open(os.path.join(folder, "README.md")).read()
    for row in (
        f"| Training manifest | `{manifest}` |",
        "| Domain | CORAAL |",
        "| Learning rate | 0.003 |",
        "| LLRD alpha | 0.9 (paper) |",
        "| Epochs | 1 |",
        "| Steps per epoch | 1 |",
        "| Batch size | 2 x accumulation 1 |",
        "| Model family | ctc |",
    ):
        assert row in text, row
    (upload,) = hub.uploads
    assert upload["repo_id"] == "someone/coraal-expert" and upload["folder"] == folder
    assert {"README.md", "aode.json", "config.json", "model.safetensors"} <= set(upload["files"])
    assert json.load(open(os.path.join(folder, "aode.json")))["kind"] == "expert"
