"""SPGISpeech preparation on a miniature copy of the real layout (16 kHz WAVs, "|" CSVs)."""

import csv
import os
import shutil
import unicodedata

import numpy as np
import pytest
from prep_fixtures_a import make_spgispeech
from prep_fixtures_a import write_wav
from prep_fixtures_b import check_help
from prep_fixtures_b import load_with_speechbrain
from prep_fixtures_b import run_script

import data_prep.spgispeech as spgispeech
from aode.manifest import MANIFEST_COLUMNS
from aode.manifest import read_manifest
from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.common import LayoutError
from data_prep.spgispeech import prepare_spgispeech
from data_prep.spgispeech import utterance_id

CLI_SIZES = ("--test_size", "2", "--valid_size", "1")  # the split sizes the command-line tests give


def manifests(folder):
    return {name: read_manifest(os.path.join(folder, name + ".csv")) for name in ("train", "valid", "test")}


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
    files = [os.path.join(out, n) for n in ("train.csv", "valid.csv", "test.csv", "skipped.csv", "prep_options.json")]
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
    assert utterance_id("13aa6c0669adb5544a0d62beef677189/75.wav") == "spgi_13aa6c0669adb5544a0d62beef677189_75"


def test_command_line(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"))
    check_help("spgispeech", ("--test_size", "--valid_size", "--max_train_hours", "--check_audio", "--seed"))
    out = str(tmp_path / "out")
    run = run_script("spgispeech", "--data_folder", corpus["root"], "--save_folder", out, *CLI_SIZES, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "test.csv: 2 utterances" in run.stdout and "valid.csv: 1 utterances" in run.stdout
    assert "skipped 1: audio file missing" in run.stdout
    run = run_script("spgispeech", "--data_folder", str(tmp_path / "nope"), "--save_folder", out)
    assert run.returncode == 2 and "does not exist" in run.stderr


# Where each public recipe expects the corpus (see the module docstring):
# Kensho's download (lhotse recipes/spgispeech.py; ESPnet egs3/spgispeech builder.py
# "<source_root>/train.csv, val.csv, spgispeech/train/<hash>/<n>.wav"), data_folder at the
# CSVs' level or at spgispeech/; and the one-folder layout (icefall, ESPnet egs2), with or
# without a spgispeech/ level above it.
LAYOUTS = {
    "kensho, data_folder = CSV folder": (dict(kensho=True), "."),
    "kensho, data_folder = spgispeech/": (dict(kensho=True), "spgispeech"),
    "one folder named spgispeech/, data_folder = its parent": (dict(with_level=True), "."),
    "one folder named spgispeech/, data_folder = it": (dict(with_level=True), "spgispeech"),
    "one folder, no spgispeech/ level": (dict(with_level=False), "."),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_gives_every_utterance(tmp_path, layout):
    kwargs, level = LAYOUTS[layout]
    corpus = make_spgispeech(str(tmp_path / "data"), **kwargs)
    out = str(tmp_path / "out")
    summary = prepare_spgispeech(os.path.join(corpus["root"], level), out, test_size=None, valid_size=2)
    got = manifests(out)
    good = corpus["good"]
    assert {r["ID"] for r in got["test"]} == set(good["val"]) | {good["truncated"]["ID"]}
    assert {r["ID"] for r in got["valid"] + got["train"]} == set(good["train"])
    for row in got["valid"] + got["train"]:
        check_row(row, good["train"][row["ID"]])
    assert {row["reason"] for row in skipped(out).values()} == {"audio file missing", "empty transcript"}
    assert summary["train.csv"][0] == len(good["train"]) - 2


def test_csvs_without_audio_folder_is_a_clear_error(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"), kensho=True)
    shutil.rmtree(corpus["audio_dir"])  # the audio archive not unpacked
    out = tmp_path / "out"
    with pytest.raises(LayoutError) as err:
        prepare_spgispeech(corpus["root"], str(out))
    message = str(err.value)
    assert "no audio" in message and corpus["csv_dir"] in message
    assert os.path.join(corpus["csv_dir"], "spgispeech") in message
    assert "train/ and val/" in message and "layouts accepted" in message
    assert "\n" not in message
    assert not (out / "prep_options.json").exists() and not (out / "train.csv").exists()


def write_listing(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("wav_filename|wav_filesize|transcript\n")
        f.writelines(f"{name}|{size}|{text}\n" for name, size, text in rows)


def test_audio_not_where_the_csv_says_fails_after_100_rows(tmp_path, monkeypatch):
    # the audio folders exist but hold other files than those listed (e.g. a different
    # release): 1000 val rows, none found; the prep must not check all of them
    corpus = make_spgispeech(str(tmp_path / "data"), kensho=True)
    write_listing(
        os.path.join(corpus["csv_dir"], "val.csv"),
        [(f"{i:032x}/{i}.wav", 160044, f"Revenue was ${i} million.") for i in range(1000)],
    )
    checked = []
    real_check = spgispeech._check
    monkeypatch.setattr(spgispeech, "_check", lambda *a: checked.append(a) or real_check(*a))
    out = tmp_path / "out"
    with pytest.raises(LayoutError) as err:
        prepare_spgispeech(corpus["root"], str(out), test_size=2000)
    assert len(checked) == 100
    message = str(err.value)
    assert "first 100 rows" in message and "val.csv" in message
    assert os.path.join(corpus["audio_dir"], "val") in message
    assert "layouts accepted" in message and "\n" not in message
    assert not (out / "prep_options.json").exists() and not (out / "test.csv").exists()


def test_lost_audio_is_refused_with_its_likely_cause_then_redone(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"), kensho=True)
    out = tmp_path / "out"
    prepare_spgispeech(corpus["root"], str(out), test_size=1, valid_size=2)  # marked prepared

    # most of train's audio gone (6 of its 8 good files): 7 of 10 items lost to missing audio
    kept_aside = tmp_path / "aside"
    kept_aside.mkdir()
    for n, uid in enumerate(sorted(corpus["good"]["train"])[:6]):
        shutil.move(corpus["good"]["train"][uid]["wav"], kept_aside / f"{n}.wav")
    with pytest.raises(EmptyPreparationError) as err:
        prepare_spgispeech(corpus["root"], str(out), test_size=1, valid_size=1)
    message = str(err.value)
    assert "7 of 10" in message and "audio file missing" in message
    assert "Likely cause: the audio is not where train.csv/val.csv say" in message
    assert os.path.join(corpus["audio_dir"], "train") in message
    assert not (out / "prep_options.json").exists()
    assert sum(r["reason"] == "audio file missing" for r in skipped(str(out)).values()) == 7

    # every val file gone: test comes out empty
    shutil.rmtree(os.path.join(corpus["audio_dir"], "val"))
    os.makedirs(os.path.join(corpus["audio_dir"], "val"))
    with pytest.raises(EmptyPreparationError, match="test.csv came out empty"):
        prepare_spgispeech(corpus["root"], str(out), test_size=1, valid_size=1)

    # the data fixed, the same options: the rerun does the work
    corpus = make_spgispeech(str(tmp_path / "data"), kensho=True)
    summary = prepare_spgispeech(corpus["root"], str(out), test_size=1, valid_size=1)
    assert summary is not None and summary["train.csv"][0] == len(corpus["good"]["train"]) - 1
    assert (out / "prep_options.json").exists()


def test_skip_reasons_are_generic(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"))
    train_dir = os.path.join(corpus["audio_dir"], "train")
    listing = os.path.join(corpus["csv_dir"], "train.csv")
    with open(listing, encoding="utf-8") as f:
        first_good = f.readlines()[1]
    for n in (1, 2):
        path = os.path.join(train_dir, "cafe0000cafe0000cafe0000cafe0000", f"{n}.wav")
        write_wav(path, np.zeros(16000, dtype="float32"), 16000)
    with open(listing, "a", encoding="utf-8") as f:
        f.write(
            "cafe0000cafe0000cafe0000cafe0000/1.wav|abc|A bad size.\n"
            "cafe0000cafe0000cafe0000cafe0000/2.wav|44|A header-only size.\n"
            "cafe0000cafe0000cafe0000cafe0000/3.flac|9999|Not a wav.\n" + first_good
        )
    out = str(tmp_path / "out")
    prepare_spgispeech(corpus["root"], out, test_size=None, valid_size=1, check_audio=False)
    reasons = {row["reason"] for row in skipped(out).values()}
    assert reasons == {
        "audio file missing",
        "empty transcript",
        "bad wav_filesize",
        "wav_filesize holds no audio",
        "wav_filename is not a .wav",
        "duplicate wav_filename",
    }
    got = manifests(out)
    assert {r["ID"] for r in got["valid"] + got["train"]} == set(corpus["good"]["train"])

    out = str(tmp_path / "checked")
    prepare_spgispeech(corpus["root"], out, test_size=None, valid_size=1, check_audio=True)
    assert skipped(out)[corpus["good"]["truncated"]["ID"]]["reason"] == "unreadable audio"


def test_dollar_amounts_survive_both_csv_readers(tmp_path):
    from speechbrain.dataio.dataio import load_data_csv

    corpus = make_spgispeech(str(tmp_path / "data"), kensho=True)
    out = str(tmp_path / "out")
    prepare_spgispeech(corpus["root"], out, test_size=None, valid_size=2)
    texts = {**corpus["good"]["train"], **corpus["good"]["val"]}
    dollars = 0
    for name in ("train", "valid", "test"):
        path = os.path.join(out, name + ".csv")
        ours = {row["ID"]: row for row in read_manifest(path)}
        for uid, row in ours.items():
            if uid in texts:  # ours gives the corpus's text back, "$" included
                assert row["wrd_raw"] == texts[uid]["text"]
                dollars += "$5 million" in row["wrd_raw"] or "$0.25 a share" in row["wrd_raw"]
        # SpeechBrain's reader (it raised KeyError on "$5") loads every row; its text is the
        # same up to Unicode compatibility normalisation (what Whisper's normaliser applies)
        theirs = load_data_csv(path)
        assert set(theirs) == set(ours)
        for uid, row in theirs.items():
            assert unicodedata.normalize("NFKC", row["wrd_raw"]) == ours[uid]["wrd_raw"]
        assert len(load_with_speechbrain(path)) == len(ours)
    assert dollars == len(texts)


def test_command_line_on_kenshos_layout(tmp_path):
    corpus = make_spgispeech(str(tmp_path / "data"), kensho=True)
    out = str(tmp_path / "out")
    run = run_script("spgispeech", "--data_folder", corpus["root"], "--save_folder", out, *CLI_SIZES, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    train = len(corpus["good"]["train"]) - 1
    for line in (
        "test.csv: 2 utterances",
        "valid.csv: 1 utterances",
        f"train.csv: {train} utterances",
        "skipped 1: audio file missing",
        "skipped 1: empty transcript",
    ):
        assert line in run.stdout

    # the audio archive not unpacked: exit 2, one line that says so
    shutil.rmtree(corpus["audio_dir"])
    run = run_script(
        "spgispeech", "--data_folder", corpus["root"], "--save_folder", str(tmp_path / "out2"), cwd=str(tmp_path)
    )
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == run.stderr.strip().splitlines()[-1]
    assert "no audio" in errors[0] and corpus["csv_dir"] in errors[0]
