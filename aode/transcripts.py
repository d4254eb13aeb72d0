"""What a manifest's transcripts must be before a model trains or is scored on them.

One check, :func:`check_transcripts`, run by :func:`aode.data.make_dataset` on every manifest
it loads, on the column the model reads (``model.text_field``: ``wrd`` for CTC models,
``wrd_raw`` for Whisper):

* **Empty transcripts are refused** in every set: a transcript is empty when the column is
  empty or :func:`aode.text.normalize_words` of it is (punctuation only). Trained on, an empty
  target teaches the model to emit nothing (its CTC loss is ~15 times that of a real one);
  scored, it makes every word of the hypothesis an insertion.
* **Characters outside the model's vocabulary** (:meth:`aode.models.ASRModel.unknown_characters`:
  upper case, digits or symbols for a lowercase-letter CTC vocabulary; none for Whisper's
  byte-level tokenizer) become an unknown token when trained on. They are counted per
  character and logged (count, an example row), and in a training or validation set
  (``stage="train"``):

  - any digit is refused: a digit stands for spoken words ("1999" is "nineteen ninety nine"),
    so the fix is to write numbers as words in the column (e.g. with the num2words library) or
    to use a model whose vocabulary has digits;
  - other unknown characters are refused above ``max_unknown_char_fraction`` of all the
    column's characters (spaces excluded); below it they are trained as the unknown token,
    with a warning.

  In a test set (``stage="test"``) they are only logged: the references are scored as they are.

Refusals raise :class:`TranscriptError`, a :class:`aode.config.ConfigError`, so the recipes'
command lines end with its one-line message and exit status 2.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING

from aode.config import ConfigError
from aode.text import normalize_words

if TYPE_CHECKING:
    from aode.models import ASRModel

logger = logging.getLogger(__name__)

STAGES = ("train", "test")
SHOWN_IDS = 5  # row IDs named in a message
SHOWN_TEXT = 80  # characters of an example transcript in a log line


class TranscriptError(ConfigError):
    """A manifest whose transcripts the model cannot be trained or scored on."""


@dataclass
class TranscriptReport:
    """What :func:`check_transcripts` counted in one manifest's text column."""

    column: str
    rows: int
    characters: int  # spaces excluded
    unknown: dict[str, int] = field(default_factory=dict)  # character -> count, most frequent first
    examples: dict[str, str] = field(default_factory=dict)  # character -> first row ID that has it

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())

    @property
    def unknown_fraction(self) -> float:
        return self.unknown_count / self.characters if self.characters else 0.0

    @property
    def unknown_digits(self) -> dict[str, int]:
        return {c: n for c, n in self.unknown.items() if unicodedata.category(c) == "Nd"}


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f", ... ({len(ids)} rows)" if len(ids) > SHOWN_IDS else "")


def _chars(counts: Mapping[str, int], limit: int = 8) -> str:
    shown = ", ".join(f"{c!r} x{n}" for c, n in list(counts.items())[:limit])
    return shown + (f", ... ({len(counts)} characters)" if len(counts) > limit else "")


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_TEXT else text[: SHOWN_TEXT - 3] + "..."


def check_transcripts(
    rows: Sequence[Mapping[str, str]],
    model: ASRModel,
    manifest: str | os.PathLike,
    max_unknown_char_fraction: float = 0.001,
    stage: str = "test",
) -> TranscriptReport:
    """Refuse ``manifest``'s rows (dicts with ``ID`` and ``model.text_field``) when the model
    cannot use their transcripts (see the module docstring); the counts when it can.

    ``stage`` is ``"train"`` for training and validation sets, ``"test"`` for test sets.
    Raises :class:`TranscriptError` with a one-line message naming the manifest, the column,
    the rows and the fix.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    column = model.text_field
    empty = [row["ID"] for row in rows if not normalize_words(row.get(column) or "")]
    if empty:
        use = "trains on" if stage == "train" else "is scored on"
        raise TranscriptError(
            f"manifest {manifest}: {len(empty)} of {len(rows)} transcripts are empty or punctuation only in "
            f"column {column!r}, the text this {model.family} model {use} "
            f"(rows {_ids(empty)}); remove these rows or write their transcripts (the data preparations skip them)"
        )

    counts, examples = Counter(), {}
    for row in rows:
        text = row[column]
        counts.update(text)
        for char in set(text).difference(examples):
            examples[char] = row["ID"]
    counts = Counter({c: n for c, n in counts.items() if not c.isspace()})
    unknown_chars = model.unknown_characters(counts)
    report = TranscriptReport(
        column=column,
        rows=len(rows),
        characters=sum(counts.values()),
        unknown={c: counts[c] for c in sorted(unknown_chars, key=lambda c: (-counts[c], c))},
        examples={c: examples[c] for c in unknown_chars},
    )
    if not report.unknown:
        return report
    texts = {row["ID"]: row[column] for row in rows if row["ID"] in set(report.examples.values())}
    for char, count in report.unknown.items():
        example = report.examples[char]
        logger.info(
            "%s: character %r (U+%04X) x%d is outside the model's vocabulary; e.g. row %s: %r",
            manifest,
            char,
            ord(char),
            count,
            example,
            _short(texts[example]),
        )
    summary = (
        f"{report.unknown_count} of {report.characters} characters ({report.unknown_fraction:.4%}, spaces "
        f"excluded) in column {column!r} are outside this {model.family} model's vocabulary: "
        f"{_chars(report.unknown)}"
    )
    if stage == "test":
        logger.info("manifest %s: %s; scored as they are (the model cannot write them)", manifest, summary)
        return report
    digits = report.unknown_digits
    if digits:
        n_rows = sum(1 for row in rows if any(c in digits for c in row[column]))
        example = next(report.examples[c] for c in report.unknown if c in digits)
        n_digits = sum(digits.values())
        raise TranscriptError(
            f"manifest {manifest}: {n_digits} digit{'s' if n_digits != 1 else ''} in {n_rows} transcript"
            f"{'s' if n_rows != 1 else ''} of column {column!r} "
            f"(e.g. row {example}: {_short(texts[example])!r}), and this {model.family} model's vocabulary has no "
            f"digits, so it would learn them as an unknown token; write the numbers as words in {column!r} "
            "(e.g. with the num2words library: 1999 -> nineteen ninety-nine) or use a model whose vocabulary "
            "has digits"
        )
    if report.unknown_fraction > max_unknown_char_fraction:
        raise TranscriptError(
            f"manifest {manifest}: {summary} (first rows {_ids(list(dict.fromkeys(report.examples.values())))}); "
            f"more than max_unknown_char_fraction {max_unknown_char_fraction:g}. Clean the column (a manifest's "
            "'wrd' is aode.text.normalize_words of the raw text: lowercase, accents folded, no punctuation) "
            "or raise max_unknown_char_fraction to train them as an unknown token"
        )
    logger.warning(
        "manifest %s: %s; at most max_unknown_char_fraction %g, so they are trained as an unknown token",
        manifest,
        summary,
        max_unknown_char_fraction,
    )
    return report
