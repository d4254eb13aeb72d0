"""LibriSpeech test-clean and test-other (OpenSLR 12, CC BY 4.0): the forgetting sets.

What the paper did: every model (pretrained, experts, merges) is evaluated on LibriSpeech
test-clean and test-other, and "Forgetting %" compares their WER with the pretrained model's
(paper Tables VII, VIII). No LibriSpeech audio is used for training.

Layout expected (``data_folder`` is the ``LibriSpeech`` folder or its parent; the same layout
lhotse's ``recipes/librispeech.py`` and the HF ``librispeech_asr`` loader read)::

    LibriSpeech/test-clean/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    LibriSpeech/test-clean/<spk>/<chapter>/<spk>-<chapter>.trans.txt   "<utt id> <UPPERCASE TEXT>"

Each split becomes ``<split with _ for ->.csv``: ``test_clean.csv``, ``test_other.csv``.
Splits named in ``splits`` (any LibriSpeech split name works) must all be there. By default
(``splits=None``) test-clean and test-other are prepared, or the one of them the user has:
a missing one is left out with a warning (its manifest is not written), unless its tarball
(``test-other.tar.gz``) lies in ``data_folder``, which means "extract it first" and is an
error. A split folder that yields no utterance is an error too
(:func:`data_prep.common.finish`), never an empty manifest.

Text: LibriSpeech transcripts are uppercase without punctuation. ``wrd_raw`` keeps them
exactly as given (no sentence casing is invented); ``wrd`` is their
:func:`aode.text.normalize_words` form (lowercase, apostrophes kept: "DON'T" -> "don't").
Audio is 16 kHz FLAC, read by soundfile.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from collections.abc import Sequence

from tqdm import tqdm

from data_prep.common import LayoutError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import cli_parser
from data_prep.common import find_root
from data_prep.common import finish
from data_prep.common import numbered_lines
from data_prep.common import prep_options
from data_prep.common import require_data_folder
from data_prep.common import run_cli
from data_prep.common import whole_file_row

logger = logging.getLogger(__name__)

CORPUS = "librispeech"
SPLITS = ("test-clean", "test-other")
PREP_VERSION = 1
MALFORMED = "malformed .trans.txt line"
LIKELY_CAUSE = (
    "the split folder lacks <spk>/<chapter>/<spk>-<chapter>-<utt>.flac files with their "
    "<spk>-<chapter>.trans.txt (an interrupted or partial extraction of the tarball)"
)


def manifest_name(split: str) -> str:
    """``test-clean`` -> ``test_clean.csv``."""
    return split.replace("-", "_") + ".csv"


def _candidates(data_folder):
    """Where the split folders may be: ``data_folder/LibriSpeech``, then ``data_folder``."""
    return [os.path.join(data_folder, "LibriSpeech"), data_folder]


def find_librispeech_root(data_folder: str, splits: Sequence[str]) -> str:
    """The ``LibriSpeech`` folder holding ``splits`` (``data_folder`` or its child)."""
    require_data_folder(data_folder, "LibriSpeech", f"LibriSpeech/{splits[0]}/ (from {splits[0]}.tar.gz)")
    candidates = _candidates(data_folder)
    root = find_root(candidates, lambda folder: all(os.path.isdir(os.path.join(folder, split)) for split in splits))
    if root is not None:
        return root
    tars = [f"{s}.tar.gz" for s in splits if os.path.isfile(os.path.join(data_folder, f"{s}.tar.gz"))]
    missing = [s for s in splits if not any(os.path.isdir(os.path.join(r, s)) for r in candidates)]
    raise LayoutError(
        f"LibriSpeech layout not found under {data_folder!r}: expected "
        + ", ".join(f"LibriSpeech/{s}/<spk>/<chapter>/" for s in splits)
        + f" (missing: {', '.join(missing) or 'splits spread over two folders'})"
        + (f"; extract {', '.join(tars)} first" if tars else "")
    )


def present_default_splits(data_folder: str) -> list[str]:
    """The default splits (test-clean, test-other) the user has, for ``splits=None``.

    A missing one is left out with a warning; its tarball in ``data_folder`` (not yet
    extracted), or none of them present, raise :class:`LayoutError` via
    :func:`find_librispeech_root`.
    """
    require_data_folder(data_folder, "LibriSpeech", f"LibriSpeech/{SPLITS[0]}/ (from {SPLITS[0]}.tar.gz)")
    for root in _candidates(data_folder):
        present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
        unextracted = [
            s for s in SPLITS if s not in present and os.path.isfile(os.path.join(data_folder, f"{s}.tar.gz"))
        ]
        if present and not unextracted:
            missing = [s for s in SPLITS if s not in present]
            if missing:
                logger.warning(
                    "%s: %s not found under %s; preparing %s only (name the splits to require them)",
                    CORPUS,
                    ", ".join(missing),
                    root,
                    ", ".join(present),
                )
            return present
    return list(SPLITS)  # find_librispeech_root names what is missing


def _read_split(split_dir, split, skipped):
    """Rows of one split folder: FLACs paired with their ``.trans.txt`` lines."""
    audio, texts = {}, {}
    for folder, dirs, files in os.walk(split_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.endswith(".flac"):
                audio[name[: -len(".flac")]] = path
            elif name.endswith(".trans.txt"):
                for lineno, line in numbered_lines(path, encoding="utf-8-sig"):
                    fields = line.split(maxsplit=1)
                    utt_id = fields[0]
                    if utt_id in texts:
                        skipped.skip(utt_id, f"{path}:{lineno}", "duplicate utterance id")
                        continue
                    texts[utt_id] = (" ".join(fields[1].split()) if len(fields) > 1 else "", f"{path}:{lineno}")
    rows = []
    for utt_id in tqdm(sorted(set(audio) | set(texts)), desc=f"{CORPUS} {split}", unit="file"):
        text, where = texts.get(utt_id, (None, None))
        row = whole_file_row(utt_id, audio.get(utt_id), utt_id.split("-")[0], text, skipped, source=where)
        if row is not None:
            rows.append(row)
    return rows


def prepare_librispeech(
    data_folder: str, save_folder: str, splits: Iterable[str] | None = None, seed: int | None = None
) -> dict[str, tuple[int, float]] | None:
    """Write one manifest per LibriSpeech split into ``save_folder``.

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder or its parent.
    save_folder : str
        Where ``test_clean.csv``, ``test_other.csv`` (one ``<split>.csv`` per split, ``-``
        written ``_``), ``skipped.csv`` and ``prep_options.json`` go.
    splits : sequence of str or None
        LibriSpeech split folders to prepare, each required. None (default): test-clean and
        test-other, or the one of them that is present (module doc).
    seed : ignored
        Accepted for a uniform signature; nothing is random here.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    splits = wanted_splits(data_folder, splits)
    if not splits:
        raise ValueError("splits is empty")
    manifests = [manifest_name(s) for s in splits]
    options = prep_options(CORPUS, PREP_VERSION, data_folder, splits=splits)
    if already_prepared(save_folder, manifests, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    root = find_librispeech_root(data_folder, splits)
    skipped = SkipLog()
    out = {}
    for split, name in zip(splits, manifests):
        out[name] = _read_split(os.path.join(root, split), split, skipped)
    return finish(save_folder, out, skipped, options, CORPUS, likely_cause=LIKELY_CAUSE)


def wanted_splits(data_folder: str, splits: Iterable[str] | None = None) -> list[str]:
    """``splits`` without repeats, or for None the default splits present
    (:func:`present_default_splits`)."""
    if splits is None:
        splits = present_default_splits(data_folder)
    return list(dict.fromkeys(splits))


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, "the LibriSpeech folder or the folder holding it")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="LibriSpeech split folders to prepare, each required (default: "
        "test-clean and test-other, or the one of them that is present)",
    )
    return run_cli(
        prepare_librispeech,
        parser,
        argv,
        lambda args: [manifest_name(s) for s in wanted_splits(args.data_folder, args.splits)],
    )


if __name__ == "__main__":
    sys.exit(main())
