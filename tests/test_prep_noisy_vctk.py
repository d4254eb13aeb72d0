"""Noisy VCTK preparation on a miniature copy of the DataShare layout (48 kHz WAVs)."""

import json
import os
import subprocess
import sys

import pytest
from prep_fixtures_b import (
    by_id,
    check_manifest_rows,
    load_with_speechbrain,
    read_csv,
    sentence,
    stamps,
    truncate,
    write_audio,
    write_text,
)

from aode.text import normalize_words
from data_prep.common import LayoutError
from data_prep.noisy_vctk import main, prepare_noisy_vctk

RATE = 48000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _utterance(root, audio_dir, txt_dir, utt_id, index, text, expected, audio="noisy"):
    wav = os.path.join(root, audio_dir, utt_id + ".wav")
    duration = write_audio(wav, index, RATE)
    if text is not None:
        write_text(os.path.join(root, txt_dir, utt_id + ".txt"), text)
    expected[utt_id] = {
        "duration": duration, "wav": wav, "spk_id": utt_id.split("_")[0],
        "wrd_raw": " ".join(text.split()) if text else text,
    }
    return wav


def build_vctk(root, train_set="28spk"):
    """A miniature Noisy VCTK; returns {split: {ID: expected row}} for the noisy audio,
    the expected clean training rows, and the defects planted."""
    train_wav = f"noisy_trainset_{train_set}_wav"
    train_txt = f"trainset_{train_set}_txt"
    train, test, clean = {}, {}, {}
    texts = {
        "p225_001": "Please call Stella.",
        "p225_002": "You've got to mend the coat before you go out!",
        "p226_001": sentence(1),
        "p226_002": "  Ask her to bring these things\nwith her from the store.  ",
        "p287_001": sentence(3),
        "p227_001": "We\u2019re sure that one wore is enough.",
    }
    for i, (utt_id, text) in enumerate(texts.items()):
        _utterance(root, train_wav, train_txt, utt_id, i, text, train)
        # clean originals: another recording, so that the durations tell them apart
        _utterance(root, f"clean_trainset_{train_set}_wav", train_txt, utt_id, i + 5, text, clean)
    # defects: a truncated wav, audio without transcript, transcript without audio, empty text
    truncated = _utterance(root, train_wav, train_txt, "p227_002", 6, sentence(6), {})
    truncate(truncated)
    _utterance(root, train_wav, train_txt, "p228_001", 7, None, {})
    write_text(os.path.join(root, train_txt, "p228_002.txt"), "Orphan transcript.")
    _utterance(root, train_wav, train_txt, "p225_003", 8, " . \n", {})
    for i, utt_id in enumerate(["p232_001", "p232_002", "p257_001"]):
        _utterance(root, "noisy_testset_wav", "testset_txt", utt_id, i + 2, sentence(i + 2), test)
        _utterance(root, "clean_testset_wav", "testset_txt", utt_id, i + 2, sentence(i + 2), {})
    for rows in (train, test, clean):
        for row in rows.values():
            row["wrd"] = normalize_words(row["wrd_raw"])
    valid = {k: v for k, v in train.items() if v["spk_id"] in ("p226", "p287")}
    train = {k: v for k, v in train.items() if k not in valid}
    return {"train": train, "valid": valid, "test": test, "clean": clean}


@pytest.fixture
def vctk(tmp_path):
    root = tmp_path / "DS_10283_2791"
    expected = build_vctk(str(root))
    return str(root), str(tmp_path / "prepared"), expected


def test_manifests_row_by_row(vctk):
    data, save, expected = vctk
    summary = prepare_noisy_vctk(data, save)
    for split in ("train", "valid", "test"):
        rows = read_csv(os.path.join(save, f"{split}.csv"))
        check_manifest_rows(rows, expected[split])
        assert summary[f"{split}.csv"][0] == len(rows)
    rows = by_id(read_csv(os.path.join(save, "train.csv")))
    assert rows["p225_002"]["wrd"] == "you've got to mend the coat before you go out"
    assert rows["p225_002"]["wrd_raw"] == "You've got to mend the coat before you go out!"
    assert rows["p227_001"]["wrd"] == "we're sure that one wore is enough"
    assert rows["p225_001"]["wrd_raw"] == "Please call Stella."
    valid = by_id(read_csv(os.path.join(save, "valid.csv")))
    assert valid["p226_002"]["wrd_raw"] == "Ask her to bring these things with her from the store."
    speakers = {s: {r["spk_id"] for r in read_csv(os.path.join(save, f"{s}.csv"))}
                for s in ("train", "valid", "test")}
    assert speakers["valid"] == {"p226", "p287"}
    assert speakers["test"] == {"p232", "p257"}
    assert speakers["train"] == {"p225", "p227"}


def test_defects_are_skipped_with_reasons(vctk):
    data, save, _ = vctk
    prepare_noisy_vctk(data, save)
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert set(skipped) == {"p227_002", "p228_001", "p228_002", "p225_003"}
    assert skipped["p227_002"]["reason"].startswith("unreadable audio (truncated")
    assert skipped["p228_001"]["reason"] == "audio without transcript"
    assert skipped["p228_001"]["file"].endswith("p228_001.wav")
    assert skipped["p228_002"]["reason"] == "transcript without audio"
    assert skipped["p228_002"]["file"].endswith("p228_002.txt")
    assert skipped["p225_003"]["reason"] == "empty text after cleaning"
    manifest_ids = set()
    for split in ("train", "valid", "test"):
        manifest_ids |= {r["ID"] for r in read_csv(os.path.join(save, f"{split}.csv"))}
    assert not manifest_ids & set(skipped)


def test_clean_audio_option(vctk):
    data, save, expected = vctk
    prepare_noisy_vctk(data, save, audio="clean")
    rows = read_csv(os.path.join(save, "train.csv")) + read_csv(os.path.join(save, "valid.csv"))
    check_manifest_rows(rows, expected["clean"])
    assert all("clean_trainset_28spk_wav" in r["wav"] for r in rows)
    assert all("clean_testset_wav" in r["wav"] for r in read_csv(os.path.join(save, "test.csv")))


def test_56spk_and_valid_speakers(tmp_path):
    root = str(tmp_path / "vctk")
    expected = build_vctk(root, train_set="56spk")
    save = str(tmp_path / "out")
    with pytest.raises(LayoutError, match="noisy_trainset_28spk_wav"):
        prepare_noisy_vctk(root, save)  # only the 56-speaker set is there
    prepare_noisy_vctk(root, save, train_set="56spk", valid_speakers=["p227"])
    valid = read_csv(os.path.join(save, "valid.csv"))
    assert {r["spk_id"] for r in valid} == {"p227"}
    assert all("noisy_trainset_56spk_wav" in r["wav"] for r in valid)
    train = read_csv(os.path.join(save, "train.csv"))
    assert {r["spk_id"] for r in train} == {"p225", "p226", "p287"}
    assert len(train) + len(valid) == len(expected["train"]) + len(expected["valid"])
    with pytest.raises(ValueError, match="p999"):
        prepare_noisy_vctk(root, str(tmp_path / "out2"), train_set="56spk",
                           valid_speakers=["p999"])


def test_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        prepare_noisy_vctk(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    root = tmp_path / "partial"
    (root / "noisy_trainset_28spk_wav").mkdir(parents=True)
    (root / "trainset_28spk_txt").mkdir()
    (root / "noisy_testset_wav").mkdir()
    (root / "testset_txt.zip").write_bytes(b"PK")
    with pytest.raises(LayoutError) as err:
        prepare_noisy_vctk(str(root), str(tmp_path / "out"))
    message = str(err.value)
    assert "missing: testset_txt" in message
    assert str(root) in message
    assert "unzip testset_txt.zip" in message
    assert not os.path.exists(tmp_path / "out" / "train.csv")
    with pytest.raises(ValueError, match="train_set"):
        prepare_noisy_vctk(str(root), str(tmp_path / "out"), train_set="11spk")


def test_skip_when_prepared_and_redo_when_options_change(vctk):
    data, save, _ = vctk
    assert prepare_noisy_vctk(data, save) is not None
    before = stamps(save)
    assert prepare_noisy_vctk(data, save) is None
    assert stamps(save) == before
    prepare_noisy_vctk(data, save, valid_speakers=["p226"])
    after = stamps(save)
    for name in before:
        assert after[name] != before[name], name
    with open(os.path.join(save, "prep_options.json")) as f:
        assert json.load(f)["valid_speakers"] == ["p226"]
    assert {r["spk_id"] for r in read_csv(os.path.join(save, "valid.csv"))} == {"p226"}


def test_manifests_load_in_speechbrain(vctk):
    data, save, expected = vctk
    prepare_noisy_vctk(data, save)
    for split in ("train", "valid", "test"):
        items = load_with_speechbrain(os.path.join(save, f"{split}.csv"))
        assert sorted(item["id"] for item in items) == sorted(expected[split])
        for item in items:
            assert item["wrd"] == expected[split][item["id"]]["wrd"]
            assert os.path.isfile(item["wav"])


def test_command_line(vctk, capsys):
    data, save, expected = vctk
    main(["--data_folder", data, "--save_folder", save])
    out = capsys.readouterr().out
    assert f"train.csv: {len(expected['train'])} utterances" in out
    assert "skipped 1: audio without transcript" in out
    main(["--data_folder", data, "--save_folder", save])
    assert "already prepared" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--data_folder", data + "_missing", "--save_folder", save + "2"])
    assert exit_.value.code == 2


def test_runs_as_a_script():
    result = subprocess.run([sys.executable, "data_prep/noisy_vctk.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--data_folder", "--save_folder", "--train_set", "--audio", "--valid_speakers"):
        assert option in result.stdout
