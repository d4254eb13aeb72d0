"""CORAAL data preparation (Corpus of Regional African American Language, Univ. of Oregon).

What the paper did (Plantinga et al., SLT 2024): fine-tuned Whisper and Parakeet on CORAAL;
the long sociolinguistic interviews were cut into segments from the transcript timings, each
at most 30 s; 5 speakers were held out for validation and 5 for test (~5 h each).

Layout: per component (ATL, DCA, DCB, DTA, LES, PRV, ROC, VLD) flat tarballs of
``<basefile>.wav`` (~44.1 kHz) and ``<basefile>.txt`` (e.g. ``DCB_se1_ag1_f_01_1``). They may
be unpacked into one folder or several: every ``.txt`` under ``data_folder`` (recursively)
whose first line is the transcript header ``Line<TAB>Spkr<TAB>StTime<TAB>Content<TAB>EnTime``
is a transcript, and its audio is the ``<basefile>.wav`` found anywhere under
``data_folder`` (the same folder first). Other ``.txt`` files (metadata, READMEs) are ignored.

Segmentation (:func:`segment_rows`):

* Content is cleaned by :func:`clean_content` (pauses, ``<laugh>``/``<ts>``-style tags,
  ``/RD-.../`` redactions, ``/unintelligible/``, ``/inaudible/``, ``/?/``, non-speech
  ``[laughing]``-style tags removed; ``[word]`` keeps ``word``; malformed variants such as
  ``/RD-NAME-3.``, ``[/RD-NAME-2/-]``, ``<laugh]`` handled; busses->buses, aks->ask,
  aksing->asking, aksed->asked).
* Pause-only rows are dropped (logged with reason "pause-only row"); they do not break a
  segment. Interviewer turns are dropped by default (logged; option ``keep_interviewer``):
  the interviewee is the speaker whose ``Spkr`` code is a prefix of the basefile; every other
  speaker counts as an interviewer.
* Consecutive rows of one speaker are merged into segments of at most
  ``max_segment_seconds`` (30, the paper's). A row of another speaker, a row that is empty
  after cleaning (e.g. only ``/unintelligible/``: its audio holds untranscribed speech) or a
  skipped row ends the current segment, so a segment never covers audio its text lacks.
* Skipped with a reason in ``skipped.csv``: an impossible time (non-numeric, negative,
  end <= start), a row longer than ``max_segment_seconds``, a row that runs past the end of
  its audio, a row empty after cleaning, every row of a transcript whose audio is missing or
  unreadable/truncated.

Speaker = the interviewee code (the basefile minus its trailing ``_<part>``, e.g.
``DCB_se1_ag1_f_01``); kept interviewer turns get their own ``Spkr`` code as speaker but
follow their interview into its split. The split is by interviewee, seeded:
``n_valid_speakers`` (5) for validation, ``n_test_speakers`` (5) for test, the rest train.

Audio stays at its own rate (~44.1 kHz); the loader (:mod:`aode.data`) resamples at load time.
"""

import argparse
import collections
import logging
import math
import os
import random
import re
import sys

if __name__ == "__main__":  # run as a script: make the repository's packages importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm

from aode.text import normalize_words
from data_prep.common import (
    SkipLog,
    already_prepared,
    audio_info,
    finish,
    run_cli,
    require,
)

logger = logging.getLogger(__name__)

MANIFESTS = ("train.csv", "valid.csv", "test.csv")
HEADER = ("line", "spkr", "sttime", "content", "entime")
PREP_VERSION = 1
# A segment may end this much past the end of its audio (rounding in the timings); it is
# clipped to the audio. Anything later is skipped.
END_TOLERANCE = 0.05

# Bracketed tags that are sounds, not words: removed (any other "[word]" keeps "word").
NON_SPEECH = {
    "laugh", "laughs", "laughing", "laughter", "cough", "coughs", "coughing", "sigh", "sighs",
    "sighing", "breath", "breathing", "breathes", "inhale", "inhales", "exhale", "exhales",
    "sneeze", "sneezes", "sneezing", "sniff", "sniffs", "sniffing", "yawn", "yawns", "yawning",
    "clears throat", "clearing throat", "throat clear", "ts", "tsk", "lipsmack", "lip smack",
    "whistle", "whistles", "whistling", "noise", "background noise", "crosstalk", "pause",
    "silence", "unintelligible", "inaudible", "cries", "crying", "groan", "groans",
}

_PAUSE = re.compile(r"[({]\s*pause\b[^)}]*[)}]", re.I)
_REDACT_BRACKETED = re.compile(r"\[\s*/RD-[^\]]*\]", re.I)
_REDACT = re.compile(r"/RD-[A-Za-z0-9_-]*[/.]?", re.I)
_SLASH_MARKS = re.compile(r"/\s*(?:unintelligible|inaudible|\?+)\s*/", re.I)
_ANGLE = re.compile(r"<[^<>\]\[]*[>\]]")  # <laugh>, <ts>, and the malformed <laugh]
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_SLASHED = re.compile(r"/([^/]*)/")
_STRAY = re.compile(r"[\[\]{}<>/]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_LEADING_PUNCT = re.compile(r"^[\s,.;:!?-]+")
_REPEATED_PUNCT = re.compile(r"([,;:])(\s*[,;:.!?])+")
_SPELLING = {"busses": "buses", "aks": "ask", "aksing": "asking", "aksed": "asked"}
_SPELLING_RE = re.compile(r"\b(" + "|".join(_SPELLING) + r")\b", re.I)


def _fix_spelling(match):
    word = match.group(0)
    fixed = _SPELLING[word.lower()]
    if word.isupper() and len(word) > 1:
        return fixed.upper()
    if word[0].isupper():
        return fixed[0].upper() + fixed[1:]
    return fixed


def _bracket(match):
    inner = match.group(1).strip()
    if not inner or inner.lower().strip(" -") in NON_SPEECH:
        return " "
    return " " + inner + " "


def is_pause_only(content):
    """True when a Content cell holds nothing but pause marks (or nothing at all)."""
    return not _PAUSE.sub(" ", content).strip()


def clean_content(content):
    """CORAAL Content cell -> cleaned text with its casing and punctuation ('' if no words).

    >>> clean_content("Tell me about /RD-NAME-2/ <laugh>.")
    'Tell me about.'
    >>> clean_content("I [went] there (pause 0.17) /unintelligible/ we aks")
    'I went there we ask'
    """
    text = _PAUSE.sub(" ", content)
    text = _REDACT_BRACKETED.sub(" ", text)
    text = _REDACT.sub(" ", text)
    text = _SLASH_MARKS.sub(" ", text)
    text = _ANGLE.sub(" ", text)
    text = _BRACKET.sub(_bracket, text)
    text = _SLASHED.sub(lambda m: " " + m.group(1) + " ", text)
    text = _STRAY.sub(" ", text)
    text = _SPELLING_RE.sub(_fix_spelling, text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(lambda m: m.group(0)[-1], text)
    text = _LEADING_PUNCT.sub("", text)
    if not normalize_words(text):
        return ""
    return text


def interviewee_code(basefile):
    """``DCB_se1_ag1_f_01`` from ``DCB_se1_ag1_f_01_1`` (the basefile minus ``_<part>``)."""
    return re.sub(r"_\d+$", "", basefile)


def read_transcript(path):
    """Rows ``(row number, Spkr, StTime str, Content, EnTime str)`` of a CORAAL transcript,
    or None when the file does not start with the transcript header."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        with open(path, encoding="latin-1") as f:
            lines = f.read().splitlines()
    if not lines:
        return None
    header = [h.strip().lower() for h in lines[0].lstrip("\ufeff").split("\t")]
    if not all(h in header for h in HEADER[1:]):
        return None
    col = {name: header.index(name) for name in HEADER if name in header}
    rows = []
    for number, line in enumerate(lines[1:], start=1):
        if not line.strip():
            continue
        cells = line.split("\t")
        cells += [""] * (len(header) - len(cells))
        rows.append((number, cells[col["spkr"]].strip(), cells[col["sttime"]].strip(),
                     cells[col["content"]], cells[col["entime"]].strip()))
    return rows


def find_transcripts(data_folder):
    """``{basefile: (transcript path, wav path or None)}`` under ``data_folder``."""
    texts, wavs = {}, collections.defaultdict(list)
    for folder, _, files in os.walk(data_folder):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() == ".wav":
                wavs[stem].append(os.path.join(folder, name))
            elif ext.lower() == ".txt":
                texts.setdefault(stem, []).append(os.path.join(folder, name))
    found = {}
    for stem, paths in sorted(texts.items()):
        for path in sorted(paths):
            with open(path, "rb") as f:
                first = f.readline().decode("utf-8", "replace").lstrip("\ufeff").lower()
            if "spkr" in first and "sttime" in first and "\t" in first:
                candidates = sorted(wavs.get(stem, []),
                                    key=lambda w: os.path.dirname(w) != os.path.dirname(path))
                found[stem] = (path, candidates[0] if candidates else None)
                break
    return found


def segment_rows(basefile, rows, audio_duration, wav, keep_interviewer, max_segment_seconds,
                 skipped):
    """Manifest rows (without split) of one transcript; every dropped row goes to ``skipped``.

    See the module docstring for the rules.
    """
    speaker = interviewee_code(basefile)
    segments = []
    current = None

    def close():
        nonlocal current
        if current is not None:
            segments.append(current)
        current = None

    for number, spkr, st, content, en in rows:
        row_id = f"{basefile}_{number:04d}"
        if is_pause_only(content):
            skipped.skip(row_id, wav, "pause-only row")
            continue
        interviewee = bool(spkr) and basefile.startswith(spkr)
        if not interviewee and not keep_interviewer:
            skipped.skip(row_id, wav, "interviewer turn (keep_interviewer off)")
            close()
            continue
        try:
            start, stop = float(st), float(en)
        except ValueError:
            skipped.skip(row_id, wav, f"impossible time (StTime {st!r}, EnTime {en!r})")
            close()
            continue
        if not (start >= 0 and stop > start):
            skipped.skip(row_id, wav, f"impossible time (StTime {st}, EnTime {en})")
            close()
            continue
        if stop - start > max_segment_seconds:
            skipped.skip(row_id, wav, f"row longer than max_segment_seconds={max_segment_seconds}")
            close()
            continue
        if stop > audio_duration + END_TOLERANCE:
            skipped.skip(row_id, wav, f"runs past the end of its audio ({stop:.2f} s > "
                         f"{audio_duration:.2f} s)")
            close()
            continue
        stop = min(stop, math.floor(audio_duration * 1000) / 1000)  # 3 decimals, inside
        text = clean_content(content)
        if not text:
            skipped.skip(row_id, wav, "empty text after cleaning")
            close()
            continue
        spk = speaker if interviewee else spkr
        if (current is not None and current["spkr"] == spk
                and max(stop, current["stop"]) - min(start, current["start"])
                <= max_segment_seconds):
            current["start"] = min(start, current["start"])
            current["stop"] = max(stop, current["stop"])
            current["texts"].append(text)
            current["last"] = number
        else:
            close()
            current = {"spkr": spk, "start": start, "stop": stop, "texts": [text],
                       "first": number, "last": number}
    close()

    out = []
    for seg in segments:
        text = " ".join(seg["texts"])
        out.append({
            "ID": f"{basefile}_{seg['first']:04d}_{seg['last']:04d}",
            "duration": seg["stop"] - seg["start"],
            "wav": wav,
            "start": seg["start"],
            "stop": seg["stop"],
            "spk_id": seg["spkr"],
            "wrd": normalize_words(text),
            "wrd_raw": text,
        })
    return out


def split_speakers(speakers, n_valid, n_test, seed):
    """Seeded ``(train, valid, test)`` sets of interviewee codes."""
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    valid = set(order[:n_valid])
    test = set(order[n_valid:n_valid + n_test])
    return set(order[n_valid + n_test:]), valid, test


def prepare_coraal(
    data_folder,
    save_folder,
    keep_interviewer=False,
    max_segment_seconds=30.0,
    n_valid_speakers=5,
    n_test_speakers=5,
    seed=1234,
):
    """Write CORAAL's ``train.csv``, ``valid.csv``, ``test.csv`` in ``save_folder``.

    Paper: interviews cut into <=30 s segments from the transcript timings; 5 speakers for
    validation, 5 for test. See the module docstring for the cleaning and segmentation.

    Arguments
    ---------
    data_folder : str
        Folder holding the unpacked ``<basefile>.txt``/``<basefile>.wav`` (any depth).
    save_folder : str
        Where the manifests go.
    keep_interviewer : bool
        Keep the turns of speakers other than the interviewee (default: drop them).
    max_segment_seconds : float
        Longest segment; consecutive rows of one speaker are merged up to it.
    n_valid_speakers, n_test_speakers : int
        Interviewees held out (seeded) for validation and test.
    seed : int
        Seed of the speaker split.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    was already prepared with the same options.
    """
    options = {
        "corpus": "coraal",
        "prep_version": PREP_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "keep_interviewer": bool(keep_interviewer),
        "max_segment_seconds": float(max_segment_seconds),
        "n_valid_speakers": int(n_valid_speakers),
        "n_test_speakers": int(n_test_speakers),
        "seed": seed,
    }
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("CORAAL already prepared in %s, skipping", save_folder)
        return None
    if max_segment_seconds <= 0 or n_valid_speakers < 0 or n_test_speakers < 0:
        raise ValueError("max_segment_seconds must be positive and speaker counts not negative")

    require(os.path.isdir(data_folder), f"CORAAL data_folder {data_folder!r} does not exist")
    found = find_transcripts(data_folder)
    require(
        bool(found),
        f"no CORAAL transcript under {data_folder!r}: expected <basefile>.txt files (e.g. "
        "DCB_se1_ag1_f_01_1.txt, tab-separated with the header "
        "'Line\\tSpkr\\tStTime\\tContent\\tEnTime') next to or near their <basefile>.wav, "
        "as unpacked from the <C>_textfiles_<ver>.tar.gz and <C>_audio_partNN_<ver>.tar.gz "
        "tarballs",
    )
    speakers = {interviewee_code(b) for b in found}
    if len(speakers) < n_valid_speakers + n_test_speakers + 1:
        raise ValueError(
            f"CORAAL: {len(speakers)} interviewees under {data_folder!r}, too few for "
            f"n_valid_speakers={n_valid_speakers} + n_test_speakers={n_test_speakers} + "
            "at least one for training"
        )

    skipped = SkipLog()
    by_speaker = collections.defaultdict(list)
    for basefile, (txt, wav) in tqdm(sorted(found.items()), desc="CORAAL", unit="file"):
        if wav is None:
            skipped.skip(basefile, txt, f"no audio file {basefile}.wav under the data folder")
            continue
        wav = os.path.abspath(wav)
        try:
            duration, _ = audio_info(wav)
        except ValueError as err:
            skipped.skip(basefile, wav, str(err))
            continue
        try:
            rows = read_transcript(txt)
        except OSError as err:
            rows, why = None, f"unreadable transcript ({err})"
        else:
            why = "transcript header lacks Spkr, StTime, Content or EnTime"
        if rows is None:
            skipped.skip(basefile, txt, why)
            continue
        segments = segment_rows(basefile, rows, duration, wav, keep_interviewer,
                                max_segment_seconds, skipped)
        by_speaker[interviewee_code(basefile)].extend(segments)

    usable = [s for s in speakers if by_speaker.get(s)]
    if len(usable) < len(speakers):
        logger.warning("CORAAL: %d interviewees have no usable segment and are left out of "
                       "the split", len(speakers) - len(usable))
    train_spk, valid_spk, test_spk = split_speakers(usable, n_valid_speakers, n_test_speakers,
                                                    seed)
    logger.info("CORAAL valid speakers: %s", ", ".join(sorted(valid_spk)))
    logger.info("CORAAL test speakers: %s", ", ".join(sorted(test_spk)))
    splits = {}
    for name, group in (("train.csv", train_spk), ("valid.csv", valid_spk),
                        ("test.csv", test_spk)):
        splits[name] = [row for spk in sorted(group) for row in by_speaker[spk]]
    return finish(save_folder, splits, skipped, options, "CORAAL")



def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare CORAAL manifests (train/valid/test CSVs) for AoDE: interviews cut "
        "into <=30 s segments, speaker-level split (paper: 5 valid, 5 test speakers).",
    )
    parser.add_argument("--data_folder", required=True,
                        help="folder with the unpacked CORAAL <basefile>.txt and .wav files "
                        "(searched recursively)")
    parser.add_argument("--save_folder", required=True, help="where the manifests are written")
    parser.add_argument("--keep_interviewer", action="store_true",
                        help="keep the turns of speakers other than the interviewee "
                        "(default: drop them)")
    parser.add_argument("--max_segment_seconds", type=float, default=30.0,
                        help="longest segment; consecutive rows of one speaker are merged up "
                        "to it (default 30, the paper's)")
    parser.add_argument("--n_valid_speakers", type=int, default=5,
                        help="interviewees held out for validation (default 5)")
    parser.add_argument("--n_test_speakers", type=int, default=5,
                        help="interviewees held out for test (default 5)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the speaker split")
    args = parser.parse_args(argv)
    return run_cli(prepare_coraal, args.data_folder, args.save_folder, MANIFESTS,
                   keep_interviewer=args.keep_interviewer, max_segment_seconds=args.max_segment_seconds,
                   n_valid_speakers=args.n_valid_speakers, n_test_speakers=args.n_test_speakers,
                   seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
