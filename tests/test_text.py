"""Scoring normalisers against the published implementations."""

import pytest

from aode.text import get_normalizer
from aode.text import load_spelling_mapping
from aode.text import normalize_words

# Varied on purpose: numbers, currencies, ordinals, contractions, British spellings, fillers,
# titles, brackets, symbols and diacritics, the cases where normalisers disagree.
SENTENCES = [
    "The colour of the neighbour's car was grey.",
    "We organised a programme to analyse behaviour.",
    "I've been travelling to the theatre since I was twelve.",
    "It costs $5 million, or about £3.2 billion.",
    "Revenue grew 12% to $1,250,000 in Q2.",
    "He said twenty five hundred and three, not two thousand.",
    "Um, I think, uh, we should go. Hmm.",
    "She won't come because she can't drive, y'all.",
    "Mr. Smith and Dr. Jones met Mrs. Brown on St. Patrick's Day.",
    "They're gonna wanna see what we've done.",
    "The 1st, 2nd and 3rd places went to the 21st-century team.",
    "[laughs] Okay (inaudible) so that's it.",
    "The café served crème brûlée and a piña colada.",
    "It was minus five degrees at 3:30 p.m. on 4/5/2021.",
    "Ten point five percent of one hundred and one dollars.",
    "We realised the catalogue was centred on defence.",
    "I'd gone home; he'd been there; it's got to stop.",
    "Let's meet at nineteen ninety-nine, the year 1999.",
    "The aluminium foil and the pyjamas were in the storeys above.",
    "Two thirds of the cheques were cancelled.",
    "Ain't nobody got time for that, ma'am.",
    "She's a fan of the 90s and the '80s.",
    "One and a half million dollars and fifty cents.",
    "He scored 3 goals in 90 minutes, then 2 more.",
    "The honour, the favour and the labour party.",
    "Call me at five five five, one two three four.",
    "It weighs 2.5kg and costs €40.",
    "The C.E.O. of A.B.C. Corp. resigned.",
    "First, second, third and fourth.",
    "She apologised, then recognised the paediatrician.",
    "A dialogue about the licence and the practise sessions.",
    "Hello!!! What?? Really... ok.",
    "oh, mm-hmm, yeah, mhm",
    "Eleven thousand nine hundred ninety nine point nine nine",
    "They moved from 10 Downing St. to 221B Baker Street.",
    "Jr. and Sr. members, Gen. Lee and Col. Mustard.",
]


def test_whisper_normaliser_matches_openai_whisper():
    whisper_normalizers = pytest.importorskip("whisper.normalizers")
    theirs = whisper_normalizers.EnglishTextNormalizer()
    ours = get_normalizer("whisper")
    for sentence in SENTENCES:
        # WER splits on whitespace, so ours collapses it; theirs can end in a space.
        assert ours(sentence) == " ".join(theirs(sentence).split()), sentence


def test_whisper_normaliser_americanises_spellings():
    norm = get_normalizer("whisper")
    assert norm("The colour of the theatre") == "the color of the theater"
    assert load_spelling_mapping()["colour"] == "color"


def test_spelling_map_is_openai_whispers_own():
    whisper_normalizers = pytest.importorskip("whisper.normalizers")
    import json
    import os

    path = os.path.join(os.path.dirname(whisper_normalizers.__file__), "english.json")
    with open(path, encoding="utf-8") as f:
        assert load_spelling_mapping() == json.load(f)


def test_basic_normaliser():
    assert normalize_words("You’ve got a well-known 'dog', OK?") == "you've got a well known dog ok"
    assert get_normalizer("none")("  a \n b ") == "a b"
    with pytest.raises(ValueError, match="unknown text normaliser"):
        get_normalizer("whisperx")


# Accents, letters NFKD does not split, ligatures, other scripts, apostrophes and quote marks.
ACCENTED = [
    "Café naïve résumé",
    "Zoë's piñata",
    "Œuvre, straße, Ærøskøbing, Łódź, Þórr and Đorđe",
    "ẞ STRASSE and the Ø in Øresund",
    "Ångström, Dvořák, Brontë, Skåne, São Paulo, Nguyễn",
    "The café served crème brûlée and a piña colada.",
    "ﬁne ﬂour, ｆｕｌｌ width, x² and ½ cup",
    "İstanbul's ŉ and Ǆ",
    "Ελληνικά and русский and 中文 words",
    "She said “don’t” — ‘really’ — it’s `fine`",
    "résumé-writing, naïveté's edge",
]


def _project_rule(text):
    """The project's rule after the fold, written out: straight apostrophes, lowercase, every
    character but a-z, 0-9, apostrophe and space -> space, quote marks at word edges dropped."""
    import re

    text = re.sub(r"[\u2018\u2019\u02bc`]", "'", text).lower()
    words = (word.strip("'") for word in re.sub(r"[^a-z0-9' ]+", " ", text).split())
    return " ".join(word for word in words if word)


def test_normalize_words_folds_accents_as_whisper_does():
    basic = pytest.importorskip("whisper.normalizers.basic")
    for text in ACCENTED:
        # keep the apostrophes: Whisper's function makes them spaces, the project keeps them
        folded = basic.remove_symbols_and_diacritics(text, keep="'\u2018\u2019\u02bc`")
        assert normalize_words(text) == _project_rule(folded), text


def test_additional_diacritics_are_whispers():
    basic = pytest.importorskip("whisper.normalizers.basic")
    from aode.text import ADDITIONAL_DIACRITICS

    assert ADDITIONAL_DIACRITICS == basic.ADDITIONAL_DIACRITICS


def test_accents_never_split_words():
    assert normalize_words("Café naïve résumé") == "cafe naive resume"
    assert normalize_words("Zoë's") == "zoe's"
    assert normalize_words("Œuvre") == "oeuvre"
    assert normalize_words("straße") == "strasse"
    assert normalize_words("Æsir Ørsted Þór Łukasz") == "aesir orsted thor lukasz"
    assert normalize_words("résumé-writing") == "resume writing"  # a hyphen still splits
    assert normalize_words("Ελληνικά café") == "cafe"  # other scripts are dropped, as before
