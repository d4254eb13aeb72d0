"""Noisy VCTK (Valentini-Botinhao's Voicebank+DEMAND, Edinburgh DataShare 10283/2791).

What the paper did: fine-tuned the CTC model (Parakeet) on Noisy VCTK, ~19 h of training
audio and 1 h of test audio (paper Tables III, IV, VII, VIII). Which training set gave the
19 h (28 or 56 speakers) is not stated, so both are supported (``train_set``).

Layout expected under ``data_folder`` (the unzipped DataShare archives; the folders may also
sit one or two levels further down, e.g. under ``DS_10283_2791/``)::

    noisy_trainset_28spk_wav/p226_001.wav ...    (or clean_..., or *_56spk_*)
    trainset_28spk_txt/p226_001.txt ...          one transcript per utterance
    noisy_testset_wav/p232_001.wav ...
    testset_txt/p232_001.txt ...

Splits written:

* ``train.csv``: the training set minus the validation speakers;
* ``valid.csv``: speakers p226 and p287 taken out of the training set (SpeechBrain's own
  Voicebank recipe does the same; option ``valid_speakers``);
* ``test.csv``: the official test set (speakers p232, p257).

Audio stays at 48 kHz: nothing is resampled here (the loader resamples at load time). The
transcripts are kept as written ("Please call Stella.") in ``wrd_raw``; ``wrd`` is their
:func:`aode.text.normalize_words` form.
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
    read_transcript,
    require,
    skipped_counts,
    whole_file_row,
)

logger = logging.getLogger(__name__)

CORPUS = "noisy_vctk"
TRAIN_SETS = ("28spk", "56spk")
AUDIO_TYPES = ("noisy", "clean")
VALID_SPEAKERS = ("p226", "p287")
MANIFESTS = ("train.csv", "valid.csv", "test.csv")
FORMAT_VERSION = 1


def find_dir(root, name, max_depth=3):
    """The folder called ``name`` at ``root`` or up to ``max_depth`` levels below, or None."""
    root = os.path.abspath(root)
    if os.path.basename(root) == name and os.path.isdir(root):
        return root
    level = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for folder in level:
            candidate = os.path.join(folder, name)
            if os.path.isdir(candidate):
                return candidate
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            nxt.extend(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
        level = nxt
    return None


def _files_by_stem(folder, ext):
    return {
        name[: -len(ext)]: os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.lower().endswith(ext) and not name.startswith(".")
    }


def _speaker(utt_id):
    return utt_id.split("_")[0]


def _collect(wav_dir, txt_dir, skipped, desc):
    """Rows for every utterance of one wav/txt folder pair (misfits go to ``skipped``)."""
    wavs = _files_by_stem(wav_dir, ".wav")
    txts = _files_by_stem(txt_dir, ".txt")
    rows = []
    for utt_id in tqdm(sorted(set(wavs) | set(txts)), desc=desc, unit="file"):
        text = read_transcript(txts[utt_id]) if utt_id in txts else None
        row = whole_file_row(
            utt_id, wavs.get(utt_id), _speaker(utt_id), text, skipped, source=txts.get(utt_id)
        )
        if row is not None:
            rows.append(row)
    return rows


def _locate(data_folder, audio, train_set):
    require(
        os.path.isdir(data_folder),
        f"Noisy VCTK data_folder {data_folder!r} does not exist; expected the unzipped "
        "DataShare 10283/2791 folders there",
    )
    names = {
        "train_wav": f"{audio}_trainset_{train_set}_wav",
        "train_txt": f"trainset_{train_set}_txt",
        "test_wav": f"{audio}_testset_wav",
        "test_txt": "testset_txt",
    }
    found = {key: find_dir(data_folder, name) for key, name in names.items()}
    missing = [names[key] for key, path in found.items() if path is None]
    zips = [n for n in missing if os.path.isfile(os.path.join(data_folder, n + ".zip"))]
    require(
        not missing,
        f"Noisy VCTK layout not found under {data_folder!r}: expected the folders "
        f"{', '.join(names.values())} (missing: {', '.join(missing)})"
        + (f"; unzip {', '.join(z + '.zip' for z in zips)} first" if zips else ""),
    )
    return found


def prepare_noisy_vctk(
    data_folder,
    save_folder,
    train_set="28spk",
    audio="noisy",
    valid_speakers=VALID_SPEAKERS,
    seed=None,
):
    """Write train/valid/test manifests of Noisy VCTK into ``save_folder``.

    Arguments
    ---------
    data_folder : str
        Folder holding the unzipped ``{noisy,clean}_{train,test}set*_wav`` and ``*_txt``
        folders (directly or up to three levels down).
    save_folder : str
        Where ``train.csv``, ``valid.csv``, ``test.csv``, ``skipped.csv`` and
        ``prep_options.json`` go.
    train_set : "28spk" | "56spk"
        Which training set (the paper's "19 h" does not say; 28 speakers by default). Whether
        the 56-speaker set contains p226/p287 is unverified: if none of ``valid_speakers`` is
        in it, a ValueError says which speakers are, so that others can be chosen.
    audio : "noisy" | "clean"
        The noisy recordings (the paper's domain) or their clean originals.
    valid_speakers : sequence of str
        Training speakers held out as the validation set (default p226, p287).
    seed : ignored
        Accepted for a uniform signature; the split is fixed by speaker.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    if train_set not in TRAIN_SETS:
        raise ValueError(f"train_set must be one of {TRAIN_SETS}, got {train_set!r}")
    if audio not in AUDIO_TYPES:
        raise ValueError(f"audio must be one of {AUDIO_TYPES}, got {audio!r}")
    valid_speakers = sorted(set(valid_speakers))
    options = {
        "corpus": CORPUS,
        "format": FORMAT_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "train_set": train_set,
        "audio": audio,
        "valid_speakers": valid_speakers,
    }
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    found = _locate(data_folder, audio, train_set)
    skipped = SkipLog()
    train_all = _collect(found["train_wav"], found["train_txt"], skipped, f"{CORPUS} train")
    test = _collect(found["test_wav"], found["test_txt"], skipped, f"{CORPUS} test")

    speakers = sorted({row["spk_id"] for row in train_all})
    present = [s for s in valid_speakers if s in speakers]
    if not present:
        raise ValueError(
            f"none of the validation speakers {valid_speakers} is in the {train_set} training "
            f"set under {found['train_wav']}; its speakers are {speakers}"
        )
    absent = sorted(set(valid_speakers) - set(present))
    if absent:
        logger.warning("%s: validation speakers %s not in the training set", CORPUS, absent)
    splits = {
        "train.csv": [r for r in train_all if r["spk_id"] not in valid_speakers],
        "valid.csv": [r for r in train_all if r["spk_id"] in valid_speakers],
        "test.csv": test,
    }
    return finish(save_folder, splits, skipped, options, CORPUS)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare Noisy VCTK (Voicebank+DEMAND) manifests: train.csv, valid.csv "
        "(speakers held out of training) and test.csv (the official test set)."
    )
    parser.add_argument("--data_folder", required=True,
                        help="folder with the unzipped {noisy,clean}_*set*_wav and *_txt folders")
    parser.add_argument("--save_folder", required=True, help="where the manifests are written")
    parser.add_argument("--train_set", choices=TRAIN_SETS, default="28spk",
                        help="28- or 56-speaker training set (default: %(default)s)")
    parser.add_argument("--audio", choices=AUDIO_TYPES, default="noisy",
                        help="noisy recordings or their clean originals (default: %(default)s)")
    parser.add_argument("--valid_speakers", nargs="+", default=list(VALID_SPEAKERS),
                        help="training speakers held out for validation (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare_noisy_vctk(args.data_folder, args.save_folder, train_set=args.train_set,
                                     audio=args.audio, valid_speakers=args.valid_speakers)
    except (LayoutError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    if summary is None:
        print(f"already prepared with the same options: {args.save_folder}")
    else:
        print_summary(summary, skipped_counts(args.save_folder))


if __name__ == "__main__":
    main()
