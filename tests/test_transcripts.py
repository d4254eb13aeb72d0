"""Transcripts are never mangled silently: empty or punctuation-only transcripts are refused,
characters outside a CTC vocabulary are counted and refused above the threshold, digits are
refused; from Python (``check_transcripts``, ``make_dataset``) and from a recipe's command line."""

import logging
import os
import subprocess
import sys

import pytest
from conftest import sample_rows

from aode.config import ConfigError
from aode.data import make_dataset
from aode.manifest import write_manifest
from aode.models import load_asr_model
from aode.transcripts import TranscriptError
from aode.transcripts import check_transcripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(ROOT, "aode", "mini_generalist")  # a character-level ParakeetTokenizer: a-z, '


@pytest.fixture(scope="module")
def ctc():
    return load_asr_model(MINI)


@pytest.fixture(scope="module")
def whisper(tiny_whisper, tmp_path_factory):
    return load_asr_model(tiny_whisper, save_path=str(tmp_path_factory.mktemp("whisper_cache")))


def _rows(*texts, column="wrd"):
    return [{"ID": f"utt{i}", column: text} for i, text in enumerate(texts)]


CLEAN = "the child almost hurt the small dog " * 40  # 1,160 characters, spaces excluded


def test_ctc_vocabulary_knows_its_characters(ctc):
    assert ctc.unknown_characters("abcxyz' \t\n") == set()
    assert ctc.unknown_characters("aA5$é-b") == {"A", "5", "$", "é", "-"}


def test_whisper_has_no_unknown_characters(whisper):
    assert whisper.text_field == "wrd_raw"
    assert whisper.unknown_characters("Hello, World! 1999 $5 café €") == set()
    rows = _rows("It costs $5, in 1999.", "Héllo WORLD!", column="wrd_raw")
    report = check_transcripts(rows, whisper, "m.csv", 0.0, stage="train")
    assert report.unknown == {} and report.characters == len("Itcosts$5,in1999.HélloWORLD!")


@pytest.mark.parametrize("stage", ["train", "test"])
def test_empty_and_punctuation_only_transcripts_are_refused(ctc, stage):
    rows = _rows("hello there", "", "...", "  ", "good")
    with pytest.raises(TranscriptError) as err:
        check_transcripts(rows, ctc, "data/train.csv", stage=stage)
    message = str(err.value)
    assert "\n" not in message
    assert "data/train.csv" in message and "'wrd'" in message and "3 of 5" in message
    assert "utt1, utt2, utt3" in message and "utt0" not in message and "utt4" not in message
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)


def test_many_empty_rows_show_the_first_few_and_the_count(ctc):
    rows = _rows(*["?"] * 12, "fine")
    with pytest.raises(TranscriptError, match=r"12 of 13 .*utt0, utt1, utt2, utt3, utt4, \.\.\. \(12 rows\)"):
        check_transcripts(rows, ctc, "m.csv")


def test_empty_means_the_column_the_model_reads(whisper):
    rows = [{"ID": "a", "wrd": "", "wrd_raw": "Hi there."}, {"ID": "b", "wrd": "ok", "wrd_raw": "?!"}]
    with pytest.raises(TranscriptError, match=r"1 of 2 .*column 'wrd_raw'.*\(rows b\)"):
        check_transcripts(rows, whisper, "m.csv", stage="train")


def test_digits_are_refused_in_training_with_their_count(ctc):
    rows = _rows(CLEAN, "it cost 5 dollars in 1999", "twelve")
    for fraction in (0.001, 1.0):  # whatever the threshold
        with pytest.raises(TranscriptError) as err:
            check_transcripts(rows, ctc, "m.csv", fraction, stage="train")
        message = str(err.value)
        assert "5 digits in 1 transcript of column 'wrd'" in message, message
        assert "utt1" in message and "num2words" in message and "\n" not in message


def test_unknown_characters_above_the_threshold_are_refused(ctc, caplog):
    rows = _rows(CLEAN, "The Child $ dog", "hello")
    with caplog.at_level(logging.INFO, logger="aode.transcripts"):
        with pytest.raises(TranscriptError) as err:
            check_transcripts(rows, ctc, "m.csv", 0.001, stage="train")
    message = str(err.value)
    assert "3 of 1177 characters" in message and "max_unknown_char_fraction 0.001" in message, message
    assert "'$' x1" in message and "'C' x1" in message and "'T' x1" in message and "utt1" in message
    # each character at INFO with its count, an example row ID and its text
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("'$'" in line and "x1" in line and "utt1" in line and "The Child $ dog" in line for line in lines)


def test_unknown_characters_at_or_below_the_threshold_are_counted_and_trained(ctc, caplog):
    rows = _rows(CLEAN, "The child dog")  # 1 unknown of 1,171 characters
    with caplog.at_level(logging.INFO, logger="aode.transcripts"):
        report = check_transcripts(rows, ctc, "m.csv", 0.001, stage="train")
    assert report.unknown == {"T": 1} and report.examples == {"T": "utt1"} and report.characters == 1171
    assert any(r.levelno == logging.WARNING and "'T' x1" in r.getMessage() for r in caplog.records)


def test_test_references_with_unknown_characters_are_scored(ctc, caplog):
    rows = _rows("It cost 5 dollars", "hello")
    with caplog.at_level(logging.INFO, logger="aode.transcripts"):
        report = check_transcripts(rows, ctc, "test.csv", 0.0, stage="test")
    assert report.unknown == {"I": 1, "5": 1}
    assert any("'5'" in r.getMessage() and "utt0" in r.getMessage() for r in caplog.records)


def test_make_dataset_checks_the_transcripts(ctc, tmp_path):
    rows = sample_rows()
    rows[3]["wrd"] = "!"
    path = str(tmp_path / "empty.csv")
    write_manifest(path, rows)
    with pytest.raises(TranscriptError, match="spk1_snt4"):
        make_dataset(path, ctc, check_audio=False)  # a test set: empty references too
    rows = sample_rows()
    rows[0]["wrd"] = "the child almost hurt the 2 small dogs"
    write_manifest(path, rows)
    assert len(make_dataset(path, ctc, check_audio=False)) == len(rows)  # scored as it is
    with pytest.raises(TranscriptError, match="1 digit in 1 transcript"):
        make_dataset(path, ctc, max_unknown_char_fraction=1.0, check_audio=False, stage="train")
    rows[0]["wrd"] = "The child almost hurt the small dog"
    write_manifest(path, rows)
    with pytest.raises(TranscriptError, match="max_unknown_char_fraction 0.001"):
        make_dataset(path, ctc, check_audio=False, stage="train")
    assert len(make_dataset(path, ctc, max_unknown_char_fraction=0.01, check_audio=False, stage="train")) == 10


def _train_command_line(tmp_path, train_rows):
    """``recipes/CORAAL/train.py hparams/parakeet_llrd.yaml`` on hand-made manifests, the
    mini generalist, one tiny epoch: what a user types."""
    train, valid = str(tmp_path / "train.csv"), str(tmp_path / "valid.csv")
    write_manifest(train, train_rows)
    write_manifest(valid, sample_rows())
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        os.path.join("recipes", "CORAAL", "train.py"),
        os.path.join("hparams", "parakeet_llrd.yaml"),
        "--model_source",
        MINI,
        "--train_csv",
        train,
        "--valid_csv",
        valid,
        "--test_csv",
        "null",
        "--output_folder",
        str(out),
        *("--number_of_epochs", "1", "--steps_per_epoch", "1", "--batch_size", "2", "--num_workers", "0"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}\n{result.stdout[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert not (out / "expert").exists()
    return errors[0]


def test_recipe_refuses_empty_transcripts(tmp_path):
    rows = sample_rows()
    rows[2]["wrd"] = ""
    rows[7]["wrd"] = "-- ..."
    error = _train_command_line(tmp_path, rows)
    assert "2 of 10 transcripts are empty or punctuation only in column 'wrd'" in error, error
    assert "(rows spk1_snt3, spk2_snt3)" in error and "train.csv" in error


def test_recipe_refuses_digits(tmp_path):
    rows = sample_rows()
    rows[0]["wrd"] = "the child almost hurt the 2 small dogs"
    rows[5]["wrd"] = "we are sure that 1 wore is enough in 1999"
    error = _train_command_line(tmp_path, rows)
    assert "6 digits in 2 transcripts of column 'wrd'" in error and "num2words" in error, error
    assert "train.csv" in error
