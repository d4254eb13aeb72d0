"""Noisy VCTK preparation on a miniature copy of the DataShare layout (48 kHz WAVs)."""

import os
import re

import pytest
from prep_fixtures_b import by_id
from prep_fixtures_b import check_exits_on_missing_data
from prep_fixtures_b import check_help
from prep_fixtures_b import check_manifest_rows
from prep_fixtures_b import check_skip_then_redo
from prep_fixtures_b import corpus_fixture
from prep_fixtures_b import layout_error
from prep_fixtures_b import load_with_speechbrain
from prep_fixtures_b import read_csv
from prep_fixtures_b import recorded_options
from prep_fixtures_b import run_script
from prep_fixtures_b import sentence
from prep_fixtures_b import truncate
from prep_fixtures_b import write_audio
from prep_fixtures_b import write_text

from aode.manifest import read_manifest
from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.common import LayoutError
from data_prep.noisy_vctk import default_valid_speakers
from data_prep.noisy_vctk import main
from data_prep.noisy_vctk import prepare_noisy_vctk

RATE = 48000


def _utterance(root, audio_dir, txt_dir, utt_id, index, text, expected, rate=RATE):
    wav = os.path.join(root, audio_dir, utt_id + ".wav")
    duration = write_audio(wav, index, rate)
    if text is not None:
        write_text(os.path.join(root, txt_dir, utt_id + ".txt"), text)
    expected[utt_id] = {
        "duration": duration,
        "wav": wav,
        "spk_id": utt_id.split("_")[0],
        "wrd_raw": " ".join(text.split()) if text else text,
    }
    return wav


def build_vctk(root, train_set="28spk", wav_suffix="", rate=RATE):
    """A miniature Noisy VCTK; returns {split: {ID: expected row}} for the noisy audio,
    the expected clean training rows, and the defects planted.

    ``wav_suffix="_16k"`` and ``rate=16000`` give SpeechBrain's resampled copy instead
    (``download_vctk`` in speechbrain recipes/Voicebank/voicebank_prepare.py: audio folders
    renamed ``*_wav_16k``, transcript folders unchanged)."""
    train_wav = f"noisy_trainset_{train_set}_wav{wav_suffix}"
    train_txt = f"trainset_{train_set}_txt"
    train, test, clean = {}, {}, {}
    texts = {
        "p225_001": "Please call Stella.",
        "p225_002": "You've got to mend the coat before you go out!",
        "p226_001": sentence(1),
        "p226_002": "  Ask her to bring these things\nwith her from the store.  ",
        "p287_001": sentence(3),
        "p227_001": "We\u2019re sure that one wore is enough.",
        # a "$" before a digit: SpeechBrain's CSV reader would take "$5" for a variable
        "p227_003": "It cost $5 million.",
    }
    clean_train = f"clean_trainset_{train_set}_wav{wav_suffix}"
    for i, (utt_id, text) in enumerate(texts.items()):
        _utterance(root, train_wav, train_txt, utt_id, i, text, train, rate)
        # clean originals: another recording, so that the durations tell them apart
        _utterance(root, clean_train, train_txt, utt_id, i + 5, text, clean, rate)
    # defects: a truncated wav, audio without transcript, transcript without audio, empty text
    truncated = _utterance(root, train_wav, train_txt, "p227_002", 6, sentence(6), {}, rate)
    truncate(truncated)
    _utterance(root, train_wav, train_txt, "p228_001", 7, None, {}, rate)
    write_text(os.path.join(root, train_txt, "p228_002.txt"), "Orphan transcript.")
    _utterance(root, train_wav, train_txt, "p225_003", 8, " . \n", {}, rate)
    for i, utt_id in enumerate(["p232_001", "p232_002", "p257_001"]):
        _utterance(root, f"noisy_testset_wav{wav_suffix}", "testset_txt", utt_id, i + 2, sentence(i + 2), test, rate)
        _utterance(root, f"clean_testset_wav{wav_suffix}", "testset_txt", utt_id, i + 2, sentence(i + 2), {}, rate)
    for rows in (train, test, clean):
        for row in rows.values():
            row["wrd"] = normalize_words(row["wrd_raw"])
    valid = {k: v for k, v in train.items() if v["spk_id"] in ("p226", "p287")}
    train = {k: v for k, v in train.items() if k not in valid}
    return {"train": train, "valid": valid, "test": test, "clean": clean}


def _manifest(save, split):
    """A split's rows through our own reader (it maps the escaped "$" back)."""
    return read_manifest(os.path.join(save, f"{split}.csv"))


def _speechbrain_text(text):
    """What SpeechBrain's reader returns for ``text``: "$" before a word character or dot is
    written as the fullwidth dollar U+FF04 so that the reader does not take it for a
    variable (aode/manifest.py)."""
    return re.sub(r"\$(?=[\w.])", "\uff04", text)


vctk = corpus_fixture(build_vctk, "DS_10283_2791")


def test_manifests_row_by_row(vctk):
    data, save, expected = vctk
    summary = prepare_noisy_vctk(data, save)
    for split in ("train", "valid", "test"):
        rows = read_manifest(os.path.join(save, f"{split}.csv"))
        check_manifest_rows(rows, expected[split])
        assert summary[f"{split}.csv"][0] == len(rows)
    rows = by_id(read_manifest(os.path.join(save, "train.csv")))
    assert rows["p225_002"]["wrd"] == "you've got to mend the coat before you go out"
    assert rows["p225_002"]["wrd_raw"] == "You've got to mend the coat before you go out!"
    assert rows["p227_001"]["wrd"] == "we're sure that one wore is enough"
    assert rows["p225_001"]["wrd_raw"] == "Please call Stella."
    valid = by_id(read_manifest(os.path.join(save, "valid.csv")))
    assert valid["p226_002"]["wrd_raw"] == "Ask her to bring these things with her from the store."
    speakers = {
        s: {r["spk_id"] for r in read_manifest(os.path.join(save, f"{s}.csv"))} for s in ("train", "valid", "test")
    }
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
        manifest_ids |= {r["ID"] for r in read_manifest(os.path.join(save, f"{split}.csv"))}
    assert not manifest_ids & set(skipped)


def test_clean_audio_option(vctk):
    data, save, expected = vctk
    prepare_noisy_vctk(data, save, audio="clean")
    rows = _manifest(save, "train") + _manifest(save, "valid")
    check_manifest_rows(rows, expected["clean"])
    assert all("clean_trainset_28spk_wav" in r["wav"] for r in rows)
    assert all("clean_testset_wav" in r["wav"] for r in _manifest(save, "test"))


def test_56spk_and_valid_speakers(tmp_path):
    root = str(tmp_path / "vctk")
    expected = build_vctk(root, train_set="56spk")
    save = str(tmp_path / "out")
    with pytest.raises(LayoutError, match="noisy_trainset_28spk_wav"):
        prepare_noisy_vctk(root, save)  # only the 56-speaker set is there
    prepare_noisy_vctk(root, save, train_set="56spk", valid_speakers=["p227"])
    valid = read_manifest(os.path.join(save, "valid.csv"))
    assert {r["spk_id"] for r in valid} == {"p227"}
    assert all("noisy_trainset_56spk_wav" in r["wav"] for r in valid)
    train = read_manifest(os.path.join(save, "train.csv"))
    assert {r["spk_id"] for r in train} == {"p225", "p226", "p287"}
    assert len(train) + len(valid) == len(expected["train"]) + len(expected["valid"])
    with pytest.raises(ValueError, match="p999"):
        prepare_noisy_vctk(root, str(tmp_path / "out2"), train_set="56spk", valid_speakers=["p999"])


def test_layout_errors(tmp_path):
    root = tmp_path / "partial"
    (root / "noisy_trainset_28spk_wav").mkdir(parents=True)
    (root / "trainset_28spk_txt").mkdir()
    (root / "noisy_testset_wav").mkdir()
    message = layout_error(prepare_noisy_vctk, root, tmp_path / "out", zipped="testset_txt.zip")
    assert "missing: testset_txt" in message
    with pytest.raises(ValueError, match="train_set"):
        prepare_noisy_vctk(str(root), str(tmp_path / "out"), train_set="11spk")


def test_skip_when_prepared_and_redo_when_options_change(vctk):
    data, save, _ = vctk
    check_skip_then_redo(prepare_noisy_vctk, data, save, valid_speakers=["p226"])
    assert {r["spk_id"] for r in read_manifest(os.path.join(save, "valid.csv"))} == {"p226"}


def test_manifests_load_in_speechbrain(vctk):
    data, save, expected = vctk
    prepare_noisy_vctk(data, save)
    for split in ("train", "valid", "test"):
        items = load_with_speechbrain(os.path.join(save, f"{split}.csv"))
        assert sorted(item["id"] for item in items) == sorted(expected[split])
        for item in items:
            assert item["wrd"] == expected[split][item["id"]]["wrd"]
            assert item["wrd_raw"] == _speechbrain_text(expected[split][item["id"]]["wrd_raw"])
            assert os.path.isfile(item["wav"])
    assert any(
        "\uff04" in item["wrd_raw"] for item in load_with_speechbrain(os.path.join(save, "train.csv"))
    )  # the "$5" row was read, not rejected


def test_command_line(vctk, capsys):
    data, save, expected = vctk
    main(["--data_folder", data, "--save_folder", save])
    out = capsys.readouterr().out
    assert f"train.csv: {len(expected['train'])} utterances" in out
    assert "skipped 1: audio without transcript" in out
    main(["--data_folder", data, "--save_folder", save])
    assert "already prepared" in capsys.readouterr().out
    check_exits_on_missing_data(main, data, save)


def test_runs_as_a_script():
    check_help("noisy_vctk", ("--train_set", "--audio", "--valid_speakers"))


# Speakers of the real 56-speaker set, as its transcript files name them (trainset_56spk_txt/
# p234_167.txt, p237_147.txt, p241_273.txt in a public mirror of DataShare 10283/2791); the
# set has none of the 28spk speakers, so the 28spk default p226/p287 cannot apply to it.
SPEAKERS_56 = ("p234", "p237", "p241")


def build_56spk(root):
    """A miniature 56-speaker set (two utterances per speaker) plus the test set."""
    expected = {}
    for i, speaker in enumerate(SPEAKERS_56):
        for n in (1, 2):
            utt_id = f"{speaker}_{n:03d}"
            _utterance(
                root, "noisy_trainset_56spk_wav", "trainset_56spk_txt", utt_id, 2 * i + n, sentence(2 * i + n), expected
            )
    for i, utt_id in enumerate(["p232_001", "p257_001"]):
        _utterance(root, "noisy_testset_wav", "testset_txt", utt_id, i, sentence(i), expected)
    for row in expected.values():
        row["wrd"] = normalize_words(row["wrd_raw"])
    return expected


def test_56spk_default_validation_speakers_come_from_the_set(tmp_path):
    root = str(tmp_path / "vctk56")
    expected = build_56spk(root)
    save = str(tmp_path / "out")
    prepare_noisy_vctk(root, save, train_set="56spk")  # raised ValueError (p226/p287 absent)
    rows = {s: _manifest(save, s) for s in ("train", "valid", "test")}
    check_manifest_rows(sum(rows.values(), []), expected)
    valid = {r["spk_id"] for r in rows["valid"]}
    train = {r["spk_id"] for r in rows["train"]}
    # 3 speakers x 2/28 rounds to 0: at least one is held out
    assert len(valid) == 1 and valid <= set(SPEAKERS_56)
    assert train == set(SPEAKERS_56) - valid
    assert {r["spk_id"] for r in rows["test"]} == {"p232", "p257"}
    options = recorded_options(save)
    assert options["seed"] == 1234 and options["valid_speakers"] == "seeded draw"
    for split in ("train", "valid", "test"):
        assert len(load_with_speechbrain(os.path.join(save, f"{split}.csv"))) == len(rows[split])
    # the seed decides the draw: the same seed, the same speakers; some seed, another one
    drawn = {}
    for seed in range(6):
        out = str(tmp_path / f"seed{seed}")
        prepare_noisy_vctk(root, out, train_set="56spk", seed=seed)
        drawn[seed] = {r["spk_id"] for r in _manifest(out, "valid")}
    assert len({frozenset(v) for v in drawn.values()}) > 1
    again = str(tmp_path / "again")
    prepare_noisy_vctk(root, again, train_set="56spk", seed=3)
    assert {r["spk_id"] for r in _manifest(again, "valid")} == drawn[3]


def test_default_valid_speakers():
    speakers = [f"p{n}" for n in range(300, 356)]  # 56 speakers
    chosen = default_valid_speakers(speakers, "56spk", seed=1234)
    assert len(chosen) == 4 and set(chosen) <= set(speakers)  # 56 x 2/28
    assert chosen == sorted(chosen) == default_valid_speakers(speakers[::-1], "56spk", 1234)
    assert len({tuple(default_valid_speakers(speakers, "56spk", s)) for s in range(5)}) > 1
    # the 28spk set keeps SpeechBrain's TRAIN_SPEAKERS[:2], whatever the seed
    assert default_valid_speakers(["p225", "p226", "p287"], "28spk", seed=7) == ["p226", "p287"]


def test_28spk_default_options_unchanged(vctk):
    """Preparations made before the seeded default stay valid: the 28spk options file is
    what the earlier version wrote, so the rerun is skipped as already done."""
    data, save, _ = vctk
    prepare_noisy_vctk(data, save)
    options = recorded_options(save)
    assert options == {
        "audio": "noisy",
        "corpus": "noisy_vctk",
        "data_folder": data,
        "format": 1,
        "train_set": "28spk",
        "valid_speakers": ["p226", "p287"],
    }
    assert prepare_noisy_vctk(data, save, valid_speakers=["p287", "p226"]) is None


def test_speechbrain_16k_layout(tmp_path):
    # speechbrain download_vctk(): everything inside noisy-vctk-16k/, audio in *_wav_16k
    root = str(tmp_path / "data")
    expected = build_vctk(os.path.join(root, "noisy-vctk-16k"), wav_suffix="_16k", rate=16000)
    save = str(tmp_path / "out")
    prepare_noisy_vctk(root, save)  # was a LayoutError (only the 48 kHz names were known)
    for split in ("train", "valid", "test"):
        check_manifest_rows(_manifest(save, split), expected[split])
        assert all("_wav_16k" in r["wav"] for r in _manifest(save, split))
    prepare_noisy_vctk(root, str(tmp_path / "clean"), audio="clean")
    rows = _manifest(str(tmp_path / "clean"), "train") + _manifest(str(tmp_path / "clean"), "valid")
    check_manifest_rows(rows, expected["clean"])
    assert all("clean_trainset_28spk_wav_16k" in r["wav"] for r in rows)


def test_48k_originals_preferred_over_16k_copies(tmp_path):
    root = str(tmp_path / "data")
    build_vctk(os.path.join(root, "noisy-vctk-16k"), wav_suffix="_16k", rate=16000)
    expected = build_vctk(os.path.join(root, "DS_10283_2791"))
    save = str(tmp_path / "out")
    prepare_noisy_vctk(root, save)
    check_manifest_rows(_manifest(save, "train"), expected["train"])
    assert not any("_16k" in r["wav"] for r in _manifest(save, "train"))


def test_audio_both(vctk):
    data, save, expected = vctk
    prepare_noisy_vctk(data, save, audio="both")
    rows = {s: _manifest(save, s) for s in ("train", "valid", "test")}
    train_valid = by_id(rows["train"] + rows["valid"])
    noisy = {**expected["train"], **expected["valid"]}
    assert set(train_valid) == ({f"{k}_noisy" for k in noisy} | {f"{k}_clean" for k in expected["clean"]})
    for utt_id, row in noisy.items():
        assert os.path.samefile(train_valid[f"{utt_id}_noisy"]["wav"], row["wav"])
    for utt_id, row in expected["clean"].items():
        assert os.path.samefile(train_valid[f"{utt_id}_clean"]["wav"], row["wav"])
        assert train_valid[f"{utt_id}_clean"]["spk_id"] == row["spk_id"]
    # the hours add up: noisy + clean
    hours = sum(float(r["duration"]) for r in train_valid.values())
    assert abs(hours - sum(r["duration"] for r in [*noisy.values(), *expected["clean"].values()])) < 0.05
    assert {r["spk_id"] for r in rows["valid"]} == {"p226", "p287"}
    assert {r["ID"] for r in rows["test"]} == {f"{k}_{kind}" for k in expected["test"] for kind in ("noisy", "clean")}
    skipped = read_csv(os.path.join(save, "skipped.csv"))
    assert {r["ID"] for r in skipped} >= {"p228_001_noisy", "p228_002_noisy", "p228_002_clean"}
    for split in rows:
        items = load_with_speechbrain(os.path.join(save, f"{split}.csv"))
        assert sorted(i["id"] for i in items) == sorted(r["ID"] for r in rows[split])


def test_unreadable_transcript_is_skipped_and_logged(vctk):
    """A .txt that cannot be read goes to skipped.csv like unreadable audio. Tests run as
    root, where chmod 000 does not block reading, so the unreadable "file" is a directory
    named p225_004.txt: open() raises IsADirectoryError, an OSError like EACCES."""
    data, save, expected = vctk
    write_audio(os.path.join(data, "noisy_trainset_28spk_wav", "p225_004.wav"), 4, RATE)
    os.makedirs(os.path.join(data, "trainset_28spk_txt", "p225_004.txt"))
    prepare_noisy_vctk(data, save)  # was an uncaught error
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert skipped["p225_004"]["reason"].startswith("unreadable transcript (")
    assert skipped["p225_004"]["file"].endswith(os.path.join("trainset_28spk_txt", "p225_004.txt"))
    check_manifest_rows(_manifest(save, "train"), expected["train"])


def test_broken_layout_fails_clearly_and_rerun_works(vctk):
    data, save, expected = vctk
    txt = os.path.join(data, "testset_txt")
    os.rename(txt, txt + "_done")
    open(txt + ".zip", "wb").close()  # the transcripts zip, not extracted
    with pytest.raises(LayoutError, match=r"missing: testset_txt\).*unzip testset_txt\.zip"):
        prepare_noisy_vctk(data, save)
    os.makedirs(txt)  # extraction started but wrote nothing (e.g. the disk was full)
    with pytest.raises(EmptyPreparationError) as err:
        prepare_noisy_vctk(data, save)
    message = str(err.value)
    assert "test.csv came out empty" in message and "audio without transcript" in message
    assert "Likely cause: a transcript folder" in message
    assert not os.path.exists(os.path.join(save, "prep_options.json"))
    assert not os.path.exists(os.path.join(save, "test.csv"))
    os.rmdir(txt)
    os.rename(txt + "_done", txt)  # fixed: the rerun does the work
    assert prepare_noisy_vctk(data, save) is not None
    check_manifest_rows(_manifest(save, "test"), expected["test"])


def test_zip_unpacked_into_its_own_name_and_macos_folders(tmp_path):
    # `unzip trainset_28spk_txt.zip -d trainset_28spk_txt` nests the folder in itself; a Mac
    # archiver adds __MACOSX/<folder>/._<file> copies that are not transcripts
    root = tmp_path / "vctk"
    expected = build_vctk(str(root))
    txt = root / "trainset_28spk_txt"
    os.rename(txt, tmp_path / "moved")
    txt.mkdir()
    os.rename(tmp_path / "moved", txt / "trainset_28spk_txt")
    macos = tmp_path / "__MACOSX" / "trainset_28spk_txt"
    macos.mkdir(parents=True)
    (macos / "._p225_001.txt").write_bytes(b"\x00\x05\x16\x07")
    save = str(tmp_path / "out")
    prepare_noisy_vctk(str(tmp_path), save)
    for split in ("train", "valid", "test"):
        check_manifest_rows(_manifest(save, split), expected[split])


def test_command_line_subprocess_56spk(tmp_path):
    root = str(tmp_path / "vctk56")
    expected = build_56spk(root)
    save = str(tmp_path / "out")
    command = ["--data_folder", root, "--save_folder", save, "--train_set", "56spk", "--seed", "5"]
    result = run_script("noisy_vctk", *command, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {s: _manifest(save, s) for s in ("train", "valid", "test")}
    assert f"train.csv: {len(rows['train'])} utterances" in result.stdout
    assert "test.csv: 2 utterances" in result.stdout
    check_manifest_rows(sum(rows.values(), []), expected)
    assert {r["spk_id"] for r in rows["valid"]} <= set(SPEAKERS_56)
    again = run_script("noisy_vctk", *command, timeout=120)
    assert again.returncode == 0 and "already prepared" in again.stdout
    # the default 28spk set is not there: exit status 2 and one line that names it
    broken = run_script("noisy_vctk", *command[:4], timeout=120)
    assert broken.returncode == 2
    assert broken.stderr.startswith("error: Noisy VCTK layout not found")
    assert "noisy_trainset_28spk_wav" in broken.stderr and "Traceback" not in broken.stderr
