"""SPGISpeech data preparation (Kensho; earnings calls, fully formatted text).

What the paper did (Plantinga et al., SLT 2024, Table VI): Whisper small.en was fine-tuned
on a random ~1000 h subset of SPGISpeech's official training set and tested on a random
2000-utterance subset of the official validation set.

Layouts accepted (``data_folder`` may be either of the two folders named in each):

* Kensho's download, as lhotse (``recipes/spgispeech.py``) and ESPnet (``egs3/spgispeech``)
  read it: ``train.csv`` and ``val.csv`` BESIDE the ``spgispeech/`` folder that holds
  ``train/<32-hex call id>/<n>.wav`` and ``val/<call id>/<n>.wav``.
* Everything in one folder (icefall, ESPnet ``egs2``): ``train.csv``, ``val.csv``,
  ``train/`` and ``val/`` together, that folder named ``spgispeech/`` or not.

The CSVs and the audio folders are found separately (lhotse's rule): the CSVs in
``data_folder`` or ``data_folder/spgispeech`` (or in the parent, when ``data_folder`` is the
folder holding ``train/`` and ``val/``), the audio in the first of the CSV folder, its
``spgispeech/``, ``data_folder``, ``data_folder/spgispeech`` that holds both ``train/`` and
``val/``. The CSVs are pipe-separated with the header ``wav_filename|wav_filesize|transcript``,
``wav_filename`` relative to the split's audio folder; 16 kHz 16-bit mono WAVs.

What this writes (``save_folder``):

* ``test.csv``: a seeded random subset of ``test_size`` (default 2000, the paper's)
  utterances of the official ``val`` split.
* ``valid.csv``: a seeded hold-out of ``valid_size`` (default 4000, common practice)
  utterances of the official ``train`` split.
* ``train.csv``: the rest of ``train``, optionally capped (seeded) at ``max_train_hours``
  (the paper used ~1000 h; default ``None`` = all).
* ``skipped.csv`` and ``prep_options.json`` (see :mod:`data_prep.common`).

Durations come from ``wav_filesize``: (size - 44) / 32000 s. Every selected file is checked
to exist (a missing file is skipped and logged), but it is NOT opened unless
``check_audio=True``: the full corpus has ~2M files (5,000 h of 5-15 s slices), too many
to open in a preparation.
With ``check_audio`` the duration is read from the file and unreadable/truncated files are
skipped too. Utterances are picked in a seeded random order and checked one by one until each
subset is full, so the files outside the chosen subsets are never touched (and not listed).
Only the byte offset of each CSV line is held in memory (train.csv has ~2M lines); manifest
rows are rebuilt from the CSV when they are written.

A wrong layout fails early: when the first 100 rows picked from a CSV all name missing files,
:class:`LayoutError` names the folder looked in (instead of checking ~2M files for nothing),
and :func:`data_prep.common.finish` refuses a split that comes out empty or a corpus mostly
lost to missing audio.

Speaker = call id. ``wrd_raw`` keeps SPGISpeech's casing, punctuation and symbols ("$5
million", "Q2"); ``wrd`` is :func:`aode.text.normalize_words` of it. (:mod:`aode.manifest`
writes a "$" so that SpeechBrain's CSV reader loads it; ``read_manifest`` gives it back.)
"""

from __future__ import annotations

import array
import logging
import math
import os
import random
import sys
from collections.abc import Sequence

from tqdm import tqdm

from aode.text import normalize_words
from data_prep.common import LOST_REASONS
from data_prep.common import LayoutError
from data_prep.common import PrepOptionsError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import audio_info
from data_prep.common import cli_parser
from data_prep.common import find_root
from data_prep.common import finish
from data_prep.common import prep_options
from data_prep.common import require
from data_prep.common import require_data_folder
from data_prep.common import run_cli

logger = logging.getLogger(__name__)

MANIFESTS = ("train.csv", "valid.csv", "test.csv")
HEADER = ["wav_filename", "wav_filesize", "transcript"]
WAV_HEADER_BYTES = 44
BYTES_PER_SECOND = 32000  # 16 kHz x 16 bit mono
PREP_VERSION = 2  # 2: CSVs and audio found separately (Kensho's layout), generic skip reasons
SPLITS = ("train", "val")
CSV_FILES = tuple(f"{split}.csv" for split in SPLITS)

# Rows checked before concluding that the audio is not where the CSV says: a real split has
# no run of 100 missing files, and stopping there spares stat-ing ~2M paths for nothing.
EARLY_CHECK_ROWS = 100

LAYOUTS = (
    "SPGISpeech layouts accepted: Kensho's download, train.csv and val.csv beside "
    "spgispeech/{train,val}/<call id>/<n>.wav (data_folder = the folder with the CSVs or its "
    "spgispeech/); or train.csv, val.csv, train/ and val/ in one folder (data_folder = that "
    "folder or its parent). The CSVs are pipe-separated, header "
    "wav_filename|wav_filesize|transcript, wav_filename relative to train/ or val/"
)

# Skip reasons: generic, so that the summary groups them (the detail goes to the log).
AUDIO_MISSING = "audio file missing"
NOT_WAV = "wav_filename is not a .wav"
BAD_SIZE = "bad wav_filesize"
NO_AUDIO_DATA = "wav_filesize holds no audio"
UNREADABLE = "unreadable audio"
EMPTY_TRANSCRIPT = "empty transcript"
DUPLICATE = "duplicate wav_filename"


def _unique(paths):
    return list(dict.fromkeys(os.path.normpath(p) for p in paths))


def _has_csvs(folder):
    return all(os.path.isfile(os.path.join(folder, name)) for name in CSV_FILES)


def _has_split_folders(folder):
    return all(os.path.isdir(os.path.join(folder, split)) for split in SPLITS)


def find_csv_dir(data_folder: str) -> str:
    """The folder holding ``train.csv`` and ``val.csv``: ``data_folder``, its
    ``spgispeech/``, or (when ``data_folder`` is the folder with ``train/`` and ``val/`` of
    Kensho's layout) its parent. Raises :class:`LayoutError` if none does."""
    require_data_folder(data_folder, "SPGISpeech")
    candidates = [data_folder, os.path.join(data_folder, "spgispeech")]
    if _has_split_folders(data_folder):
        candidates.append(os.path.dirname(os.path.abspath(data_folder)))
    folder = find_root(_unique(candidates), _has_csvs)
    if folder is not None:
        return folder
    raise LayoutError(f"no train.csv and val.csv in {data_folder!r} (nor in its spgispeech/ folder). " + LAYOUTS)


def find_audio_dir(csv_dir: str, data_folder: str) -> str:
    """The folder holding the ``train/`` and ``val/`` audio folders, looked for (lhotse's
    rule) in ``csv_dir``, ``csv_dir/spgispeech``, ``data_folder``, ``data_folder/spgispeech``.
    Raises :class:`LayoutError` naming the folders looked in if none holds both."""
    candidates = _unique(
        [csv_dir, os.path.join(csv_dir, "spgispeech"), data_folder, os.path.join(data_folder, "spgispeech")]
    )
    folder = find_root(candidates, _has_split_folders)
    if folder is not None:
        return folder
    raise LayoutError(
        f"found train.csv and val.csv in {csv_dir!r} but no audio: none of "
        f"{', '.join(repr(c) for c in candidates)} holds both train/ and val/ folders. " + LAYOUTS
    )


def find_layout(data_folder: str) -> tuple[str, str]:
    """``(csv_dir, audio_dir)``: where ``train.csv``/``val.csv`` are and where the
    ``train/`` and ``val/`` audio folders are (see the module docstring)."""
    csv_dir = find_csv_dir(data_folder)
    return csv_dir, find_audio_dir(csv_dir, data_folder)


class Listing:
    """An SPGISpeech CSV, read lazily: only the byte offset of each line is kept in memory
    (train.csv has ~2M lines), a line is parsed when asked for.

    ``listing[i]`` is ``(line number, wav_filename, wav_filesize string, transcript)``.
    Raises :class:`LayoutError` if the header is not SPGISpeech's.
    """

    def __init__(self, csv_path):
        self.path = csv_path
        offsets = array.array("q")
        with open(csv_path, "rb") as f:
            header = f.readline().decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
            require(
                [h.strip() for h in header.split("|")] == HEADER,
                f"{csv_path!r} does not start with SPGISpeech's header {'|'.join(HEADER)!r} (found {header!r})",
            )
            position = f.tell()
            for line in f:
                if line.strip():
                    offsets.append(position)
                position += len(line)
        self.offsets = offsets
        self._file = None

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, index):
        if self._file is None:
            self._file = open(self.path, "rb")
        self._file.seek(self.offsets[index])
        line = self._file.readline().decode("utf-8", "replace").rstrip("\r\n")
        parts = line.split("|", 2)
        while len(parts) < 3:
            parts.append("")
        # the line number (1-based, header = 1) is exact unless the file has blank lines
        return (index + 2, parts[0].strip(), parts[1].strip(), parts[2])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def utterance_id(wav_filename: str) -> str:
    """``spgi_<call id>_<n>`` from ``<call id>/<n>.wav`` (no slashes, no commas)."""
    stem = os.path.splitext(wav_filename.replace("\\", "/"))[0]
    return "spgi_" + "_".join(p for p in stem.split("/") if p).replace(",", "_")


def _check(split_dir, listing_row, check_audio):
    """``(duration, None)`` for a usable listing row, else ``(None, skip reason)``; the
    per-row detail of a bad row is logged."""
    number, wav_filename, size_str, transcript = listing_row
    path = os.path.join(split_dir, wav_filename)
    if not wav_filename.lower().endswith(".wav"):
        logger.warning("SPGISpeech line %d: wav_filename %r is not a .wav", number, wav_filename)
        return None, NOT_WAV
    if not os.path.isfile(path):
        return None, AUDIO_MISSING
    if check_audio:
        try:
            duration, _ = audio_info(path)
        except ValueError as err:
            logger.warning("SPGISpeech %s: %s", path, err)
            return None, UNREADABLE
    else:
        try:
            duration = (int(size_str) - WAV_HEADER_BYTES) / BYTES_PER_SECOND
        except ValueError:
            logger.warning("SPGISpeech line %d: bad wav_filesize %r", number, size_str)
            return None, BAD_SIZE
        if duration <= 0:
            logger.warning("SPGISpeech line %d: wav_filesize %s holds no audio", number, size_str)
            return None, NO_AUDIO_DATA
    if not normalize_words(transcript):
        return None, EMPTY_TRANSCRIPT
    return duration, None


def _utterance_id_of(listing_row):
    number, wav_filename = listing_row[:2]
    return utterance_id(wav_filename) if wav_filename else f"spgi_line{number}"


class _MissingAudioGuard:
    """Raises :class:`LayoutError` once the first :data:`EARLY_CHECK_ROWS` rows checked from a
    CSV all named missing files: the audio is not where the CSV says (a layout mistake), so
    walking the rest of the ~2M rows would only collect skips for ``finish`` to refuse."""

    def __init__(self, listing, split_dir):
        self.listing = listing
        self.split_dir = split_dir
        self.checked = 0
        self.missing = 0

    def note(self, reason: str | None, path: str) -> None:
        if self.checked >= EARLY_CHECK_ROWS:
            return
        self.checked += 1
        self.missing += reason == AUDIO_MISSING
        if self.checked == EARLY_CHECK_ROWS and self.missing == EARLY_CHECK_ROWS:
            raise LayoutError(
                f"the first {EARLY_CHECK_ROWS} rows picked from {self.listing.path!r} all name "
                f"missing files in {os.path.abspath(self.split_dir)!r} (e.g. {path!r}); "
                "the audio is not where the CSV says. " + LAYOUTS
            )


class _Rows:
    """The manifest rows of chosen listing lines, rebuilt on each iteration from the listing
    (so the ~2M rows of a full training set are never all held in memory)."""

    def __init__(self, listing, split_dir, indices, durations):
        order = sorted(range(len(indices)), key=indices.__getitem__)
        self.listing = listing
        self.split_dir = split_dir
        self.indices = array.array("q", (indices[i] for i in order))
        self.durations = array.array("d", (durations[i] for i in order))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        for index, duration in zip(self.indices, self.durations):
            yield _row(self.split_dir, self.listing[index], duration)

    def ids(self) -> list[str]:
        return [row["ID"] for row in self]


def _row(split_dir, listing_row, duration):
    _, wav_filename, _, transcript = listing_row
    # floored to the millisecond: the manifest keeps 3 decimals, and a stop rounded up past
    # the last sample would put the segment outside its file
    duration = math.floor(duration * 1000) / 1000
    text = " ".join(transcript.split())
    call_id = os.path.dirname(wav_filename.replace("\\", "/")).split("/")[-1] or "unknown"
    return {
        "ID": utterance_id(wav_filename),
        "duration": duration,
        "wav": os.path.abspath(os.path.join(split_dir, wav_filename)),
        "start": 0.0,
        "stop": duration,
        "spk_id": call_id,
        "wrd": normalize_words(text),
        "wrd_raw": text,
    }


def _pick(listing, split_dir, order, quotas, check_audio, skipped, desc):
    """Walk ``listing`` in ``order``, checking rows, and fill ``quotas``.

    ``quotas`` is a list of ``(max utterances or None, max hours or None)``; each row that
    passes goes to the first quota not yet full. Stops once every quota is full. Returns one
    :class:`_Rows` per quota, each in corpus order. Raises :class:`LayoutError` early when the
    first rows checked all name missing files (see :class:`_MissingAudioGuard`).
    """
    indices = [array.array("q") for _ in quotas]
    durations = [array.array("d") for _ in quotas]
    hours = [0.0 for _ in quotas]
    current = 0
    seen = set()  # hashes of the accepted wav_filenames (a listed file twice is skipped)
    guard = _MissingAudioGuard(listing, split_dir)

    def full(i: int) -> bool:
        count, max_hours = quotas[i]
        if count is not None and len(indices[i]) >= count:
            return True
        return max_hours is not None and hours[i] >= max_hours

    while current < len(quotas) and full(current):
        current += 1
    for index in tqdm(order, desc=desc, unit="utt", mininterval=2.0):
        if current >= len(quotas):
            break
        listing_row = listing[index]
        duration, reason = _check(split_dir, listing_row, check_audio)
        path = os.path.abspath(os.path.join(split_dir, listing_row[1]))
        guard.note(reason, path)
        key = hash(listing_row[1])
        if reason is None and key in seen:
            reason = DUPLICATE
        if reason is not None:
            skipped.skip(_utterance_id_of(listing_row), path, reason)
            continue
        seen.add(key)
        indices[current].append(index)
        durations[current].append(duration)
        hours[current] += duration / 3600
        while current < len(quotas) and full(current):
            current += 1
    return [_Rows(listing, split_dir, i, d) for i, d in zip(indices, durations)]


def prepare_spgispeech(
    data_folder: str,
    save_folder: str,
    test_size: int | None = 2000,
    valid_size: int = 4000,
    max_train_hours: float | None = None,
    check_audio: bool = False,
    seed: int = 1234,
) -> dict[str, tuple[int, float]] | None:
    """Write SPGISpeech's ``train.csv``, ``valid.csv``, ``test.csv`` in ``save_folder``.

    Paper (Table VI): test = a random 2000-utterance subset of the official val split; Whisper
    trained on a random ~1000 h subset of train. Here:

    Arguments
    ---------
    data_folder : str
        The unpacked corpus: the folder with ``train.csv`` and ``val.csv``, or the folder
        with ``train/`` and ``val/`` (either layout of the module docstring).
    save_folder : str
        Where the manifests go.
    test_size : int or None
        Utterances drawn (seeded) from the official val split as test; None = all of val.
    valid_size : int
        Utterances of the official train split held out (seeded) as validation.
    max_train_hours : float or None
        Seeded random cap on the training hours (paper: ~1000); None = all the rest.
    check_audio : bool
        Open every selected file (duration from the audio, unreadable files skipped)
        instead of trusting ``wav_filesize``. Off by default: ~2M files.
    seed : int
        Seed of the random subsets.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    was already prepared with the same options (nothing is rewritten then). Raises
    :class:`LayoutError` when the layout is not one of those accepted or the audio is not
    where the CSVs say (then nothing is marked prepared).
    """
    options = prep_options(
        "spgispeech",
        PREP_VERSION,
        data_folder,
        test_size=test_size,
        valid_size=valid_size,
        max_train_hours=max_train_hours,
        check_audio=bool(check_audio),
        seed=seed,
    )
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("SPGISpeech already prepared in %s, skipping", save_folder)
        return None
    if test_size is not None and test_size < 0 or valid_size < 0:
        raise PrepOptionsError("test_size and valid_size must not be negative")

    csv_dir, audio_dir = find_layout(data_folder)
    logger.info("SPGISpeech: CSVs in %s, audio in %s", csv_dir, audio_dir)
    skipped = SkipLog()

    val = Listing(os.path.join(csv_dir, "val.csv"))
    train_listing = Listing(os.path.join(csv_dir, "train.csv"))
    try:  # the listings stay open until finish() has written the rows rebuilt from them
        test, valid, train = _pick_splits(
            val, train_listing, audio_dir, test_size, valid_size, max_train_hours, check_audio, seed, skipped
        )
        splits = {"train.csv": train, "valid.csv": valid, "test.csv": test}
        return finish(
            save_folder,
            splits,
            skipped,
            options,
            "SPGISpeech",
            likely_cause=_likely_cause(audio_dir),
            lost_reasons=(AUDIO_MISSING,) + LOST_REASONS,
        )
    finally:
        val.close()
        train_listing.close()


def check_sizes(valid_size: int, n_train: int, csv_path: str) -> None:
    """Raise :class:`PrepOptionsError` when ``valid_size`` leaves no row of the official train
    split (``n_train`` rows of train.csv) for training: the size and the split's, before any
    train file is checked (else train.csv comes out empty and the message blames the audio).
    A ``test_size`` above the val split's size takes all of val, with a warning."""
    if valid_size >= n_train:
        raise PrepOptionsError(
            f"SPGISpeech: valid_size {valid_size} takes the whole official train split ({n_train} utterances in "
            f"{csv_path}), leaving none for training: give at most {max(n_train - 1, 0)}"
        )


def _pick_splits(val, train_listing, audio_dir, test_size, valid_size, max_train_hours, check_audio, seed, skipped):
    """``(test, valid, train)``: test drawn (seeded) from val, valid then train from train."""
    order = list(range(len(val)))
    random.Random(seed).shuffle(order)
    (test,) = _pick(
        val,
        os.path.join(audio_dir, "val"),
        order,
        [(test_size, None)],
        check_audio,
        skipped,
        "SPGISpeech val",
    )
    check_sizes(valid_size, len(train_listing), train_listing.path)
    order = list(range(len(train_listing)))
    random.Random(seed + 1).shuffle(order)
    valid, train = _pick(
        train_listing,
        os.path.join(audio_dir, "train"),
        order,
        [(valid_size, None), (None, max_train_hours)],
        check_audio,
        skipped,
        "SPGISpeech train",
    )
    if test_size and len(test) < test_size:
        logger.warning("SPGISpeech: only %d usable val utterances for test_size=%d", len(test), test_size)
    if len(valid) < valid_size:
        logger.warning("SPGISpeech: only %d usable train utterances for valid_size=%d", len(valid), valid_size)
    elif not train and valid_size and (max_train_hours is None or max_train_hours > 0):
        raise PrepOptionsError(
            f"SPGISpeech: valid_size {valid_size} took every usable utterance of the official train split "
            f"({len(train_listing)} listed; the other {len(train_listing) - valid_size} were skipped: audio "
            "missing, empty text, duplicates), leaving none for training: give a smaller valid_size"
        )
    return test, valid, train


def _likely_cause(audio_dir):
    """What finish() reports when a split came out empty or most files were missing."""
    return (
        "the audio is not where train.csv/val.csv say: their wav_filename <call id>/<n>.wav "
        f"was looked up under {os.path.join(audio_dir, 'train')!r} and "
        f"{os.path.join(audio_dir, 'val')!r} (audio partly unpacked or moved?). " + LAYOUTS
    )


def _positive_or_none(value):
    return None if value.lower() in ("none", "all", "") else float(value)


def _count_or_all(value):
    return None if value.lower() in ("none", "all") else int(value)


DATA_FOLDER_HELP = (
    "unpacked SPGISpeech: the folder with train.csv and val.csv, or the folder with train/ and val/ "
    "(Kensho's layout, CSVs beside spgispeech/, or all in one folder)"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, DATA_FOLDER_HELP)
    parser.add_argument(
        "--test_size",
        type=_count_or_all,
        default=2000,
        help="utterances of the official val split drawn as test "
        "(default 2000, the paper's; 'all' = the whole val split)",
    )
    parser.add_argument(
        "--valid_size", type=int, default=4000, help="train utterances held out as validation (default 4000)"
    )
    parser.add_argument(
        "--max_train_hours",
        type=_positive_or_none,
        default=None,
        help="seeded random cap on training hours (paper: ~1000; default: all)",
    )
    parser.add_argument(
        "--check_audio",
        action="store_true",
        help="open every selected WAV (slow on the full corpus) instead of "
        "trusting wav_filesize; unreadable files are skipped",
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random subsets")
    return run_cli(prepare_spgispeech, parser, argv, MANIFESTS)


if __name__ == "__main__":
    sys.exit(main())
