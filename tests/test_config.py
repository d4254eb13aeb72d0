"""Every shipped YAML fits its schema; a misspelt key fails before any work, with a hint."""

import os
import subprocess
import sys

import pytest

import aode.pipeline  # noqa: F401 (hands the merge registry's checks to the schemas, as the recipes do)
from aode.config import SYNTHETIC_CORPUS_PREPARE
from aode.config import ConfigError
from aode.config import ExperimentConfig
from aode.config import MergeConfig
from aode.config import MiniPretrainConfig
from aode.config import TrainingConfig
from aode.config import load_yaml
from aode.config import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS = os.path.join(ROOT, "hparams")
TRAINING = ["whisper_llrd.yaml", "whisper_lora.yaml", "parakeet_llrd.yaml", "parakeet_lora.yaml"]


@pytest.mark.parametrize(
    "name,schema",
    [(n, TrainingConfig) for n in TRAINING]
    + [("aode.yaml", MergeConfig), ("aode_whisper.yaml", MergeConfig), ("mini_pretrain.yaml", MiniPretrainConfig)],
)
def test_shipped_yaml_fits_its_schema(name, schema):
    path = os.path.join(HPARAMS, name)
    values = validate(schema, load_yaml(path), path)
    assert type(values) is schema and set(values.model_dump()) == set(schema.model_fields)


EXPERIMENTS = [
    "mini.yaml",
    "mini_full.yaml",
    "mini_routed.yaml",
    "real_tiny.yaml",
    "real_tiny_full.yaml",
    "real_tiny_routed.yaml",
]


def test_every_shipped_yaml_has_a_schema():
    covered = set(TRAINING) | {"aode.yaml", "aode_whisper.yaml", "mini_pretrain.yaml", *EXPERIMENTS}
    assert set(os.listdir(HPARAMS)) <= covered, "a new YAML kind needs its schema and a test"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_synthetic_corpus_is_the_last_prepare_step(name, tmp_path):
    """The miniature's corpus is prepared like any other corpus: ``synthetic_corpus`` becomes a
    ``prepare`` step after the YAML's own, with generate_corpus's folder, seed, scale and config."""
    hparams = load_yaml(os.path.join(HPARAMS, name), {"output_folder": str(tmp_path / "out")})
    values = validate(ExperimentConfig, hparams, name)
    corpus, steps = values.synthetic_corpus, values.prepare
    assert [s.function for s in steps] == [s["function"] for s in hparams.get("prepare") or []] + [
        SYNTHETIC_CORPUS_PREPARE
    ]
    assert steps[-1].save_folder == corpus.folder == hparams["corpus_folder"]
    assert steps[-1].options == {"seed": corpus.seed, "scale": corpus.scale, "config": corpus.config}
    assert values.synthetic_corpus is not None and not os.path.exists(tmp_path / "out")
    without = validate(ExperimentConfig, {**hparams, "synthetic_corpus": None}, name).prepare
    assert [s.function for s in without] == [s["function"] for s in hparams.get("prepare") or []]


def test_the_corpus_step_calls_generate_corpus_as_before(monkeypatch, tmp_path):
    """README's main job generates the same corpus: generate_corpus(folder, seed, config, scale)."""
    import importlib

    import aode.mini.corpus

    calls = []
    monkeypatch.setattr(aode.mini.corpus, "generate_corpus", lambda *args, **kwargs: calls.append((args, kwargs)))
    module, _, function = SYNTHETIC_CORPUS_PREPARE.rpartition(".")
    step = validate(ExperimentConfig, load_yaml(os.path.join(HPARAMS, "mini.yaml")), "mini.yaml").prepare[-1]
    getattr(importlib.import_module(module), function)(save_folder=step.save_folder, **step.options)
    assert calls == [((step.save_folder,), {"seed": 0, "config": None, "scale": 1.0})]


def test_misspelt_key_names_the_closest_valid_one():
    hparams = load_yaml(os.path.join(HPARAMS, "parakeet_llrd.yaml"))
    hparams["llrd_alpa"] = 0.8
    with pytest.raises(ConfigError, match=r"unknown key 'llrd_alpa' \(did you mean 'llrd_alpha'\?\)"):
        validate(TrainingConfig, hparams, "parakeet_llrd.yaml")


def test_wrong_values_are_refused():
    hparams = load_yaml(os.path.join(HPARAMS, "aode.yaml"))
    with pytest.raises(ConfigError, match=r"unknown merge method 'tie' \(did you mean 'ties'\?\)"):
        validate(MergeConfig, {**hparams, "method": "tie"})
    with pytest.raises(ConfigError, match="normalizer"):
        validate(MergeConfig, {**hparams, "normalizer": "whisperx"})
    with pytest.raises(ConfigError, match="batch_size"):
        validate(TrainingConfig, {**load_yaml(os.path.join(HPARAMS, "whisper_llrd.yaml")), "batch_size": 0})


def test_defaults_are_declared_once():
    """The Brain reads a typed BrainConfig, whose defaults a TrainingConfig has as they are (it is
    one); evaluation builds one with its normaliser and nothing else."""
    import torch

    from aode.brain import ASRBrain
    from aode.config import BrainConfig

    assert issubclass(TrainingConfig, BrainConfig)
    brain = ASRBrain({"model": torch.nn.Linear(1, 1)}, BrainConfig(normalizer="basic"), run_opts={})
    assert brain.config == BrainConfig(normalizer="basic") and brain.config.lr == BrainConfig.model_fields["lr"].default
    assert not hasattr(brain, "_hp")  # no defaults looked up by name
    assert TrainingConfig.model_fields["eval_batch_size"].default == MergeConfig.model_fields["eval_batch_size"].default


@pytest.mark.parametrize(
    "command",
    [
        ["recipes/CORAAL/train.py", "hparams/whisper_llrd.yaml", "--llrd_alpa", "0.9"],
        ["recipes/average/merge.py", "hparams/aode.yaml", "--methd", "ties"],
        [
            "recipes/CORAAL/train.py",
            "hparams/parakeet_llrd.yaml",
            "--data_folder",
            "/nonexistent",
            "--prep_options",
            "{n_valid_speaker: 1}",
        ],
    ],
)
def test_misspelt_key_on_the_command_line_stops_before_work(command, tmp_path):
    result = subprocess.run(
        [sys.executable, *command, "--output_folder", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "did you mean" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out")  # nothing was started


def test_forgetting_sets_must_be_test_sets():
    """Found by the full-size bench: `--forgetting_sets "[]"` failed only after the merge and the
    evaluation, with a message about table columns."""
    hparams = load_yaml(os.path.join(HPARAMS, "aode.yaml"))
    validate(MergeConfig, hparams)  # the shipped file names LS test-clean / test-other
    for bad in ([], ["LS dev-clean"]):
        with pytest.raises(ConfigError, match="forgetting_sets .* must name one or more of test_sets"):
            validate(MergeConfig, {**hparams, "forgetting_sets": bad})
    with pytest.raises(ConfigError, match="forgetting_sets"):
        validate(MergeConfig, {**hparams, "forgetting_sets": None, "test_sets": {"DiPCo": "d.csv"}})


def test_merge_methods_are_never_passed_unchecked():
    """aode.config imports no merge module: until the merge layer hands its checks over (importing
    aode.pipeline does), a schema asked about a merge method fails loudly instead of accepting it."""
    code = (
        "from aode.config import MergeConfig, validate\n"
        "try:\n"
        "    validate(MergeConfig, {'output_folder': 'x', 'original': 'o', 'experts': {'a': 'a'}, 'method': 'tie'})\n"
        "except RuntimeError as err:\n"
        "    print('refused:', err)\n"
        "import sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('aode.merge')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: aode.config cannot check merge methods" in result.stdout
    assert "import aode.pipeline" in result.stdout
    assert result.stdout.strip().endswith("[]")  # nothing of the merge package was imported


def test_operating_points_need_a_general_dev_set_the_router_did_not_learn_from():
    """Checked with the schema, before any expert is trained: the rule is chosen on a general dev
    set, and one the router's general class was trained on would under-state forgetting."""
    hparams = load_yaml(os.path.join(HPARAMS, "mini_routed.yaml"))
    config = validate(ExperimentConfig, hparams)
    assert config.routing.operating_points and config.forgetting_dev_sets
    dev = next(iter(hparams["forgetting_dev_sets"].values()))
    for bad in (
        {"forgetting_dev_sets": {}},
        {"general_data": dev},  # the router's general class is the dev set itself
        {"general_data": None},  # ... which is also what it falls back to
        {"routing": {**hparams["routing"], "general_data": [dev]}},
    ):
        with pytest.raises(ConfigError, match="operating_points needs a forgetting dev set"):
            validate(ExperimentConfig, {**hparams, **bad})
    validate(
        ExperimentConfig,
        {**hparams, "routing": {**hparams["routing"], "operating_points": False}, "general_data": None},
    )
