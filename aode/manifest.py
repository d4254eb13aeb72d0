"""The manifest contract shared by data prep, training and evaluation.

A manifest is a SpeechBrain CSV with (at least) these columns:

=========  ==================================================================
ID         unique utterance id (no commas)
duration   seconds of audio in the segment (stop - start)
wav        absolute path of the audio file; a row that mixes several files
           (DiPCo's close-talk sum) joins their paths with ``WAV_SEPARATOR``
           and the loader sums them sample by sample
start      segment start in seconds within the file (0 for whole files)
stop       segment end in seconds within the file (the duration for whole files)
spk_id     speaker id
wrd        normalised text: lowercase, apostrophes kept, markup and other
           punctuation removed (:func:`aode.text.normalize_words`)
wrd_raw    cleaned text with its original casing and punctuation (for Whisper)
=========  ==================================================================

Extra columns are allowed and carried through. Audio is read at its own rate and
resampled to 16 kHz mono by :mod:`aode.data` at load time.

A manifest loads with SpeechBrain's own reader (``speechbrain.dataio.dataio.load_data_csv``)
too. That reader treats ``$word`` in any field as a variable to replace and raises when none
is given, so a dollar sign in text before a letter, digit or dot ("$5 million", SPGISpeech's
formatted text) is written as the fullwidth dollar sign U+FF04; :func:`read_manifest` turns it
back into "$", and Unicode compatibility normalisation (NFKC/NFKD, as Whisper's normaliser
applies) maps it to "$" as well, so scoring is unchanged either way.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from aode.atomic import atomic_open

MANIFEST_COLUMNS = ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd", "wrd_raw"]
WAV_SEPARATOR = "|"

# SpeechBrain's load_data_csv substitutes r"\$([\w.]+)"; the fullwidth sign escapes it.
_SPEECHBRAIN_VARIABLE = re.compile(r"\$(?=[\w.])")
FULLWIDTH_DOLLAR = "\uff04"
_NOT_TEXT = ("ID", "duration", "wav", "start", "stop")


def _escape_dollars(value):
    return _SPEECHBRAIN_VARIABLE.sub(FULLWIDTH_DOLLAR, value) if isinstance(value, str) else value


def write_manifest(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], extra_columns: Sequence[str] = ()
) -> None:
    """Write ``rows`` (dicts) as a manifest CSV, atomically.

    The file is written under a temporary name in the same folder and renamed at the
    end (:func:`aode.atomic.atomic_open`), so an interrupted run never leaves a half
    manifest that a later run trusts.
    """
    columns = MANIFEST_COLUMNS + [c for c in extra_columns if c not in MANIFEST_COLUMNS]
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            for key in MANIFEST_COLUMNS:
                if key not in row:
                    raise ValueError(f"manifest row {row.get('ID')!r} lacks column {key!r}")
            out = {k: v if k in _NOT_TEXT else _escape_dollars(v) for k, v in row.items()}
            for key in ("duration", "start", "stop"):
                out[key] = f"{float(row[key]):.3f}"
            writer.writerow(out)


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a manifest as a list of dicts, checking the required columns."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"manifest {path} lacks columns {missing}; has {reader.fieldnames}")
        rows = list(reader)
    for row in rows:
        for key, value in row.items():
            if key not in _NOT_TEXT and value and FULLWIDTH_DOLLAR in value:
                row[key] = value.replace(FULLWIDTH_DOLLAR, "$")
    return rows


def split_wav_field(wav: str) -> list[str]:
    """The list of audio files a manifest row names."""
    return [p for p in wav.split(WAV_SEPARATOR) if p]
