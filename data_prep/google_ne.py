"""Google NE: crowdsourced Nigerian English speech (OpenSLR 70, CC BY-SA 4.0).

What the paper did: fine-tuned the CTC model (Parakeet) on the Nigerian English subset,
5.8 h in all, holding out ~10 % of the speakers each for validation and test
(4.2 / 1.1 / 0.5 h; paper Tables III, IV, VII, VIII). There is no official split; the one
written here is a seeded speaker-level split (``valid_fraction``, ``test_fraction``, ``seed``).

Layout expected under ``data_folder``: the unzipped ``en_ng_female.zip`` and
``en_ng_male.zip``::

    en_ng_female/line_index.tsv
    en_ng_female/ngf_00295_01314275188.wav ...
    en_ng_male/line_index.tsv
    en_ng_male/ngm_...wav ...

Both archives carry a ``line_index.tsv`` and may hold their files without a top folder
(unverified): unzip each into its own folder (``unzip en_ng_female.zip -d en_ng_female``), else one index
overwrites the other and its WAVs show up in ``skipped.csv`` as "audio without transcript".
Any ``line_index.tsv`` found under ``data_folder`` (at any depth, the folder itself included)
is read, and its FileIDs are looked up among the WAVs in its folder and the folders below.
WAVs under ``data_folder`` that no ``line_index.tsv`` lists are reported as "audio without
transcript".

``line_index.tsv`` lines are ``<FileID>\\t<sentence>``; some carry an extra middle field (a
known defect of these files): the first field is the FileID, the last the sentence. The
sentence, whitespace collapsed, is ``wrd_raw``.

Speaker ids: FileIDs look like ``ngf_00295_01314275188`` and the speaker is taken to be the
first two fields, ``ngf_00295`` (keeping the ngf/ngm prefix so that female and male ids can
never collide). This reading of the FileID is UNVERIFIED against the released files; ids with
fewer than three ``_`` fields fall back to everything before the last ``_`` (or the whole id),
and a warning counts them. Audio is 48 kHz and is not resampled here.
"""

import argparse
import logging
import os
import sys

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from data_prep.common import (  # noqa: E402
    LayoutError,
    SkipLog,
    already_prepared,
    finish,
    print_summary,
    require,
    seeded_split,
    skipped_counts,
    whole_file_row,
)

logger = logging.getLogger(__name__)

CORPUS = "google_ne"
INDEX = "line_index.tsv"
MANIFESTS = ("train.csv", "valid.csv", "test.csv")
FORMAT_VERSION = 1
MALFORMED = "malformed line_index.tsv line"
DUPLICATE = "duplicate FileID"


def speaker_of(file_id):
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


def read_line_index(path, skipped):
    """``[(FileID, sentence, line number)]`` from one ``line_index.tsv``.

    Keeps the first and the last tab-separated fields (some lines carry an extra middle
    field). Lines without a tab go to ``skipped``.
    """
    entries = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 2 or not fields[0].strip():
                skipped.skip(fields[0].strip(), f"{path}:{lineno}", MALFORMED)
                continue
            entries.append((fields[0].strip(), " ".join(fields[-1].split()), lineno))
    return entries


def _scan(data_folder):
    """(index files, {index folder: {stem: [wav paths]}}, [wavs outside every index folder])."""
    indexes, wavs = [], []
    for folder, dirs, files in os.walk(data_folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if INDEX in files:
            indexes.append(os.path.join(folder, INDEX))
        wavs.extend(os.path.join(folder, f) for f in sorted(files)
                    if f.lower().endswith(".wav") and not f.startswith("."))
    roots = sorted((os.path.dirname(p) for p in indexes), key=len, reverse=True)
    by_root = {root: {} for root in roots}
    orphans = []
    for wav in wavs:
        # the deepest index folder above the file owns it
        owner = next((r for r in roots if wav.startswith(r + os.sep)), None)
        if owner is None:
            orphans.append(wav)
        else:
            stem = os.path.splitext(os.path.basename(wav))[0]
            by_root[owner].setdefault(stem, []).append(wav)
    return sorted(indexes), by_root, orphans


def _collect(data_folder, skipped):
    indexes, by_root, orphans = _scan(data_folder)
    zips = [z for z in ("en_ng_female.zip", "en_ng_male.zip")
            if os.path.isfile(os.path.join(data_folder, z))]
    require(
        indexes,
        f"Google NE layout not found under {data_folder!r}: expected "
        f"en_ng_female/{INDEX} and en_ng_male/{INDEX} with their WAVs (the unzipped "
        "OpenSLR 70 archives), or any folder holding a line_index.tsv"
        + (f"; unzip {', '.join(zips)} first" if zips else ""),
    )
    items, seen = [], {}
    for index in indexes:
        root = os.path.dirname(index)
        stems = by_root[root]
        used = set()
        for file_id, text, lineno in read_line_index(index, skipped):
            where = f"{index}:{lineno}"
            if file_id in seen:
                skipped.skip(file_id, where, f"{DUPLICATE} (first at {seen[file_id]})")
                continue
            seen[file_id] = where
            paths = stems.get(file_id, [])
            used.add(file_id)
            items.append((file_id, paths[0] if paths else None, text, where))
            for extra in paths[1:]:
                skipped.skip(file_id, extra, f"duplicate audio file (using {paths[0]})")
        for stem in sorted(set(stems) - used):
            for wav in stems[stem]:
                items.append((stem, wav, None, wav))
    for wav in orphans:
        stem = os.path.splitext(os.path.basename(wav))[0]
        items.append((stem, wav, None, wav))

    rows, irregular = [], 0
    for file_id, wav, text, where in tqdm(items, desc=CORPUS, unit="file"):
        speaker, regular = speaker_of(file_id)
        irregular += not regular
        row = whole_file_row(file_id, wav, speaker, text, skipped, source=where)
        if row is not None:
            rows.append(row)
    if irregular:
        logger.warning("%s: %d FileIDs are not <prefix>_<speaker>_<number>; their speaker id "
                       "is a guess", CORPUS, irregular)
    return rows


def prepare_google_ne(
    data_folder, save_folder, valid_fraction=0.1, test_fraction=0.1, seed=1234
):
    """Write train/valid/test manifests of Google NE (OpenSLR 70) into ``save_folder``.

    Arguments
    ---------
    data_folder : str
        Folder holding the unzipped ``en_ng_female/`` and ``en_ng_male/`` (or any folders
        with a ``line_index.tsv`` and their WAVs).
    save_folder : str
        Where ``train.csv``, ``valid.csv``, ``test.csv``, ``skipped.csv`` and
        ``prep_options.json`` go.
    valid_fraction, test_fraction : float
        Share of the speakers held out for validation and for test (the paper: ~10 % each);
        each held-out set gets at least one speaker unless its fraction is 0.
    seed : int
        Seed of the speaker shuffle; the same seed and files give the same split.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    options = {
        "corpus": CORPUS,
        "format": FORMAT_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    require(
        os.path.isdir(data_folder),
        f"Google NE data_folder {data_folder!r} does not exist; expected en_ng_female/ and "
        "en_ng_male/ (the unzipped OpenSLR 70 archives) there",
    )
    skipped = SkipLog()
    rows = _collect(data_folder, skipped)
    train, valid, test = seeded_split(
        [row["spk_id"] for row in rows], valid_fraction, test_fraction, seed
    )
    logger.info("%s speakers: valid %s, test %s", CORPUS, sorted(valid), sorted(test))
    splits = {
        "train.csv": [r for r in rows if r["spk_id"] in train],
        "valid.csv": [r for r in rows if r["spk_id"] in valid],
        "test.csv": [r for r in rows if r["spk_id"] in test],
    }
    return finish(save_folder, splits, skipped, options, CORPUS)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare Google NE (OpenSLR 70, Nigerian English) manifests: a seeded "
        "speaker-level split into train.csv, valid.csv and test.csv."
    )
    parser.add_argument("--data_folder", required=True,
                        help="folder with en_ng_female/ and en_ng_male/ (each zip unzipped "
                        "into its own folder)")
    parser.add_argument("--save_folder", required=True, help="where the manifests are written")
    parser.add_argument("--valid_fraction", type=float, default=0.1,
                        help="share of speakers held out for validation, at least one "
                        "(default: %(default)s)")
    parser.add_argument("--test_fraction", type=float, default=0.1,
                        help="share of speakers held out for test, at least one "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seed of the speaker split (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare_google_ne(args.data_folder, args.save_folder,
                                    valid_fraction=args.valid_fraction,
                                    test_fraction=args.test_fraction, seed=args.seed)
    except (LayoutError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    if summary is None:
        print(f"already prepared with the same options: {args.save_folder}")
    else:
        print_summary(summary, skipped_counts(args.save_folder))


if __name__ == "__main__":
    main()
