"""JL Corpus: emotional New Zealand English read speech (Kaggle ``tli725/jl-corpus``).

What the paper did: fine-tuned the CTC model (Parakeet) on JL Corpus, a small pool of
repeated phrases spoken with different emotions; it is easy to memorise and is the domain
whose expert forgets the most (paper Tables III, IV, VII, VIII). The paper states no split;
its 0.28 % test WER suggests a random utterance-level split, which is the default here
(``split_by="utterance"``, 10 % validation, 10 % test, seeded); ``split_by="speaker"`` holds
out whole speakers instead (4 speakers: one each for validation and test).

Layout expected under ``data_folder`` (the Kaggle download; checked against a public mirror,
michen00/multilingual_speech_valence_classification_datasets ``datasets/jl-corpus/``, and
nkululeko's ``data/jl/process_database.py``, which globs the same folder)::

    Raw JL corpus (unchecked and unannotated)/JL(wav+txt)/female1_angry_7b_1.wav
    Raw JL corpus (unchecked and unannotated)/JL(wav+txt)/female1_angry_7b_1.txt
        (holding "Carl leaps into a jeep.", sometimes with a final newline)

The same download also holds ``Perception test material on Qualtrics/{main,sub}_training/``
(copies of some WAVs, without transcripts, and MP3s), ``Picture Stimuli/`` and documents;
they are not read when the ``JL(wav+txt)`` folder is there.

When a ``JL(wav+txt)`` folder exists (``data_folder`` itself or anywhere below; hidden and
``__MACOSX`` folders are not searched), only it is read (several: each, shallowest first);
otherwise ``<stem>.wav`` + ``<stem>.txt`` pairs are collected from anywhere under
``data_folder`` (a stem found twice is kept once, the other copies skipped as duplicates).

Stems are ``(fe)male[12]_<emotion>_<sentence><a|b>_<session>``: the speaker is the first
field (``female1``), the emotion the second (written to the extra manifest column
``emotion``). WAV files whose name does not start with ``<(fe)male><n>_<emotion>`` are
skipped with a reason; other text files (readmes) are ignored. A transcript that cannot be
read is skipped with the reason, like unreadable audio. Audio is 44.1 kHz and is not
resampled here.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence

from data_prep.common import PrepOptionsError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import cli_parser
from data_prep.common import finish
from data_prep.common import folders_below
from data_prep.common import prep_options
from data_prep.common import require
from data_prep.common import require_data_folder
from data_prep.common import run_cli
from data_prep.common import seeded_split
from data_prep.common import transcribed_stems
from data_prep.common import whole_file_row

logger = logging.getLogger(__name__)

CORPUS = "jl_corpus"
WAV_TXT_DIR = "JL(wav+txt)"
RAW_DIR = "Raw JL corpus (unchecked and unannotated)"
MANIFESTS = ("train.csv", "valid.csv", "test.csv")
SPLIT_BY = ("utterance", "speaker")
PREP_VERSION = 1
# loose: what the speaker and emotion need; STRICT: the documented full stem
LOOSE = re.compile(r"^((?:fe)?male\d+)_([A-Za-z]+)(?:_|$)", re.IGNORECASE)
STRICT = re.compile(r"^(?:fe)?male\d+_[A-Za-z]+_\d+[ab]_\d+$", re.IGNORECASE)
BAD_NAME = "file name is not <(fe)male><n>_<emotion>_<sentence><a|b>_<session>"
LIKELY_CAUSE = (
    f"the .txt transcripts are not beside the .wav files of the same name (in '{WAV_TXT_DIR}' "
    "when that folder exists): e.g. only part of the download extracted, or the .txt files "
    "left out when copying"
)


def parse_stem(stem: str) -> tuple[str, str] | None:
    """(speaker, emotion) of a JL stem (``female1_angry_7b_1`` -> ``female1``, ``angry``),
    or None when the name does not carry them."""
    match = LOOSE.match(stem)
    if not match:
        return None
    return match.group(1).lower(), match.group(2).lower()


def _search_roots(data_folder):
    """Every ``JL(wav+txt)`` folder at or below ``data_folder`` (shallowest first, none
    inside another), or ``[data_folder]`` when there is none."""
    if os.path.basename(os.path.normpath(data_folder)) == WAV_TXT_DIR:
        return [data_folder]
    roots = [
        folder
        for folder in folders_below(data_folder)
        if os.path.basename(folder) == WAV_TXT_DIR
        and WAV_TXT_DIR not in os.path.relpath(folder, data_folder).split(os.sep)[:-1]
    ]
    return roots or [data_folder]


def _files(roots, skipped):
    """({stem: wav}, {stem: txt}) under ``roots``; duplicates and odd wav names skipped."""
    wavs, txts = {}, {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                stem, ext = os.path.splitext(name)
                ext = ext.lower()
                if ext not in (".wav", ".txt") or name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                if parse_stem(stem) is None:
                    if ext == ".wav":
                        skipped.skip(stem, path, BAD_NAME)
                    continue
                found = wavs if ext == ".wav" else txts
                if stem in found:
                    skipped.skip(stem, path, f"duplicate of {found[stem]}")
                    continue
                found[stem] = path
    return wavs, txts


def _collect(data_folder, skipped):
    require_data_folder(data_folder, "JL Corpus", f"'{RAW_DIR}/{WAV_TXT_DIR}/<stem>.wav' and '<stem>.txt'")
    roots = _search_roots(data_folder)
    wavs, txts = _files(roots, skipped)
    zips = [n for n in sorted(os.listdir(data_folder)) if n.lower().endswith(".zip")]
    require(
        wavs or txts,
        f"JL Corpus layout not found under {data_folder!r}: expected "
        f"'{RAW_DIR}/{WAV_TXT_DIR}/<stem>.wav' + '<stem>.txt' with stems like "
        "female1_angry_7b_1 (searched "
        + ", ".join(repr(r) for r in roots)
        + ")"
        + (f"; unzip {', '.join(zips)} first" if zips else ""),
    )
    irregular = sorted(s for s in set(wavs) | set(txts) if not STRICT.match(s))
    if irregular:
        logger.warning("%s: %d stems are not of the documented form (e.g. %s)", CORPUS, len(irregular), irregular[0])
    rows = []
    for stem, txt, text in transcribed_stems(wavs, txts, skipped, CORPUS):
        speaker, emotion = parse_stem(stem)
        row = whole_file_row(stem, wavs.get(stem), speaker, text, skipped, source=txt, emotion=emotion)
        if row is not None:
            rows.append(row)
    return rows


def prepare_jl_corpus(
    data_folder: str,
    save_folder: str,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_by: str = "utterance",
    seed: int = 1234,
) -> dict[str, tuple[int, float]] | None:
    """Write train/valid/test manifests of JL Corpus into ``save_folder``.

    Arguments
    ---------
    data_folder : str
        The unpacked Kaggle download (or its ``JL(wav+txt)`` folder).
    save_folder : str
        Where ``train.csv``, ``valid.csv``, ``test.csv`` (with an extra ``emotion`` column),
        ``skipped.csv`` and ``prep_options.json`` go.
    valid_fraction, test_fraction : float
        Share of the utterances (or speakers) held out for validation and test; at least one
        each unless the fraction is 0.
    split_by : "utterance" | "speaker"
        Random utterance-level split (default; the same sentences and speakers then occur in
        train and test, as the paper's WER suggests) or speaker-level split.
    seed : int
        Seed of the shuffle; the same seed and files give the same split.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    if split_by not in SPLIT_BY:
        raise PrepOptionsError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    options = prep_options(
        CORPUS,
        PREP_VERSION,
        data_folder,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        split_by=split_by,
        seed=seed,
    )
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    skipped = SkipLog()
    rows = _collect(data_folder, skipped)
    if rows:
        splits = _split(rows, split_by, valid_fraction, test_fraction, seed)
    else:  # nothing usable: finish() says why (skip reasons, likely cause), not seeded_split
        splits = {name: [] for name in MANIFESTS}
    return finish(save_folder, splits, skipped, options, CORPUS, extra_columns=("emotion",), likely_cause=LIKELY_CAUSE)


def _split(rows, split_by, valid_fraction, test_fraction, seed):
    key = "ID" if split_by == "utterance" else "spk_id"
    what = "utterances" if split_by == "utterance" else "speakers"
    train, valid, test = seeded_split([r[key] for r in rows], valid_fraction, test_fraction, seed, what)
    return {
        "train.csv": [r for r in rows if r[key] in train],
        "valid.csv": [r for r in rows if r[key] in valid],
        "test.csv": [r for r in rows if r[key] in test],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, f"the unpacked Kaggle download (holding '{RAW_DIR}/{WAV_TXT_DIR}')")
    parser.add_argument(
        "--valid_fraction",
        type=float,
        default=0.1,
        help="share of utterances (or speakers) for validation, at least one (default: %(default)s)",
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=0.1,
        help="share of utterances (or speakers) for test, at least one (default: %(default)s)",
    )
    parser.add_argument(
        "--split_by",
        choices=SPLIT_BY,
        default="utterance",
        help="random utterance-level split or speaker-level split (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed of the split (default: %(default)s)")
    return run_cli(prepare_jl_corpus, parser, argv, MANIFESTS)


if __name__ == "__main__":
    sys.exit(main())
