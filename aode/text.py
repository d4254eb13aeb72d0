"""Text normalisers: one for manifests' ``wrd`` column, one for scoring.

Scoring (WER/CER) applies ONE normaliser to both reference and hypothesis:

* ``"whisper"`` (default): Whisper's English text normaliser as published (transformers'
  ``EnglishTextNormalizer`` with openai-whisper's spelling map; it gives exactly what
  openai-whisper's own ``EnglishTextNormalizer`` gives, tested): lowercase, punctuation removed, British spellings
  Americanised, spoken numbers written as digits, fillers (um, uh) removed, contractions
  expanded ("you've" -> "you have").
* ``"basic"``: :func:`normalize_words` below (accents folded to ASCII, lowercase,
  apostrophes kept, other punctuation removed). CTC models whose vocabulary is lowercase
  letters + apostrophe already produce text in this form, so for them "basic" scores exactly
  what they emit; the Whisper normaliser is still the default so that numbers of both
  families compare.
* ``"none"``: whitespace collapsed only.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections.abc import Callable

_KEEP = re.compile(r"[^a-z0-9' ]+")
_APOS = re.compile(r"[\u2018\u2019\u02bc`]")

# Latin letters that NFKD does not split into a base letter and a mark: openai-whisper's
# ``ADDITIONAL_DIACRITICS`` (whisper/normalizers/basic.py, MIT licence), mapped the same way.
ADDITIONAL_DIACRITICS = {
    "œ": "oe",
    "Œ": "OE",
    "ø": "o",
    "Ø": "O",
    "æ": "ae",
    "Æ": "AE",
    "ß": "ss",
    "ẞ": "SS",
    "đ": "d",
    "Đ": "D",
    "ð": "d",
    "Ð": "D",
    "þ": "th",
    "Þ": "th",
    "ł": "l",
    "Ł": "L",
}


def fold_diacritics(text: str) -> str:
    """Accents dropped the way Whisper's basic normaliser drops them: Unicode compatibility
    decomposition (NFKD), combining marks (category Mn) removed, and the letters that do not
    decompose mapped by :data:`ADDITIONAL_DIACRITICS` ("Café" -> "Cafe", "straße" ->
    "strasse", "Œuvre" -> "OEuvre"). Everything else is left as it is."""
    return "".join(
        ADDITIONAL_DIACRITICS.get(c, c) for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn"
    )


def normalize_words(text: str) -> str:
    """Lowercase ASCII words, apostrophes inside words kept, other punctuation -> space.

    Accented letters are folded to ASCII first (:func:`fold_diacritics`: "Café naïve" ->
    "cafe naive", "Zoë's" -> "zoe's"), so an accent never splits a word; letters of other
    scripts are dropped. Curly apostrophes are straightened ("you’ve" -> "you've"); hyphens
    split words ("well-known" -> "well known"); quote marks at word edges are dropped
    ("'hello'" -> "hello"), so a leading or trailing apostrophe ("'cause", "dogs'") is lost too.
    """
    text = _APOS.sub("'", fold_diacritics(text)).lower()
    words = (word.strip("'") for word in _KEEP.sub(" ", text).split())
    return " ".join(word for word in words if word)


SPELLING_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "english_spelling.json")


@functools.lru_cache(maxsize=1)
def _whisper_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(load_spelling_mapping())


def load_spelling_mapping() -> dict[str, str]:
    """Whisper's British-to-American spelling map (1,739 entries, "colour" -> "color").

    ``english_spelling.json`` is ``whisper/normalizers/english.json`` of the openai-whisper
    package (MIT licence), shipped with AoDE because transformers keeps the same map only in
    each hub checkpoint's ``normalizer.json``, which cannot be fetched offline.
    """
    with open(SPELLING_FILE, encoding="utf-8") as f:
        return json.load(f)


NORMALIZERS = ("whisper", "basic", "none")


def get_normalizer(name: str = "whisper") -> Callable[[str], str]:
    """The scoring normaliser called ``name`` (see module docstring)."""
    if name == "whisper":
        norm = _whisper_normalizer()
        return lambda text: " ".join(norm(text).split())
    if name == "basic":
        return normalize_words
    if name == "none":
        return lambda text: " ".join(text.split())
    raise ValueError(f"unknown text normaliser {name!r}; choose one of {NORMALIZERS}")
