"""Asterisk prompts and PocketSphinx test clips: preparations on miniatures of the installed
Debian layouts (8 kHz / 16 kHz WAVs from tests/data/samples), and on the real install when
the packages are there (skipped with the reason otherwise)."""

import gzip
import os
import subprocess
import sys

import pytest
import soundfile as sf
from prep_fixtures_b import by_id
from prep_fixtures_b import load_with_speechbrain
from prep_fixtures_b import read_csv
from prep_fixtures_b import samples
from prep_fixtures_b import stamps
from prep_fixtures_b import write_audio
from prep_fixtures_b import write_text

from aode.text import normalize_words
from data_prep.asterisk import DEBIAN_SOUNDS
from data_prep.asterisk import DEBIAN_TRANSCRIPTS
from data_prep.asterisk import NO_SPEECH
from data_prep.asterisk import clean_text
from data_prep.asterisk import prepare_asterisk
from data_prep.common import LayoutError
from data_prep.common import PrepOptionsError
from data_prep.pocketsphinx import DEBIAN_DATA
from data_prep.pocketsphinx import parse_line
from data_prep.pocketsphinx import prepare_pocketsphinx

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
RATE = 8000

# name -> transcript line text, as core-sounds-en.txt writes them; every name gets a WAV
PROMPTS = {
    "activated": "Activated.",
    "agent-pass": "Please enter your password followed by the pound key.",
    "conf-adminmenu": "Please press 1 to mute or unmute yourself, 2 to lock or unlock the conference.",
    "beep": "[this is a simple beep tone]",
    "confbridge-join": "<beep ascending>",
    "silence/1": "(1 second of silence)",
    "digits/7": "seven",
    "digits/1": "one",
    "letters/at": "at [@]",
    "spy-iax2": 'IAX (note: does not say "2")',
    "dictate/both_help": "press * to toggle pause, press # to enter a new dictation filename",
    "at-tone-time-exactly": "At the sound of the tone, the time will be exactly...",
    "vm-INBOX": "new",
    "vm-new": "new",
}
NO_AUDIO_PROMPT = "pls-try-call-later"
SPOKEN = {
    "activated": "Activated.",
    "agent-pass": "Please enter your password followed by the pound key.",
    "conf-adminmenu": "Please press 1 to mute or unmute yourself, 2 to lock or unlock the conference.",
    "digits_7": "seven",
    "digits_1": "one",
    "letters_at": "at",
    "spy-iax2": "IAX",
    "dictate_both_help": "press star to toggle pause, press pound to enter a new dictation filename",
    "at-tone-time-exactly": "At the sound of the tone, the time will be exactly...",
    "vm-INBOX": "new",
    "vm-new": "new",
}


def build_asterisk(parent, gz=True, transcripts_at_top=False):
    """``parent/sounds/en_US_f_Allison/...wav`` (8 kHz) and ``core-sounds-en.txt[.gz]`` (in
    ``parent/doc/``, or at the top of the sounds tree); returns (sounds, transcripts)."""
    sounds = os.path.join(parent, "sounds", "en_US_f_Allison")
    for i, name in enumerate(PROMPTS):
        write_audio(os.path.join(sounds, name + ".wav"), i, RATE)
    write_audio(os.path.join(sounds, "no-transcript.wav"), 3, RATE)
    lines = ["; Core Asterisk Sounds in English", ""] + [f"{n}: {t}" for n, t in PROMPTS.items()]
    lines.insert(5, f"{NO_AUDIO_PROMPT}: Please try your call again later.")
    text = "\n".join(lines) + "\n"
    folder = sounds if transcripts_at_top else os.path.join(parent, "doc")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "core-sounds-en.txt" + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        write_text(path, text)
    return sounds, path


@pytest.fixture
def asterisk(tmp_path):
    sounds, transcripts = build_asterisk(str(tmp_path / "corpora"))
    return sounds, transcripts, str(tmp_path / "prepared")


def test_clean_text():
    assert clean_text("at [@]") == "at"
    assert clean_text('IAX (note: does not say "2")') == "IAX"
    assert clean_text("[ascending tones]") == ""
    assert clean_text("(10 seconds of silence)") == ""
    assert clean_text("press * to pause, # to exit") == "press star to pause, pound to exit"
    assert clean_text("Please press 1 to mute") == "Please press 1 to mute"  # numerals kept
    assert clean_text("The time will be exactly...") == "The time will be exactly..."


def test_manifests_row_by_row(asterisk):
    sounds, transcripts, save = asterisk
    summary = prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=2, seed=1)
    assert set(summary) == {"train.csv", "valid.csv", "test.csv", "all.csv"}
    rows = by_id(read_csv(os.path.join(save, "all.csv")))
    assert set(rows) == set(SPOKEN)
    for utt_id, text in SPOKEN.items():
        row = rows[utt_id]
        assert row["wrd_raw"] == text and row["wrd"] == normalize_words(text)
        assert row["spk_id"] == "allison" and row["wav"].endswith(".wav") and os.path.isabs(row["wav"])
        assert sf.info(row["wav"]).samplerate == RATE  # kept at 8 kHz; the loader resamples
        assert abs(float(row["duration"]) - sf.info(row["wav"]).duration) < 1e-3
    assert (
        rows["conf-adminmenu"]["wrd"] == "please press 1 to mute or unmute yourself 2 to lock or unlock the conference"
    )
    splits = {n: {r["ID"] for r in read_csv(os.path.join(save, n))} for n in ("train.csv", "valid.csv", "test.csv")}
    assert set.union(*splits.values()) == set(SPOKEN)
    assert sum(len(s) for s in splits.values()) == len(SPOKEN)  # disjoint
    assert len(splits["test.csv"]) >= 3 and len(splits["valid.csv"]) >= 2
    # prompts with the same words share a split
    assert any({"vm-INBOX", "vm-new"} <= s for s in splits.values())


def test_notes_tones_and_missing_files_are_logged(asterisk):
    sounds, transcripts, save = asterisk
    prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=2)
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert {k: v["reason"] for k, v in skipped.items()} == {
        "beep": NO_SPEECH,
        "confbridge-join": NO_SPEECH,
        "silence_1": NO_SPEECH,
        NO_AUDIO_PROMPT: "transcript without audio",
        "no-transcript": "audio without transcript",
    }
    assert skipped[NO_AUDIO_PROMPT]["file"].endswith("core-sounds-en.txt.gz:6")
    assert skipped["silence_1"]["file"].endswith(os.path.join("silence", "1.wav"))


def test_split_is_seeded_and_sizes_are_options(asterisk):
    sounds, transcripts, save = asterisk
    prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=2, seed=7)
    first = read_csv(os.path.join(save, "test.csv"))
    prepare_asterisk(sounds, save + "2", transcripts=transcripts, test_size=3, valid_size=2, seed=7)
    assert read_csv(os.path.join(save + "2", "test.csv")) == first
    summary = prepare_asterisk(sounds, save + "3", transcripts=transcripts, test_size=4, valid_size=0, seed=7)
    assert set(summary) == {"train.csv", "test.csv", "all.csv"}
    assert not os.path.exists(os.path.join(save + "3", "valid.csv"))
    # an earlier valid.csv goes when valid_size becomes 0
    prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=0, seed=7)
    assert not os.path.exists(os.path.join(save, "valid.csv"))
    with pytest.raises(PrepOptionsError, match="lower test_size"):
        prepare_asterisk(sounds, save + "4", transcripts=transcripts, test_size=10, valid_size=5)
    with pytest.raises(PrepOptionsError, match="0 or more"):
        prepare_asterisk(sounds, save + "4", transcripts=transcripts, test_size=-1)


def test_layouts_transcripts_found_and_errors(tmp_path):
    sounds, _ = build_asterisk(str(tmp_path / "tar"), gz=False, transcripts_at_top=True)
    # the sounds folder above the voice folder works too, the .txt beside the prompts is found
    summary = prepare_asterisk(os.path.dirname(sounds), str(tmp_path / "out"), test_size=2, valid_size=1)
    assert summary["all.csv"][0] == len(SPOKEN)
    with pytest.raises(LayoutError, match="does not exist"):
        prepare_asterisk(str(tmp_path / "nowhere"), str(tmp_path / "out2"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="apt-get install asterisk-core-sounds-en-wav"):
        prepare_asterisk(str(empty), str(tmp_path / "out2"))
    with pytest.raises(LayoutError, match="does not exist"):
        prepare_asterisk(sounds, str(tmp_path / "out2"), transcripts=str(tmp_path / "none.txt"))


def test_skip_when_prepared_and_manifests_load(asterisk):
    sounds, transcripts, save = asterisk
    names = ("train.csv", "valid.csv", "test.csv", "all.csv")
    assert prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=2) is not None
    before = stamps(save, names)
    assert prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=2) is None
    assert stamps(save, names) == before
    items = load_with_speechbrain(os.path.join(save, "all.csv"))
    assert sorted(item["id"] for item in items) == sorted(SPOKEN)


def test_loader_resamples_the_8khz_prompts(asterisk):
    """AoDE's loader reads the 8 kHz files at 16 kHz, as for every corpus."""
    from aode.data import read_audio_segment

    sounds, transcripts, save = asterisk
    prepare_asterisk(sounds, save, transcripts=transcripts, test_size=3, valid_size=2)
    row = by_id(read_csv(os.path.join(save, "all.csv")))["activated"]
    audio = read_audio_segment(row["wav"])
    assert abs(len(audio) / 16000 - float(row["duration"])) < 2e-3


def test_command_line(asterisk, capsys):
    from data_prep.asterisk import main

    sounds, transcripts, save = asterisk
    main(
        [
            "--data_folder",
            sounds,
            "--save_folder",
            save,
            "--transcripts",
            transcripts,
            "--test_size",
            "3",
            "--valid_size",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "test.csv" in out and "skipped 3: no speech" in out
    result = subprocess.run(
        [sys.executable, "data_prep/asterisk.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--test_size" in result.stdout and DEBIAN_SOUNDS in result.stdout
    bad = subprocess.run(
        [sys.executable, "data_prep/asterisk.py", "--data_folder", save + "_missing", "--save_folder", save + "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "error:" in bad.stderr


# ------------------------------------------------------------------------------ PocketSphinx


def build_pocketsphinx(root):
    """``root/librivox`` and ``root/cards`` as pocketsphinx-testdata installs them (16 kHz)."""
    expected = {}
    for name, (trans, fileids, ids) in {
        "librivox": ("transcription", "fileids", ["sense_0870", "sense_0880"]),
        "cards": ("cards.transcription", "cards.fileids", ["001", "002", "003"]),
    }.items():
        lines = []
        for i, file_id in enumerate(ids):
            wav = os.path.join(root, name, file_id + ".wav")
            duration = write_audio(wav, i, 16000)
            text = samples()[i]["wrd"].lower()
            lines.append(f"<s> {text} </s> ({file_id})")
            expected[f"{name}_{file_id}"] = (name, text, duration)
        write_text(os.path.join(root, name, fileids), "\n".join(ids) + "\n")
        write_text(os.path.join(root, name, trans), "\n".join(lines) + "\n")
    write_audio(os.path.join(root, "cards", "004.wav"), 4, 16000)  # listed nowhere, no text
    return expected


def test_parse_line():
    assert parse_line("<s> ten of clubs  </s> (001)") == ("001", "ten of clubs")
    assert parse_line("<s> he was not an ill disposed young man </s> (sense-0880)") == (
        "sense-0880",
        "he was not an ill disposed young man",
    )
    assert parse_line("no id here") is None


def test_pocketsphinx_manifests(tmp_path):
    expected = build_pocketsphinx(str(tmp_path / "data"))
    summary = prepare_pocketsphinx(str(tmp_path / "data"), str(tmp_path / "out"))
    assert set(summary) == {"librivox.csv", "cards.csv", "all.csv"}
    rows = by_id(read_csv(str(tmp_path / "out" / "all.csv")))
    assert set(rows) == set(expected)
    for utt_id, (name, text, duration) in expected.items():
        assert rows[utt_id]["spk_id"] == name and rows[utt_id]["wrd_raw"] == text
        assert rows[utt_id]["wrd"] == normalize_words(text)
        assert abs(float(rows[utt_id]["duration"]) - duration) < 1e-3
    skipped = read_csv(str(tmp_path / "out" / "skipped.csv"))
    assert [(r["ID"], r["reason"]) for r in skipped] == [("cards_004", "audio without transcript")]
    with pytest.raises(LayoutError, match="apt-get install pocketsphinx-testdata"):
        prepare_pocketsphinx(str(tmp_path), str(tmp_path / "out2"))


# ------------------------------------------------------------------- the real Debian install


def test_real_asterisk_install(tmp_path):
    if not (os.path.isdir(DEBIAN_SOUNDS) and os.path.isfile(DEBIAN_TRANSCRIPTS)):
        pytest.skip(
            f"Asterisk prompts not installed ({DEBIAN_SOUNDS}): apt-get install "
            "asterisk-core-sounds-en-wav asterisk-core-sounds-en"
        )
    summary = prepare_asterisk(save_folder=str(tmp_path / "out"))
    assert summary["all.csv"][0] >= 540 and summary["test.csv"][0] >= 150 and summary["valid.csv"][0] >= 50
    assert 20 / 60 < summary["all.csv"][1] < 30 / 60  # about 25 minutes
    reasons = {r["ID"]: r["reason"] for r in read_csv(str(tmp_path / "out" / "skipped.csv"))}
    assert reasons.get("beep") == NO_SPEECH and reasons.get("silence_10") == NO_SPEECH
    rows = by_id(read_csv(str(tmp_path / "out" / "all.csv")))
    assert rows["letters_at"]["wrd_raw"] == "at" and "1" in rows["conf-adminmenu"]["wrd_raw"]
    assert {sf.info(r["wav"]).samplerate for r in list(rows.values())[:20]} == {8000}


def test_real_pocketsphinx_install(tmp_path):
    if not os.path.isdir(os.path.join(DEBIAN_DATA, "librivox")):
        pytest.skip(f"PocketSphinx test data not installed ({DEBIAN_DATA}): apt-get install pocketsphinx-testdata")
    summary = prepare_pocketsphinx(save_folder=str(tmp_path / "out"))
    assert summary["all.csv"][0] == 10 and summary["librivox.csv"][0] == 5 and summary["cards.csv"][0] == 5
