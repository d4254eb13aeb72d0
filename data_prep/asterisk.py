"""Asterisk's core English prompts (Allison Smith's voice, CC-BY-SA-3.0): real read speech.

568 telephone prompts ("Please enter your password followed by the pound key.", digits,
letters, the NATO alphabet, ...) read by one professional voice, about 25 minutes at 8 kHz,
packaged by Debian and Ubuntu::

    apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en

Layout (the installed Debian paths are the defaults; an extracted upstream tarball,
``asterisk-core-sounds-en-wav-current.tar.gz``, has the same tree with the transcript file
at its top)::

    /usr/share/asterisk/sounds/en_US_f_Allison/<name>.wav            (also digits/, letters/,
                                                                      phonetic/, dictate/, ...)
    /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz     "<name>: <text>" lines

``data_folder`` is the sounds folder (``.../sounds/en_US_f_Allison``, ``.../sounds/en`` or
``.../sounds``, or an extracted tarball); the transcripts are ``core-sounds-en.txt[.gz]`` in
``data_folder`` (or the folders above it), else the Debian doc path, else ``transcripts``.

Text: ``wrd_raw`` is the transcript as written, numerals kept ("Please press 1 to mute",
scored through Whisper's normaliser, which reads "1" and "one" alike); ``wrd`` is
:func:`aode.text.normalize_words` of it, as in every preparation. Notes are removed: a
bracketed part (``[ascending tones]``, ``<beep ascending>``, ``(10 seconds of silence)``,
``at [@]`` -> ``at``, ``IAX (note: does not say "2")`` -> ``IAX``); an entry that is nothing
but notes (tones, beeps, silence: 16 of them) has no speech and is skipped with the reason
:data:`NO_SPEECH` in ``skipped.csv``; every transcript changed by a removed note is listed in
the log. The symbols the prompts read aloud are written as words (``*`` -> "star", ``#`` ->
"pound": "press * to toggle pause" is spoken "press star to toggle pause").

Splits: a seeded split by prompt into ``test.csv`` (``test_size`` prompts), ``valid.csv``
(``valid_size``) and ``train.csv`` (the rest), so that an experiment can adapt on some prompts
and test on others; prompts with the same words (``wrd``) always share a split. ``all.csv``
holds every prompt. A size of 0 leaves its manifest out. The audio stays at 8 kHz on disk;
AoDE's loader resamples to 16 kHz.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import re
import sys
from collections.abc import Sequence

from data_prep.common import LayoutError
from data_prep.common import PrepOptionsError
from data_prep.common import SkipLog
from data_prep.common import already_prepared
from data_prep.common import cli_parser
from data_prep.common import finish
from data_prep.common import prep_options
from data_prep.common import remove_stale_manifests
from data_prep.common import require_data_folder
from data_prep.common import run_cli
from data_prep.common import whole_file_row

logger = logging.getLogger(__name__)

CORPUS = "asterisk"
PREP_VERSION = 1
SPEAKER = "allison"
DEBIAN_SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
DEBIAN_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
TRANSCRIPT_NAMES = ("core-sounds-en.txt", "core-sounds-en.txt.gz")
VOICE_FOLDERS = ("en_US_f_Allison", "en", "en_US")  # below a ``sounds`` folder
APT = "apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en"
SPLITS = ("train.csv", "valid.csv", "test.csv")
ALL = "all.csv"
NO_SPEECH = "no speech (only a bracketed note: tone, beep or silence)"
DUPLICATE = "duplicate prompt name"
MALFORMED = "malformed transcript line (expected '<name>: <text>')"
NOTE = re.compile(r"\s*(\[[^\]]*\]|<[^>]*>|\([^)]*\))")
SPOKEN_SYMBOLS = {"*": "star", "#": "pound"}
LIKELY_CAUSE = (
    f"the sounds folder holds no .wav prompts named as in the transcript file (install {APT}; "
    "the -gsm/-ulaw/-g722 packages hold other formats that are not read)"
)


def clean_text(text: str) -> str:
    """A transcript without its bracketed notes, with ``*``/``#`` as the words spoken,
    whitespace collapsed (module doc)."""
    text = NOTE.sub(" ", text)
    for symbol, word in SPOKEN_SYMBOLS.items():
        text = re.sub(rf"(?<!\S){re.escape(symbol)}(?!\S)", word, text)
    return " ".join(text.split())


def read_transcripts(path: str, skipped: SkipLog) -> list[tuple[str, str, int]]:
    """``(name, text as written, line number)`` of each ``<name>: <text>`` line of
    ``core-sounds-en.txt[.gz]``; comments (``;``) and blank lines are ignored, malformed
    lines and repeated names skipped with the reason."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise LayoutError(f"cannot read the Asterisk transcripts {path}: {err}") from err
    out, seen = [], set()
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        name, sep, text = stripped.partition(":")
        name = name.strip()
        if not sep or not name or " " in name:
            skipped.skip(f"line{lineno}", f"{path}:{lineno}", MALFORMED)
            continue
        if name in seen:
            skipped.skip(name, f"{path}:{lineno}", DUPLICATE)
            continue
        seen.add(name)
        out.append((name, " ".join(text.split()), lineno))
    return out


def find_sounds_root(data_folder: str) -> str:
    """The folder holding the prompts (``<name>.wav``): ``data_folder``, or its voice folder
    (``en_US_f_Allison``, ``en``, ``en_US``) when it is a ``sounds`` folder."""
    require_data_folder(data_folder, "Asterisk", f"the prompts (<name>.wav) from {APT}")
    for folder in [data_folder] + [os.path.join(data_folder, v) for v in VOICE_FOLDERS]:
        if os.path.isdir(folder) and any(name.endswith(".wav") for name in os.listdir(folder)):
            return folder
    raise LayoutError(
        f"no Asterisk prompts (<name>.wav) in {data_folder!r} or its {', '.join(VOICE_FOLDERS)} folders: "
        f"install them with `{APT}` (default folder {DEBIAN_SOUNDS}) or give the folder of an extracted "
        "asterisk-core-sounds-en-wav tarball"
    )


def find_transcripts(root: str, transcripts: str | None = None) -> str:
    """``transcripts`` when given, else ``core-sounds-en.txt[.gz]`` in ``root`` or up to two
    folders above it, else the Debian doc path."""
    if transcripts is not None:
        if not os.path.isfile(transcripts):
            raise LayoutError(f"Asterisk transcripts file {transcripts!r} does not exist")
        return transcripts
    folder = os.path.abspath(root)
    for _ in range(3):
        for name in TRANSCRIPT_NAMES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        folder = os.path.dirname(folder)
    if os.path.isfile(DEBIAN_TRANSCRIPTS):
        return DEBIAN_TRANSCRIPTS
    raise LayoutError(
        f"no Asterisk transcripts (core-sounds-en.txt or .txt.gz) in or above {root!r}, nor at "
        f"{DEBIAN_TRANSCRIPTS}: install them with `{APT}` or pass --transcripts"
    )


def _collect(root: str, transcripts_path: str, skipped: SkipLog) -> list[dict]:
    texts = read_transcripts(transcripts_path, skipped)
    wavs = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.endswith(".wav"):
                wavs[os.path.relpath(os.path.join(folder, name), root)[: -len(".wav")].replace(os.sep, "/")] = (
                    os.path.join(folder, name)
                )
    rows, changed = [], []
    listed = set()
    for name, text, lineno in texts:
        listed.add(name)
        utt_id = name.replace("/", "_")
        where = f"{transcripts_path}:{lineno}"
        if name not in wavs:
            whole_file_row(utt_id, None, SPEAKER, text, skipped, source=where)
            continue
        cleaned = clean_text(text)
        if not re.search(r"[A-Za-z0-9]", cleaned):
            skipped.skip(utt_id, wavs[name], NO_SPEECH)
            continue
        if cleaned != text:
            changed.append((utt_id, text, cleaned))
        row = whole_file_row(utt_id, wavs[name], SPEAKER, cleaned, skipped, source=where)
        if row is not None:
            rows.append(row)
    for name in sorted(set(wavs) - listed):
        whole_file_row(name.replace("/", "_"), wavs[name], SPEAKER, None, skipped)
    for utt_id, text, cleaned in changed:
        logger.info("%s: transcript %r -> %r", utt_id, text, cleaned)
    if changed:
        logger.info("%s: %d transcripts had notes or spoken symbols rewritten", CORPUS, len(changed))
    return rows


def split_prompts(rows: list[dict], test_size: int, valid_size: int, seed: int) -> dict[str, list[dict]]:
    """``{"train.csv", "valid.csv", "test.csv": rows}``: the distinct transcripts (``wrd``)
    shuffled with ``random.Random(seed)``, whole groups taken for test until it holds
    ``test_size`` prompts, then for valid, the rest to train. A size of 0 leaves its split
    out. Raises :class:`PrepOptionsError` when train would be empty or a size is negative."""
    for name, size in (("test_size", test_size), ("valid_size", valid_size)):
        if size < 0:
            raise PrepOptionsError(f"{name} must be 0 or more, got {size}")
    if test_size + valid_size >= len(rows):
        raise PrepOptionsError(
            f"cannot hold out {test_size} test + {valid_size} valid prompts of {len(rows)} and keep a train set: "
            "lower test_size or valid_size"
        )
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["wrd"], []).append(row)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    out = {"test.csv": [], "valid.csv": [], "train.csv": []}
    for key in keys:
        if len(out["test.csv"]) < test_size:
            out["test.csv"].extend(groups[key])
        elif len(out["valid.csv"]) < valid_size:
            out["valid.csv"].extend(groups[key])
        else:
            out["train.csv"].extend(groups[key])
    if not out["train.csv"]:
        raise PrepOptionsError(
            f"no prompt left for train after {test_size} test + {valid_size} valid (prompts with the same words share "
            "a split): lower test_size or valid_size"
        )
    return {name: sorted(out[name], key=lambda r: r["ID"]) for name in SPLITS if out[name] or name == "train.csv"}


def wanted_manifests(test_size: int = 150, valid_size: int = 50) -> list[str]:
    """The manifests a preparation with these sizes writes."""
    return [n for n in SPLITS if n == "train.csv" or (test_size if n == "test.csv" else valid_size) > 0] + [ALL]


def prepare_asterisk(
    data_folder: str | None = DEBIAN_SOUNDS,
    save_folder: str = "results/asterisk",
    transcripts: str | None = None,
    test_size: int = 150,
    valid_size: int = 50,
    seed: int = 1234,
) -> dict[str, tuple[int, float]] | None:
    """Write the Asterisk prompt manifests into ``save_folder``.

    Arguments
    ---------
    data_folder : str or None
        The sounds folder (module doc); None or the default: the Debian install,
        :data:`DEBIAN_SOUNDS`.
    save_folder : str
        Where ``train.csv``, ``valid.csv``, ``test.csv``, ``all.csv``, ``skipped.csv`` and
        ``prep_options.json`` go.
    transcripts : str or None
        ``core-sounds-en.txt[.gz]``; None: found beside the prompts, else the Debian doc path.
    test_size, valid_size : int
        Prompts held out for test and validation (0: that manifest is not written).
    seed : int
        Seed of the split; the same prompts and seed give the same split.

    Returns the summary ``{manifest: (utterances, hours)}``, or None when ``save_folder``
    already holds manifests prepared with the same options.
    """
    data_folder = data_folder or DEBIAN_SOUNDS
    manifests = wanted_manifests(test_size, valid_size)
    root = find_sounds_root(data_folder)
    transcripts_path = find_transcripts(root, transcripts)
    options = prep_options(
        CORPUS,
        PREP_VERSION,
        data_folder,
        transcripts=os.path.abspath(transcripts_path),
        test_size=test_size,
        valid_size=valid_size,
        seed=seed,
    )
    if already_prepared(save_folder, manifests, options):
        logger.info("%s already prepared in %s with the same options", CORPUS, save_folder)
        return None
    skipped = SkipLog()
    rows = _collect(root, transcripts_path, skipped)
    if rows:
        splits = split_prompts(rows, test_size, valid_size, seed)
    else:  # nothing usable: finish() says why (skip reasons, likely cause)
        splits = {"train.csv": []}
    remove_stale_manifests(
        save_folder, set(SPLITS) - set(splits), CORPUS, "this run holds no prompts out for it (size 0)"
    )
    splits[ALL] = sorted(rows, key=lambda r: r["ID"])
    return finish(save_folder, splits, skipped, options, CORPUS, likely_cause=LIKELY_CAUSE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser(__doc__, "the Asterisk sounds folder", installed=DEBIAN_SOUNDS, save_folder="results/asterisk")
    parser.add_argument(
        "--transcripts",
        default=None,
        help=f"core-sounds-en.txt[.gz] (default: beside the prompts, else {DEBIAN_TRANSCRIPTS})",
    )
    parser.add_argument("--test_size", type=int, default=150, help="prompts for test (default: %(default)s)")
    parser.add_argument("--valid_size", type=int, default=50, help="prompts for validation (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the split (default: %(default)s)")
    return run_cli(prepare_asterisk, parser, argv, lambda args: wanted_manifests(args.test_size, args.valid_size))


if __name__ == "__main__":
    sys.exit(main())
