"""What every corpus preparation shares: skip-when-done, skip log, summary, audio info,
the root finder, the same-speaker segment merger and the command line.

Each corpus is one module ``data_prep/<corpus>.py`` (the package is installed by README's
set-up, so nothing edits ``sys.path``) with one function ``prepare_<corpus>(data_folder,
save_folder, **options)`` that the recipes call, and a thin ``main(argv)``: an argument parser
from :func:`cli_parser` plus the corpus's own flags, handed to :func:`run_cli` (lhotse's
pattern: per-corpus ``prepare_*`` functions, a tiny command line around each). Run it as
``python data_prep/<corpus>.py`` or ``python -m data_prep.<corpus>``.

A preparation writes its manifests (see :mod:`aode.manifest` for the columns) plus
``skipped.csv`` (ID, file, reason) and ``prep_options.json`` (built by :func:`prep_options`:
the corpus, its ``PREP_VERSION``, the data folder and its options); it is skipped when that
options file matches the current options and every manifest exists.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import os
import random
import struct
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import soundfile as sf
from tqdm import tqdm

from aode.atomic import atomic_open
from aode.manifest import write_manifest
from aode.text import normalize_words

logger = logging.getLogger(__name__)

OPTIONS_FILE = "prep_options.json"
SKIPPED_FILE = "skipped.csv"
# The key under which prep_options.json records a corpus module's PREP_VERSION (the same in
# every preparation; bump PREP_VERSION when the output changes for the same options, so that
# folders prepared before are redone).
VERSION_KEY = "format"
# Folders never searched for a corpus: macOS zip metadata (hidden folders are skipped too).
IGNORED_FOLDERS = ("__MACOSX",)


class LayoutError(FileNotFoundError):
    """The data folder is missing or does not look like the corpus's layout."""


class PrepOptionsError(ValueError):
    """Preparation options the corpus cannot meet, or that are wrong in themselves: more
    speakers (sessions, utterances) held out than the corpus has, a size larger than its
    split, a value out of range. The recipes and command lines print it as one ``error:``
    line, exit status 2 (a ValueError, as before)."""


def require(condition: object, message: str) -> None:
    """Raise :class:`LayoutError` with ``message`` unless ``condition``."""
    if not condition:
        raise LayoutError(message)


def require_data_folder(data_folder: str | os.PathLike, corpus: str, expected: str | None = None) -> None:
    """Raise :class:`LayoutError` "<corpus> data_folder '<path>' does not exist; expected
    <expected> there" unless ``data_folder`` is a folder."""
    hint = f"; expected {expected} there" if expected else ""
    require(os.path.isdir(data_folder), f"{corpus} data_folder {data_folder!r} does not exist{hint}")


def prep_options(corpus: str, version: int, data_folder: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """The options recorded in ``prep_options.json``: ``corpus``, ``version`` (the module's
    ``PREP_VERSION``) under :data:`VERSION_KEY`, the absolute ``data_folder``, and the
    corpus's own ``options``."""
    return {"corpus": corpus, VERSION_KEY: version, "data_folder": os.path.abspath(data_folder), **options}


def already_prepared(save_folder: str | os.PathLike, manifests: Iterable[str], options: Mapping[str, Any]) -> bool:
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

    def skip(self, utt_id: str, path: str, reason: str) -> None:
        self.rows.append({"ID": utt_id, "file": path, "reason": reason})

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(row["reason"] for row in self.rows)

    def write(self, save_folder: str | os.PathLike) -> None:
        with atomic_open(os.path.join(save_folder, SKIPPED_FILE), newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["ID", "file", "reason"])
            writer.writeheader()
            writer.writerows(self.rows)


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


def audio_info(path: str | os.PathLike) -> tuple[float, int]:
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


def check_not_lost(
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    skipped: SkipLog,
    corpus: str,
    likely_cause: str | None = None,
    lost_reasons: Iterable[str] = LOST_REASONS,
    max_lost_fraction: float = 0.5,
) -> None:
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


def finish(
    save_folder: str | os.PathLike,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    skipped: SkipLog,
    options: Mapping[str, Any],
    corpus: str,
    extra_columns: Sequence[str] = (),
    likely_cause: str | None = None,
    lost_reasons: Iterable[str] = LOST_REASONS,
    max_lost_fraction: float = 0.5,
) -> dict[str, tuple[int, float]]:
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
    with atomic_open(os.path.join(save_folder, OPTIONS_FILE)) as f:  # the "done" mark
        json.dump(_jsonable(options), f, indent=1, sort_keys=True)
    return summary


def remove_stale_manifests(save_folder: str | os.PathLike, names: Iterable[str], corpus: str, why: str) -> None:
    """Remove manifests an earlier run with other options left in ``save_folder`` that this
    run does not write (an empty manifest loads in neither SpeechBrain's reader nor ours, so
    a held-out set of size 0 gets none; a stale one would hold items now in train)."""
    for name in sorted(names):
        path = os.path.join(save_folder, name)
        if os.path.exists(path):
            logger.info("%s: removing %s from an earlier run (%s)", corpus, path, why)
            os.remove(path)


def folders_below(folder: str, depth: int | None = None) -> Iterator[str]:
    """``folder``, then the folders below it, at most ``depth`` levels down (None: any
    depth), breadth first: shallower folders first, each folder's subfolders in name order.
    Hidden folders and :data:`IGNORED_FOLDERS` are left out, with everything below them."""
    level, below = [folder], 0
    while level:
        yield from level
        if depth is not None and below >= depth:
            return
        deeper = []
        for parent in level:
            try:
                entries = sorted(os.scandir(parent), key=lambda e: e.name)
            except OSError:
                continue
            deeper.extend(
                e.path for e in entries if e.is_dir() and not e.name.startswith(".") and e.name not in IGNORED_FOLDERS
            )
        level, below = deeper, below + 1


def find_root(candidates: Iterable[str], is_root: Callable[[str], object]) -> str | None:
    """The folder that holds a corpus: the first of ``candidates`` for which
    ``is_root(folder)`` is true, or None (the caller then raises its :class:`LayoutError`
    with the corpus's own hint).

    ``candidates`` are folders in order of preference: those a corpus's layout names (e.g.
    ``[data_folder/LibriSpeech, data_folder]``), or :func:`folders_below` ``(data_folder,
    depth)``, where the shallowest match wins.
    """
    return next((folder for folder in candidates if is_root(folder)), None)


def merge_same_speaker(
    items: Iterable[dict[str, Any] | None],
    max_seconds: float,
    may_join: Callable[[dict[str, Any], dict[str, Any]], object] | None = None,
) -> list[dict[str, Any]]:
    """Merge runs of consecutive same-speaker items into segments of at most ``max_seconds``.

    ``items`` are in order; each is a dict with ``speaker``, ``start`` and ``stop`` (seconds,
    other keys are kept), or None for an item that was skipped. The rule: an item joins the
    current segment when it has the segment's speaker, the joined span (the largest stop
    minus the smallest start) is at most ``max_seconds``, and ``may_join(segment, item)``
    holds (when given); otherwise the segment ends and the item starts the next one. A None
    ends the current segment. E.g. with ``max_seconds=5``: A 0-2, A 2.5-5 (span 5: joins),
    A 5.5-6 (span 6: a new segment), B 6-7, None, B 7-8 (a new segment: None ended B 6-7).

    Returns the segments, each a dict: ``speaker``, ``start`` (the smallest start), ``stop``
    (the largest stop) and ``items`` (the items it holds, in order). ``items`` is not changed.
    """
    segments, current = [], None
    for item in items:
        if (
            item is not None
            and current is not None
            and item["speaker"] == current["speaker"]
            and max(item["stop"], current["stop"]) - min(item["start"], current["start"]) <= max_seconds
            and (may_join is None or may_join(current, item))
        ):
            current["start"] = min(item["start"], current["start"])
            current["stop"] = max(item["stop"], current["stop"])
            current["items"].append(item)
            continue
        if current is not None:
            segments.append(current)
        current = (
            None
            if item is None
            else {"speaker": item["speaker"], "start": item["start"], "stop": item["stop"], "items": [item]}
        )
    if current is not None:
        segments.append(current)
    return segments


def whole_file_row(
    utt_id: str,
    wav: str | None,
    spk_id: str,
    text: str | None,
    skipped: SkipLog,
    source: str | None = None,
    **extra: Any,
) -> dict[str, Any] | None:
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
    row = {
        "ID": utt_id,
        "duration": duration,
        "wav": os.path.abspath(wav),
        "start": 0.0,
        "stop": duration,
        "spk_id": spk_id,
        "wrd": words,
        "wrd_raw": text,
    }
    row.update(extra)
    return row


def decode_text(data: bytes) -> str:
    """Text of a transcript's bytes: UTF-8 (with or without BOM) is tried first, then cp1252,
    which some corpora's hand-edited files use (a Windows ``’`` stays an apostrophe)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def numbered_lines(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of text file ``path`` (a transcript or
    an index, one utterance a line), bytes that do not decode replaced."""
    with open(path, encoding=encoding, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line


def read_transcript(path: str | os.PathLike) -> str:
    """The text of a one-utterance transcript file (:func:`decode_text`), whitespace
    collapsed.

    An unreadable file (permissions, I/O error) raises ValueError with the reason, as
    :func:`audio_info` does for audio, so callers skip and log it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"unreadable transcript ({err.strerror or err})") from err
    return " ".join(decode_text(data).split())


def transcribed_stems(
    wavs: Mapping[str, str], txts: Mapping[str, str], skipped: SkipLog, desc: str, id_suffix: str = ""
) -> Iterator[tuple[str, str | None, str | None]]:
    """``(stem, transcript path, its text)`` for every stem of ``wavs`` ({stem: audio path})
    and ``txts`` ({stem: .txt path}), sorted, with a progress bar ``desc``; path and text None
    where there is no transcript. A transcript that cannot be read goes to ``skipped`` (ID
    ``stem + id_suffix``), as unreadable audio does, and its stem is left out."""
    for stem in tqdm(sorted(set(wavs) | set(txts)), desc=desc, unit="file"):
        txt = txts.get(stem)
        try:
            text = read_transcript(txt) if txt else None
        except ValueError as err:  # unreadable .txt: skipped and logged like unreadable audio
            skipped.skip(stem + id_suffix, txt, str(err))
            continue
        yield stem, txt, text


def seeded_split(
    keys: Iterable[str], valid_fraction: float, test_fraction: float, seed: int, what: str = "keys"
) -> tuple[set[str], set[str], set[str]]:
    """Split ``keys`` (speakers or utterance ids) into (train, valid, test) sets, seeded.

    The sorted unique keys are shuffled with ``random.Random(seed)``; test takes
    ``round(test_fraction * n)`` keys, at least 1 when the fraction is above 0, valid likewise,
    train the rest. The same keys and seed always give the same split. Raises
    :class:`PrepOptionsError` (a ValueError) when a fraction is out of range or train would be
    left empty, naming how many ``what`` (e.g. "speakers") there are.
    """
    keys = sorted(set(keys))
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise PrepOptionsError(f"{name} must be in [0, 1), got {value}")
    n_valid = max(1, round(valid_fraction * len(keys))) if valid_fraction > 0 else 0
    n_test = max(1, round(test_fraction * len(keys))) if test_fraction > 0 else 0
    if n_valid + n_test >= len(keys):
        raise PrepOptionsError(
            f"cannot split {len(keys)} {what} into {n_valid} valid + {n_test} test and a non-empty train set "
            f"(valid_fraction {valid_fraction}, test_fraction {test_fraction}; each held-out set takes at least one): "
            "lower the fractions"
        )
    rng = random.Random(seed)
    rng.shuffle(keys)
    test = set(keys[:n_test])
    valid = set(keys[n_test : n_test + n_valid])
    train = set(keys[n_test + n_valid :])
    return train, valid, test


def skipped_counts(save_folder: str | os.PathLike) -> dict[str, int]:
    """``{reason: count}`` read back from a prepared folder's ``skipped.csv`` (for the CLIs)."""
    path = os.path.join(save_folder, SKIPPED_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return dict(collections.Counter(row["reason"] for row in csv.DictReader(f)))


def summary_from_disk(
    save_folder: str | os.PathLike, manifests: Iterable[str]
) -> tuple[dict[str, tuple[int, float]], dict[str, int]]:
    """``({manifest: (utterances, hours)}, {reason: count})`` read back from ``save_folder``
    (what the CLIs print when the preparation was skipped as already done)."""
    from aode.manifest import read_manifest

    summary = {}
    for name in manifests:
        rows = read_manifest(os.path.join(save_folder, name))
        summary[name] = (len(rows), sum(float(r["duration"]) for r in rows) / 3600)
    return summary, skipped_counts(save_folder)


def print_summary(summary: Mapping[str, tuple[int, float]], skipped_counts: Mapping[str, int] | None = None) -> None:
    """Human-readable summary for the command lines."""
    for name, (count, hours) in summary.items():
        print(f"{name}: {count} utterances, {hours:.2f} h")
    for reason, count in sorted((skipped_counts or {}).items()):
        print(f"skipped {count}: {reason}")


def cli_parser(
    description: str, data_folder_help: str, installed: str | None = None, save_folder: str | None = None
) -> argparse.ArgumentParser:
    """The argument parser of a preparation's command line, with the two flags every one
    takes (``--data_folder``, ``--save_folder``); the corpus adds its own options, each with
    the ``dest`` of the ``prepare_<corpus>`` argument it sets. ``description`` may be the
    module's docstring: its first paragraph is shown.

    A corpus that a Debian package installs gives its folder (``installed``) and a
    ``save_folder``: the defaults of the two flags, which are then optional."""
    parser = argparse.ArgumentParser(description=" ".join(description.strip().split("\n\n")[0].split()))
    if installed is not None:
        data_folder_help += " (default: %(default)s, the Debian install)"
    parser.add_argument("--data_folder", required=installed is None, default=installed, help=data_folder_help)
    if save_folder is None:
        parser.add_argument("--save_folder", required=True, help="where the manifests are written")
    else:
        parser.add_argument(
            "--save_folder", default=save_folder, help="where the manifests are written (default: %(default)s)"
        )
    return parser


def run_cli(
    prepare: Callable[..., Mapping[str, tuple[int, float]] | None],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    manifests: Iterable[str] | Callable[[argparse.Namespace], Iterable[str]] = (),
) -> int:
    """The command line of a preparation: parse ``argv`` with ``parser`` (see
    :func:`cli_parser`), call ``prepare(data_folder, save_folder, **every other option)``
    with INFO logging, and print the summary (:func:`print_summary`); when the folder was
    already prepared, say so and print the summary read back from it.

    ``manifests``: the manifest names read back in that case, or a function of the parsed
    arguments that gives them (when they depend on the options).
    Returns 0; on a layout or option error (:class:`LayoutError`, ValueError) prints one
    ``error: ...`` line to stderr (after the traceback with ``AODE_DEBUG=1``, as every AoDE
    command: :mod:`aode.cli`) and exits with status 2.
    """
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("data_folder", "save_folder")}
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare(args.data_folder, args.save_folder, **options)
    except (LayoutError, ValueError) as err:
        from aode.cli import print_error

        print_error(err)  # one line; AODE_DEBUG=1 adds the traceback
        parser.exit(2)
    if summary is None:
        print(f"already prepared with the same options: {args.save_folder}")
        names = manifests(args) if callable(manifests) else manifests
        summary, _ = summary_from_disk(args.save_folder, names)
    print_summary(summary, skipped_counts(args.save_folder))
    return 0
