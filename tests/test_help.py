"""``--help`` of the train, merge and reproduce recipes (aode.cli.answer_help).

Each lists the project's own keys of its YAML kind from the schema in aode/config.py (type,
default, description), then SpeechBrain's run options in a group of their own, sorted, and
answers at once: before torch, SpeechBrain or transformers are imported (measured here: about
1 s on the 2-core test machine, against 4-8 s before; the limit allows a loaded machine).
"""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_S = 4.0
HEAVY = ("torch", "speechbrain", "transformers")

RECIPES = {
    "train": ["recipes/CORAAL/train.py", "hparams/parakeet_llrd.yaml", "--help"],
    "pretrain": ["recipes/mini/pretrain.py", "-h"],
    "merge": ["recipes/average/merge.py", "hparams/aode.yaml", "--help"],
    "reproduce": ["recipes/average/reproduce.py", "--help"],
}


def _help(kind):
    start = time.perf_counter()
    run = subprocess.run([sys.executable, *RECIPES[kind]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout, seconds


def _entry(text, key):
    """The entry of ``key``: its ``name: type = default`` line and the description below it."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}: "))
    return lines[i] + "\n" + lines[i + 1]


def _speechbrain_group(text):
    return text[text.index("\nSpeechBrain run options (") :]


def test_train_help_lists_the_training_keys_then_speechbrain_options():
    text, seconds = _help("train")
    assert seconds < LIMIT_S, f"{seconds:.1f} s"
    assert text.startswith("usage: ")
    assert "Keys of the hparams file (TrainingConfig" in text
    lr = _entry(text, "lr")
    assert "lr: float = 1e-05" in lr and "peak learning rate of the top encoder layer" in lr
    llrd = _entry(text, "llrd_alpha")
    assert "llrd_alpha: float = 1.0" in llrd and "layer-wise decay" in llrd
    assert "output_folder: str (required)" in text
    assert "llrd_mode: paper | separate | none = paper" in text
    # the corpus's prep_options, from its prepare function
    assert "prep_options keys (data_prep.coraal.prepare_coraal" in text and "n_valid_speakers (5)" in text
    group = _speechbrain_group(text)
    assert "  --device DEVICE" in group and "  --precision {fp32,fp16,bf16}" in group
    flags = [line.split()[0] for line in group.splitlines() if line.startswith("  --")]
    assert flags == sorted(flags, key=lambda f: f.lstrip("-")) and len(flags) > 20
    assert text.index("  lr: ") < text.index("\nSpeechBrain run options (")


def test_pretrain_help_lists_the_mini_keys():
    text, seconds = _help("pretrain")
    assert seconds < LIMIT_S, f"{seconds:.1f} s"
    assert "Keys of the hparams file (MiniPretrainConfig" in text
    assert "hidden_size: int (required)" in text and "corpus_scale: float = 1.0" in text
    assert "  lr: float = 1e-05" in text and "  --device DEVICE" in _speechbrain_group(text)


def test_merge_help_lists_the_merge_keys():
    text, seconds = _help("merge")
    assert seconds < LIMIT_S, f"{seconds:.1f} s"
    assert "Keys of the hparams file (MergeConfig" in text
    assert "merge method" in _entry(text, "method") and "method: str = average" in text
    include = _entry(text, "include_original")
    assert "include_original: bool = False" in include and "the original as one more member" in include
    assert "python recipes/average/merge.py hparams/aode.yaml --method ties" in text  # the docstring's examples
    assert "  --device DEVICE" in _speechbrain_group(text)


def test_reproduce_help_lists_the_experiment_keys_and_their_nested_keys():
    text, seconds = _help("reproduce")
    assert seconds < LIMIT_S, f"{seconds:.1f} s"
    assert "Keys of the hparams file (ExperimentConfig" in text
    scenarios = _entry(text, "scenarios")
    assert "scenarios: list of str = [experts, aode, aode_with_original]" in scenarios
    assert "which scenarios run" in scenarios
    for nested in ("DomainConfig", "MergeMethodConfig", "LauncherConfig", "WeightSearchConfig"):
        assert f"({nested})" in text
    assert "  --device DEVICE" in _speechbrain_group(text)


@pytest.mark.parametrize("kind", ["train", "merge", "reproduce"])
def test_help_imports_no_heavy_module(kind):
    """What makes --help fast: the recipe answers before importing torch, SpeechBrain, transformers."""
    script, *argv = RECIPES[kind]
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, *{argv!r}]\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_every_key_has_a_description():
    from aode import config

    for schema in (
        config.TrainingConfig,
        config.MiniPretrainConfig,
        config.MergeConfig,
        config.ExperimentConfig,
        config.DomainConfig,
        config.SyntheticCorpusConfig,
        config.MergeMethodConfig,
        config.WeightSearchConfig,
        config.LauncherConfig,
    ):
        missing = [name for name, field in schema.model_fields.items() if not field.description]
        assert not missing, f"{schema.__name__}: {missing}"


def test_a_run_option_the_file_sets_as_a_key_is_applied():
    """--help says any key can be given as --KEY VALUE; SpeechBrain takes --device as its own run
    option, so the merge YAML's device key used to stay as the file had it."""
    from aode.config import parse_command_line

    hparams, run_opts, _, _ = parse_command_line(["hparams/aode.yaml", "--device", "cuda:1", "--seed", "3"])
    assert hparams["device"] == "cuda:1" and run_opts["device"] == "cuda:1" and hparams["seed"] == 3
    hparams, _, _, _ = parse_command_line(["hparams/parakeet_llrd.yaml", "--device", "cuda:1"])
    assert "device" not in hparams  # not a key of the training YAMLs: a run option only
