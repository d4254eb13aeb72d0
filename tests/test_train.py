"""Expert training end to end: resume after a crash, torchrun DDP, bad input."""

import json
import os
import sys

import pytest
import speechbrain as sb
from conftest import recipe_paths
from conftest import run_training

from aode.brain import ASRBrain
from aode.data import UnreadableAudioError
from aode.train import train_expert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hparams(model, manifest, out, **extra):
    hp = dict(
        output_folder=str(out),
        train_csv=manifest,
        valid_csv=manifest,
        test_csv=manifest,
        model_source=model,
        family="ctc",
        lr=3e-3,
        llrd_alpha=0.9,
        number_of_epochs=2,
        batch_size=4,
        steps_per_epoch=3,
        progressbar=False,
    )
    hp.update(extra)
    return hp


def test_killed_run_resumes_from_its_checkpoint(tiny_parakeet, sample_manifest, tmp_path, monkeypatch):
    original_end = ASRBrain.on_stage_end

    def crash_after_first_epoch(self, stage, loss, epoch=None):
        original_end(self, stage, loss, epoch)
        if stage == sb.Stage.VALID and epoch == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ASRBrain, "on_stage_end", crash_after_first_epoch)
    hp = _hparams(tiny_parakeet, sample_manifest, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_expert(hp)
    assert not os.path.exists(tmp_path / "expert")
    monkeypatch.setattr(ASRBrain, "on_stage_end", original_end)

    seen = []
    original_start = ASRBrain.on_fit_batch_start

    def record(self, batch, should_step):
        seen.append((self.epoch_counter.current, self.scheduler.current_step))
        original_start(self, batch, should_step)

    monkeypatch.setattr(ASRBrain, "on_fit_batch_start", record)
    folder = train_expert(_hparams(tiny_parakeet, sample_manifest, tmp_path))
    # only epoch 2 is trained, and the schedule continues where epoch 1 left it
    assert seen == [(2, 3), (2, 4), (2, 5)]
    info = json.load(open(os.path.join(folder, "aode.json")))
    assert info["kind"] == "expert" and info["dev_wer"] is not None
    assert os.path.exists(tmp_path / "test_test.csv")


def test_lora_expert_is_exported_merged(tiny_parakeet, sample_manifest, tmp_path):
    from safetensors.torch import load_file

    folder = train_expert(
        _hparams(
            tiny_parakeet,
            sample_manifest,
            tmp_path,
            number_of_epochs=1,
            lora_rank=2,
            lora_targets=["q_proj", "depthwise_conv"],
        )
    )
    keys = load_file(os.path.join(folder, "model.safetensors")).keys()
    assert not any("lora" in k for k in keys)
    base = load_file(os.path.join(tiny_parakeet, "model.safetensors"))
    assert set(keys) == set(base)
    assert json.load(open(os.path.join(folder, "aode.json")))["lora_merged_modules"] == 4


def test_frozen_decoder_trains_the_encoder_only(tiny_parakeet, sample_manifest, tmp_path):
    from safetensors.torch import load_file

    folder = train_expert(_hparams(tiny_parakeet, sample_manifest, tmp_path, number_of_epochs=1, freeze_decoder=True))
    new, old = (
        load_file(os.path.join(folder, "model.safetensors")),
        load_file(os.path.join(tiny_parakeet, "model.safetensors")),
    )
    assert (new["ctc_head.weight"] == old["ctc_head.weight"]).all()
    assert not (
        new["encoder.layers.1.self_attn.q_proj.weight"] == old["encoder.layers.1.self_attn.q_proj.weight"]
    ).all()


def test_bad_input_fails_before_training(tiny_parakeet, tiny_whisper, sample_manifest, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        train_expert(_hparams(str(tmp_path / "no_such_model"), sample_manifest, tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        train_expert(_hparams(tiny_parakeet, sample_manifest, tmp_path / "b", train_csv=str(tmp_path / "missing.csv")))
    empty = tmp_path / "empty.csv"
    empty.write_text("ID,duration,wav,start,stop,spk_id,wrd,wrd_raw\n")
    with pytest.raises(ValueError, match="has no rows"):
        train_expert(_hparams(tiny_parakeet, sample_manifest, tmp_path / "c", train_csv=str(empty)))
    with pytest.raises(ValueError, match="architecture"):
        train_expert(_hparams(tiny_parakeet, sample_manifest, tmp_path / "d", init_from=tiny_whisper))
    with pytest.raises(ValueError, match="model family 'whisper'"):
        train_expert(_hparams(tiny_parakeet, sample_manifest, tmp_path / "e", family="whisper"))
    with pytest.raises(FileNotFoundError, match="init_from_missing"):
        train_expert(
            _hparams(tiny_parakeet, sample_manifest, tmp_path / "f", init_from=str(tmp_path / "init_from_missing"))
        )


def test_unreadable_training_audio_above_the_fraction_is_refused(tiny_parakeet, sample_manifest, tmp_path):
    lines = open(sample_manifest).read().splitlines()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    first = lines[1].split(",")
    first[0], first[2] = "broken_utt", str(broken)
    bad_manifest = tmp_path / "with_bad.csv"
    bad_manifest.write_text("\n".join(lines + [",".join(first)]) + "\n")
    # one unreadable row of a few is more than the default 1 %: refused, nothing trained
    with pytest.raises(UnreadableAudioError, match=r"1 of \d+ rows cannot be read .*broken.wav"):
        train_expert(
            _hparams(tiny_parakeet, sample_manifest, tmp_path / "run", train_csv=str(bad_manifest), number_of_epochs=1)
        )
    assert not (tmp_path / "run" / "expert").exists()
    # allowed on purpose: skipped, logged and counted
    train_expert(
        _hparams(
            tiny_parakeet,
            sample_manifest,
            tmp_path / "run",
            train_csv=str(bad_manifest),
            number_of_epochs=1,
            max_unreadable_fraction=0.5,
        )
    )
    skipped = (tmp_path / "run" / "skipped_audio.csv").read_text()
    assert "broken_utt" in skipped


def test_torchrun_two_process_gloo(tiny_parakeet, sample_manifest, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        os.path.join(ROOT, "recipes", "JLCorpus", "train.py"),
        os.path.join(ROOT, "hparams", "parakeet_llrd.yaml"),
        "--distributed_backend",
        "gloo",
        "--device",
        "cpu",
        *recipe_paths(tiny_parakeet, str(out), sample_manifest, sample_manifest, sample_manifest),
        "--number_of_epochs",
        "1",
        "--steps_per_epoch",
        "2",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--lr",
        "0.001",
    ]
    result = run_training(cmd, tmp_path, out, timeout=600)
    assert "expert written to" in result.stdout
