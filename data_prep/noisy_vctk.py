"""Noisy VCTK (Valentini-Botinhao's Voicebank+DEMAND, Edinburgh DataShare 10283/2791).

What the paper did: fine-tuned the CTC model (Parakeet) on Noisy VCTK, ~19 h of training
audio and 1 h of test audio (paper Tables III, IV, VII, VIII). It does not say which files
gave those hours. What public listings give (utterance counts and hours of the 28spk and
test sets: the XiaoyuBIE1994/AudioDataset README and Voicebank recipes; zip sizes: the
DataShare file list as quoted in public READMEs; nothing here was measured on the files):

====================  ===========  ==================================  ======================
set                   utterances   DataShare zips (clean / noisy)      audio, one kind
====================  ===========  ==================================  ======================
28spk training        11,572       2.32 GB / 2.64 GB, txt 6.19 MB      ~9.4 h (~2.9 s each)
56spk training        ~23,000 (i)  4.44 GB / 5.24 GB, txt 12.32 MB     ~18.7 h (i)
test (p232, p257)     824          147 MB / 163 MB                     ~0.6 h
====================  ===========  ==================================  ======================

(i) inferred: the 56spk audio and transcript zips are each ~1.99x the 28spk ones. SpeechBrain's
p226 + p287 validation split of the 28spk set is 770 utterances (~0.6 h), leaving 10,802
(~8.8 h). So the default (28spk, noisy) gives about half the paper's training audio. Two
choices give ~19 h, and this prep offers both (neither is confirmed by the paper):

* ``train_set="56spk"`` (noisy): ~18.7 h training + validation, 0.6 h test;
* ``audio="both"`` with 28spk: noisy and clean copies of every utterance, ~18.8 h training +
  validation and ~1.2 h test (the closest fit to "1 h test").

Layouts accepted under ``data_folder`` (the folders may also sit up to three levels further
down, e.g. under ``DS_10283_2791/`` or SpeechBrain's ``noisy-vctk-16k/``)::

    noisy_trainset_28spk_wav/p226_001.wav ...    (or clean_..., or *_56spk_*); 48 kHz
    trainset_28spk_txt/p226_001.txt ...          one transcript per utterance
    noisy_testset_wav/p232_001.wav ...
    testset_txt/p232_001.txt ...

or the same with SpeechBrain's 16 kHz copies of the audio folders (``download_vctk`` in
speechbrain ``recipes/Voicebank/voicebank_prepare.py``): ``noisy_trainset_28spk_wav_16k``,
``clean_testset_wav_16k``, ... beside the unchanged ``*_txt`` folders. When both exist, the
48 kHz originals are used. A zip unpacked into a folder of its own name
(``trainset_28spk_txt/trainset_28spk_txt/*.txt``) is found too; ``__MACOSX`` folders are
ignored.

Splits written:

* ``train.csv``: the training set minus the validation speakers;
* ``valid.csv``: training speakers held out (option ``valid_speakers``). By default p226 and
  p287 for the 28spk set, as SpeechBrain's and ESPnet's Voicebank recipes do; for the
  56spk set (other speakers: Scottish and US accents) 4 of its speakers, the same 1/14
  share, drawn with ``random.Random(seed)`` from the sorted speaker list;
* ``test.csv``: the official test set (speakers p232, p257).

IDs are the file stems (``p226_001``); with ``audio="both"`` they carry the kind
(``p226_001_noisy``, ``p226_001_clean``). Audio is not resampled here (the loader resamples
at load time). The transcripts are kept as written ("Please call Stella.") in ``wrd_raw``;
``wrd`` is their :func:`aode.text.normalize_words` form.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Iterable
from collections.abc import Sequence

from data_prep.common import LayoutError
from data_prep.common import PrepOptionsError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import cli_parser
from data_prep.common import find_root
from data_prep.common import finish
from data_prep.common import folders_below
from data_prep.common import prep_options
from data_prep.common import require
from data_prep.common import require_data_folder
from data_prep.common import run_cli
from data_prep.common import transcribed_stems
from data_prep.common import whole_file_row

logger = logging.getLogger(__name__)

CORPUS = "noisy_vctk"
TRAIN_SETS = ("28spk", "56spk")
AUDIO_TYPES = ("noisy", "clean", "both")
# SpeechBrain's TRAIN_SPEAKERS[:2] (and ESPnet's vctk_noisy cv set): the 28spk default
VALID_SPEAKERS = ("p226", "p287")
VALID_SHARE = 2 / 28  # the same share of speakers for the other training sets
DEFAULT_SEED = 1234
SUFFIX_16K = "_16k"  # SpeechBrain's resampled audio folders
MANIFESTS = ("train.csv", "valid.csv", "test.csv")
PREP_VERSION = 1
LIKELY_CAUSE = (
    "a transcript folder (trainset_*_txt, testset_txt) or an audio folder is empty or only "
    "partly extracted, or holds the files of another set (e.g. 28spk transcripts beside "
    "56spk audio); each wav needs the .txt of the same name"
)


def _unnest(folder):
    """``folder/<same name>`` when ``folder`` holds nothing else (a zip unpacked into a folder
    named like its own top folder), repeatedly; else ``folder``."""
    while True:
        inner = os.path.join(folder, os.path.basename(folder))
        try:
            entries = [e for e in os.listdir(folder) if not e.startswith(".")]
        except OSError:  # reported when the files are listed
            return folder
        if entries != [os.path.basename(folder)] or not os.path.isdir(inner):
            return folder
        folder = inner


def find_dir(root: str | os.PathLike, name: str, max_depth: int = 3) -> str | None:
    """The folder called ``name``: ``root`` itself, or a subfolder of ``root`` or of a folder
    up to ``max_depth`` levels below it, or None.

    Breadth first, so the shallowest match wins; hidden and ``__MACOSX`` folders are skipped
    (:func:`data_prep.common.folders_below`).
    """
    root = os.path.abspath(root)
    if os.path.basename(root) == name and os.path.isdir(root):
        return _unnest(root)
    parent = find_root(folders_below(root, max_depth), lambda folder: os.path.isdir(os.path.join(folder, name)))
    return None if parent is None else _unnest(os.path.join(parent, name))


def _files_by_stem(folder, ext):
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise LayoutError(f"Noisy VCTK: cannot list {folder!r} ({err.strerror or err})") from err
    return {
        name[: -len(ext)]: os.path.join(folder, name)
        for name in names
        if name.lower().endswith(ext) and not name.startswith(".")
    }


def _speaker(utt_id):
    return utt_id.split("_")[0]


def _collect(wav_dir, txt_dir, skipped, desc, id_suffix=""):
    """Rows for every utterance of one wav/txt folder pair (misfits go to ``skipped``).

    ``id_suffix`` (e.g. "_clean") keeps IDs unique when two kinds of audio are combined.
    """
    wavs = _files_by_stem(wav_dir, ".wav")
    txts = _files_by_stem(txt_dir, ".txt")
    rows = []
    for stem, txt, text in transcribed_stems(wavs, txts, skipped, desc, id_suffix):
        row = whole_file_row(stem + id_suffix, wavs.get(stem), _speaker(stem), text, skipped, source=txt)
        if row is not None:
            rows.append(row)
    return rows


def folder_names(audio: str, train_set: str) -> dict[str, tuple[str, ...]]:
    """``{key: (DataShare name, alternatives...)}`` of the four folders one audio kind needs."""
    train_wav = f"{audio}_trainset_{train_set}_wav"
    test_wav = f"{audio}_testset_wav"
    return {
        "train_wav": (train_wav, train_wav + SUFFIX_16K),
        "train_txt": (f"trainset_{train_set}_txt",),
        "test_wav": (test_wav, test_wav + SUFFIX_16K),
        "test_txt": ("testset_txt",),
    }


def _locate(data_folder, audio, train_set):
    require_data_folder(data_folder, "Noisy VCTK", "the unzipped DataShare 10283/2791 folders")
    names = folder_names(audio, train_set)
    found = {}
    for key, candidates in names.items():
        found[key] = next(filter(None, (find_dir(data_folder, n) for n in candidates)), None)
    missing = [names[key][0] for key, path in found.items() if path is None]
    zips = [n for n in missing if os.path.isfile(os.path.join(data_folder, n + ".zip"))]
    require(
        not missing,
        f"Noisy VCTK layout not found under {data_folder!r}: expected the folders "
        f"{', '.join(c[0] for c in names.values())} (audio folders may instead carry "
        f"SpeechBrain's '{SUFFIX_16K}' suffix; missing: {', '.join(missing)})"
        + (f"; unzip {', '.join(z + '.zip' for z in zips)} first" if zips else ""),
    )
    return found


def default_valid_speakers(speakers: Iterable[str], train_set: str, seed: int) -> list[str]:
    """The validation speakers used when none are given.

    28spk: p226 and p287 (SpeechBrain). Other sets: ``round(VALID_SHARE * len(speakers))``
    speakers (at least 1; 4 of 56), ``random.Random(seed).sample`` of the sorted list.
    """
    if train_set == "28spk":
        return sorted(VALID_SPEAKERS)
    speakers = sorted(set(speakers))
    count = max(1, round(VALID_SHARE * len(speakers)))
    return sorted(random.Random(seed).sample(speakers, count))


def _valid_option(train_set, valid_speakers, seed):
    """What decides the validation speakers, as recorded in prep_options.json.

    The 28spk default records the same list as before this option existed, so earlier
    preparations stay valid; a seeded draw records the seed instead (the speakers are only
    known once the files are listed).
    """
    if valid_speakers is not None:
        return {"valid_speakers": sorted(set(valid_speakers))}
    if train_set == "28spk":
        return {"valid_speakers": sorted(VALID_SPEAKERS)}
    return {"valid_speakers": "seeded draw", "seed": seed}


def _collect_all(found_by_kind, skipped):
    """(train rows, test rows) over the audio kinds; IDs get the kind when there are two."""
    train, test = [], []
    for kind, found in found_by_kind.items():
        suffix = f"_{kind}" if len(found_by_kind) > 1 else ""
        train += _collect(found["train_wav"], found["train_txt"], skipped, f"{CORPUS} {kind} train", suffix)
        test += _collect(found["test_wav"], found["test_txt"], skipped, f"{CORPUS} {kind} test", suffix)
    return train, test


def prepare_noisy_vctk(
    data_folder: str,
    save_folder: str,
    train_set: str = "28spk",
    audio: str = "noisy",
    valid_speakers: Iterable[str] | str | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, tuple[int, float]] | None:
    """Write train/valid/test manifests of Noisy VCTK into ``save_folder``.

    Arguments
    ---------
    data_folder : str
        Folder holding the unzipped ``{noisy,clean}_{train,test}set*_wav`` (or SpeechBrain's
        ``*_wav_16k``) and ``*_txt`` folders (directly or up to three levels down).
    save_folder : str
        Where ``train.csv``, ``valid.csv``, ``test.csv``, ``skipped.csv`` and
        ``prep_options.json`` go.
    train_set : "28spk" | "56spk"
        Which training set (28 speakers by default; 56spk is ~19 h, see the module notes).
    audio : "noisy" | "clean" | "both"
        The noisy recordings (the paper's domain), their clean originals, or both (every
        split then holds each utterance twice, IDs suffixed ``_noisy`` / ``_clean``).
    valid_speakers : sequence of str or None
        Training speakers held out as the validation set. None: p226, p287 for 28spk; a
        seeded draw of 4 speakers for 56spk (:func:`default_valid_speakers`). A ValueError
        lists the set's speakers when none of the given ones is in it.
    seed : int
        Seed of that draw (unused for 28spk and for an explicit list).

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    if train_set not in TRAIN_SETS:
        raise PrepOptionsError(f"train_set must be one of {TRAIN_SETS}, got {train_set!r}")
    if audio not in AUDIO_TYPES:
        raise PrepOptionsError(f"audio must be one of {AUDIO_TYPES}, got {audio!r}")
    if isinstance(valid_speakers, str):  # "p226 p287" from a config file
        valid_speakers = valid_speakers.split()
    options = prep_options(
        CORPUS,
        PREP_VERSION,
        data_folder,
        train_set=train_set,
        audio=audio,
        **_valid_option(train_set, valid_speakers, seed),
    )
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    kinds = ("noisy", "clean") if audio == "both" else (audio,)
    found_by_kind = {kind: _locate(data_folder, kind, train_set) for kind in kinds}
    skipped = SkipLog()
    train_all, test = _collect_all(found_by_kind, skipped)

    speakers = sorted({row["spk_id"] for row in train_all})
    if valid_speakers is None:
        valid_speakers = default_valid_speakers(speakers, train_set, seed)
        logger.info("%s: validation speakers %s", CORPUS, valid_speakers)
    valid_speakers = sorted(set(valid_speakers))
    present = [s for s in valid_speakers if s in speakers]
    if speakers and not present:
        raise PrepOptionsError(
            f"none of the validation speakers {valid_speakers} is in the {train_set} training "
            f"set under {found_by_kind[kinds[0]]['train_wav']}; its speakers are {speakers}"
        )
    if speakers and set(speakers) <= set(valid_speakers):
        raise PrepOptionsError(
            f"valid_speakers {valid_speakers} take every one of the {len(speakers)} speakers of the {train_set} "
            "training set, leaving none for training: name fewer"
        )
    absent = sorted(set(valid_speakers) - set(present))
    if absent:
        logger.warning("%s: validation speakers %s not in the training set", CORPUS, absent)
    splits = {
        "train.csv": [r for r in train_all if r["spk_id"] not in valid_speakers],
        "valid.csv": [r for r in train_all if r["spk_id"] in valid_speakers],
        "test.csv": test,
    }
    return finish(save_folder, splits, skipped, options, CORPUS, likely_cause=LIKELY_CAUSE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, "folder with the unzipped {noisy,clean}_*set*_wav (or *_wav_16k) and *_txt folders")
    parser.add_argument(
        "--train_set",
        choices=TRAIN_SETS,
        default="28spk",
        help="28- or 56-speaker training set (default: %(default)s; 56spk or --audio both gives the paper's ~19 h)",
    )
    parser.add_argument(
        "--audio",
        choices=AUDIO_TYPES,
        default="noisy",
        help="noisy recordings, their clean originals, or both (default: %(default)s)",
    )
    parser.add_argument(
        "--valid_speakers",
        nargs="+",
        default=None,
        help="training speakers held out for validation (default: p226 p287 "
        "for 28spk, a seeded draw of 4 speakers for 56spk)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="seed of the validation speaker draw (default: %(default)s)"
    )
    return run_cli(prepare_noisy_vctk, parser, argv, MANIFESTS)


if __name__ == "__main__":
    sys.exit(main())
