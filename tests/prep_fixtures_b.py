"""Helpers for the data-prep tests of Noisy VCTK, Google NE, JL Corpus and LibriSpeech, and
those every data-prep test shares (a preparation as a script, its manifests read back, its
rerun).

Miniature corpora are built from the ten real recordings in ``tests/data/samples/speech``
(16 kHz), written at each corpus's own sample rate and format.
"""

import csv
import functools
import json
import os
import subprocess
import sys
from math import gcd

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from data_prep.common import LayoutError

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "samples")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "valid", "test")


@functools.lru_cache(maxsize=1)
def samples():
    """The ten sample utterances: dicts with ID, spk_id, wrd (uppercase) and audio (16 kHz)."""
    with open(os.path.join(SAMPLES, "speech.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        audio, rate = sf.read(os.path.join(SAMPLES, row["wav"]), dtype="float32")
        assert rate == 16000
        row["audio"] = audio
    return rows


@functools.lru_cache(maxsize=64)
def resampled(index, rate):
    """Sample ``index`` (0-9) resampled from 16 kHz to ``rate``."""
    audio = samples()[index % len(samples())]["audio"]
    if rate == 16000:
        return audio
    g = gcd(rate, 16000)
    return resample_poly(audio, rate // g, 16000 // g).astype("float32")


def write_audio(path, index, rate, subtype="PCM_16"):
    """Write sample ``index`` at ``rate`` (format from the extension); return its duration."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    audio = np.clip(resampled(index, rate), -1, 1)
    sf.write(path, audio, rate, subtype=subtype)
    return len(audio) / rate


def truncate(path):
    """Cut the file to half its size, leaving the header's promise of the full length."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def sentence(index):
    """The sample's transcript as a corpus would write it: sentence case and a full stop."""
    text = samples()[index % len(samples())]["wrd"].lower()
    return text[0].upper() + text[1:] + "."


def write_text(path, text, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_id(rows):
    return {row["ID"]: row for row in rows}


def stamps(folder, names=("train.csv", "valid.csv", "test.csv")):
    """(inode, mtime_ns) of each file: changes whenever the file is rewritten."""
    out = {}
    for name in list(names) + ["skipped.csv", "prep_options.json"]:
        st = os.stat(os.path.join(folder, name))
        out[name] = (st.st_ino, st.st_mtime_ns)
    return out


def corpus_fixture(build, folder):
    """A pytest fixture giving ``(data folder, save folder, expected rows)``: the miniature
    that ``build(data folder)`` writes to ``<tmp_path>/<folder>`` (it returns the expected
    rows), and ``<tmp_path>/prepared`` for the manifests."""

    @pytest.fixture
    def fixture(tmp_path):
        root = str(tmp_path / folder)
        return root, str(tmp_path / "prepared"), build(root)

    return fixture


def rows_by_split(save, splits=SPLITS):
    """``{split: rows}`` of the manifests ``<save>/<split>.csv``."""
    return {s: read_csv(os.path.join(save, f"{s}.csv")) for s in splits}


def check_prepared(save, expected, splits=SPLITS):
    """Every row of the manifests ``<save>/<split>.csv`` as ``expected`` says
    (:func:`check_manifest_rows`); returns ``{split: rows}``."""
    rows = rows_by_split(save, splits)
    check_manifest_rows(sum(rows.values(), []), expected)
    return rows


def run_script(corpus, *args, cwd=REPO, timeout=None):
    """``python data_prep/<corpus>.py *args``, as a user runs it: the finished process, its
    output captured."""
    script = os.path.join(REPO, "data_prep", f"{corpus}.py")
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check_help(corpus, options):
    """``python data_prep/<corpus>.py --help`` works and names the two flags every preparation
    takes (--data_folder, --save_folder) and each of the corpus's ``options``."""
    result = run_script(corpus, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--data_folder", "--save_folder", *options):
        assert option in result.stdout


def layout_error(prepare, root, out, manifest="train.csv", zipped=None):
    """The message of the LayoutError ``prepare(root, out)`` raises; it names ``root``, and
    nothing was written (no ``manifest``). A data folder beside ``root`` that does not exist
    is refused as such first. ``zipped``: an archive put in ``root`` that the message says
    to unzip."""
    with pytest.raises(LayoutError, match="does not exist"):
        prepare(os.path.join(os.path.dirname(str(root)), "nowhere"), str(out))
    if zipped is not None:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, zipped), "wb") as f:
            f.write(b"PK")
    with pytest.raises(LayoutError) as err:
        prepare(str(root), str(out))
    message = str(err.value)
    assert str(root) in message
    assert zipped is None or f"unzip {zipped}" in message
    assert not os.path.exists(os.path.join(out, manifest))
    return message


def recorded_options(save):
    """The options a preparation recorded in ``<save>/prep_options.json``."""
    with open(os.path.join(save, "prep_options.json")) as f:
        return json.load(f)


def check_exits_on_missing_data(main, data, save):
    """The preparation's command line ``main`` exits with status 2 when the data folder does
    not exist."""
    with pytest.raises(SystemExit) as exit_:
        main(["--data_folder", data + "_missing", "--save_folder", save + "2"])
    assert exit_.value.code == 2


def check_skip_then_redo(prepare, data, save, manifests=("train.csv", "valid.csv", "test.csv"), **changed):
    """A second ``prepare(data, save)`` skips (returns None, rewrites nothing); one with the
    ``changed`` options rewrites every file (``manifests`` and the two beside them) and records
    the options in prep_options.json."""
    assert prepare(data, save) is not None
    before = stamps(save, manifests)
    assert prepare(data, save) is None
    assert stamps(save, manifests) == before
    prepare(data, save, **changed)
    after = stamps(save, manifests)
    assert all(after[name] != before[name] for name in before)
    recorded = recorded_options(save)
    for key, value in changed.items():
        assert recorded[key] == value


def check_manifest_rows(rows, expected):
    """Compare manifest rows with ``expected`` {ID: dict(duration, wav, spk_id, wrd, wrd_raw)}.

    Durations must match the written audio within 1 ms; start is 0 and stop the duration.
    """
    assert sorted(r["ID"] for r in rows) == sorted(expected)
    assert len({r["ID"] for r in rows}) == len(rows)
    for row in rows:
        exp = expected[row["ID"]]
        assert "," not in row["ID"]
        assert abs(float(row["duration"]) - exp["duration"]) < 1e-3, row["ID"]
        assert float(row["start"]) == 0.0
        assert abs(float(row["stop"]) - float(row["duration"])) < 1e-9
        assert os.path.isabs(row["wav"])
        assert os.path.samefile(row["wav"], exp["wav"])
        for key in ("spk_id", "wrd", "wrd_raw"):
            assert row[key] == exp[key], (row["ID"], key, row[key], exp[key])
        for key, value in exp.get("extra", {}).items():
            assert row[key] == value, (row["ID"], key)


def load_with_speechbrain(path):
    """The manifest loaded as a SpeechBrain DynamicItemDataset; returns its rows."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    data = DynamicItemDataset.from_csv(path)
    data.set_output_keys(["id", "wav", "duration", "spk_id", "wrd", "wrd_raw"])
    return [data[i] for i in range(len(data))]
