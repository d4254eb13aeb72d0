"""DiPCo data preparation (Amazon Dinner Party Corpus, CDLA-Permissive).

What the paper did (Plantinga et al., SLT 2024, Table VI): Whisper small.en fine-tuned on
DiPCo with the audio = the sum of the close-talk microphones, segments of at most 30 s; it
reports 2.7 h of dev and 3.4 h of test (DiPCo's official dev and eval parts). DiPCo has no
training part and the paper does not say how it split dev for training and validation.

Our split (documented choice):

* train = the dev sessions (S02 S04 S05 S09 S10) except ``n_valid_sessions`` (default 1)
  session(s) picked with ``seed``;
* valid = those held-out dev session(s) (``n_valid_sessions=0``: no valid.csv, since an
  empty manifest loads in neither SpeechBrain's reader nor ours);
* test = every eval session (S01 S03 S06 S07 S08), as in the paper.

A participant may appear in several sessions, hence possibly in train and valid.

Layout: ``audio/{dev,eval}/<session>_<Pxx>.wav`` (close-talk, one per participant, 16 kHz;
the far-field ``<session>_Uxx.CHy.wav`` files are ignored) and
``transcriptions/{dev,eval}/<session>.json`` (optionally under one more folder, e.g. the
tarball's ``Dipco/``). Each JSON is a list of utterances with ``session_id``, ``speaker_id``,
``words``, ``start_time``/``end_time`` dicts keyed by ``"close-talk"``, ``"U01"``.. holding
``"HH:MM:SS.ff"`` strings; the close-talk times are used.

Audio (option ``channel``):

* ``"sum"`` (default, the paper's): the sum of ALL the session's close-talk microphones. The
  ``wav`` field joins their paths with :data:`aode.manifest.WAV_SEPARATOR` and the loader
  sums them sample by sample, so no second copy of the corpus is written. The speaker's own
  close-talk file is required (as in lhotse's ``ihm`` recipe, which maps each speaker to
  their own channel): when a session's JSON names a speaker whose ``<session>_<Pxx>.wav`` is
  missing, that speaker's utterances are skipped ("close-talk audio file missing") and a
  warning names the session and the file, since the sum for the other speakers lacks it.
* ``"own"``: only the speaker's own close-talk microphone.

Text (:func:`clean_words`): utterances containing ``[redacted]`` are dropped,
``[inaudible ...]`` tags removed, ``mm-`` -> ``mm``, every other ``[...]`` tag removed as a
non-word.

Segments: one utterance each by default; an utterance longer than ``max_segment_seconds``
(30) is skipped with a reason. With ``merge_consecutive``, consecutive utterances of one
speaker in a session (in transcription order; a skipped one ends the segment) are merged up
to ``max_segment_seconds`` (:func:`data_prep.common.merge_same_speaker`).
Skipped with a reason in ``skipped.csv``: ``[redacted]``, empty text after cleaning, an
impossible or unparsable time, too long, past the end of the audio, missing or
unreadable/truncated audio, an unreadable transcription file. A split that comes out empty,
or more than half the utterances lost for missing audio, is an error
(:func:`data_prep.common.finish`); ``n_valid_sessions=0`` writes no ``valid.csv``.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import math
import os
import random
import re
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from aode.manifest import WAV_SEPARATOR
from aode.text import normalize_words
from data_prep.common import LOST_REASONS
from data_prep.common import LayoutError
from data_prep.common import PrepOptionsError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import audio_info
from data_prep.common import cli_parser
from data_prep.common import find_root
from data_prep.common import finish
from data_prep.common import folders_below
from data_prep.common import merge_same_speaker
from data_prep.common import prep_options
from data_prep.common import remove_stale_manifests
from data_prep.common import require
from data_prep.common import require_data_folder
from data_prep.common import run_cli

logger = logging.getLogger(__name__)

MANIFESTS = ("train.csv", "valid.csv", "test.csv")
CHANNELS = ("sum", "own")
PREP_VERSION = 2  # 2: sum mode skips the utterances of a speaker without close-talk file
END_TOLERANCE = 0.05  # seconds an utterance may end past its audio (clipped)
MIC_MISSING = "close-talk audio file missing"
SESSION_AUDIO_MISSING = "no close-talk audio file for the session"
LIKELY_CAUSE = (
    "close-talk files audio/{dev,eval}/<session>_<Pxx>.wav missing or misplaced (DiPCo.tgz "
    "only partly extracted, or audio/ and transcriptions/ under different folders), or "
    "options that skip every utterance of a split's sessions (max_segment_seconds)"
)

_REDACTED = re.compile(r"\[\s*redacted\s*\]", re.I)
_INAUDIBLE = re.compile(r"\[\s*inaudible[^\]]*\]", re.I)
_TAG = re.compile(r"\[[^\]]*\]")
_MM = re.compile(r"(?<![\w'-])(mm)-(?![\w'])", re.I)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_LEADING_PUNCT = re.compile(r"^[\s,.;:!?-]+")
_CLOSE_TALK = re.compile(r"^(S\d+)_(P\d+)\.wav$", re.I)
_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


def has_redacted(words: str) -> bool:
    """True when the utterance holds a ``[redacted]`` tag (such utterances are dropped)."""
    return bool(_REDACTED.search(words))


def clean_words(words: str) -> str:
    """DiPCo ``words`` -> cleaned text with casing and punctuation ('' if no words left).

    >>> clean_words("Mm- yeah [laugh] it was [inaudible 0:12] good.")
    'Mm yeah it was good.'
    """
    text = _INAUDIBLE.sub(" ", words)
    text = _TAG.sub(" ", text)
    text = _MM.sub(lambda m: m.group(1), text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _LEADING_PUNCT.sub("", text)
    return text if normalize_words(text) else ""


def parse_time(value: object) -> float:
    """Seconds from DiPCo's ``"HH:MM:SS.ff"``; ValueError if malformed."""
    match = _TIME.match(str(value).strip())
    if not match:
        raise ValueError(f"bad time {value!r}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _is_root(folder):
    return all(
        os.path.isdir(os.path.join(folder, part, split))
        for part in ("audio", "transcriptions")
        for split in ("dev", "eval")
    )


def find_dipco_root(data_folder: str) -> str:
    """The folder holding ``audio/`` and ``transcriptions/`` (``data_folder`` or one
    subfolder of it), or raise :class:`LayoutError`."""
    require_data_folder(data_folder, "DiPCo")
    root = find_root(folders_below(data_folder, depth=1), _is_root)
    if root is not None:
        return root
    raise LayoutError(
        f"no DiPCo layout under {data_folder!r}: expected audio/{{dev,eval}}/<session>_<Pxx>.wav "
        "and transcriptions/{dev,eval}/<session>.json (in the data folder or one folder below "
        "it, e.g. Dipco/)"
    )


def _ms(seconds):
    return int(round(seconds * 1000))


def session_segments(
    root: str,
    split: str,
    session: str,
    channel: str,
    max_segment_seconds: float,
    merge_consecutive: bool,
    skipped: SkipLog,
) -> list[dict[str, Any]]:
    """Manifest rows of one session; every dropped utterance goes to ``skipped``."""
    json_path = os.path.join(root, "transcriptions", split, session + ".json")
    audio_dir = os.path.join(root, "audio", split)
    try:
        with open(json_path, encoding="utf-8") as f:
            utterances = json.load(f)
        if not isinstance(utterances, list):
            raise ValueError("not a list of utterances")
    except (OSError, ValueError) as err:
        skipped.skip(session, json_path, f"unreadable transcription ({err})")
        return []

    mics = {}
    for path in sorted(glob.glob(os.path.join(audio_dir, session + "_*.wav"))):
        match = _CLOSE_TALK.match(os.path.basename(path))
        if match and match.group(1) == session:
            mics[match.group(2)] = os.path.abspath(path)
    infos = {}
    for spk, path in mics.items():
        try:
            infos[spk] = audio_info(path)[0]
        except ValueError as err:
            infos[spk] = err

    if channel == "sum":
        _warn_partial_sum(session, audio_dir, utterances, mics)

    def audio_for(speaker: str) -> tuple[str, float | None, str | None]:
        """``(wav field, duration, None)``, or ``(file, None, reason)`` when unusable."""
        if channel == "sum" and not mics:
            return os.path.join(audio_dir, f"{session}_P*.wav"), None, SESSION_AUDIO_MISSING
        path = mics.get(speaker)
        if path is None:  # the speaker's own mic, in either mode
            return os.path.join(audio_dir, f"{session}_{speaker}.wav"), None, MIC_MISSING
        if channel == "own":
            if isinstance(infos[speaker], ValueError):
                return path, None, str(infos[speaker])
            return path, infos[speaker], None
        for spk, info in infos.items():
            if isinstance(info, ValueError):
                return mics[spk], None, f"{info} (one of the summed close-talk files)"
        return WAV_SEPARATOR.join(mics.values()), min(infos.values()), None

    items = []  # in transcription order; None where an utterance was skipped
    for index, utt in enumerate(utterances):
        speaker = str(utt.get("speaker_id", "unknown")) if isinstance(utt, dict) else "unknown"
        uid = f"{session}_{speaker}_{index:04d}"
        if not isinstance(utt, dict):
            skipped.skip(uid, json_path, "malformed utterance entry")
            items.append(None)
            continue
        try:
            start = parse_time(utt["start_time"]["close-talk"])
            stop = parse_time(utt["end_time"]["close-talk"])
        except (KeyError, TypeError, ValueError) as err:
            skipped.skip(uid, json_path, f"impossible time (no close-talk time: {err})")
            items.append(None)
            continue
        uid = f"{session}_{speaker}_{_ms(start):08d}_{_ms(stop):08d}"
        wav, duration, reason = audio_for(speaker)
        words = str(utt.get("words", ""))
        text = clean_words(words)
        if reason is not None:
            pass
        elif stop <= start:
            reason = f"impossible time ({start:.2f} s to {stop:.2f} s)"
        elif stop - start > max_segment_seconds:
            reason = f"utterance longer than max_segment_seconds={max_segment_seconds}"
        elif stop > duration + END_TOLERANCE:
            reason = f"runs past the end of its audio ({stop:.2f} s > {duration:.2f} s)"
        elif has_redacted(words):
            reason = "contains [redacted]"
        elif not text:
            reason = "empty text after cleaning"
        if reason is not None:
            skipped.skip(uid, wav, reason)
            items.append(None)
            continue
        items.append(
            {
                "ID": uid,
                "speaker": speaker,
                "start": start,
                "stop": min(stop, math.floor(duration * 1000) / 1000),  # 3 decimals
                "wav": wav,
                "text": text,
            }
        )

    if merge_consecutive:  # transcription order; a skipped utterance (None) ends a segment
        items = [_merged_item(session, seg) for seg in merge_same_speaker(items, max_segment_seconds)]

    rows, seen = [], collections.Counter()
    for item in items:
        if item is None:
            continue
        uid = item["ID"]
        seen[uid] += 1
        if seen[uid] > 1:
            uid = f"{uid}_{seen[uid]}"
        rows.append(
            {
                "ID": uid,
                "duration": item["stop"] - item["start"],
                "wav": item["wav"],
                "start": item["start"],
                "stop": item["stop"],
                "spk_id": item["speaker"],
                "wrd": normalize_words(item["text"]),
                "wrd_raw": item["text"],
            }
        )
    return rows


def _merged_item(session, segment):
    """One item for a :func:`data_prep.common.merge_same_speaker` segment; a merged one gets
    the ID of its span."""
    first, *rest = segment["items"]
    if not rest:
        return first
    return {
        **first,
        "start": segment["start"],
        "stop": segment["stop"],
        "text": " ".join(item["text"] for item in segment["items"]),
        "ID": f"{session}_{first['speaker']}_{_ms(segment['start']):08d}_{_ms(segment['stop']):08d}",
    }


def _warn_partial_sum(session, audio_dir, utterances, mics):
    """Warn when speakers of the session have no close-talk file: their utterances are
    skipped, and the sum of the others' utterances lacks their microphone."""
    speakers = {str(u["speaker_id"]) for u in utterances if isinstance(u, dict) and "speaker_id" in u}
    missing = sorted(speakers - set(mics))
    if missing and mics:
        logger.warning(
            "DiPCo %s: close-talk file(s) %s missing: those speakers' utterances are skipped "
            "and the sum for the others' is of %d file(s) only",
            session,
            ", ".join(os.path.join(audio_dir, f"{session}_{spk}.wav") for spk in missing),
            len(mics),
        )


def list_sessions(root: str, split: str) -> list[str]:
    """Session ids (``S02``..) with a transcription file in ``split`` (dev or eval)."""
    folder = os.path.join(root, "transcriptions", split)
    return sorted(os.path.splitext(n)[0] for n in os.listdir(folder) if n.endswith(".json"))


def prepare_dipco(
    data_folder: str,
    save_folder: str,
    channel: str = "sum",
    max_segment_seconds: float = 30.0,
    merge_consecutive: bool = False,
    n_valid_sessions: int = 1,
    seed: int = 1234,
) -> dict[str, tuple[int, float]] | None:
    """Write DiPCo's ``train.csv``, ``valid.csv``, ``test.csv`` in ``save_folder``.

    Paper: close-talk sum, segments <= 30 s, dev 2.7 h / test (eval) 3.4 h. Here train = dev
    sessions minus ``n_valid_sessions`` seeded ones (valid), test = eval (module docstring).

    Arguments
    ---------
    data_folder : str
        The unpacked corpus (the folder with ``audio/`` and ``transcriptions/``, or its parent).
    save_folder : str
        Where the manifests go.
    channel : "sum" or "own"
        Sum of all the session's close-talk mics (paper) or only the speaker's own mic.
    max_segment_seconds : float
        Longest segment; longer utterances are skipped with a reason.
    merge_consecutive : bool
        Merge consecutive utterances of one speaker up to ``max_segment_seconds``.
    n_valid_sessions : int
        Dev sessions held out (seeded) for validation; 0 writes no ``valid.csv``.
    seed : int
        Seed of the session pick.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    was already prepared with the same options.
    """
    if channel not in CHANNELS:
        raise PrepOptionsError(f"channel must be one of {CHANNELS}, not {channel!r}")
    options = prep_options(
        "dipco",
        PREP_VERSION,
        data_folder,
        channel=channel,
        max_segment_seconds=float(max_segment_seconds),
        merge_consecutive=bool(merge_consecutive),
        n_valid_sessions=int(n_valid_sessions),
        seed=seed,
    )
    manifests = wanted_manifests(n_valid_sessions)
    if already_prepared(save_folder, manifests, options):
        logger.info("DiPCo already prepared in %s, skipping", save_folder)
        return None
    if max_segment_seconds <= 0 or n_valid_sessions < 0:
        raise PrepOptionsError("max_segment_seconds must be positive, n_valid_sessions not negative")

    root = find_dipco_root(data_folder)
    dev = list_sessions(root, "dev")
    test_sessions = list_sessions(root, "eval")
    require(
        dev and test_sessions,
        f"DiPCo under {root!r} lacks session files: expected "
        "transcriptions/dev/<session>.json and transcriptions/eval/<session>.json "
        f"(found dev: {dev}, eval: {test_sessions})",
    )
    if len(dev) <= n_valid_sessions:
        raise PrepOptionsError(
            f"DiPCo: {len(dev)} dev sessions ({dev}), too few for n_valid_sessions={n_valid_sessions} plus training"
        )
    order = list(dev)
    random.Random(seed).shuffle(order)
    valid_sessions = sorted(order[:n_valid_sessions])
    train_sessions = sorted(order[n_valid_sessions:])
    logger.info("DiPCo train sessions %s, valid %s, test %s", train_sessions, valid_sessions, test_sessions)

    skipped = SkipLog()
    splits = {name: [] for name in manifests}
    jobs = (
        [("train.csv", "dev", s) for s in train_sessions]
        + [("valid.csv", "dev", s) for s in valid_sessions]
        + [("test.csv", "eval", s) for s in test_sessions]
    )
    for name, split, session in tqdm(jobs, desc="DiPCo", unit="session"):
        splits[name].extend(
            session_segments(root, split, session, channel, max_segment_seconds, merge_consecutive, skipped)
        )
    remove_stale_manifests(save_folder, set(MANIFESTS) - set(manifests), "DiPCo", "n_valid_sessions=0")
    return finish(
        save_folder,
        splits,
        skipped,
        options,
        "DiPCo",
        likely_cause=LIKELY_CAUSE,
        lost_reasons=LOST_REASONS + (MIC_MISSING, SESSION_AUDIO_MISSING),
    )


def wanted_manifests(n_valid_sessions: int) -> list[str]:
    """The manifests written: no ``valid.csv`` when no session is held out (an empty
    manifest loads in neither SpeechBrain's reader nor ours)."""
    return [m for m in MANIFESTS if m != "valid.csv" or n_valid_sessions > 0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, "unpacked DiPCo (the folder with audio/ and transcriptions/, or its parent)")
    parser.add_argument(
        "--channel",
        choices=CHANNELS,
        default="sum",
        help="'sum': all the session's close-talk mics summed at load time "
        "(paper, default); 'own': the speaker's own close-talk mic",
    )
    parser.add_argument(
        "--max_segment_seconds",
        type=float,
        default=30.0,
        help="longest segment; longer utterances are skipped (default 30)",
    )
    parser.add_argument(
        "--merge_consecutive",
        action="store_true",
        help="merge consecutive utterances of one speaker up to "
        "--max_segment_seconds (default: one utterance per segment)",
    )
    parser.add_argument(
        "--n_valid_sessions",
        type=int,
        default=1,
        help="dev sessions held out for validation (default 1; 0: no valid.csv)",
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed of the session pick")
    return run_cli(prepare_dipco, parser, argv, lambda args: wanted_manifests(args.n_valid_sessions))


if __name__ == "__main__":
    sys.exit(main())
