"""JL Corpus preparation on a miniature copy of the Kaggle layout (44.1 kHz WAV + TXT)."""

import builtins
import errno
import filecmp
import os

import pytest
from prep_fixtures_b import SPLITS
from prep_fixtures_b import by_id
from prep_fixtures_b import check_exits_on_missing_data
from prep_fixtures_b import check_help
from prep_fixtures_b import check_manifest_rows
from prep_fixtures_b import check_prepared
from prep_fixtures_b import check_skip_then_redo
from prep_fixtures_b import corpus_fixture
from prep_fixtures_b import layout_error
from prep_fixtures_b import load_with_speechbrain
from prep_fixtures_b import read_csv
from prep_fixtures_b import recorded_options
from prep_fixtures_b import rows_by_split
from prep_fixtures_b import run_script
from prep_fixtures_b import truncate
from prep_fixtures_b import write_audio
from prep_fixtures_b import write_text

import data_prep.common
from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.jl_corpus import RAW_DIR
from data_prep.jl_corpus import WAV_TXT_DIR
from data_prep.jl_corpus import main
from data_prep.jl_corpus import parse_stem
from data_prep.jl_corpus import prepare_jl_corpus

RATE = 44100
SENTENCES = {
    "1": "Carl leaps into a jeep.",
    "2": "You've got to be kidding!",
    "3": "The child almost hurt the small dog.",
    "4": "Sunday is the best part of the week.",
    "5": "What joy there is in living.",
}
EMOTIONS = ["angry", "sad", "neutral", "happy", "excited"]


def build_jl(root, folder=None):
    """Write 4 speakers x 5 utterances, plus defects; returns the expected rows by ID."""
    folder = folder or os.path.join(root, RAW_DIR, WAV_TXT_DIR)
    expected = {}
    i = 0
    for speaker in ("female1", "female2", "male1", "male2"):
        for n, emotion in zip(SENTENCES, EMOTIONS):
            stem = f"{speaker}_{emotion}_{n}{'ab'[i % 2]}_{1 + i % 2}"
            wav = os.path.join(folder, stem + ".wav")
            duration = write_audio(wav, i, RATE)
            text = SENTENCES[n]
            write_text(os.path.join(folder, stem + ".txt"), text + ("\n" if i % 3 else ""))
            expected[stem] = {
                "duration": duration,
                "wav": wav,
                "spk_id": speaker,
                "wrd_raw": text,
                "wrd": normalize_words(text),
                "extra": {"emotion": emotion},
            }
            i += 1
    # a hand-edited transcript in cp1252 with a curly apostrophe
    stem = "male2_apologetic_6a_1"
    wav = os.path.join(folder, stem + ".wav")
    duration = write_audio(wav, 5, RATE)
    write_text(os.path.join(folder, stem + ".txt"), "We\u2019ll be right there.", "cp1252")
    expected[stem] = {
        "duration": duration,
        "wav": wav,
        "spk_id": "male2",
        "wrd_raw": "We\u2019ll be right there.",
        "wrd": "we'll be right there",
        "extra": {"emotion": "apologetic"},
    }
    # defects
    write_audio(os.path.join(folder, "female1_sad_7a_1.wav"), 1, RATE)
    write_text(os.path.join(folder, "female1_sad_7a_1.txt"), "Carl leaps into a jeep.")
    truncate(os.path.join(folder, "female1_sad_7a_1.wav"))
    write_audio(os.path.join(folder, "female2_happy_8b_2.wav"), 2, RATE)  # no transcript
    write_text(os.path.join(folder, "male1_anxious_9a_1.txt"), "No audio here.")
    write_audio(os.path.join(folder, "male1_concerned_3b_2.wav"), 3, RATE)
    write_text(os.path.join(folder, "male1_concerned_3b_2.txt"), "\n")
    write_audio(os.path.join(folder, "recording_001.wav"), 4, RATE)
    write_text(os.path.join(folder, "readme.txt"), "Notes, not a transcript.")
    return expected


SKIPPED = {
    "female1_sad_7a_1": "unreadable audio (truncated",
    "female2_happy_8b_2": "audio without transcript",
    "male1_anxious_9a_1": "transcript without audio",
    "male1_concerned_3b_2": "empty text after cleaning",
    "recording_001": "file name is not <(fe)male><n>_<emotion>",
}


jl = corpus_fixture(build_jl, "jl-corpus")


def test_manifests_row_by_row(jl):
    data, save, expected = jl
    summary = prepare_jl_corpus(data, save)
    rows = check_prepared(save, expected)
    # 21 utterances: 10 % -> 2 valid, 2 test, utterance-level
    assert [len(rows[s]) for s in SPLITS] == [17, 2, 2]
    for s in SPLITS:
        assert summary[f"{s}.csv"][0] == len(rows[s])
    with open(os.path.join(save, "train.csv"), encoding="utf-8") as f:
        assert f.readline().strip().split(",")[-1] == "emotion"
    all_rows = by_id(sum(rows.values(), []))
    you_ve = [r for r in all_rows.values() if r["wrd_raw"] == "You've got to be kidding!"]
    assert you_ve and all(r["wrd"] == "you've got to be kidding" for r in you_ve)
    assert all_rows["female1_angry_1a_1"]["emotion"] == "angry"


def test_defects_are_skipped_with_reasons(jl):
    data, save, expected = jl
    prepare_jl_corpus(data, save)
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert set(skipped) == set(SKIPPED)  # readme.txt is not an utterance: ignored
    for utt_id, reason in SKIPPED.items():
        assert skipped[utt_id]["reason"].startswith(reason), utt_id
    assert skipped["male1_anxious_9a_1"]["file"].endswith("male1_anxious_9a_1.txt")
    ids = {r["ID"] for rows in rows_by_split(save).values() for r in rows}
    assert ids == set(expected)


def test_speaker_split(jl):
    data, save, expected = jl
    prepare_jl_corpus(data, save, split_by="speaker")
    rows = check_prepared(save, expected)
    speakers = {s: {r["spk_id"] for r in rows[s]} for s in SPLITS}
    assert [len(speakers[s]) for s in SPLITS] == [2, 1, 1]
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    with pytest.raises(ValueError, match="split_by"):
        prepare_jl_corpus(data, save, split_by="emotion")


def test_canonical_folder_preferred_over_other_copies(jl):
    data, save, expected = jl
    # another copy elsewhere in the download (e.g. an annotated version): not read
    write_audio(os.path.join(data, "Other", "female1_angry_1a_1.wav"), 9, RATE)
    write_text(os.path.join(data, "Other", "female1_angry_1a_1.txt"), "Something else.")
    prepare_jl_corpus(data, save)
    rows = sum(rows_by_split(save).values(), [])
    check_manifest_rows(rows, expected)
    assert all(f"{os.sep}{WAV_TXT_DIR}{os.sep}" in r["wav"] for r in rows)


def test_files_found_anywhere_without_the_canonical_folder(tmp_path):
    root = str(tmp_path / "mine")
    expected = build_jl(root, folder=os.path.join(root, "a", "b"))
    write_audio(os.path.join(root, "c", "female1_angry_1a_1.wav"), 9, RATE)  # a second copy
    save = str(tmp_path / "out")
    prepare_jl_corpus(root, save)
    check_prepared(save, expected)
    skipped = read_csv(os.path.join(save, "skipped.csv"))
    dup = [r for r in skipped if r["ID"] == "female1_angry_1a_1"]
    assert len(dup) == 1 and dup[0]["reason"].startswith("duplicate of ")
    # the JL(wav+txt) folder itself works as data_folder too
    save2 = str(tmp_path / "out2")
    root2 = str(tmp_path / "jl2")
    expected2 = build_jl(root2)
    prepare_jl_corpus(os.path.join(root2, RAW_DIR, WAV_TXT_DIR), save2)
    check_prepared(save2, expected2)


def test_layout_errors(tmp_path):
    message = layout_error(prepare_jl_corpus, tmp_path / "download", tmp_path / "out", zipped="jl-corpus.zip")
    assert f"{RAW_DIR}/{WAV_TXT_DIR}/<stem>.wav" in message


def test_same_seed_same_split_and_seed_matters(jl, tmp_path):
    data, _, _ = jl
    tests = set()
    for seed in range(4):
        save = str(tmp_path / f"seed{seed}")
        prepare_jl_corpus(data, save, seed=seed)
        tests.add(frozenset(r["ID"] for r in read_csv(os.path.join(save, "test.csv"))))
    again = str(tmp_path / "again")
    prepare_jl_corpus(data, again, seed=0)
    for s in SPLITS:
        assert filecmp.cmp(os.path.join(tmp_path / "seed0", f"{s}.csv"), os.path.join(again, f"{s}.csv"), shallow=False)
    assert len(tests) > 1


def test_skip_when_prepared_and_redo_when_options_change(jl):
    data, save, _ = jl
    check_skip_then_redo(prepare_jl_corpus, data, save, valid_fraction=0.2)
    assert len(read_csv(os.path.join(save, "valid.csv"))) == 4


def test_parse_stem():
    assert parse_stem("female1_angry_7b_1") == ("female1", "angry")
    assert parse_stem("Male2_Encouraging_10a_2") == ("male2", "encouraging")
    assert parse_stem("male1_sad") == ("male1", "sad")
    assert parse_stem("recording_001") is None
    assert parse_stem("female1") is None


def test_manifests_load_in_speechbrain(jl):
    data, save, expected = jl
    prepare_jl_corpus(data, save)
    ids = []
    for s in SPLITS:
        from speechbrain.dataio.dataset import DynamicItemDataset

        dataset = DynamicItemDataset.from_csv(os.path.join(save, f"{s}.csv"))
        dataset.set_output_keys(["id", "emotion", "wrd"])
        for item in dataset:
            ids.append(item["id"])
            assert item["emotion"] == expected[item["id"]]["extra"]["emotion"]
        assert len(load_with_speechbrain(os.path.join(save, f"{s}.csv"))) == len(dataset)
    assert sorted(ids) == sorted(expected)


def test_command_line(jl, capsys):
    data, save, _ = jl
    main(["--data_folder", data, "--save_folder", save, "--split_by", "speaker"])
    out = capsys.readouterr().out
    assert "train.csv:" in out and "valid.csv:" in out
    assert "skipped 1: empty text after cleaning" in out
    assert recorded_options(save)["split_by"] == "speaker"
    check_exits_on_missing_data(main, data, save)


def test_runs_as_a_script():
    check_help("jl_corpus", ("--valid_fraction", "--test_fraction", "--split_by", "--seed"))


def test_unreadable_transcript_is_skipped_and_logged(jl, monkeypatch):
    """A .txt that cannot be read goes to skipped.csv like unreadable audio. Tests run as
    root, where chmod 000 does not block reading, so open() is patched (in
    data_prep.common, where read_transcript calls it) to raise EACCES for one file."""
    data, save, expected = jl
    folder = os.path.join(data, RAW_DIR, WAV_TXT_DIR)
    locked = os.path.join(folder, "female1_angry_1a_1.txt")

    def fake_open(path, *args, **kwargs):
        if os.path.abspath(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(data_prep.common, "open", fake_open, raising=False)
    prepare_jl_corpus(data, save)  # was an uncaught error
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert skipped["female1_angry_1a_1"]["reason"] == "unreadable transcript (Permission denied)"
    assert skipped["female1_angry_1a_1"]["file"] == locked
    del expected["female1_angry_1a_1"]
    check_prepared(save, expected)


def test_broken_layout_fails_clearly_and_rerun_works(jl, tmp_path):
    data, save, expected = jl
    folder = os.path.join(data, RAW_DIR, WAV_TXT_DIR)
    # the .txt files were left out when the corpus was copied: every wav lacks its transcript
    aside = tmp_path / "transcripts"
    aside.mkdir()
    for name in os.listdir(folder):
        if name.endswith(".txt"):
            os.rename(os.path.join(folder, name), aside / name)
    with pytest.raises(EmptyPreparationError) as err:
        prepare_jl_corpus(data, save)  # was ValueError "cannot split 0 keys"
    message = str(err.value)
    assert "came out empty" in message and "audio without transcript" in message
    assert "Likely cause: the .txt transcripts are not beside the .wav files" in message
    assert not os.path.exists(os.path.join(save, "prep_options.json"))
    assert not os.path.exists(os.path.join(save, "train.csv"))
    skipped = read_csv(os.path.join(save, "skipped.csv"))  # written, for the user to read
    wavs = [n for n in os.listdir(folder) if n.endswith(".wav") and parse_stem(n[:-4])]
    assert sum(r["reason"] == "audio without transcript" for r in skipped) == len(wavs)
    # half of them back is still a layout problem: more than half of the items lost
    names = sorted(os.listdir(aside))
    for name in names[: len(names) // 3]:
        os.rename(aside / name, os.path.join(folder, name))
    with pytest.raises(EmptyPreparationError, match="dropped because their audio or transcript"):
        prepare_jl_corpus(data, save)
    for name in os.listdir(aside):  # fixed: the rerun does the work
        os.rename(aside / name, os.path.join(folder, name))
    assert prepare_jl_corpus(data, save) is not None
    check_prepared(save, expected)


def test_command_line_subprocess(jl):
    data, save, expected = jl
    result = run_script(
        "jl_corpus", "--data_folder", data, "--save_folder", save, "--split_by", "speaker", "--seed", "7", timeout=120
    )
    assert result.returncode == 0, result.stderr
    rows = check_prepared(save, expected)
    assert [len({r["spk_id"] for r in rows[s]}) for s in SPLITS] == [2, 1, 1]
    assert f"test.csv: {len(rows['test'])} utterances" in result.stdout
    for s in SPLITS:
        assert len(load_with_speechbrain(os.path.join(save, f"{s}.csv"))) == len(rows[s])
    broken = run_script("jl_corpus", "--data_folder", str(data) + "_missing", "--save_folder", save + "2", timeout=120)
    assert broken.returncode == 2
    assert broken.stderr.startswith("error: JL Corpus data_folder")
    assert "Traceback" not in broken.stderr
