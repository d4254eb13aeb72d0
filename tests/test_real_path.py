"""What a user with real checkpoints and real hparams hits: run options from the YAML,
layerdrop, hub ids, command-line mappings, architecture checks, frozen positions, export."""

import json
import os
import subprocess
import sys

import pytest
import speechbrain as sb
import torch
from conftest import recipe_paths
from conftest import run_training
from conftest import train_tiny_expert

from aode.brain import ASRBrain
from aode.config import TrainingConfig
from aode.config import parse_command_line
from aode.config import validate
from aode.models import load_asr_model
from aode.models import load_hf_config
from aode.models import resolve_model_folder
from aode.train import resolve_run_options
from aode.train import train_expert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHISPER_YAML = os.path.join(ROOT, "hparams", "whisper_llrd.yaml")
PARAKEET_YAML = os.path.join(ROOT, "hparams", "parakeet_llrd.yaml")


def _brain(config, run_opts):
    """SpeechBrain's own Brain decides which option wins; we only feed it."""
    return ASRBrain({"model": torch.nn.Linear(1, 1)}, config, run_opts=run_opts)


def _config(argv):
    hparams, run_opts, _, _ = parse_command_line(argv)
    return validate(TrainingConfig, hparams), run_opts


def test_yaml_run_options_reach_the_brain():
    config, run_opts = _config([WHISPER_YAML])
    assert config.grad_accumulation_factor == 2  # the shipped file's value
    opts = resolve_run_options(config, run_opts)
    brain = _brain(config, opts)
    assert brain.grad_accumulation_factor == 2 and brain.precision == "fp32"


def test_command_line_run_options_win_and_are_recorded():
    config, run_opts = _config([WHISPER_YAML, "--precision", "bf16", "--grad_accumulation_factor", "4"])
    opts = resolve_run_options(config, run_opts)
    brain = _brain(config, opts)
    assert (brain.precision, brain.grad_accumulation_factor) == ("bf16", 4)
    assert (config.precision, config.grad_accumulation_factor) == ("bf16", 4)  # provenance


def test_accumulation_from_the_yaml_sets_the_step_count(tiny_parakeet, sample_manifest, tmp_path):
    """4 batches with accumulation 2 are 2 optimizer steps: the schedule's length and the
    Brain's steps agree (the Brain used to step after every batch, running past the STLR end)."""
    steps = []
    original = ASRBrain.on_fit_batch_end

    def record(self, batch, outputs, loss, should_step):
        original(self, batch, outputs, loss, should_step)
        steps.append(should_step)

    ASRBrain.on_fit_batch_end = record
    try:
        folder = train_expert(
            dict(
                output_folder=str(tmp_path),
                train_csv=sample_manifest,
                valid_csv=sample_manifest,
                model_source=tiny_parakeet,
                lr=1e-3,
                number_of_epochs=1,
                steps_per_epoch=2,
                batch_size=2,
                grad_accumulation_factor=2,
                progressbar=False,
            ),
            sb.parse_arguments([PARAKEET_YAML])[1],
        )
    finally:
        ASRBrain.on_fit_batch_end = original
    assert steps == [False, True, False, True]
    info = json.load(open(os.path.join(folder, "aode.json")))
    assert info["hparams"]["grad_accumulation_factor"] == 2


def test_layerdrop_is_off_by_default_and_settable(tmp_path):
    from aode.builders import build_parakeet_ctc

    folder = build_parakeet_ctc(
        str(tmp_path / "m"), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, conv_kernel_size=5
    )
    config = json.load(open(os.path.join(folder, "config.json")))
    config["encoder_config"]["layerdrop"] = 0.1  # as the converted parakeet-ctc-1.1b config
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    drops = lambda asr: {m.layerdrop for m in asr.hf_model.modules() if hasattr(m, "layerdrop")}  # noqa: E731
    assert drops(load_asr_model(folder)) == {0.0}
    assert drops(load_asr_model(folder, layerdrop=0.3)) == {0.3}
    for yaml_file in ("parakeet_llrd", "parakeet_lora", "whisper_llrd", "whisper_lora"):
        hparams = parse_command_line([os.path.join(ROOT, "hparams", yaml_file + ".yaml")])[0]
        assert hparams["layerdrop"] == 0.0, yaml_file


def test_layerdrop_asks_ddp_for_unused_parameters():
    config, _ = _config([PARAKEET_YAML, "--layerdrop", "0.2"])
    resolve_run_options(config, {"find_unused_parameters": False})
    assert _brain(config, {}).find_unused_parameters is True


@pytest.mark.slow
def test_torchrun_with_layerdrop_finishes(tiny_parakeet, sample_manifest, tmp_path):
    """Skipped layers leave parameters without gradients; DDP used to hang on them."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
        os.path.join(ROOT, "recipes", "JLCorpus", "train.py"),
        PARAKEET_YAML,
        "--distributed_backend",
        "gloo",
        "--device",
        "cpu",
        *recipe_paths(tiny_parakeet, str(out), sample_manifest, sample_manifest, "null"),
        "--number_of_epochs",
        "1",
        "--steps_per_epoch",
        "4",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--layerdrop",
        "0.5",
        "--seed",
        "3",
    ]
    run_training(cmd, tmp_path, out, timeout=300)


def test_init_from_another_size_is_refused(tiny_whisper, sample_manifest, tmp_path):
    from aode.builders import build_whisper

    wider = build_whisper(str(tmp_path / "wider"), d_model=64, layers=2, heads=2, ffn=64)
    with pytest.raises(ValueError, match="different architectures.*d_model: 64 vs 32"):
        train_expert(
            dict(
                output_folder=str(tmp_path / "run"),
                train_csv=sample_manifest,
                valid_csv=sample_manifest,
                model_source=tiny_whisper,
                init_from=wider,
                number_of_epochs=1,
                batch_size=2,
                progressbar=False,
            )
        )
    deeper = build_whisper(str(tmp_path / "deeper"), d_model=32, layers=3, heads=2, ffn=64)
    from aode.models import check_same_architecture

    with pytest.raises(ValueError, match="encoder_layers: 3 vs 2"):
        check_same_architecture(load_hf_config(deeper), load_hf_config(tiny_whisper), "a", "b")
    check_same_architecture(load_hf_config(tiny_whisper), load_hf_config(tiny_whisper), "a", "b")


def test_whisper_sinusoidal_positions_stay_fixed(tiny_whisper, sample_manifest, tmp_path):
    from safetensors.torch import load_file

    asr = load_asr_model(tiny_whisper)
    assert not asr.hf_model.encoder.embed_positions.weight.requires_grad
    folder = train_expert(
        dict(
            output_folder=str(tmp_path),
            train_csv=sample_manifest,
            valid_csv=sample_manifest,
            model_source=tiny_whisper,
            family="whisper",
            lr=1e-2,
            number_of_epochs=1,
            steps_per_epoch=2,
            batch_size=2,
            progressbar=False,
            max_decode_ratio=0.02,
        )
    )
    key = "model.encoder.embed_positions.weight"
    before, after = (
        load_file(os.path.join(tiny_whisper, "model.safetensors")),
        load_file(os.path.join(folder, "model.safetensors")),
    )
    assert torch.equal(before[key], after[key])
    assert not torch.equal(before["model.encoder.layers.1.fc1.weight"], after["model.encoder.layers.1.fc1.weight"])


def test_export_reads_back_the_model_only(tiny_parakeet, sample_manifest, tmp_path, monkeypatch):
    """The best checkpoint's optimizer state is not needed for the export: a checkpoint whose
    optimizer file is gone still exports (the old export loaded every recoverable)."""
    import aode.train as train

    original_export = train.export_expert

    def drop_optimizer_files(brain, asr, folder, provenance):
        for ckpt in brain.checkpointer.list_checkpoints():
            os.remove(os.path.join(ckpt.path, "optimizer.ckpt"))
        return original_export(brain, asr, folder, provenance)

    monkeypatch.setattr(train, "export_expert", drop_optimizer_files)
    folder = train_tiny_expert(tiny_parakeet, sample_manifest, tmp_path, lr=1e-3, steps_per_epoch=2)
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))


def _fake_hub_cache(cache, repo_id, model_folder):
    """A Hugging Face cache entry laid out as huggingface_hub writes it."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_folder, repo / "snapshots" / commit)
    return str(repo / "snapshots" / commit)


def test_original_as_a_hub_id(tiny_parakeet, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-parakeet", tiny_parakeet)
    assert resolve_model_folder("someorg/tiny-parakeet") == snapshot
    with pytest.raises(FileNotFoundError, match="hf download someorg/absent.*or give its folder"):
        resolve_model_folder("someorg/absent")
    with pytest.raises(FileNotFoundError, match="model folder 'results/x/y' does not exist"):
        resolve_model_folder("results/x/y")


def test_merge_recipe_with_hub_original_and_replaced_experts(
    tiny_parakeet, sample_manifest, tmp_path, monkeypatch, capsys
):
    """`--experts "{...}"` on the command line replaces the YAML's experts (hyperpyyaml merged
    them, so the merge failed on the shipped file's folders), and `original` may be a hub id."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(tmp_path / "hub", "someorg/tiny-parakeet", tiny_parakeet)
    experts = {
        name: train_expert(
            dict(
                output_folder=str(tmp_path / name),
                train_csv=sample_manifest,
                valid_csv=sample_manifest,
                model_source=tiny_parakeet,
                lr=3e-3,
                number_of_epochs=1,
                steps_per_epoch=1,
                batch_size=2,
                progressbar=False,
                seed=seed,
            )
        )
        for seed, name in enumerate(("A", "B"))
    }
    sys.path.insert(0, os.path.join(ROOT, "recipes", "average"))
    import merge as merge_recipe

    out = tmp_path / "out"
    merge_recipe.main(
        [
            os.path.join(ROOT, "hparams", "aode.yaml"),
            "--original",
            "someorg/tiny-parakeet",
            "--experts",
            f"{{A: {experts['A']}, B: {experts['B']}}}",
            "--test_sets",
            f"{{clean: {sample_manifest}, other: {sample_manifest}}}",
            "--expert_of_test_set",
            "{}",
            "--forgetting_sets",
            "[clean, other]",
            "--normalizer",
            "basic",
            "--progressbar",
            "False",
            "--output_folder",
            str(out),
        ]
    )
    provenance = json.load(open(out / "merged" / "aode.json"))
    assert len(provenance["members"]) == 2
    text = capsys.readouterr().out
    assert "| A |" in text and "| B |" in text and "VCTK" not in text


def test_recipe_layout_error_is_one_line_and_exit_2(tmp_path):
    empty = tmp_path / "not_coraal"
    empty.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "CORAAL", "train.py"),
            PARAKEET_YAML,
            "--data_folder",
            str(empty),
            "--output_folder",
            str(tmp_path / "out"),
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
