"""Google NE: crowdsourced Nigerian English speech (OpenSLR 70, CC BY-SA 4.0).

What the paper did: fine-tuned the CTC model (Parakeet) on the Nigerian English subset,
5.8 h in all, holding out ~10 % of the speakers each for validation and test
(4.2 / 1.1 / 0.5 h; paper Tables III, IV, VII, VIII). There is no official split; the one
written here is a seeded speaker-level split (``valid_fraction``, ``test_fraction``, ``seed``).

Layouts accepted under ``data_folder``:

* each archive unzipped into its own folder (recommended)::

      en_ng_female/line_index.tsv   en_ng_female/ngf_00295_01314275188.wav ...
      en_ng_male/line_index.tsv     en_ng_male/ngm_00123_01111111111.wav ...

* all WAVs in one folder next to the separately published index files
  ``line_index_female.tsv`` and ``line_index_male.tsv`` (OpenSLR 70 offers them besides the
  zips); any ``line_index*.tsv`` is read, in any folder at any depth.

Both zips hold ``line_index.tsv`` and the WAVs at the zip root (HF ``datasets`` openslr.py,
SLR70: ``DataDirs ["", ""]``), so ``unzip`` of both into ONE folder overwrites one index with
the other. That is refused with a :class:`LayoutError` ("unzip each archive into its own
folder") when a FileID prefix (``ngf``/``ngm``) has WAVs but no index lists any of them, and
by :func:`data_prep.common.finish` when most WAVs have no transcript.

An index's FileIDs are looked up among the WAVs in its folder and the folders below it, so
the separate index files may also sit above ``en_ng_female/`` and ``en_ng_male/``; a FileID
listed twice with the same sentence (the separate file and the zip's copy) counts once. WAVs
that no index lists are reported as "audio without transcript".

``line_index.tsv`` lines are ``<FileID>\\t<sentence>``. They are parsed as HF's loader does
(:func:`parse_index_line`): the line is stripped (so a trailing tab cannot empty the
sentence), a known defect, an extra middle field, is dropped, and lines that still do not have
two fields are skipped as malformed. The sentence, whitespace collapsed, is ``wrd_raw``.

Speaker ids: FileIDs look like ``ngf_00295_01314275188`` and the speaker is the first two
fields, ``ngf_00295`` (the convention of the loaders of Google's crowdsourced OpenSLR sets,
e.g. nusacrowd's SLR44; the ngf/ngm prefix keeps female and male ids apart). Ids with fewer
than three ``_`` fields fall back to everything before the last ``_`` (or the whole id), and a
warning counts them. Audio is 48 kHz and is not resampled here.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
from collections.abc import Container
from collections.abc import Mapping
from collections.abc import Sequence

from tqdm import tqdm

from data_prep.common import LayoutError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import cli_parser
from data_prep.common import finish
from data_prep.common import numbered_lines
from data_prep.common import prep_options
from data_prep.common import remove_stale_manifests
from data_prep.common import require
from data_prep.common import require_data_folder
from data_prep.common import run_cli
from data_prep.common import seeded_split
from data_prep.common import whole_file_row

logger = logging.getLogger(__name__)

CORPUS = "google_ne"
INDEX_PATTERN = re.compile(r"^line_index.*\.tsv$", re.I)
ZIPS = ("en_ng_female.zip", "en_ng_male.zip")
MANIFESTS = ("train.csv", "valid.csv", "test.csv")
PREP_VERSION = 2
MALFORMED = "malformed line_index.tsv line"
DUPLICATE = "duplicate FileID with another sentence"
DUPLICATE_AUDIO = "duplicate audio file"
ONE_FOLDER_HINT = (
    "both OpenSLR 70 zips hold their own line_index.tsv at the zip root, so unzipping them "
    "into one folder overwrites one index with the other: unzip each archive into its own "
    "folder (unzip en_ng_female.zip -d en_ng_female; unzip en_ng_male.zip -d en_ng_male), or "
    "put the separately published line_index_female.tsv and line_index_male.tsv next to the "
    "WAVs"
)
LIKELY_CAUSE = (
    "the WAVs and the line_index*.tsv files that list them are not in the same folder tree, "
    "or one index was overwritten; " + ONE_FOLDER_HINT
)

# HF datasets openslr.py (_generate_examples): "the datasets are not always consistent and
# have bugs"; an extra middle field is removed and the fields split on one or two tabs.
_MIDDLE_FIELD = re.compile(r"\t[^\t]*\t")
_FIELD_SEPARATOR = re.compile(r"\t\t?")


def speaker_of(file_id: str) -> tuple[str, bool]:
    """Speaker id of a FileID: ``ngf_00295_01314275188`` -> ``ngf_00295`` (see module doc).

    Returns (speaker, regular) where ``regular`` is False for ids not of the usual
    three-field shape (their speaker is a guess).
    """
    parts = file_id.split("_")
    if len(parts) >= 3:
        return "_".join(parts[:2]), len(parts) == 3
    if len(parts) == 2:
        return parts[0], False
    return file_id, False


def prefix_of(file_id: str) -> str:
    """``ngf_00295_01314275188`` -> ``ngf`` (the gender prefix of Google's FileIDs)."""
    return file_id.split("_", 1)[0]


def parse_index_line(line: str) -> tuple[str, str] | None:
    """``(FileID, sentence)`` of one index line, or None when it is malformed.

    As HF's loader: strip the whole line, drop an extra middle field, split on one or two
    tabs, require two fields. Unlike it, a FileID followed by a tab and nothing else gives
    ``(FileID, "")`` (an empty sentence, reported as such) rather than a malformed line.
    """
    stripped = line.strip()
    head, tab, _ = line.rstrip("\r\n").partition("\t")
    file_id = head.strip()
    if not file_id or not tab:
        return None
    fields = _FIELD_SEPARATOR.split(_MIDDLE_FIELD.sub("\t", stripped))
    if len(fields) == 1:  # nothing but blanks after the FileID
        return file_id, ""
    if len(fields) != 2:
        return None
    return fields[0].strip(), " ".join(fields[1].split())


def read_line_index(path: str, skipped: SkipLog) -> list[tuple[str, str, int]]:
    """``[(FileID, sentence, line number)]`` of one index file; malformed lines go to
    ``skipped``."""
    entries = []
    for lineno, line in numbered_lines(path, encoding="utf-8-sig"):
        parsed = parse_index_line(line)
        if parsed is None:
            skipped.skip(line.split("\t")[0].strip(), f"{path}:{lineno}", MALFORMED)
            continue
        entries.append((*parsed, lineno))
    return entries


def _scan(data_folder):
    """(sorted index files, {stem: [wav paths, shallowest first]}) under ``data_folder``."""
    indexes, wavs = [], collections.defaultdict(list)
    for folder, dirs, files in os.walk(data_folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if INDEX_PATTERN.match(name):
                indexes.append(os.path.join(folder, name))
            elif name.lower().endswith(".wav"):
                wavs[os.path.splitext(name)[0]].append(os.path.join(folder, name))
    for paths in wavs.values():
        paths.sort(key=lambda p: (p.count(os.sep), p))
    return sorted(indexes), wavs


def _read_indexes(indexes, skipped):
    """``{FileID: (sentence, "index:line", index folder)}`` from every index, first wins.

    A FileID repeated with the same sentence (the separate index file and the zip's copy)
    counts once; with another sentence the later line is skipped.
    """
    entries, repeats = {}, 0
    for index in indexes:
        for file_id, text, lineno in read_line_index(index, skipped):
            where = f"{index}:{lineno}"
            if file_id in entries:
                if entries[file_id][0] == text:
                    repeats += 1
                else:
                    skipped.skip(file_id, f"{where} (first at {entries[file_id][1]})", DUPLICATE)
                continue
            entries[file_id] = (text, where, os.path.dirname(index))
    if repeats:
        logger.info(
            "%s: %d FileIDs listed again with the same sentence in another index file (counted once)", CORPUS, repeats
        )
    return entries


def check_each_prefix_indexed(wavs: Mapping[str, Sequence[str]], listed_stems: Container[str]) -> None:
    """Raise :class:`LayoutError` when a FileID prefix (``ngf``/``ngm``) has WAVs but no index
    lists any of them: the sign of the two zips unzipped into one folder."""
    found, listed = collections.Counter(), collections.Counter()
    for stem, paths in wavs.items():
        found[prefix_of(stem)] += len(paths)
        listed[prefix_of(stem)] += stem in listed_stems
    orphaned = sorted(p for p in found if not listed[p])
    if orphaned and any(listed.values()):
        counts = ", ".join(f"{found[p]} {p}_*.wav" for p in orphaned)
        raise LayoutError(
            f"Google NE: no line_index*.tsv lists any of the {counts} found under the data folder; {ONE_FOLDER_HINT}"
        )


def _collect(data_folder, skipped):
    indexes, wavs = _scan(os.path.normpath(data_folder))
    zips = [z for z in ZIPS if os.path.isfile(os.path.join(data_folder, z))]
    require(
        indexes,
        f"Google NE layout not found under {data_folder!r}: expected "
        f"en_ng_female/line_index.tsv and en_ng_male/line_index.tsv with their WAVs (the "
        "OpenSLR 70 archives, each unzipped into its own folder), or any folder holding a "
        "line_index*.tsv" + (f"; unzip {', '.join(zips)} first" if zips else ""),
    )
    entries = _read_indexes(indexes, skipped)
    check_each_prefix_indexed(wavs, entries)

    items, used = [], set()
    for file_id, (text, where, folder) in entries.items():
        # an index only claims the WAVs in its own folder tree
        paths = [p for p in wavs.get(file_id, []) if p.startswith(folder + os.sep)]
        items.append((file_id, paths[0] if paths else None, text, where))
        used.update(paths[:1])
    for stem, paths in sorted(wavs.items()):
        for wav in paths:
            if wav in used:
                continue
            if any(p in used for p in paths):  # another copy of a listed FileID's audio
                skipped.skip(stem, wav, DUPLICATE_AUDIO)
            else:
                items.append((stem, wav, None, wav))

    rows, irregular = [], 0
    for file_id, wav, text, where in tqdm(items, desc=CORPUS, unit="file"):
        speaker, regular = speaker_of(file_id)
        irregular += not regular
        row = whole_file_row(file_id, wav, speaker, text, skipped, source=where)
        if row is not None:
            rows.append(row)
    if irregular:
        logger.warning(
            "%s: %d FileIDs are not <prefix>_<speaker>_<number>; their speaker id is a guess", CORPUS, irregular
        )
    return rows


def prepare_google_ne(
    data_folder: str, save_folder: str, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 1234
) -> dict[str, tuple[int, float]] | None:
    """Write train/valid/test manifests of Google NE (OpenSLR 70) into ``save_folder``.

    Arguments
    ---------
    data_folder : str
        Folder holding ``en_ng_female/`` and ``en_ng_male/`` (each zip unzipped into its own
        folder), or any folders with ``line_index*.tsv`` files and their WAVs (module doc).
    save_folder : str
        Where ``train.csv``, ``valid.csv``, ``test.csv``, ``skipped.csv`` and
        ``prep_options.json`` go.
    valid_fraction, test_fraction : float
        Share of the speakers held out for validation and for test (the paper: ~10 % each);
        each held-out set gets at least one speaker unless its fraction is 0: then its
        manifest is not written (any split that comes out empty is an error).
    seed : int
        Seed of the speaker shuffle; the same seed and files give the same split.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    options = prep_options(
        CORPUS, PREP_VERSION, data_folder, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed
    )
    manifests = wanted_manifests(valid_fraction, test_fraction)
    if already_prepared(save_folder, manifests, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    require_data_folder(data_folder, "Google NE", "en_ng_female/ and en_ng_male/ (the unzipped OpenSLR 70 archives)")
    skipped = SkipLog()
    rows = _collect(data_folder, skipped)
    if not rows:  # nothing to split: finish() says what was lost and why
        finish(save_folder, {name: [] for name in manifests}, skipped, options, CORPUS, likely_cause=LIKELY_CAUSE)
    speakers = [row["spk_id"] for row in rows]
    train, valid, test = seeded_split(speakers, valid_fraction, test_fraction, seed, "speakers")
    logger.info("%s speakers: valid %s, test %s", CORPUS, sorted(valid), sorted(test))
    speakers = {"train.csv": train, "valid.csv": valid, "test.csv": test}
    splits = {name: [r for r in rows if r["spk_id"] in speakers[name]] for name in manifests}
    remove_stale_manifests(save_folder, set(MANIFESTS) - set(manifests), CORPUS, "not wanted now")
    return finish(save_folder, splits, skipped, options, CORPUS, likely_cause=LIKELY_CAUSE)


def wanted_manifests(valid_fraction: float, test_fraction: float) -> list[str]:
    """The manifests to write: a held-out set of fraction 0 gets none, since an empty
    manifest loads in neither SpeechBrain's reader nor ours."""
    fractions = {"train.csv": 1, "valid.csv": valid_fraction, "test.csv": test_fraction}
    return [name for name in MANIFESTS if fractions[name] != 0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, "folder with en_ng_female/ and en_ng_male/ (each zip unzipped into its own folder)")
    parser.add_argument(
        "--valid_fraction",
        type=float,
        default=0.1,
        help="share of speakers held out for validation, at least one (default: %(default)s)",
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=0.1,
        help="share of speakers held out for test, at least one (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed of the speaker split (default: %(default)s)")
    return run_cli(
        prepare_google_ne, parser, argv, lambda args: wanted_manifests(args.valid_fraction, args.test_fraction)
    )


if __name__ == "__main__":
    sys.exit(main())
