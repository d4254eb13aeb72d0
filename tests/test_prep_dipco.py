"""DiPCo preparation on a miniature copy of the real layout (16 kHz close-talk WAVs, JSON)."""

import csv
import os

import pytest
from prep_fixtures_a import DIPCO_SESSIONS
from prep_fixtures_a import make_dipco
from prep_fixtures_b import check_help
from prep_fixtures_b import run_script

from aode.manifest import MANIFEST_COLUMNS
from aode.manifest import WAV_SEPARATOR
from aode.manifest import read_manifest
from aode.manifest import split_wav_field
from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.common import LayoutError
from data_prep.dipco import clean_words
from data_prep.dipco import has_redacted
from data_prep.dipco import parse_time
from data_prep.dipco import prepare_dipco


def uid(session, spk, start, stop):
    return f"{session}_{spk}_{round(start * 1000):08d}_{round(stop * 1000):08d}"


# ID -> (session, speaker, start, stop, wrd_raw) with the default options (sum of mics)
EXPECTED = {
    uid("S02", "P05", 0.5, 3.37): ("S02", "P05", 0.5, 3.37, "Mm the child almost hurt the small dog."),
    uid("S02", "P06", 3.5, 5.51): ("S02", "P06", 3.5, 5.51, "We are sure that one wore is enough."),
    uid("S02", "P06", 5.6, 7.36): ("S02", "P06", 5.6, 7.36, "What joy there is in living."),
    uid("S02", "P05", 9.2, 11.92): ("S02", "P05", 9.2, 11.92, "At that high level the air is pure."),
    uid("S04", "P09", 0.5, 3.03): ("S04", "P09", 0.5, 3.03, "A thin stripe runs down the middle."),
    uid("S04", "P10", 3.5, 5.54): ("S04", "P10", 3.5, 5.54, "Mend the coat before you go out."),
    uid("S05", "P11", 0.5, 3.1): ("S05", "P11", 0.5, 3.1, "Sunday is the best part of the week."),
    uid("S01", "P01", 0.3, 3.45): ("S01", "P01", 0.3, 3.45, "Drop the tue when you add the figures."),
    uid("S01", "P02", 3.6, 5.58): ("S01", "P02", 3.6, 5.58, "Ken pairs lack full flavor."),
    uid("S01", "P02", 5.7, 7.58): ("S01", "P02", 5.7, 7.58, "Tear thin sheep from the other pat."),
    uid("S01", "P01", 7.0, 8.9): ("S01", "P01", 7.0, 8.9, "That is fine."),
}
EXPECTED_SKIPS = {
    uid("S02", "P05", 7.5, 9.0): "contains [redacted]",
    uid("S04", "P10", 5.8, 5.2): "impossible time",
    uid("S05", "P12", 3.5, 4.2): "empty text after cleaning",
    uid("S05", "P12", 4.3, 9.0): "runs past the end of its audio",
    uid("S03", "P03", 0.5, 3.37): "unreadable audio",
    uid("S03", "P04", 0.6, 2.61): "unreadable audio",
}


def read_all(out):
    return {name: read_manifest(os.path.join(out, name + ".csv")) for name in ("train", "valid", "test")}


def read_skips(out):
    with open(os.path.join(out, "skipped.csv"), newline="") as f:
        return {row["ID"]: row for row in csv.DictReader(f)}


def mic(corpus, session, spk):
    split = DIPCO_SESSIONS[session][0]
    return os.path.abspath(os.path.join(corpus["base"], "audio", split, f"{session}_{spk}.wav"))


@pytest.mark.parametrize(
    "words, expected",
    [
        ("Mm- yeah.", "Mm yeah."),
        ("mm- mm- okay", "mm mm okay"),
        ("hmm- no", "hmm- no"),
        ("It was [inaudible 0:05:31.02] good.", "It was good."),
        ("[laugh] Right [noise] .", "Right."),
        ("[inaudible]", ""),
        ("[noise] [laugh]", ""),
    ],
)
def test_clean_words(words, expected):
    assert clean_words(words) == expected


def test_redacted_and_time():
    assert has_redacted("My name is [redacted].") and has_redacted("[REDACTED] hi")
    assert not has_redacted("[inaudible] hi")
    assert parse_time("00:01:02.25") == pytest.approx(62.25)
    assert parse_time("01:00:00.00") == pytest.approx(3600)
    with pytest.raises(ValueError):
        parse_time("1:2")


def test_sum_of_close_talk_row_by_row(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_dipco(corpus["root"], out)
    splits = read_all(out)
    rows = {r["ID"]: r for split in splits.values() for r in split}
    assert sum(len(s) for s in splits.values()) == len(rows)
    assert set(rows) == set(EXPECTED)
    for key, (session, spk, start, stop, text) in EXPECTED.items():
        row = rows[key]
        assert list(row) == MANIFEST_COLUMNS and "," not in key
        assert float(row["start"]) == pytest.approx(start, abs=1e-3)
        assert float(row["stop"]) == pytest.approx(stop, abs=1e-3)
        assert float(row["duration"]) == pytest.approx(stop - start, abs=2e-3)
        assert row["spk_id"] == spk
        assert row["wrd_raw"] == text and row["wrd"] == normalize_words(text)
        # every close-talk mic of the session, far-field excluded, joined by the separator
        participants = DIPCO_SESSIONS[session][2]
        assert WAV_SEPARATOR in row["wav"]
        assert split_wav_field(row["wav"]) == [mic(corpus, session, p) for p in participants]
    skips = read_skips(out)
    assert set(skips) == set(EXPECTED_SKIPS)
    for key, reason in EXPECTED_SKIPS.items():
        assert reason in skips[key]["reason"], (key, skips[key])


def test_session_split(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_dipco(corpus["root"], out)
    sessions = {name: {r["ID"][:3] for r in rows} for name, rows in read_all(out).items()}
    dev = {s for s, v in DIPCO_SESSIONS.items() if v[0] == "dev"}
    assert sessions["test"] == {"S01"}  # eval (S03's audio is unreadable)
    assert len(sessions["valid"]) == 1 and sessions["valid"] < dev
    assert sessions["train"] == dev - sessions["valid"]
    # no valid sessions: no valid.csv (an empty one would load in neither SpeechBrain's
    # reader nor ours), and a stale one from the earlier run is removed
    out2 = str(tmp_path / "none")
    prepare_dipco(corpus["root"], out2)
    summary = prepare_dipco(corpus["root"], out2, n_valid_sessions=0)
    assert list(summary) == ["train.csv", "test.csv"]
    assert not os.path.exists(os.path.join(out2, "valid.csv"))
    train = read_manifest(os.path.join(out2, "train.csv"))
    assert {r["ID"][:3] for r in train} == dev
    assert prepare_dipco(corpus["root"], out2, n_valid_sessions=0) is None
    seen = set()
    for seed in range(8):
        folder = str(tmp_path / f"seed{seed}")
        prepare_dipco(corpus["root"], folder, seed=seed)
        seen.add(read_all(folder)["valid"][0]["ID"][:3])
    assert len(seen) > 1  # the held-out session depends on the seed


def test_own_channel(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_dipco(corpus["root"], out, channel="own")
    rows = {r["ID"]: r for split in read_all(out).values() for r in split}
    s03 = uid("S03", "P03", 0.5, 3.37)
    assert set(rows) == set(EXPECTED) | {s03}
    for key, row in rows.items():
        session, spk = key.split("_")[:2]
        assert row["wav"] == mic(corpus, session, spk)
    skips = read_skips(out)
    assert "unreadable audio" in skips[uid("S03", "P04", 0.6, 2.61)]["reason"]
    assert s03 not in skips


def test_max_segment_and_merge(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"))
    out = str(tmp_path / "short")
    # no valid session: the mini corpus's held-out session has no utterance under 2.5 s, and
    # an empty split is refused
    prepare_dipco(corpus["root"], out, max_segment_seconds=2.5, n_valid_sessions=0)
    rows = {r["ID"]: r for split in read_all_present(out).values() for r in split}
    short = {k for k, v in EXPECTED.items() if v[3] - v[2] <= 2.5}
    assert set(rows) == short
    skips = read_skips(out)
    for key in set(EXPECTED) - short:
        assert "longer than max_segment_seconds=2.5" in skips[key]["reason"]

    out = str(tmp_path / "merged")
    prepare_dipco(corpus["root"], out, merge_consecutive=True)
    rows = {r["ID"]: r for split in read_all(out).values() for r in split}
    merged = rows[uid("S02", "P06", 3.5, 7.36)]
    assert merged["wrd_raw"] == "We are sure that one wore is enough. What joy there is in living."
    assert float(merged["duration"]) == pytest.approx(3.86, abs=2e-3)
    assert rows[uid("S01", "P02", 3.6, 7.58)]["spk_id"] == "P02"
    # the [redacted] utterance between P05's two ends the segment; other speakers too
    assert uid("S02", "P05", 0.5, 3.37) in rows and uid("S02", "P05", 9.2, 11.92) in rows
    assert uid("S01", "P01", 7.0, 8.9) in rows
    assert len(rows) == len(EXPECTED) - 2


def test_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        prepare_dipco(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    folder = tmp_path / "partial"
    (folder / "audio" / "dev").mkdir(parents=True)
    (folder / "audio" / "eval").mkdir(parents=True)
    with pytest.raises(LayoutError) as err:
        prepare_dipco(str(folder), str(tmp_path / "out"))
    message = str(err.value)
    assert str(folder) in message and "transcriptions/{dev,eval}/<session>.json" in message
    with pytest.raises(ValueError, match="channel"):
        prepare_dipco(str(folder), str(tmp_path / "out"), channel="far")
    assert not (tmp_path / "out").exists()


def test_skip_when_prepared_and_redo_on_new_options(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"), top="")
    out = str(tmp_path / "out")
    prepare_dipco(corpus["root"], out)
    files = [os.path.join(out, n) for n in ("train.csv", "valid.csv", "test.csv", "skipped.csv", "prep_options.json")]
    for f in files:
        os.utime(f, (1_000_000_000, 1_000_000_000))
    assert prepare_dipco(corpus["root"], out) is None
    assert all(os.path.getmtime(f) == 1_000_000_000 for f in files)
    assert prepare_dipco(corpus["root"], out, channel="own") is not None
    assert all(os.path.getmtime(f) > 1_000_000_000 for f in files)


def test_loads_with_speechbrain(tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    corpus = make_dipco(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_dipco(corpus["root"], out)
    for name in ("train", "valid", "test"):
        data = DynamicItemDataset.from_csv(os.path.join(out, name + ".csv"))
        data.set_output_keys(["id", "wav", "start", "stop", "wrd"])
        items = list(data)
        assert items and all(all(os.path.isfile(p) for p in split_wav_field(i["wav"])) for i in items)
    # the project's loader sums the close-talk files: where the other mic is silent the sum
    # equals the speaker's own mic; P01's last utterance overlaps P02's speech, which the
    # sum must carry
    import torch

    from aode.data import read_audio_segment

    for row in read_manifest(os.path.join(out, "test.csv")):
        mixed = read_audio_segment(row["wav"], row["start"], row["stop"])
        own = read_audio_segment(mic(corpus, row["ID"][:3], row["spk_id"]), row["start"], row["stop"])
        assert abs(len(mixed) - float(row["duration"]) * 16000) <= 16
        overlapped = row["ID"] == uid("S01", "P01", 7.0, 8.9)
        assert torch.allclose(mixed, own, atol=1e-4) != overlapped


def test_command_line(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"))
    check_help("dipco", ("--channel", "--max_segment_seconds", "--merge_consecutive", "--n_valid_sessions", "--seed"))
    run = run_script("dipco", "--data_folder", corpus["root"], "--save_folder", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "test.csv: 4 utterances" in run.stdout
    assert "skipped 1: contains [redacted]" in run.stdout


def test_sum_without_a_speakers_close_talk_file(tmp_path, caplog):
    """A missing P file must not silently drop out of the sum: its speaker's utterances are
    skipped with a reason, the others keep the sum of the files there, and a warning names
    the session and the file."""
    corpus = make_dipco(str(tmp_path / "data"))
    os.remove(mic(corpus, "S02", "P06"))
    out = str(tmp_path / "out")
    with caplog.at_level("WARNING", logger="data_prep.dipco"):
        prepare_dipco(corpus["root"], out, n_valid_sessions=0)
    rows = {r["ID"]: r for split in read_all_present(out).values() for r in split}
    lost = {uid("S02", "P06", 3.5, 5.51), uid("S02", "P06", 5.6, 7.36)}
    assert set(rows) == set(EXPECTED) - lost
    for key in (uid("S02", "P05", 0.5, 3.37), uid("S02", "P05", 9.2, 11.92)):
        assert split_wav_field(rows[key]["wav"]) == [mic(corpus, "S02", "P05")]
    skips = read_skips(out)
    for key in lost:
        assert skips[key]["reason"] == "close-talk audio file missing"
        assert skips[key]["file"] == mic(corpus, "S02", "P06")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("S02" in w and "S02_P06.wav" in w for w in warnings), warnings


def read_all_present(out):
    return {
        name: read_manifest(os.path.join(out, name + ".csv"))
        for name in ("train", "valid", "test")
        if os.path.exists(os.path.join(out, name + ".csv"))
    }


def test_missing_audio_fails_clearly_then_rerun_works(tmp_path):
    """Only the transcriptions extracted for dev: train comes out empty, the error names the
    likely cause, nothing is marked prepared; once the audio is there the rerun does the
    work."""
    corpus = make_dipco(str(tmp_path / "data"))
    dev_audio = os.path.join(corpus["base"], "audio", "dev")
    os.rename(dev_audio, dev_audio + ".later")
    os.mkdir(dev_audio)
    out = str(tmp_path / "out")
    with pytest.raises(EmptyPreparationError) as err:
        prepare_dipco(corpus["root"], out)
    message = str(err.value)
    assert "train.csv" in message and "no close-talk audio file for the session" in message
    assert "partly extracted" in message
    assert os.path.isfile(os.path.join(out, "skipped.csv"))
    for name in ("train.csv", "valid.csv", "test.csv", "prep_options.json"):
        assert not os.path.exists(os.path.join(out, name))
    os.rmdir(dev_audio)
    os.rename(dev_audio + ".later", dev_audio)
    assert prepare_dipco(corpus["root"], out) is not None
    assert len(read_manifest(os.path.join(out, "train.csv"))) > 0


def test_own_mode_mostly_missing_audio_is_refused(tmp_path):
    """More than half the utterances without their close-talk file: refused, not a small
    manifest."""
    corpus = make_dipco(str(tmp_path / "data"))
    for session, (_, _, participants, _) in DIPCO_SESSIONS.items():
        os.remove(mic(corpus, session, participants[0]))  # 8 utterances lost, 5 kept
    with pytest.raises(EmptyPreparationError) as err:
        prepare_dipco(corpus["root"], str(tmp_path / "out"), channel="own", n_valid_sessions=0)
    assert "8 of 13 items were dropped" in str(err.value)
    assert "close-talk audio file missing" in str(err.value)


def test_command_line_exit_status(tmp_path):
    corpus = make_dipco(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    good = run_script("dipco", "--data_folder", corpus["root"], "--save_folder", out, "--n_valid_sessions", "0")
    assert good.returncode == 0, good.stderr
    assert "train.csv:" in good.stdout and "valid.csv" not in good.stdout
    eval_audio = os.path.join(corpus["base"], "audio", "eval")
    for name in os.listdir(eval_audio):
        os.remove(os.path.join(eval_audio, name))
    bad = run_script("dipco", "--data_folder", corpus["root"], "--save_folder", str(tmp_path / "again"))
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "test.csv came out empty" in errors[0]
