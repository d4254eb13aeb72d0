"""SPGISpeech preparation on a miniature copy of the real layout (16 kHz WAVs, "|" CSVs)."""

import csv
import os
import subprocess
import sys

import pytest
from prep_fixtures_a import make_spgispeech

from aode.manifest import MANIFEST_COLUMNS, read_manifest
from aode.text import normalize_words
from data_prep.common import LayoutError
from data_prep.spgispeech import prepare_spgispeech, utterance_id

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifests(folder):
    return {name: read_manifest(os.path.join(folder, name + ".csv"))
            for name in ("train", "valid", "test")}


def skipped(folder):
    with open(os.path.join(folder, "skipped.csv"), newline="") as f:
        return {row["ID"]: row for row in csv.DictReader(f)}


def check_row(row, expected, from_header=True):
    assert row["wav"] == expected["wav"] and os.path.isabs(row["wav"])
    duration = (expected["size"] - 44) / 32000 if from_header else expected["duration"]
    assert float(row["duration"]) == pytest.approx(duration, abs=1e-3)
    assert float(row["duration"]) == pytest.approx(expected["duration"], abs=1e-3)
    assert float(row["start"]) == 0.0
    assert float(row["stop"]) == pytest.approx(float(row["duration"]), abs=1e-3)
    assert float(row["stop"]) <= expected["duration"]  # never past the last sample
    assert row["spk_id"] == expected["spk"]
    assert row["wrd_raw"] == expected["text"]
    assert row["wrd"] == normalize_words(expected["text"])
    assert "q2" in row["wrd"].split() and "--" not in row["wrd"] and "," not in row["wrd"]


def test_manifests_row_by_row(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    summary = prepare_spgispeech(corpus["root"], out, test_size=3, valid_size=2)
    got = manifests(out)
    good = corpus["good"]
    for split in got.values():
        for row in split:
            assert list(row) == MANIFEST_COLUMNS
            assert "," not in row["ID"]

    # test: 3 utterances drawn from the official val split (the truncated file is only
    # caught with check_audio, so it may be drawn here)
    assert len(got["test"]) == 3
    for row in got["test"]:
        if row["ID"] == good["truncated"]["ID"]:
            assert float(row["duration"]) == pytest.approx((good["truncated"]["size"] - 44) / 32000)
        else:
            check_row(row, good["val"][row["ID"]])

    # valid + train = every usable train utterance, disjoint, valid of the asked size
    assert len(got["valid"]) == 2
    valid_ids = {r["ID"] for r in got["valid"]}
    train_ids = {r["ID"] for r in got["train"]}
    assert not valid_ids & train_ids
    assert valid_ids | train_ids == set(good["train"])
    for row in got["valid"] + got["train"]:
        check_row(row, good["train"][row["ID"]])
    ids = [r["ID"] for split in got.values() for r in split]
    assert len(ids) == len(set(ids))

    # the missing file and the empty transcript are skipped with their reasons
    skips = skipped(out)
    assert skips[corpus["missing"]]["reason"] == "audio file missing"
    assert skips[corpus["empty"]]["reason"] == "empty transcript"
    assert summary["test.csv"][0] == 3 and summary["valid.csv"][0] == 2
    assert summary["train.csv"][0] == len(good["train"]) - 2


def test_check_audio_skips_truncated(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"))
    trunc = corpus["good"]["truncated"]["ID"]
    out = str(tmp_path / "checked")
    prepare_spgispeech(corpus["root"], out, test_size=None, valid_size=1, check_audio=True)
    test = manifests(out)["test"]
    assert {r["ID"] for r in test} == set(corpus["good"]["val"])
    for row in test:
        check_row(row, corpus["good"]["val"][row["ID"]], from_header=False)
    assert "unreadable audio" in skipped(out)[trunc]["reason"]

    # without check_audio the file is only checked to exist: it is kept (documented)
    out = str(tmp_path / "trusted")
    prepare_spgispeech(corpus["root"], out, test_size=None, valid_size=1)
    assert trunc in {r["ID"] for r in manifests(out)["test"]}
    assert trunc not in skipped(out)


def test_seeded_subsets_and_train_cap(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"), with_level=False)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare_spgispeech(corpus["root"], a, test_size=2, valid_size=2, seed=7)
    prepare_spgispeech(corpus["root"], b, test_size=2, valid_size=2, seed=7)
    assert manifests(a) == manifests(b)

    # cap: 0.001 h = 3.6 s; every sample lasts 1.76-3.15 s, so exactly two fit the rule
    # "add until the cap is reached"
    c = str(tmp_path / "c")
    prepare_spgispeech(corpus["root"], c, test_size=2, valid_size=2, max_train_hours=0.001)
    got = manifests(c)
    assert len(got["train"]) == 2
    assert sum(float(r["duration"]) for r in got["train"]) >= 3.6
    assert not {r["ID"] for r in got["train"]} & {r["ID"] for r in got["valid"]}


def test_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        prepare_spgispeech(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError) as err:
        prepare_spgispeech(str(empty), str(tmp_path / "out"))
    message = str(err.value)
    assert str(empty) in message and "train.csv" in message and "val.csv" in message
    assert "wav_filename|wav_filesize|transcript" in message
    bad = tmp_path / "bad" / "spgispeech"
    bad.mkdir(parents=True)
    (bad / "train.csv").write_text("path,size,text\n")
    (bad / "val.csv").write_text("path,size,text\n")
    with pytest.raises(LayoutError, match="header"):
        prepare_spgispeech(str(tmp_path / "bad"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "train.csv").exists()


def test_skip_when_prepared_and_redo_on_new_options(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_spgispeech(corpus["root"], out, test_size=2, valid_size=2)
    files = [os.path.join(out, n) for n in ("train.csv", "valid.csv", "test.csv", "skipped.csv",
                                            "prep_options.json")]
    for f in files:
        os.utime(f, (1_000_000_000, 1_000_000_000))
    assert prepare_spgispeech(corpus["root"], out, test_size=2, valid_size=2) is None
    assert all(os.path.getmtime(f) == 1_000_000_000 for f in files)
    assert prepare_spgispeech(corpus["root"], out, test_size=3, valid_size=2) is not None
    assert all(os.path.getmtime(f) > 1_000_000_000 for f in files)
    assert len(manifests(out)["test"]) == 3


def test_loads_with_speechbrain(tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    corpus = make_spgispeech(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_spgispeech(corpus["root"], out, test_size=2, valid_size=2)
    for name in ("train", "valid", "test"):
        data = DynamicItemDataset.from_csv(os.path.join(out, name + ".csv"))
        data.set_output_keys(["id", "wav", "wrd", "duration", "spk_id"])
        rows = list(data)
        assert len(rows) == len(manifests(out)[name]) > 0
        assert all(os.path.isfile(r["wav"]) and r["duration"] > 0 for r in rows)
    # the project's loader reads every row (whole files: stop must not pass the last sample)
    from aode.data import read_audio_segment

    for row in read_manifest(os.path.join(out, "train.csv")):
        audio = read_audio_segment(row["wav"], row["start"], row["stop"])
        assert abs(len(audio) - float(row["duration"]) * 16000) <= 16


def test_utterance_id():
    assert utterance_id("13aa6c0669adb5544a0d62beef677189/75.wav") == \
        "spgi_13aa6c0669adb5544a0d62beef677189_75"


def test_command_line(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"))
    script = os.path.join(REPO, "data_prep", "spgispeech.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                               text=True, check=True).stdout
    for option in ("--data_folder", "--save_folder", "--test_size", "--valid_size",
                   "--max_train_hours", "--check_audio", "--seed"):
        assert option in help_text
    out = str(tmp_path / "out")
    run = subprocess.run([sys.executable, script, "--data_folder", corpus["root"],
                          "--save_folder", out, "--test_size", "2", "--valid_size", "1"],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "test.csv: 2 utterances" in run.stdout and "valid.csv: 1 utterances" in run.stdout
    assert "skipped 1: audio file missing" in run.stdout
    run = subprocess.run([sys.executable, script, "--data_folder", str(tmp_path / "nope"),
                          "--save_folder", out], capture_output=True, text=True)
    assert run.returncode == 2 and "does not exist" in run.stderr
