"""Issue 18: a run never gives a wrong number with exit 0. Each case through the command line a
user types (subprocess: exit code, the stderr line, the files left behind): a finished merge,
expert or statistics file made from other inputs is refused (exit 2, ``--overwrite`` named) or
redone on request, never reused; unreadable test audio is an error unless skipped on request,
and then the tables say how many utterances were scored; a foreign original is refused; the
evaluation progress bar names the model and the test set. Gain kept is undefined where an
expert did not improve."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from conftest import train_tiny_expert

from aode.manifest import read_manifest
from aode.manifest import write_manifest
from aode.report import gain_kept
from aode.report import write_report
from aode.reuse import model_fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _run(args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    return lines[0]


def _expert(tiny_parakeet, manifest, out, seed=0, **extra):
    return train_tiny_expert(tiny_parakeet, manifest, out, normalizer="basic", seed=seed, **extra)


@pytest.fixture(scope="module")
def experts(tiny_parakeet, speaker_csvs, tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return {
        name: _expert(tiny_parakeet, speaker_csvs[spk], root / name, seed=seed)
        for seed, (name, spk) in enumerate((("A", "spk1"), ("B", "spk2"), ("C", "spk1")))
    }


def _merge_args(original, experts, out, sets, *extra):
    names = ", ".join(f"{n}: {f}" for n, f in experts.items())
    return [
        "recipes/average/merge.py",
        "hparams/aode.yaml",
        "--original",
        original,
        "--experts",
        f"{{{names}}}",
        "--test_sets",
        "{" + ", ".join(f"{n}: {p}" for n, p in sets.items()) + "}",
        "--expert_of_test_set",
        "{}",
        "--forgetting_sets",
        f"[{', '.join(sets)}]",
        "--normalizer",
        "basic",
        "--progressbar",
        "False",
        "--output_folder",
        str(out),
        *extra,
    ]


# ------------------------------------------------------------------------------ 1. stale outputs
@pytest.mark.slow
def test_a_merge_made_from_other_members_is_refused_then_redone_on_request(
    tiny_parakeet, experts, speaker_csvs, tmp_path
):
    out = tmp_path / "F"
    sets = {"clean": speaker_csvs["all"]}
    first = _run(_merge_args(tiny_parakeet, {"A": experts["A"], "B": experts["B"]}, out, sets))
    assert first.returncode == 0, first.stderr[-2000:]
    weights = out / "merged" / "model.safetensors"
    before = _sha(weights)

    # the issue's case: other members, another method, the original included
    other = _merge_args(
        tiny_parakeet, {"CORAAL": experts["C"]}, out, sets, "--method", "ties", "--include_original", "True"
    )
    line = _error_line(_run(other))
    assert "merged model" in line and "--overwrite True" in line
    assert "method" in line and "members" in line and "include_original" in line
    assert _sha(weights) == before  # nothing rewritten, no table under the new settings
    assert "ties" not in (out / "results.md").read_text() and "CORAAL" not in (out / "results.md").read_text()

    redone = _run(other + ["--overwrite", "True"])
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "redoing the merged model" in redone.stdout
    assert _sha(weights) != before
    record = json.load(open(out / "merged" / "aode.json"))
    assert record["method"] == "ties" and record["made_from"]["include_original"] is True
    assert "| CORAAL |" in (out / "results.md").read_text()

    again = _run(other)  # the same command again: reused, said so
    assert again.returncode == 0 and "made from the same members and settings: reused" in again.stdout


@pytest.mark.slow
def test_an_expert_retrained_in_place_makes_its_merge_and_evaluations_stale(tiny_parakeet, speaker_csvs, tmp_path):
    a = _expert(tiny_parakeet, speaker_csvs["spk1"], tmp_path / "a")
    b = _expert(tiny_parakeet, speaker_csvs["spk2"], tmp_path / "b")
    args = _merge_args(tiny_parakeet, {"A": a, "B": b}, tmp_path / "F", {"clean": speaker_csvs["all"]})
    assert _run(args).returncode == 0
    cached = json.load(open(tmp_path / "F" / "eval" / "A" / "clean.json"))
    # the same folder, other weights (another seed): same path, same file names and sizes
    shutil.rmtree(tmp_path / "a")
    _expert(tiny_parakeet, speaker_csvs["spk1"], tmp_path / "a", seed=7)
    line = _error_line(_run(args))
    assert "members" in line
    redone = _run(args + ["--overwrite", "True"])
    assert redone.returncode == 0, redone.stderr[-2000:]
    fresh = json.load(open(tmp_path / "F" / "eval" / "A" / "clean.json"))
    assert fresh["key"]["model"] == model_fingerprint(a) != cached["key"]["model"]  # decoded again


def test_model_fingerprint_follows_the_bytes_not_the_file_dates(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    stat = os.stat(weights)
    before = model_fingerprint(str(folder))
    weights.write_bytes(b"b" * 64)  # same size, and the dates put back as they were
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_fingerprint(str(folder)) != before
    (folder / "README.md").write_text("a card")  # files that change no output do not count
    (folder / "fisher.safetensors").write_bytes(b"x")
    after = model_fingerprint(str(folder))
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert model_fingerprint(str(copy)) == after  # a copy is the same model


@pytest.mark.slow
def test_a_changed_training_yaml_is_not_already_trained(tiny_parakeet, speaker_csvs, tmp_path):
    out = tmp_path / "run"
    args = [
        "recipes/CORAAL/train.py",
        "hparams/parakeet_llrd.yaml",
        "--model_source",
        tiny_parakeet,
        "--train_csv",
        speaker_csvs["spk1"],
        "--valid_csv",
        speaker_csvs["spk1"],
        "--test_csv",
        speaker_csvs["spk2"],
        "--output_folder",
        str(out),
        "--number_of_epochs",
        "1",
        "--steps_per_epoch",
        "1",
        "--batch_size",
        "2",
        "--progressbar",
        "False",
    ]
    assert _run(args).returncode == 0
    exported = _sha(out / "expert" / "model.safetensors")
    saved_yaml = (out / "hyperparams.yaml").read_text()
    line = _error_line(_run(args + ["--lr", "0.003"]))
    assert "training run" in line and "lr" in line and "--overwrite True" in line
    assert _sha(out / "expert" / "model.safetensors") == exported
    assert (out / "hyperparams.yaml").read_text() == saved_yaml  # the folder still describes its expert
    redone = _run(args + ["--lr", "0.003", "--overwrite", "True"])
    assert redone.returncode == 0 and "redoing the training run" in redone.stdout
    assert _sha(out / "expert" / "model.safetensors") != exported
    assert json.load(open(out / "expert" / "aode.json"))["made_from"]["lr"] == 0.003


@pytest.mark.slow
def test_statistics_from_another_manifest_are_recomputed_only_on_request(
    tiny_parakeet, experts, speaker_csvs, tmp_path
):
    def fisher(data_a):
        return _merge_args(
            tiny_parakeet,
            {"A": experts["A"], "B": experts["B"]},
            tmp_path / "F",
            {},
            "--method",
            "fisher",
            "--statistics_utterances",
            "2",
            "--member_data",
            f"{{A: {data_a}, B: {speaker_csvs['spk2']}}}",
        )

    assert _run(fisher(speaker_csvs["spk1"])).returncode == 0
    stats = tmp_path / "F" / "statistics" / "A" / "fisher.safetensors"
    stamp = json.load(open(f"{stats}.made_from.json"))
    line = _error_line(_run(fisher(speaker_csvs["all"])))
    assert "merged model" in line and "data" in line
    redone = _run(fisher(speaker_csvs["all"]) + ["--overwrite", "True"])
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "redoing the fisher statistics of A" in redone.stdout
    assert "statistics of B" not in redone.stdout  # B's data did not change: its file is reused
    assert json.load(open(f"{stats}.made_from.json"))["manifest"] != stamp["manifest"]


# ------------------------------------------------------------------------------ 2. lost audio
def _half_missing(manifest, folder):
    rows = read_manifest(manifest)[:6]
    for row in rows[::2]:
        row["wav"] = str(folder / f"gone_{row['ID']}.wav")
    path = folder / "half.csv"
    write_manifest(str(path), rows)
    return str(path), [r["ID"] for r in rows[::2]]


@pytest.mark.slow
def test_unreadable_test_audio_is_an_error_unless_skipped_and_then_counted(
    tiny_parakeet, experts, speaker_csvs, tmp_path
):
    half, missing = _half_missing(speaker_csvs["all"], tmp_path)
    sets = {"half": half, "clean": speaker_csvs["all"]}
    args = _merge_args(tiny_parakeet, {"A": experts["A"]}, tmp_path / "F", sets)
    line = _error_line(_run(args))
    assert "3 of 6 rows cannot be read" in line and "gone_" in line and "--skip_unreadable_audio True" in line
    assert not (tmp_path / "F" / "results.md").exists()

    # the set with lost audio is the first one evaluated (the issue's crash): skipped on request
    result = _run(args + ["--skip_unreadable_audio", "True"])
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.load(open(tmp_path / "F" / "eval" / "Pretrained" / "half.json"))
    assert (record["utterances"], record["manifest_utterances"]) == (3, 6)
    assert sorted(record["unreadable"]) == sorted(missing)
    table = (tmp_path / "F" / "results.md").read_text()
    assert "Pretrained on half (†): scored on 3 of the manifest's 6 utterances" in table
    assert "on clean (†)" not in table  # complete sets carry no mark
    counts = json.load(open(tmp_path / "F" / "results.json"))["utterances"]
    assert all(row["half"] == [3, 6] and row["clean"][0] == row["clean"][1] for row in counts.values())


@pytest.mark.slow
def test_training_stops_when_more_than_the_allowed_fraction_is_unreadable(tiny_parakeet, speaker_csvs, tmp_path):
    rows = read_manifest(speaker_csvs["all"])[:8]
    for row in rows[1:]:  # 7 of 8 lost, as in the issue
        row["wav"] = str(tmp_path / f"gone_{row['ID']}.wav")
    train = tmp_path / "train.csv"
    write_manifest(str(train), rows)
    out = tmp_path / "run"
    args = ["recipes/CORAAL/train.py", "hparams/parakeet_llrd.yaml", "--model_source", tiny_parakeet]
    args += ["--train_csv", str(train), "--valid_csv", speaker_csvs["spk1"], "--test_csv", speaker_csvs["spk2"]]
    args += ["--output_folder", str(out)]
    line = _error_line(_run(args + ["--number_of_epochs", "1", "--steps_per_epoch", "1", "--batch_size", "2"]))
    assert "7 of 8 rows cannot be read" in line and "more than the 1 % allowed" in line
    assert not (out / "expert").exists()


# ------------------------------------------------------------------------------ 4. foreign original
@pytest.mark.slow
def test_an_original_that_is_not_the_experts_base_is_refused(experts, speaker_csvs, tmp_path):
    from aode.builders import build_parakeet_ctc

    foreign = build_parakeet_ctc(
        str(tmp_path / "foreign"),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        conv_kernel_size=5,
        seed=3,
    )
    args = _merge_args(foreign, {"A": experts["A"], "B": experts["B"]}, tmp_path / "F", {})
    line = _error_line(_run(args))
    assert "is not the model that member 'A'" in line and "--allow_foreign_original True" in line
    assert not (tmp_path / "F" / "merged").exists()
    allowed = _run(args + ["--allow_foreign_original", "True"])
    assert allowed.returncode == 0, allowed.stderr[-2000:]


# ------------------------------------------------------------------------------ 9. progress bars
@pytest.mark.slow
def test_evaluation_progress_bars_name_the_model_and_the_test_set(tiny_parakeet, experts, speaker_csvs, tmp_path):
    args = _merge_args(tiny_parakeet, {"A": experts["A"]}, tmp_path / "F", {"clean": speaker_csvs["spk1"]})
    args[args.index("--progressbar") + 1] = "True"
    result = _run(args)
    assert result.returncode == 0, result.stderr[-2000:]
    for model in ("Pretrained", "A", "AoDE"):
        assert f"{model} on clean:" in result.stderr


# ------------------------------------------------------------------------------ 5. gain kept
def test_gain_kept_is_undefined_where_the_expert_did_not_improve(tmp_path):
    base = {"x": 97.22, "y": 50.0, "clean": 10.0}
    worse = {"x": 101.39, "y": 40.0, "clean": 12.0}  # the issue's case on x: the expert got worse
    merged = {"x": 91.0, "y": 45.0, "clean": 11.0}
    experts = {"x": worse, "y": worse}
    assert gain_kept(merged, base, experts) == pytest.approx(0.5)  # y only: (50 - 45) / (50 - 40)
    assert math.isnan(gain_kept(merged, base, {"x": worse}))  # no set with a gain: undefined
    table = {"Pretrained": base, "Expert": worse, "merged": merged}
    rows, text = write_report(table, str(tmp_path), "Pretrained", ["clean"], expert_of={"x": "Expert", "y": "Expert"})
    assert rows[2]["Gain kept"] == pytest.approx(0.5)
    assert "Gain kept leaves out x: its expert did not improve on Pretrained there (WER 97.22 -> 101.39)" in text
    rows, _ = write_report(table, str(tmp_path), "Pretrained", ["clean"], expert_of={"x": "Expert"})
    assert math.isnan(rows[2]["Gain kept"])
    assert "| merged |" in (tmp_path / "results.md").read_text()


# ---------------------------------------------- a transcript does not depend on its batch companions
def test_whisper_features_are_floored_per_clip_as_whisper_does(tiny_whisper):
    """SpeechBrain's wrapper floored log-mels at the loudest clip of the batch; each clip's own
    features must not change when a louder clip joins its batch, and must equal transformers'
    WhisperFeatureExtractor (openai-whisper's per-clip rule)."""
    import numpy as np
    import torch
    from transformers import WhisperFeatureExtractor

    from aode.models import load_asr_model

    whisper = load_asr_model(tiny_whisper).whisper
    rng = np.random.default_rng(0)
    quiet = (0.001 * rng.standard_normal(16000)).astype("float32")
    loud = (0.5 * rng.standard_normal(16000)).astype("float32")
    alone = whisper.log_mel_spectrogram(torch.from_numpy(quiet)[None])
    batched = whisper.log_mel_spectrogram(torch.from_numpy(np.stack([quiet, loud])))
    assert torch.allclose(alone[0], batched[0])
    reference = WhisperFeatureExtractor(feature_size=alone.shape[1])(quiet, sampling_rate=16000, return_tensors="pt")
    frames = alone.shape[-1] - 1  # the last frame's window runs into the 30 s padding in transformers
    assert torch.allclose(alone[0, :, :frames], reference.input_features[0, :, :frames], atol=1e-4)
