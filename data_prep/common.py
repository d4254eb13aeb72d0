"""What every corpus preparation shares: skip-when-done, skip log, summary, audio info.

A preparation writes its manifests (see :mod:`aode.manifest` for the columns) plus
``skipped.csv`` (ID, file, reason) and ``prep_options.json``; it is skipped when that
options file matches the current options and every manifest exists.
"""

import collections
import csv
import json
import logging
import os
import random
import struct

import soundfile as sf

from aode.manifest import write_manifest
from aode.text import normalize_words

logger = logging.getLogger(__name__)

OPTIONS_FILE = "prep_options.json"
SKIPPED_FILE = "skipped.csv"


class LayoutError(FileNotFoundError):
    """The data folder is missing or does not look like the corpus's layout."""


def require(condition, message):
    """Raise :class:`LayoutError` with ``message`` unless ``condition``."""
    if not condition:
        raise LayoutError(message)


def already_prepared(save_folder, manifests, options):
    """True when ``save_folder`` holds every manifest, prepared with the same options."""
    path = os.path.join(save_folder, OPTIONS_FILE)
    if not all(os.path.isfile(os.path.join(save_folder, m)) for m in manifests):
        return False
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f) == _jsonable(options)


def _jsonable(options):
    return json.loads(json.dumps(options, default=str, sort_keys=True))


class SkipLog:
    """Collects what a preparation dropped and why; never drop silently."""

    def __init__(self):
        self.rows = []

    def skip(self, utt_id, path, reason):
        self.rows.append({"ID": utt_id, "file": path, "reason": reason})

    def counts(self):
        return collections.Counter(row["reason"] for row in self.rows)

    def write(self, save_folder):
        tmp = os.path.join(save_folder, SKIPPED_FILE + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["ID", "file", "reason"])
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, os.path.join(save_folder, SKIPPED_FILE))


def _wav_missing_bytes(path):
    """Bytes a RIFF/WAVE file's ``data`` chunk promises beyond the end of the file (0 if none).

    libsndfile silently shortens a truncated WAV to what the file holds, so reading the last
    frame does not catch it; the header's own data size does. Streamed files that leave the
    size at 0 or 0xFFFFFFFF, and non-RIFF files, count as complete.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, length = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if length in (0, 0xFFFFFFFF):
                    return 0
                return max(0, pos + 8 + length - size)
            pos += 8 + length + (length & 1)
    return 0


def audio_info(path):
    """(duration in seconds, sample rate) of an audio file, or raise ValueError if unreadable.

    Truncated files are caught here: a WAV whose data chunk promises more bytes than the file
    holds (libsndfile would quietly shorten it), and any file whose last frame cannot be read.
    """
    try:
        info = sf.info(path)
        if info.frames <= 0:
            raise ValueError("no audio frames")
        if info.format in ("WAV", "WAVEX"):
            missing = _wav_missing_bytes(path)
            if missing:
                raise ValueError(f"truncated: {missing} bytes of audio data missing")
        with sf.SoundFile(path) as f:
            f.seek(info.frames - 1)
            if len(f.read(1)) != 1:
                raise ValueError("truncated")
        return info.frames / info.samplerate, info.samplerate
    except (RuntimeError, sf.LibsndfileError, ValueError) as err:
        raise ValueError(f"unreadable audio ({err})") from err


class EmptyPreparationError(LayoutError):
    """A preparation lost a split, or most of its items: nothing is marked prepared."""


NO_AUDIO = "transcript without audio"
NO_TRANSCRIPT = "audio without transcript"
EMPTY_TEXT = "empty text after cleaning"

# Skip reasons that mean "the layout is not what we think", not "this item is bad".
LOST_REASONS = (NO_AUDIO, NO_TRANSCRIPT)


def check_not_lost(splits, skipped, corpus, likely_cause=None, lost_reasons=LOST_REASONS,
                   max_lost_fraction=0.5):
    """Raise :class:`EmptyPreparationError` when a split came out empty, or when more than
    ``max_lost_fraction`` of the items were dropped for a reason in ``lost_reasons`` (audio or
    transcript not found: a layout problem, never a property of the data).

    The message names the split, the most frequent skip reasons and ``likely_cause``.
    """
    counts = skipped.counts()
    top = ", ".join(f"{n} x {reason!r}" for reason, n in counts.most_common(3)) or "none"
    hint = f" Likely cause: {likely_cause}." if likely_cause else ""
    empty = [name for name, rows in splits.items() if not rows]
    if empty:
        raise EmptyPreparationError(
            f"{corpus}: {', '.join(empty)} came out empty (skipped: {top}).{hint} Nothing was "
            "marked prepared; see skipped.csv, fix the data folder and run again."
        )
    kept = sum(len(rows) for rows in splits.values())
    lost = sum(counts[reason] for reason in lost_reasons)
    if lost > max_lost_fraction * (kept + lost):
        raise EmptyPreparationError(
            f"{corpus}: {lost} of {kept + lost} items were dropped because their audio or "
            f"transcript was not found (skipped: {top}).{hint} Nothing was marked prepared; "
            "see skipped.csv, fix the data folder and run again."
        )


def finish(save_folder, splits, skipped, options, corpus, extra_columns=(), likely_cause=None,
           lost_reasons=LOST_REASONS, max_lost_fraction=0.5):
    """Write each split's manifest, the skip log and the options; log a summary.

    ``splits`` maps manifest file name (e.g. "train.csv") to its list of rows. The options
    file is written last, so a crash before it means the next run redoes the preparation.
    ``extra_columns`` (e.g. JL Corpus's "emotion") are written after the standard ones.
    Before anything is written, :func:`check_not_lost` refuses an empty split or a mostly
    lost corpus (``likely_cause``, ``lost_reasons``, ``max_lost_fraction`` go to it): then
    only ``skipped.csv`` is written, for the user to read, and any earlier options file is
    removed so that the next run does the work.
    Returns a dict ``{manifest: (utterances, hours)}``.
    """
    os.makedirs(save_folder, exist_ok=True)
    try:
        check_not_lost(splits, skipped, corpus, likely_cause, lost_reasons, max_lost_fraction)
    except EmptyPreparationError:
        options_path = os.path.join(save_folder, OPTIONS_FILE)
        if os.path.exists(options_path):
            os.remove(options_path)
        skipped.write(save_folder)
        raise
    summary = {}
    for name, rows in splits.items():
        write_manifest(os.path.join(save_folder, name), rows, extra_columns=extra_columns)
        hours = sum(float(r["duration"]) for r in rows) / 3600
        summary[name] = (len(rows), hours)
        logger.info("%s %s: %d utterances, %.2f h", corpus, name, len(rows), hours)
    skipped.write(save_folder)
    for reason, count in sorted(skipped.counts().items()):
        logger.info("%s skipped %d: %s", corpus, count, reason)
    with open(os.path.join(save_folder, OPTIONS_FILE), "w", encoding="utf-8") as f:
        json.dump(_jsonable(options), f, indent=1, sort_keys=True)
    return summary




def whole_file_row(utt_id, wav, spk_id, text, skipped, source=None, **extra):
    """The manifest row of a whole-file utterance, or None (and a skip log entry) if unusable.

    ``wav`` or ``text`` None means the audio or the transcript is missing; ``source`` is the
    file named in the skip log when there is no audio (the transcript's path). Text whose
    normalised form is empty, and audio that :func:`audio_info` cannot read, are skipped too.
    ``extra`` holds extra columns (e.g. ``emotion``).
    """
    if wav is None:
        skipped.skip(utt_id, source or "", NO_AUDIO)
        return None
    if text is None:
        skipped.skip(utt_id, wav, NO_TRANSCRIPT)
        return None
    words = normalize_words(text)
    if not words:
        skipped.skip(utt_id, wav, EMPTY_TEXT)
        return None
    try:
        duration, _ = audio_info(wav)
    except ValueError as err:
        skipped.skip(utt_id, wav, str(err))
        return None
    row = {"ID": utt_id, "duration": duration, "wav": os.path.abspath(wav), "start": 0.0,
           "stop": duration, "spk_id": spk_id, "wrd": words, "wrd_raw": text}
    row.update(extra)
    return row


def read_transcript(path):
    """The text of a one-utterance transcript file, whitespace collapsed.

    UTF-8 (with or without BOM) is tried first, then cp1252, which some corpora's
    hand-edited files use. An unreadable file (permissions, I/O error) raises ValueError
    with the reason, as :func:`audio_info` does for audio, so callers skip and log it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"unreadable transcript ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    return " ".join(text.split())


def seeded_split(keys, valid_fraction, test_fraction, seed):
    """Split ``keys`` (speakers or utterance ids) into (train, valid, test) sets, seeded.

    The sorted unique keys are shuffled with ``random.Random(seed)``; test takes
    ``round(test_fraction * n)`` keys, at least 1 when the fraction is above 0, valid likewise,
    train the rest. The same keys and seed always give the same split. Raises ValueError when
    train would be left empty.
    """
    keys = sorted(set(keys))
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    n_valid = max(1, round(valid_fraction * len(keys))) if valid_fraction > 0 else 0
    n_test = max(1, round(test_fraction * len(keys))) if test_fraction > 0 else 0
    if n_valid + n_test >= len(keys):
        raise ValueError(
            f"cannot split {len(keys)} keys into {n_valid} valid + {n_test} test and a "
            "non-empty train set"
        )
    rng = random.Random(seed)
    rng.shuffle(keys)
    test = set(keys[:n_test])
    valid = set(keys[n_test:n_test + n_valid])
    train = set(keys[n_test + n_valid:])
    return train, valid, test


def skipped_counts(save_folder):
    """``{reason: count}`` read back from a prepared folder's ``skipped.csv`` (for the CLIs)."""
    path = os.path.join(save_folder, SKIPPED_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return dict(collections.Counter(row["reason"] for row in csv.DictReader(f)))


def summary_from_disk(save_folder, manifests):
    """``({manifest: (utterances, hours)}, {reason: count})`` read back from ``save_folder``
    (what the CLIs print when the preparation was skipped as already done)."""
    from aode.manifest import read_manifest

    summary = {}
    for name in manifests:
        rows = read_manifest(os.path.join(save_folder, name))
        summary[name] = (len(rows), sum(float(r["duration"]) for r in rows) / 3600)
    return summary, skipped_counts(save_folder)


def print_summary(summary, skipped_counts=None):
    """Human-readable summary for the command lines."""
    for name, (count, hours) in summary.items():
        print(f"{name}: {count} utterances, {hours:.2f} h")
    for reason, count in sorted((skipped_counts or {}).items()):
        print(f"skipped {count}: {reason}")


def run_cli(prepare, data_folder, save_folder, manifests, **options):
    """The command lines' shared tail: prepare, print the summary; exit status 2 with one
    line on a layout or option error."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = prepare(data_folder, save_folder, **options)
    except (LayoutError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is None:
        print(f"already prepared with the same options: {save_folder}")
    print_summary(*summary_from_disk(save_folder, manifests))
    return 0
