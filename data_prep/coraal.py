"""CORAAL data preparation (Corpus of Regional African American Language, Univ. of Oregon).

What the paper did (Plantinga et al., SLT 2024): fine-tuned Whisper and Parakeet on CORAAL;
the long sociolinguistic interviews were cut into segments from the transcript timings, each
at most 30 s; 5 speakers were held out for validation and 5 for test (~5 h each).

Layout: per component (ATL, DCA, DCB, DTA, LES, PRV, ROC, VLD) flat tarballs of
``<basefile>.wav`` (~44.1 kHz, ``<C>_audio_partNN_<ver>.tar.gz``) and ``<basefile>.txt``
(``<C>_textfiles_<ver>.tar.gz``), e.g. ``DCB_se1_ag1_f_01_1``. They may be unpacked into one
folder or several: every ``.txt`` under ``data_folder`` (recursively) whose first line is the
transcript header ``Line<TAB>Spkr<TAB>StTime<TAB>Content<TAB>EnTime`` is a transcript, and its
audio is the ``<basefile>.wav`` found anywhere under ``data_folder`` (the same folder first).
Transcripts are read as UTF-8 (with or without BOM), falling back to cp1252 (so a Windows
``’`` stays an apostrophe). Other ``.txt`` files (metadata, READMEs) are ignored, except that
a ``.txt`` named like a basefile (``<C>_se<d>_ag<d>_<g>_<NN>_<part>``, or with a ``.wav`` of
the same name) but without the header (0-byte, another export) is logged in ``skipped.csv``.
A ``.wav`` with no transcript is logged too. macOS ``._*`` files are ignored.

Cleaning (:func:`clean_content`; checked against NeMo-speech-data-processor's CORAAL config,
whose test cases are in tests/test_prep_coraal.py, and Koenecke et al.'s ``clean_coraal``):

* removed: pauses ``(pause 0.17)``/``{pause 0.17}`` (also unclosed, ``(pause 0.5``), every
  other round- or curly-brace note (``(laughing)``, ``(whispered)``, ``{laughs}``), angle tags
  (``<laugh>``, ``<ts>``, malformed ``<laugh]``), redactions ``/RD-NAME-2/`` with a clitic
  glued to them (``/RD-NAME-2/'s``), ``/unintelligible/``, ``/inaudible/``, ``/?/``, and
  square-bracketed sounds such as ``[laughing]``;
* kept: ``[ ]`` marks overlapping speech; the words inside are spoken, so the brackets go and
  the words stay, glued to an adjacent letter (``something [els]e`` -> ``something else``, as
  NeMo; Koenecke et al. drop overlap text instead); ``/word/`` keeps ``word``;
* spelling as NeMo and Koenecke et al.: busses->buses, aks->ask, aksing->asking, aksed->asked.

Segmentation (:func:`segment_rows`):

* Rows are taken in ``StTime`` order (as Koenecke et al. sort by start time); a row whose
  StTime is not a number keeps its place after its predecessor in the file.
* An empty Content cell is skipped ("empty Content cell") and, like any skipped row, ends the
  current segment. Pause-only rows are skipped ("pause-only row") and do not end a segment
  (NeMo drops every row that contains a pause; we only drop rows that hold nothing else).
  Interviewer turns are dropped by default (logged; option ``keep_interviewer``): the
  interviewee is the speaker whose ``Spkr`` code is a prefix of the basefile (NeMo's and
  Koenecke et al.'s ``Spkr in Basefile``); every other speaker counts as an interviewer.
* Consecutive rows of one speaker are merged into segments of at most
  ``max_segment_seconds`` (30, the paper's), by :func:`data_prep.common.merge_same_speaker`.
  A row of another speaker, a row that is empty after cleaning (e.g. only
  ``/unintelligible/``: its audio holds untranscribed speech) or a skipped row ends the
  current segment, and two rows are never merged when another speaker's (or a skipped) row
  reaches into the time between them, so a merged segment never spans speech its text lacks.
  A single row that overlaps another speaker's row (CORAAL marks the overlap with ``[ ]``) is
  kept, as NeMo does (Koenecke et al. drop it).
* Skipped with a generic reason in ``skipped.csv`` (details in the log at DEBUG level): an
  impossible time (non-numeric, negative, end <= start), a row longer than
  ``max_segment_seconds``, a row that runs past the end of its audio, a row empty after
  cleaning, every row of a transcript whose audio is missing ("transcript without audio") or
  unreadable/truncated ("unreadable audio").

Speaker = the interviewee code (the basefile minus its trailing ``_<part>``, e.g.
``DCB_se1_ag1_f_01``); kept interviewer turns get their own ``Spkr`` code as speaker but
follow their interview into its split. The split is by interviewee, seeded:
``n_valid_speakers`` (5) for validation, ``n_test_speakers`` (5) for test, the rest train;
only interviewees whose audio was found count.

Audio stays at its own rate (~44.1 kHz); the loader (:mod:`aode.data`) resamples at load time.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import random
import re
import sys
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from aode.text import normalize_words
from data_prep.common import EMPTY_TEXT
from data_prep.common import NO_AUDIO
from data_prep.common import NO_TRANSCRIPT
from data_prep.common import PrepOptionsError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import audio_info
from data_prep.common import cli_parser
from data_prep.common import decode_text
from data_prep.common import finish
from data_prep.common import merge_same_speaker
from data_prep.common import prep_options
from data_prep.common import require
from data_prep.common import require_data_folder
from data_prep.common import run_cli

logger = logging.getLogger(__name__)

MANIFESTS = ("train.csv", "valid.csv", "test.csv")
HEADER = ("line", "spkr", "sttime", "content", "entime")
# 2: notes in ( ) and { } removed, [ ] glued to words, rows in StTime order (outputs differ).
PREP_VERSION = 2
# One transcript row: (row number, Spkr, StTime, Content, EnTime), times as written.
TranscriptRow = tuple[int, str, str, str, str]
# A segment may end this much past the end of its audio (rounding in the timings); it is
# clipped to the audio. Anything later is skipped.
END_TOLERANCE = 0.05

# Skip reasons: generic, so that the summary groups them (details go to the log).
PAUSE_ONLY = "pause-only row"
EMPTY_CONTENT = "empty Content cell"
INTERVIEWER = "interviewer turn (keep_interviewer off)"
IMPOSSIBLE_TIME = "impossible time"
TOO_LONG = "row longer than max_segment_seconds={:g}"
PAST_AUDIO_END = "runs past the end of its audio"
NO_HEADER = "transcript without header line"
NO_ROWS = "transcript without rows"
UNREADABLE_AUDIO = "unreadable audio"
UNREADABLE_TRANSCRIPT = "unreadable transcript"

TEXT_ONLY_CAUSE = (
    "no transcript has its audio: only the textfiles seem to be unpacked; unpack the "
    "<C>_audio_partNN_<ver>.tar.gz tarballs under data_folder too (any subfolder), so that "
    "each <basefile>.wav lies somewhere below it"
)

# A basefile: <component>_se<d>_ag<d>_<gender>_<NN>_<part>, e.g. DCB_se1_ag1_f_01_1.
_BASEFILE = re.compile(r"^[A-Z]{3}_se\d+_ag\d+_[a-z]_\d+_\d+$", re.I)

# Bracketed tags that are sounds, not words: removed (any other "[word]" keeps "word").
NON_SPEECH = {
    "laugh",
    "laughs",
    "laughing",
    "laughter",
    "cough",
    "coughs",
    "coughing",
    "sigh",
    "sighs",
    "sighing",
    "breath",
    "breathing",
    "breathes",
    "inhale",
    "inhales",
    "exhale",
    "exhales",
    "sneeze",
    "sneezes",
    "sneezing",
    "sniff",
    "sniffs",
    "sniffing",
    "yawn",
    "yawns",
    "yawning",
    "clears throat",
    "clearing throat",
    "throat clear",
    "ts",
    "tsk",
    "lipsmack",
    "lip smack",
    "whistle",
    "whistles",
    "whistling",
    "noise",
    "background noise",
    "crosstalk",
    "pause",
    "silence",
    "unintelligible",
    "inaudible",
    "cries",
    "crying",
    "groan",
    "groans",
}

# "(pause 0.17)", "{pause 1.2}", and the unclosed "(pause 0.5" (which must not leave words).
_PAUSE = re.compile(r"[({]\s*pause\b[^(){}]*[)}]|[({]\s*pause\b[\s\d.]*", re.I)
_REDACT_BRACKETED = re.compile(r"\[\s*/RD-[^\]]*\]", re.I)
# "/RD-NAME-2/", the malformed "/RD-NAME-3.", and a clitic glued to it ("/RD-NAME-2/'s").
_REDACT = re.compile(r"/RD-[A-Za-z0-9_-]*[/.]?(?:['\u2019]s\b)?", re.I)
_SLASH_MARKS = re.compile(r"/\s*(?:unintelligible|inaudible|\?+)\s*/", re.I)
_ANGLE = re.compile(r"<[^<>\]\[]*[>\]]")  # <laugh>, <ts>, and the malformed <laugh]
# Line-level notes: "(laughing)", "(whispered)", "{laughs}" (as NeMo and Koenecke et al.).
_NOTE = re.compile(r"\([^()]*\)|\{[^{}]*\}")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
# An overlap bracket touching a word character: removed without a space ("[els]e", "y[eah]").
_GLUED_BRACKET = re.compile(r"(?<=[\w'\u2019-])\[|\](?=[\w'\u2019-])")
_SLASHED = re.compile(r"/([^/]*)/")
_STRAY = re.compile(r"[\[\]{}()<>/]")
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


def _drop_non_speech_bracket(match):
    """``[laughing]`` -> space; an overlap bracket ``[words]`` is left for the next step."""
    inner = match.group(1).strip()
    if not inner or inner.lower().strip(" -") in NON_SPEECH:
        return " "
    return match.group(0)


def is_pause_only(content: str) -> bool:
    """True when a Content cell holds nothing but pause marks (or nothing at all)."""
    return not _PAUSE.sub(" ", content).strip()


def clean_content(content: str) -> str:
    """CORAAL Content cell -> cleaned text with its casing and punctuation ('' if no words).

    >>> clean_content("Tell me about /RD-NAME-2/ <laugh>.")
    'Tell me about.'
    >>> clean_content("I [went] there (pause 0.17) /unintelligible/ we aks")
    'I went there we ask'
    >>> clean_content("(laughing) something [els]e {laughs}")
    'something else'
    """
    text = _PAUSE.sub(" ", content)
    text = _REDACT_BRACKETED.sub(" ", text)
    text = _REDACT.sub(" ", text)
    text = _SLASH_MARKS.sub(" ", text)
    text = _ANGLE.sub(" ", text)
    text = _NOTE.sub(" ", text)
    text = _BRACKET.sub(_drop_non_speech_bracket, text)
    text = _GLUED_BRACKET.sub("", text)
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


def interviewee_code(basefile: str) -> str:
    """``DCB_se1_ag1_f_01`` from ``DCB_se1_ag1_f_01_1`` (the basefile minus ``_<part>``)."""
    return re.sub(r"_\d+$", "", basefile)


def _header_columns(first_line):
    """``{column: index}`` of a transcript header line, or None when it is not one."""
    header = [h.strip().lower() for h in first_line.lstrip("\ufeff").split("\t")]
    if not all(h in header for h in HEADER[1:]):
        return None
    return {name: header.index(name) for name in HEADER if name in header}


def read_transcript_table(path: str | os.PathLike) -> list[TranscriptRow] | None:
    """Rows ``(row number, Spkr, StTime str, Content, EnTime str)`` of a CORAAL transcript
    (a tab-separated table, decoded by :func:`data_prep.common.decode_text`), or None when
    the file does not start with the transcript header. Raises OSError when the file cannot
    be read."""
    with open(path, "rb") as f:
        text = decode_text(f.read())
    # Only line feeds end a row (str.splitlines would also split at U+2028, U+0085...).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    col = _header_columns(lines[0])
    if col is None:
        return None
    rows = []
    for number, line in enumerate(lines[1:], start=1):
        if not line.strip():
            continue
        cells = line.split("\t")
        cells += [""] * (max(col.values()) + 1 - len(cells))
        rows.append(
            (
                number,
                cells[col["spkr"]].strip(),
                cells[col["sttime"]].strip(),
                cells[col["content"]],
                cells[col["entime"]].strip(),
            )
        )
    return rows


def _transcript_state(path):
    """ "ok", NO_HEADER or UNREADABLE_TRANSCRIPT for a ``.txt`` (its first line only)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as err:
        logger.warning("CORAAL: cannot read %s (%s)", path, err)
        return UNREADABLE_TRANSCRIPT
    line = decode_text(first).rstrip("\r\n")
    return "ok" if _header_columns(line) is not None else NO_HEADER


def find_transcripts(
    data_folder: str | os.PathLike,
) -> tuple[dict[str, tuple[str, str | None]], dict[str, tuple[str, str]], dict[str, str]]:
    """Walk ``data_folder``: ``(found, unusable, orphan_wavs)``.

    ``found``: ``{basefile: (transcript path, wav path or None)}``; ``unusable``:
    ``{basefile: (path, reason)}`` for ``.txt`` files named like a basefile (or with a
    same-named ``.wav``) that lack the header or cannot be read; ``orphan_wavs``:
    ``{basefile: wav path}`` for ``.wav`` files without any such ``.txt``.
    """
    texts, wavs = collections.defaultdict(list), collections.defaultdict(list)
    for folder, _, files in os.walk(data_folder):
        for name in files:
            if name.startswith("._"):  # macOS AppleDouble metadata, not a file of the corpus
                continue
            stem, ext = os.path.splitext(name)
            if ext.lower() == ".wav":
                wavs[stem].append(os.path.join(folder, name))
            elif ext.lower() == ".txt":
                texts[stem].append(os.path.join(folder, name))
    found, unusable = {}, {}
    for stem, paths in sorted(texts.items()):
        states = {path: _transcript_state(path) for path in sorted(paths)}
        good = [path for path, state in states.items() if state == "ok"]
        if good:
            candidates = sorted(wavs.get(stem, []), key=lambda w: os.path.dirname(w) != os.path.dirname(good[0]))
            found[stem] = (good[0], candidates[0] if candidates else None)
        elif _BASEFILE.match(stem) or stem in wavs:
            path = sorted(paths)[0]
            unusable[stem] = (path, states[path])
    orphans = {
        stem: sorted(paths)[0] for stem, paths in sorted(wavs.items()) if stem not in found and stem not in unusable
    }
    return found, unusable, orphans


def _number(text):
    """``float(text)`` when it is a finite number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_times(st: str, en: str) -> tuple[float, float] | None:
    """``(start, stop)`` in seconds, or None when impossible (not numbers, negative,
    stop <= start)."""
    start, stop = _number(st), _number(en)
    if start is None or stop is None or start < 0 or stop <= start:
        return None
    return start, stop


def start_order(rows: Iterable[TranscriptRow]) -> list[TranscriptRow]:
    """``rows`` sorted by StTime (stable). A row whose StTime is not a number keeps its place
    right after its predecessor in the file, where the transcriber put it."""
    keyed, last = [], -math.inf
    for index, row in enumerate(rows):
        start = _number(row[2])
        if start is not None:
            last = start
        keyed.append(((last, index), row))
    return [row for _, row in sorted(keyed, key=lambda item: item[0])]


def segment_rows(
    basefile: str,
    rows: Iterable[TranscriptRow],
    audio_duration: float,
    wav: str,
    keep_interviewer: bool,
    max_segment_seconds: float,
    skipped: SkipLog,
) -> list[dict[str, Any]]:
    """Manifest rows (without split) of one transcript; every dropped row goes to ``skipped``.

    See the module docstring for the rules.
    """
    speaker = interviewee_code(basefile)
    audio_end = math.floor(audio_duration * 1000) / 1000  # 3 decimals, inside the audio
    # Kept rows in StTime order, None where a skipped row ends the current segment; each kept
    # row carries how far the rows before it of other owners reach (``others_until``).
    # Owners: a kept row's speaker, or None for skipped rows (their audio holds speech the
    # text lacks).
    items = []
    speech_until = {}  # latest stop of the rows seen so far, per owner

    def drop(row_id: str, reason: str, times: tuple[float, float] | None, detail: str | None = None) -> None:
        skipped.skip(row_id, wav, reason)
        if detail:
            logger.debug("CORAAL %s skipped (%s): %s", row_id, reason, detail)
        if times is not None:
            speech_until[None] = max(speech_until.get(None, 0.0), times[1])
        items.append(None)

    for number, spkr, st, content, en in start_order(rows):
        row_id = f"{basefile}_{number:04d}"
        times = parse_times(st, en)
        if not content.strip():
            drop(row_id, EMPTY_CONTENT, times)
            continue
        if is_pause_only(content):  # silence: neither text nor a reason to end a segment
            skipped.skip(row_id, wav, PAUSE_ONLY)
            continue
        interviewee = bool(spkr) and basefile.startswith(spkr)
        if not interviewee and not keep_interviewer:
            drop(row_id, INTERVIEWER, times)
            continue
        if times is None:
            drop(row_id, IMPOSSIBLE_TIME, None, f"StTime {st!r}, EnTime {en!r}")
            continue
        start, stop = times
        if stop - start > max_segment_seconds:
            drop(row_id, TOO_LONG.format(max_segment_seconds), times, f"{stop - start:.2f} s")
            continue
        if stop > audio_duration + END_TOLERANCE:
            drop(row_id, PAST_AUDIO_END, times, f"ends at {stop:.2f} s, audio {audio_duration:.2f} s")
            continue
        stop = min(stop, audio_end)
        text = clean_content(content)
        if not text:
            drop(row_id, EMPTY_TEXT, times, repr(content))
            continue
        spk = speaker if interviewee else spkr
        others_until = max((t for owner, t in speech_until.items() if owner != spk), default=-math.inf)
        items.append(
            {"speaker": spk, "start": start, "stop": stop, "text": text, "number": number, "others_until": others_until}
        )
        speech_until[spk] = max(speech_until.get(spk, 0.0), stop)

    # Never merge across speech of another owner that reaches past the segment's end.
    segments = merge_same_speaker(
        items, max_segment_seconds, may_join=lambda seg, item: item["others_until"] <= seg["stop"]
    )
    out = []
    for seg in segments:
        text = " ".join(item["text"] for item in seg["items"])
        first, last = seg["items"][0]["number"], seg["items"][-1]["number"]
        out.append(
            {
                "ID": f"{basefile}_{first:04d}_{last:04d}",
                "duration": seg["stop"] - seg["start"],
                "wav": wav,
                "start": seg["start"],
                "stop": seg["stop"],
                "spk_id": seg["speaker"],
                "wrd": normalize_words(text),
                "wrd_raw": text,
            }
        )
    return out


def interview_segments(
    basefile: str, txt: str, wav: str, keep_interviewer: bool, max_segment_seconds: float, skipped: SkipLog
) -> list[dict[str, Any]]:
    """Segments of one interview whose audio was found; [] (and a skip log entry) when its
    audio or transcript cannot be used."""
    try:
        duration, _ = audio_info(wav)
    except ValueError as err:
        logger.warning("CORAAL %s: %s", wav, err)
        skipped.skip(basefile, wav, UNREADABLE_AUDIO)
        return []
    try:
        rows = read_transcript_table(txt)
    except OSError as err:
        logger.warning("CORAAL: cannot read %s (%s)", txt, err)
        skipped.skip(basefile, txt, UNREADABLE_TRANSCRIPT)
        return []
    if rows is None:  # changed since it was found
        skipped.skip(basefile, txt, NO_HEADER)
        return []
    if not rows:
        skipped.skip(basefile, txt, NO_ROWS)
        return []
    return segment_rows(basefile, rows, duration, wav, keep_interviewer, max_segment_seconds, skipped)


def split_speakers(
    speakers: Iterable[str], n_valid: int, n_test: int, seed: int
) -> tuple[set[str], set[str], set[str]]:
    """Seeded ``(train, valid, test)`` sets of interviewee codes."""
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    valid = set(order[:n_valid])
    test = set(order[n_valid : n_valid + n_test])
    return set(order[n_valid + n_test :]), valid, test


def _likely_cause(n_transcripts, n_with_audio, n_usable, n_needed):
    """What layout mistake most probably emptied a split (for :func:`finish`)."""
    if n_with_audio == 0:
        return TEXT_ONLY_CAUSE
    causes = []
    if n_with_audio < n_transcripts:
        causes.append(
            f"{n_transcripts - n_with_audio} of {n_transcripts} transcripts have no "
            "audio (an audio tarball not unpacked under data_folder?)"
        )
    if n_usable < n_needed:
        causes.append(
            f"only {n_usable} interviewees have a usable segment, fewer than the "
            f"{n_needed} the split needs (unreadable audio? see skipped.csv)"
        )
    return "; ".join(causes) or None


def prepare_coraal(
    data_folder: str,
    save_folder: str,
    keep_interviewer: bool = False,
    max_segment_seconds: float = 30.0,
    n_valid_speakers: int = 5,
    n_test_speakers: int = 5,
    seed: int = 1234,
) -> dict[str, tuple[int, float]] | None:
    """Write CORAAL's ``train.csv``, ``valid.csv``, ``test.csv`` in ``save_folder``.

    Paper: interviews cut into <=30 s segments from the transcript timings; 5 speakers for
    validation, 5 for test. See the module docstring for the layout, cleaning and
    segmentation.

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
    was already prepared with the same options. Raises :class:`LayoutError` when no
    transcript is found, ``EmptyPreparationError`` (a LayoutError) when a split comes out
    empty (e.g. only the textfiles were unpacked), ValueError when fewer interviewees have
    audio than the split needs.
    """
    options = prep_options(
        "coraal",
        PREP_VERSION,
        data_folder,
        keep_interviewer=bool(keep_interviewer),
        max_segment_seconds=float(max_segment_seconds),
        n_valid_speakers=int(n_valid_speakers),
        n_test_speakers=int(n_test_speakers),
        seed=seed,
    )
    if already_prepared(save_folder, MANIFESTS, options):
        logger.info("CORAAL already prepared in %s, skipping", save_folder)
        return None
    if max_segment_seconds <= 0 or n_valid_speakers < 0 or n_test_speakers < 0:
        raise PrepOptionsError("max_segment_seconds must be positive and speaker counts not negative")

    require_data_folder(data_folder, "CORAAL")
    found, unusable, orphans = find_transcripts(data_folder)
    headerless = (
        f" ({len(unusable)} .txt named like basefiles lack that header, e.g. {next(iter(unusable.values()))[0]!r})"
        if unusable
        else ""
    )
    require(
        bool(found),
        f"no CORAAL transcript under {data_folder!r}: expected <basefile>.txt files (e.g. "
        "DCB_se1_ag1_f_01_1.txt, tab-separated with the header "
        f"'Line\\tSpkr\\tStTime\\tContent\\tEnTime'){headerless} next to or near their "
        "<basefile>.wav, as unpacked from the <C>_textfiles_<ver>.tar.gz and "
        "<C>_audio_partNN_<ver>.tar.gz tarballs",
    )
    skipped = SkipLog()
    for basefile, (path, reason) in unusable.items():
        skipped.skip(basefile, path, reason)
    for basefile, wav in orphans.items():
        skipped.skip(basefile, wav, NO_TRANSCRIPT)
    with_audio = {}
    for basefile, (txt, wav) in found.items():
        if wav is None:
            skipped.skip(basefile, txt, NO_AUDIO)
        else:
            with_audio[basefile] = (txt, os.path.abspath(wav))

    # Only interviews whose audio was found count; with none at all, finish() below refuses
    # the empty splits and names the likely cause (textfiles unpacked without the audio).
    n_needed = n_valid_speakers + n_test_speakers + 1
    speakers = {interviewee_code(b) for b in with_audio}
    if with_audio and len(speakers) < n_needed:
        no_audio = len(found) - len(with_audio)
        raise PrepOptionsError(
            f"CORAAL: {len(speakers)} interviewees with audio under {data_folder!r}, too few "
            f"for n_valid_speakers={n_valid_speakers} + n_test_speakers={n_test_speakers} + "
            "at least one for training" + (f" ({no_audio} transcripts have no audio)" if no_audio else "")
        )

    by_speaker = collections.defaultdict(list)
    for basefile, (txt, wav) in tqdm(sorted(with_audio.items()), desc="CORAAL", unit="file"):
        segments = interview_segments(basefile, txt, wav, keep_interviewer, max_segment_seconds, skipped)
        by_speaker[interviewee_code(basefile)].extend(segments)

    usable = [s for s in speakers if by_speaker.get(s)]
    if len(usable) < len(speakers):
        logger.warning(
            "CORAAL: %d interviewees have no usable segment and are left out of the split", len(speakers) - len(usable)
        )
    train_spk, valid_spk, test_spk = split_speakers(usable, n_valid_speakers, n_test_speakers, seed)
    logger.info("CORAAL valid speakers: %s", ", ".join(sorted(valid_spk)))
    logger.info("CORAAL test speakers: %s", ", ".join(sorted(test_spk)))
    splits = {}
    for name, group in (("train.csv", train_spk), ("valid.csv", valid_spk), ("test.csv", test_spk)):
        splits[name] = [row for spk in sorted(group) for row in by_speaker[spk]]
    cause = _likely_cause(len(found), len(with_audio), len(usable), n_needed)
    return finish(save_folder, splits, skipped, options, "CORAAL", likely_cause=cause)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, "folder with the unpacked CORAAL <basefile>.txt and .wav files (searched recursively)")
    parser.add_argument(
        "--keep_interviewer",
        action="store_true",
        help="keep the turns of speakers other than the interviewee (default: drop them)",
    )
    parser.add_argument(
        "--max_segment_seconds",
        type=float,
        default=30.0,
        help="longest segment; consecutive rows of one speaker are merged up to it (default 30, the paper's)",
    )
    parser.add_argument(
        "--n_valid_speakers", type=int, default=5, help="interviewees held out for validation (default 5)"
    )
    parser.add_argument("--n_test_speakers", type=int, default=5, help="interviewees held out for test (default 5)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the speaker split")
    return run_cli(prepare_coraal, parser, argv, MANIFESTS)


if __name__ == "__main__":
    sys.exit(main())
