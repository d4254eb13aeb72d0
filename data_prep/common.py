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

import soundfile as sf

from aode.manifest import write_manifest

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


def audio_info(path):
    """(duration in seconds, sample rate) of an audio file, or raise ValueError if unreadable.

    Truncated files (header promising more frames than the file holds) are caught here by
    reading the last frame.
    """
    try:
        info = sf.info(path)
        if info.frames <= 0:
            raise ValueError("no audio frames")
        with sf.SoundFile(path) as f:
            f.seek(info.frames - 1)
            if len(f.read(1)) != 1:
                raise ValueError("truncated")
        return info.frames / info.samplerate, info.samplerate
    except (RuntimeError, sf.LibsndfileError, ValueError) as err:
        raise ValueError(f"unreadable audio ({err})") from err


def finish(save_folder, splits, skipped, options, corpus):
    """Write each split's manifest, the skip log and the options; log a summary.

    ``splits`` maps manifest file name (e.g. "train.csv") to its list of rows. The options
    file is written last, so a crash before it means the next run redoes the preparation.
    Returns a dict ``{manifest: (utterances, hours)}``.
    """
    os.makedirs(save_folder, exist_ok=True)
    summary = {}
    for name, rows in splits.items():
        write_manifest(os.path.join(save_folder, name), rows)
        hours = sum(float(r["duration"]) for r in rows) / 3600
        summary[name] = (len(rows), hours)
        logger.info("%s %s: %d utterances, %.2f h", corpus, name, len(rows), hours)
    skipped.write(save_folder)
    for reason, count in sorted(skipped.counts().items()):
        logger.info("%s skipped %d: %s", corpus, count, reason)
    with open(os.path.join(save_folder, OPTIONS_FILE), "w", encoding="utf-8") as f:
        json.dump(_jsonable(options), f, indent=1, sort_keys=True)
    return summary


def print_summary(summary, skipped_counts=None):
    """Human-readable summary for the command lines."""
    for name, (count, hours) in summary.items():
        print(f"{name}: {count} utterances, {hours:.2f} h")
    for reason, count in sorted((skipped_counts or {}).items()):
        print(f"skipped {count}: {reason}")
