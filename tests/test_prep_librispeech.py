"""LibriSpeech test-clean/test-other preparation on a miniature copy (16 kHz FLAC)."""

import os
import shutil

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
from prep_fixtures_b import run_script
from prep_fixtures_b import samples
from prep_fixtures_b import truncate
from prep_fixtures_b import write_audio
from prep_fixtures_b import write_text

from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.common import LayoutError
from data_prep.librispeech import main
from data_prep.librispeech import manifest_name
from data_prep.librispeech import prepare_librispeech

RATE = 16000
MANIFESTS = ("test_clean.csv", "test_other.csv")
# split -> speaker -> chapter -> utterance numbers
LAYOUT = {
    "test-clean": {"1089": {"134686": [0, 1, 2]}, "121": {"121726": [0, 5]}},
    "test-other": {"1688": {"142285": [0, 1]}, "2033": {"164914": [3], "164915": [7]}},
}


def build_librispeech(parent):
    """Write ``parent/LibriSpeech/{test-clean,test-other}``; returns expected rows per split."""
    root = os.path.join(parent, "LibriSpeech")
    expected = {}
    i = 0
    for split, speakers in LAYOUT.items():
        expected[split] = {}
        for spk, chapters in speakers.items():
            for chapter, utts in chapters.items():
                folder = os.path.join(root, split, spk, chapter)
                lines = []
                for n in utts:
                    utt_id = f"{spk}-{chapter}-{n:04d}"
                    text = samples()[i % 10]["wrd"]
                    if i == 1:
                        text = "I DON'T KNOW WHAT YOU'VE DONE"
                    wav = os.path.join(folder, utt_id + ".flac")
                    duration = write_audio(wav, i, RATE)
                    lines.append(f"{utt_id} {text}")
                    expected[split][utt_id] = {
                        "duration": duration,
                        "wav": wav,
                        "spk_id": spk,
                        "wrd_raw": text,
                        "wrd": normalize_words(text),
                    }
                    i += 1
                write_text(os.path.join(folder, f"{spk}-{chapter}.trans.txt"), "\n".join(lines) + "\n")
    # defects, all in test-other/1688/142285
    folder = os.path.join(root, "test-other", "1688", "142285")
    trans = os.path.join(folder, "1688-142285.trans.txt")
    write_audio(os.path.join(folder, "1688-142285-0009.flac"), 2, RATE)
    truncate(os.path.join(folder, "1688-142285-0009.flac"))
    write_audio(os.path.join(folder, "1688-142285-0010.flac"), 3, RATE)  # no transcript line
    write_audio(os.path.join(folder, "1688-142285-0011.flac"), 4, RATE)
    with open(trans, "a", encoding="utf-8") as f:
        f.write("1688-142285-0009 A TRUNCATED FILE\n")
        f.write("1688-142285-0012 NO AUDIO FOR THIS LINE\n")
        f.write("1688-142285-0011\n")  # id without text
    return expected


SKIPPED = {
    "1688-142285-0009": "unreadable audio",
    "1688-142285-0010": "audio without transcript",
    "1688-142285-0012": "transcript without audio",
    "1688-142285-0011": "empty text after cleaning",
}


libri = corpus_fixture(build_librispeech, "corpora")


def test_manifests_row_by_row(libri):
    parent, save, expected = libri
    summary = prepare_librispeech(parent, save)
    assert set(summary) == set(MANIFESTS)
    for split in LAYOUT:
        rows = read_csv(os.path.join(save, manifest_name(split)))
        check_manifest_rows(rows, expected[split])
        assert summary[manifest_name(split)][0] == len(rows)
    clean = by_id(read_csv(os.path.join(save, "test_clean.csv")))
    assert clean["1089-134686-0001"]["wrd_raw"] == "I DON'T KNOW WHAT YOU'VE DONE"
    assert clean["1089-134686-0001"]["wrd"] == "i don't know what you've done"
    assert clean["1089-134686-0000"]["wrd"] == "the child almost hurt the small dog"
    assert {r["spk_id"] for r in clean.values()} == {"1089", "121"}
    assert not os.path.exists(os.path.join(save, "train.csv"))


def test_defects_are_skipped_with_reasons(libri):
    parent, save, _ = libri
    prepare_librispeech(parent, save)
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert set(skipped) == set(SKIPPED)
    for utt_id, reason in SKIPPED.items():
        assert skipped[utt_id]["reason"].startswith(reason), (utt_id, skipped[utt_id])
    assert skipped["1688-142285-0012"]["file"].endswith("1688-142285.trans.txt:4")
    ids = {r["ID"] for r in read_csv(os.path.join(save, "test_other.csv"))}
    assert not ids & set(SKIPPED)


def test_data_folder_may_be_the_librispeech_folder(libri):
    parent, save, expected = libri
    prepare_librispeech(os.path.join(parent, "LibriSpeech"), save)
    check_manifest_rows(read_csv(os.path.join(save, "test_clean.csv")), expected["test-clean"])


def test_splits_option(libri):
    parent, save, expected = libri
    summary = prepare_librispeech(parent, save, splits=["test-clean"])
    assert list(summary) == ["test_clean.csv"]
    assert not os.path.exists(os.path.join(save, "test_other.csv"))
    check_manifest_rows(read_csv(os.path.join(save, "test_clean.csv")), expected["test-clean"])
    with pytest.raises(LayoutError, match="dev-clean"):
        prepare_librispeech(parent, save, splits=["dev-clean"])


def test_layout_errors(tmp_path):
    parent = tmp_path / "dl"
    (parent / "LibriSpeech" / "test-clean").mkdir(parents=True)
    (parent / "test-other.tar.gz").write_bytes(b"\x1f\x8b")
    message = layout_error(prepare_librispeech, parent, tmp_path / "out", "test_clean.csv")
    assert "LibriSpeech/test-other/<spk>/<chapter>/" in message
    assert "missing: test-other" in message
    assert "extract test-other.tar.gz" in message


def test_skip_when_prepared_and_redo_when_options_change(libri):
    parent, save, _ = libri
    check_skip_then_redo(prepare_librispeech, parent, save, MANIFESTS, splits=["test-other", "test-clean"])


def test_manifests_load_in_speechbrain(libri):
    parent, save, expected = libri
    prepare_librispeech(parent, save)
    for split in LAYOUT:
        items = load_with_speechbrain(os.path.join(save, manifest_name(split)))
        assert sorted(item["id"] for item in items) == sorted(expected[split])
        for item in items:
            assert item["wav"].endswith(".flac") and os.path.isfile(item["wav"])
            assert abs(float(item["duration"]) - expected[split][item["id"]]["duration"]) < 1e-3


def test_command_line(libri, capsys):
    parent, save, expected = libri
    main(["--data_folder", parent, "--save_folder", save, "--splits", "test-other"])
    out = capsys.readouterr().out
    assert f"test_other.csv: {len(expected['test-other'])} utterances" in out
    assert "test_clean.csv" not in out
    assert "skipped 1: transcript without audio" in out
    check_exits_on_missing_data(main, parent, save)


def test_runs_as_a_script():
    check_help("librispeech", ("--splits",))


def test_only_test_clean_present(libri, caplog):
    """A user with test-clean only: the default prepares it and says test-other is missing;
    no empty test_other.csv (finish() refuses empty splits, and no reader loads one)."""
    parent, save, expected = libri
    shutil.rmtree(os.path.join(parent, "LibriSpeech", "test-other"))
    with caplog.at_level("WARNING", logger="data_prep.librispeech"):
        summary = prepare_librispeech(parent, save)
    assert list(summary) == ["test_clean.csv"]
    assert not os.path.exists(os.path.join(save, "test_other.csv"))
    check_manifest_rows(read_csv(os.path.join(save, "test_clean.csv")), expected["test-clean"])
    items = load_with_speechbrain(os.path.join(save, "test_clean.csv"))
    assert sorted(item["id"] for item in items) == sorted(expected["test-clean"])
    assert any("test-other not found" in r.getMessage() for r in caplog.records)
    assert prepare_librispeech(parent, save) is None  # prepared: skipped on a rerun
    # named splits are each required
    with pytest.raises(LayoutError, match="missing: test-other"):
        prepare_librispeech(parent, save + "2", splits=["test-clean", "test-other"])


def test_only_test_other_present_via_the_librispeech_folder(libri):
    parent, save, expected = libri
    shutil.rmtree(os.path.join(parent, "LibriSpeech", "test-clean"))
    summary = prepare_librispeech(os.path.join(parent, "LibriSpeech"), save)
    assert list(summary) == ["test_other.csv"]
    check_manifest_rows(read_csv(os.path.join(save, "test_other.csv")), expected["test-other"])


def test_split_folder_without_data_fails_then_rerun_works(libri):
    """test-other extracted only partly (folders, no files): refused with the likely cause,
    nothing marked prepared; once the files are there the rerun does the work."""
    parent, save, expected = libri
    other = os.path.join(parent, "LibriSpeech", "test-other")
    shutil.move(other, other + ".full")
    os.makedirs(os.path.join(other, "1688", "142285"))
    with pytest.raises(EmptyPreparationError) as err:
        prepare_librispeech(parent, save)
    message = str(err.value)
    assert "test_other.csv came out empty" in message and "partial extraction" in message
    for name in MANIFESTS + ("prep_options.json",):
        assert not os.path.exists(os.path.join(save, name))
    shutil.rmtree(other)
    shutil.move(other + ".full", other)
    assert prepare_librispeech(parent, save) is not None
    check_manifest_rows(read_csv(os.path.join(save, "test_other.csv")), expected["test-other"])


def _cli(*args):
    return run_script("librispeech", *args, timeout=120)


def test_command_line_exit_status(libri, tmp_path):
    parent, save, expected = libri
    shutil.rmtree(os.path.join(parent, "LibriSpeech", "test-other"))
    good = _cli("--data_folder", parent, "--save_folder", save)
    assert good.returncode == 0, good.stderr
    assert f"test_clean.csv: {len(expected['test-clean'])} utterances" in good.stdout
    assert "test_other" not in good.stdout
    with open(os.path.join(parent, "test-other.tar.gz"), "wb") as f:
        f.write(b"\x1f\x8b")  # downloaded, not extracted: an error, not a silent omission
    bad = _cli("--data_folder", parent, "--save_folder", str(tmp_path / "again"))
    assert bad.returncode == 2 and bad.stdout == ""
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "extract test-other.tar.gz" in errors[0]
