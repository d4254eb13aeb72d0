"""PocketSphinx's test recordings: ten real clips at 16 kHz with transcripts (BSD-2-Clause).

Debian and Ubuntu package them::

    apt-get install pocketsphinx-testdata

Two sets under ``data_folder`` (default: the installed :data:`DEBIAN_DATA`):

* ``librivox/``: five sentences of LibriVox's *Sense and Sensibility* (one reader), 3-7 s,
  ``<id>.wav`` listed in ``fileids`` with ``transcription`` lines ``<s> text </s> (<id>)``;
* ``cards/``: five short "cards" commands ("eight of spades four of clubs seven of hearts"),
  ``NNN.wav`` listed in ``cards.fileids`` with ``cards.transcription``.

Each becomes a manifest (``librivox.csv``, ``cards.csv``, the set as ``spk_id``) and
``all.csv`` holds both: a small real-speech test set, too small to split. The transcripts are
lowercase without punctuation: ``wrd_raw`` keeps them as written, ``wrd`` is
:func:`aode.text.normalize_words` of them. The headerless ``*.raw`` recordings and the
feature files (``*.mfc``) beside them are not read.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence

from data_prep.common import LayoutError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import cli_parser
from data_prep.common import finish
from data_prep.common import numbered_lines
from data_prep.common import prep_options
from data_prep.common import require_data_folder
from data_prep.common import run_cli
from data_prep.common import whole_file_row

logger = logging.getLogger(__name__)

CORPUS = "pocketsphinx"
PREP_VERSION = 1
DEBIAN_DATA = "/usr/share/pocketsphinx/test/data"
APT = "apt-get install pocketsphinx-testdata"
# set -> (transcription file, file-id list) inside data_folder/<set>/
SETS = {"librivox": ("transcription", "fileids"), "cards": ("cards.transcription", "cards.fileids")}
ALL = "all.csv"
MANIFESTS = tuple(f"{name}.csv" for name in SETS) + (ALL,)
LINE = re.compile(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^()\s]+)\)\s*$")
MALFORMED = "malformed transcription line (expected '<s> text </s> (id)')"
LIKELY_CAUSE = f"the set folders lack their .wav files or transcription lines (install with `{APT}`)"


def parse_line(line: str) -> tuple[str, str] | None:
    """``(id, text)`` of a Sphinx transcription line ``<s> text </s> (id)``, or None."""
    match = LINE.match(line)
    if not match:
        return None
    return match.group(2), " ".join(match.group(1).split())


def find_data_root(data_folder: str) -> str:
    """The folder holding the ``librivox/`` and ``cards/`` sets: ``data_folder`` or, for an
    unpacked source tree, its ``test/data`` folder."""
    require_data_folder(data_folder, "PocketSphinx", f"librivox/ and cards/ from `{APT}`")
    for folder in (data_folder, os.path.join(data_folder, "test", "data")):
        if all(os.path.isdir(os.path.join(folder, name)) for name in SETS):
            return folder
    raise LayoutError(
        f"PocketSphinx test data not found under {data_folder!r}: expected {', '.join(f'{s}/' for s in SETS)} "
        f"(install them with `{APT}`; default folder {DEBIAN_DATA})"
    )


def _read_set(root: str, name: str, skipped: SkipLog) -> list[dict]:
    transcription, fileids = (os.path.join(root, name, f) for f in SETS[name])
    texts = {}
    if os.path.isfile(transcription):
        for lineno, line in numbered_lines(transcription):
            parsed = parse_line(line)
            if parsed is None:
                skipped.skip(f"{name}_line{lineno}", f"{transcription}:{lineno}", MALFORMED)
                continue
            texts[parsed[0]] = (parsed[1], f"{transcription}:{lineno}")
    else:
        logger.warning("%s: %s has no %s", CORPUS, name, SETS[name][0])
    ids = []
    if os.path.isfile(fileids):
        with open(fileids, encoding="utf-8", errors="replace") as f:
            ids = [line.strip() for line in f if line.strip()]
    wavs = {
        entry[: -len(".wav")]: os.path.join(root, name, entry)
        for entry in sorted(os.listdir(os.path.join(root, name)))
        if entry.endswith(".wav")
    }
    rows = []
    for file_id in list(dict.fromkeys(ids + sorted(set(wavs) | set(texts)))):
        text, where = texts.get(file_id, (None, None))
        row = whole_file_row(f"{name}_{file_id}", wavs.get(file_id), name, text, skipped, source=where or fileids)
        if row is not None:
            rows.append(row)
    return rows


def prepare_pocketsphinx(
    data_folder: str | None = DEBIAN_DATA, save_folder: str = "results/pocketsphinx", seed: int | None = None
) -> dict[str, tuple[int, float]] | None:
    """Write ``librivox.csv``, ``cards.csv`` and ``all.csv`` into ``save_folder``.

    Arguments
    ---------
    data_folder : str or None
        The PocketSphinx test-data folder; None or the default: the Debian install.
    save_folder : str
        Where the manifests, ``skipped.csv`` and ``prep_options.json`` go.
    seed : ignored
        Accepted for a uniform signature; nothing is random here.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    data_folder = data_folder or DEBIAN_DATA
    options = prep_options(CORPUS, PREP_VERSION, data_folder)
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    root = find_data_root(data_folder)
    skipped = SkipLog()
    splits = {f"{name}.csv": _read_set(root, name, skipped) for name in SETS}
    splits[ALL] = [row for name in SETS for row in splits[f"{name}.csv"]]
    return finish(save_folder, splits, skipped, options, CORPUS, likely_cause=LIKELY_CAUSE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(
        __doc__, "the PocketSphinx test-data folder", installed=DEBIAN_DATA, save_folder="results/pocketsphinx"
    )
    return run_cli(prepare_pocketsphinx, parser, argv, MANIFESTS)


if __name__ == "__main__":
    sys.exit(main())
