"""Helpers for the data-prep tests of Noisy VCTK, Google NE, JL Corpus and LibriSpeech.

Miniature corpora are built from the ten real recordings in ``tests/data/samples/speech``
(16 kHz), written at each corpus's own sample rate and format.
"""

import csv
import functools
import os
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "samples")


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
