"""SPGISpeech data preparation (Kensho; earnings calls, fully formatted text).

What the paper did (Plantinga et al., SLT 2024, Table VI): Whisper small.en was fine-tuned
on a random ~1000 h subset of SPGISpeech's official training set and tested on a random
2000-utterance subset of the official validation set.

Layout (see ``spgispeech/{train,val}/<32-hex call id>/<n>.wav`` plus ``train.csv`` and
``val.csv``; the ``spgispeech/`` level is optional): the CSVs are pipe-separated with the
header ``wav_filename|wav_filesize|transcript``, 16 kHz 16-bit mono WAVs.

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
``check_audio=True``: the full corpus has ~5M files, too many to open in a preparation.
With ``check_audio`` the duration is read from the file and unreadable/truncated files are
skipped too. Utterances are picked in a seeded random order and checked one by one until each
subset is full, so the files outside the chosen subsets are never touched (and not listed).
Only the byte offset of each CSV line is held in memory (train.csv has ~5M lines); manifest
rows are rebuilt from the CSV when they are written.

Speaker = call id. ``wrd_raw`` keeps SPGISpeech's casing and punctuation; ``wrd`` is
:func:`aode.text.normalize_words` of it.
"""

import argparse
import array
import logging
import math
import os
import random
import sys

if __name__ == "__main__":  # run as a script: make the repository's packages importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm

from aode.text import normalize_words
from data_prep.common import (
    LayoutError,
    SkipLog,
    already_prepared,
    audio_info,
    finish,
    run_cli,
    require,
)

logger = logging.getLogger(__name__)

MANIFESTS = ("train.csv", "valid.csv", "test.csv")
HEADER = ["wav_filename", "wav_filesize", "transcript"]
WAV_HEADER_BYTES = 44
BYTES_PER_SECOND = 32000  # 16 kHz x 16 bit mono
PREP_VERSION = 1


def find_root(data_folder):
    """The folder holding SPGISpeech's ``train.csv`` and ``val.csv`` (with or without the
    ``spgispeech/`` level), or raise :class:`LayoutError`."""
    require(os.path.isdir(data_folder), f"SPGISpeech data_folder {data_folder!r} does not exist")
    for root in (data_folder, os.path.join(data_folder, "spgispeech")):
        if os.path.isfile(os.path.join(root, "train.csv")) and os.path.isfile(
            os.path.join(root, "val.csv")
        ):
            return root
    raise LayoutError(
        f"no train.csv and val.csv under {data_folder!r} (nor under its spgispeech/ folder); "
        "SPGISpeech's layout is spgispeech/{train,val}/<call id>/<n>.wav plus "
        "spgispeech/train.csv and spgispeech/val.csv (pipe-separated, header "
        "wav_filename|wav_filesize|transcript)"
    )


class Listing:
    """An SPGISpeech CSV, read lazily: only the byte offset of each line is kept in memory
    (train.csv has ~5M lines), a line is parsed when asked for.

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
                f"{csv_path!r} does not start with SPGISpeech's header "
                f"{'|'.join(HEADER)!r} (found {header!r})",
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

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def utterance_id(wav_filename):
    """``spgi_<call id>_<n>`` from ``<call id>/<n>.wav`` (no slashes, no commas)."""
    stem = os.path.splitext(wav_filename.replace("\\", "/"))[0]
    return "spgi_" + "_".join(p for p in stem.split("/") if p).replace(",", "_")


def _check(split_dir, listing_row, check_audio, skipped):
    """The duration of one listing row, or None (after logging why) if it is unusable."""
    number, wav_filename, size_str, transcript = listing_row
    uid = utterance_id(wav_filename) if wav_filename else f"spgi_line{number}"
    path = os.path.abspath(os.path.join(split_dir, wav_filename))
    if not wav_filename.lower().endswith(".wav"):
        skipped.skip(uid, path, f"line {number}: wav_filename {wav_filename!r} is not a .wav")
        return None
    if not os.path.isfile(path):
        skipped.skip(uid, path, "audio file missing")
        return None
    if check_audio:
        try:
            duration, _ = audio_info(path)
        except ValueError as err:
            skipped.skip(uid, path, str(err))
            return None
    else:
        try:
            duration = (int(size_str) - WAV_HEADER_BYTES) / BYTES_PER_SECOND
        except ValueError:
            skipped.skip(uid, path, f"line {number}: bad wav_filesize {size_str!r}")
            return None
        if duration <= 0:
            skipped.skip(uid, path, f"line {number}: wav_filesize {size_str} holds no audio")
            return None
    if not normalize_words(transcript):
        skipped.skip(uid, path, "empty transcript")
        return None
    return duration


class _Rows:
    """The manifest rows of chosen listing lines, rebuilt on each iteration from the listing
    (so the ~5M rows of a full training set are never all held in memory)."""

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

    def ids(self):
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
    :class:`_Rows` per quota, each in corpus order.
    """
    indices = [array.array("q") for _ in quotas]
    durations = [array.array("d") for _ in quotas]
    hours = [0.0 for _ in quotas]
    current = 0
    seen = set()  # hashes of the accepted wav_filenames (a listed file twice is skipped)

    def full(i):
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
        duration = _check(split_dir, listing_row, check_audio, skipped)
        if duration is None:
            continue
        key = hash(listing_row[1])
        if key in seen:
            skipped.skip(utterance_id(listing_row[1]), os.path.join(split_dir, listing_row[1]),
                         "duplicate wav_filename")
            continue
        seen.add(key)
        indices[current].append(index)
        durations[current].append(duration)
        hours[current] += duration / 3600
        while current < len(quotas) and full(current):
            current += 1
    return [_Rows(listing, split_dir, i, d) for i, d in zip(indices, durations)]


def prepare_spgispeech(
    data_folder,
    save_folder,
    test_size=2000,
    valid_size=4000,
    max_train_hours=None,
    check_audio=False,
    seed=1234,
):
    """Write SPGISpeech's ``train.csv``, ``valid.csv``, ``test.csv`` in ``save_folder``.

    Paper (Table VI): test = a random 2000-utterance subset of the official val split; Whisper
    trained on a random ~1000 h subset of train. Here:

    Arguments
    ---------
    data_folder : str
        The unpacked corpus (``spgispeech/`` or the folder that holds it).
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
        instead of trusting ``wav_filesize``. Off by default: ~5M files.
    seed : int
        Seed of the random subsets.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    was already prepared with the same options (nothing is rewritten then).
    """
    options = {
        "corpus": "spgispeech",
        "prep_version": PREP_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "test_size": test_size,
        "valid_size": valid_size,
        "max_train_hours": max_train_hours,
        "check_audio": bool(check_audio),
        "seed": seed,
    }
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("SPGISpeech already prepared in %s, skipping", save_folder)
        return None
    if test_size is not None and test_size < 0 or valid_size < 0:
        raise ValueError("test_size and valid_size must not be negative")

    root = find_root(data_folder)
    skipped = SkipLog()

    val = Listing(os.path.join(root, "val.csv"))
    train_listing = Listing(os.path.join(root, "train.csv"))
    order = list(range(len(val)))
    random.Random(seed).shuffle(order)
    (test,) = _pick(
        val, os.path.join(root, "val"), order, [(test_size, None)], check_audio, skipped,
        "SPGISpeech val",
    )
    order = list(range(len(train_listing)))
    random.Random(seed + 1).shuffle(order)
    valid, train = _pick(
        train_listing, os.path.join(root, "train"), order,
        [(valid_size, None), (None, max_train_hours)], check_audio, skipped,
        "SPGISpeech train",
    )
    del order
    if test_size and len(test) < test_size:
        logger.warning("SPGISpeech: only %d usable val utterances for test_size=%d",
                       len(test), test_size)
    if len(valid) < valid_size:
        logger.warning("SPGISpeech: only %d usable train utterances for valid_size=%d",
                       len(valid), valid_size)

    splits = {"train.csv": train, "valid.csv": valid, "test.csv": test}
    try:
        return finish(save_folder, splits, skipped, options, "SPGISpeech")
    finally:
        val.close()
        train_listing.close()



def _positive_or_none(value):
    return None if value.lower() in ("none", "all", "") else float(value)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare SPGISpeech manifests (train/valid/test CSVs) for AoDE. "
        "Paper: test = random 2000 val utterances; Whisper trained on ~1000 h of train.",
    )
    parser.add_argument("--data_folder", required=True,
                        help="unpacked SPGISpeech (the spgispeech/ folder or its parent)")
    parser.add_argument("--save_folder", required=True, help="where the manifests are written")
    parser.add_argument("--test_size", type=lambda v: None if v.lower() in ("none", "all") else int(v),
                        default=2000,
                        help="utterances of the official val split drawn as test "
                        "(default 2000, the paper's; 'all' = the whole val split)")
    parser.add_argument("--valid_size", type=int, default=4000,
                        help="train utterances held out as validation (default 4000)")
    parser.add_argument("--max_train_hours", type=_positive_or_none, default=None,
                        help="seeded random cap on training hours (paper: ~1000; default: all)")
    parser.add_argument("--check_audio", action="store_true",
                        help="open every selected WAV (slow on the full corpus) instead of "
                        "trusting wav_filesize; unreadable files are skipped")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random subsets")
    args = parser.parse_args(argv)
    return run_cli(prepare_spgispeech, args.data_folder, args.save_folder, MANIFESTS,
                   test_size=args.test_size, valid_size=args.valid_size,
                   max_train_hours=args.max_train_hours, check_audio=args.check_audio, seed=args.seed)

if __name__ == "__main__":
    sys.exit(main())
