"""CORAAL preparation on a miniature copy of the real layout (44.1 kHz interviews)."""

import csv
import os
import subprocess
import sys

import pytest
import soundfile as sf
from prep_fixtures_a import MAIN_BASE, MAIN_SPK, NO_AUDIO, TRUNCATED, make_coraal

from aode.manifest import MANIFEST_COLUMNS, read_manifest
from aode.text import normalize_words
from data_prep.coraal import clean_content, interviewee_code, prepare_coraal, split_speakers
from data_prep.common import LayoutError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = dict(n_valid_speakers=1, n_test_speakers=1)

# ID -> (start, stop, speaker, wrd_raw) of every segment with the default options
EXPECTED = {
    f"{MAIN_BASE}_0002_0004": (2.5, 8.75, MAIN_SPK,
                               "The child almost hurt the small dog Drop the tue when you ask "
                               "the figures"),
    f"{MAIN_BASE}_0006_0006": (11.0, 13.72, MAIN_SPK, "At that high level the air is pure"),
    f"{MAIN_BASE}_0008_0008": (14.5, 17.03, MAIN_SPK, "A thin stripe runs down the buses middle"),
    f"{MAIN_BASE}_0010_0010": (17.6, 20.2, MAIN_SPK, "Sunday is the best part of the week"),
    "DCB_se1_ag1_f_01_2_0001_0001": (0.5, 3.65, MAIN_SPK, "Drop the tue."),
    "DCB_se1_ag2_m_02_1_0002_0002": (2.0, 3.88, "DCB_se1_ag2_m_02", "Tear thin sheep"),
    "ATL_se0_ag1_f_01_1_0001_0001": (0.5, 3.22, "ATL_se0_ag1_f_01", "At that high level"),
    "ATL_se0_ag2_m_02_1_0001_0001": (0.5, 2.54, "ATL_se0_ag2_m_02", "Mend the coat"),
}
# ID -> a piece of the reason
EXPECTED_SKIPS = {
    f"{MAIN_BASE}_0001": "interviewer turn",
    f"{MAIN_BASE}_0003": "pause-only row",
    f"{MAIN_BASE}_0005": "interviewer turn",
    f"{MAIN_BASE}_0007": "empty text after cleaning",
    f"{MAIN_BASE}_0009": "impossible time",
    f"{MAIN_BASE}_0011": "runs past the end of its audio",
    "DCB_se1_ag2_m_02_1_0001": "interviewer turn",
    TRUNCATED: "unreadable audio",
    NO_AUDIO: f"no audio file {NO_AUDIO}.wav",
}


@pytest.mark.parametrize("content, expected", [
    ("(pause 0.17)", ""),
    ("{pause 1.20}", ""),
    ("<laugh>", ""),
    ("<ts>", ""),
    ("/unintelligible/", ""),
    ("/inaudible/", ""),
    ("[laughing]", ""),
    ("We went /RD-NAME-2/ down there.", "We went down there."),
    ("My teacher /RD-NAME-3. told us", "My teacher told us"),
    ("I told [/RD-NAME-2/-] yeah", "I told yeah"),
    ("It was funny <laugh] right", "It was funny right"),
    ("I [went] to the /RD-PLACE-1/, you know (pause 0.42) yeah", "I went to the, you know yeah"),
    ("She was like [laughing] okay", "She was like okay"),
    ("/unintelligible/ the busses, I aks him", "the buses, I ask him"),
    ("Aksed and aksing, /?/ Aks", "Asked and asking, Ask"),
    ("don't aksident", "don't aksident"),
    ("<laugh> Yeah. /inaudible/", "Yeah."),
])
def test_clean_content(content, expected):
    assert clean_content(content) == expected


def test_interviewee_code():
    assert interviewee_code("DCB_se1_ag1_f_01_1") == "DCB_se1_ag1_f_01"
    assert interviewee_code("PRV_se0_ag2_m_02_12") == "PRV_se0_ag2_m_02"


def read_all(out):
    return {name: read_manifest(os.path.join(out, name + ".csv"))
            for name in ("train", "valid", "test")}


def read_skips(out):
    with open(os.path.join(out, "skipped.csv"), newline="") as f:
        return {row["ID"]: row for row in csv.DictReader(f)}


def test_segments_row_by_row(tmp_path):
    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_coraal(str(tmp_path / "data"), out, **SPLIT)
    splits = read_all(out)
    rows = {r["ID"]: r for split in splits.values() for r in split}
    assert sum(len(s) for s in splits.values()) == len(rows)  # unique IDs
    assert set(rows) == set(EXPECTED)
    for uid, (start, stop, spk, text) in EXPECTED.items():
        row = rows[uid]
        assert list(row) == MANIFEST_COLUMNS and "," not in uid
        assert float(row["start"]) == pytest.approx(start, abs=1e-3)
        assert float(row["stop"]) == pytest.approx(stop, abs=1e-3)
        assert float(row["duration"]) == pytest.approx(stop - start, abs=2e-3)
        assert row["spk_id"] == spk
        assert row["wrd_raw"] == text
        assert row["wrd"] == normalize_words(text)
        base = uid.rsplit("_", 2)[0]
        assert os.path.isabs(row["wav"]) and os.path.basename(row["wav"]) == base + ".wav"
        assert sf.info(row["wav"]).samplerate == 44100  # not resampled at prep
    skips = read_skips(out)
    assert set(skips) == set(EXPECTED_SKIPS)
    for uid, reason in EXPECTED_SKIPS.items():
        assert reason in skips[uid]["reason"], (uid, skips[uid])


def test_speaker_split_disjoint(tmp_path):
    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_coraal(str(tmp_path / "data"), out, **SPLIT)
    speakers = {name: {r["spk_id"] for r in rows} for name, rows in read_all(out).items()}
    assert len(speakers["valid"]) == 1 and len(speakers["test"]) == 1
    assert len(speakers["train"]) == 2
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    # the truncated interview's speaker has no segment and no split
    assert interviewee_code(TRUNCATED) not in set().union(*speakers.values())
    # seeded: several seeds give different splits, one seed always the same
    spk = ["a", "b", "c", "d", "e"]
    assert split_speakers(spk, 1, 1, 3) == split_speakers(spk, 1, 1, 3)
    assert len({tuple(map(frozenset, split_speakers(spk, 1, 1, s))) for s in range(10)}) > 1


def test_max_segment_and_keep_interviewer(tmp_path):
    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "short")
    prepare_coraal(str(tmp_path / "data"), out, max_segment_seconds=5, **SPLIT)
    rows = {r["ID"]: r for split in read_all(out).values() for r in split}
    assert f"{MAIN_BASE}_0002_0004" not in rows
    assert rows[f"{MAIN_BASE}_0002_0002"]["wrd_raw"] == "The child almost hurt the small dog"
    assert rows[f"{MAIN_BASE}_0004_0004"]["wrd_raw"] == "Drop the tue when you ask the figures"
    assert float(rows[f"{MAIN_BASE}_0004_0004"]["start"]) == pytest.approx(5.6)
    assert all(float(r["duration"]) <= 5 for r in rows.values())
    assert "longer than max_segment_seconds=5" in read_skips(out)[f"{MAIN_BASE}_0011"]["reason"]

    out = str(tmp_path / "all")
    prepare_coraal(str(tmp_path / "data"), out, keep_interviewer=True, **SPLIT)
    splits = read_all(out)
    rows = {r["ID"]: (name, r) for name, split in splits.items() for r in split}
    name, row = rows[f"{MAIN_BASE}_0001_0001"]
    assert row["spk_id"] == "DCB_int_01" and row["wrd_raw"] == "What joy there is in living."
    assert rows[f"{MAIN_BASE}_0005_0005"][1]["wrd_raw"] == "We are sure that one wore is enough"
    assert rows[f"{MAIN_BASE}_0002_0004"][0] == name  # the interview stays in one split
    assert rows["DCB_se1_ag2_m_02_1_0001_0001"][1]["spk_id"] == "DCB_int_01"
    assert "interviewer turn" not in "".join(r["reason"] for r in read_skips(out).values())


def test_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        prepare_coraal(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    folder = tmp_path / "metadata_only"
    folder.mkdir()
    (folder / "DCB_metadata_2018.10.06.txt").write_text("CORAAL.File\tCORAAL.Spkr\n")
    (folder / "DCB_se1_ag1_f_01_1.wav").write_bytes(b"")
    with pytest.raises(LayoutError) as err:
        prepare_coraal(str(folder), str(tmp_path / "out"))
    assert str(folder) in str(err.value) and "Line\\tSpkr\\tStTime\\tContent\\tEnTime" in str(
        err.value)
    make_coraal(str(tmp_path / "data"))
    with pytest.raises(ValueError, match="too few"):
        prepare_coraal(str(tmp_path / "data"), str(tmp_path / "out"))  # 6 interviewees < 5+5+1
    assert not (tmp_path / "out").exists()


def test_skip_when_prepared_and_redo_on_new_options(tmp_path):
    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_coraal(str(tmp_path / "data"), out, **SPLIT)
    files = [os.path.join(out, n) for n in ("train.csv", "valid.csv", "test.csv",
                                            "skipped.csv", "prep_options.json")]
    for f in files:
        os.utime(f, (1_000_000_000, 1_000_000_000))
    assert prepare_coraal(str(tmp_path / "data"), out, **SPLIT) is None
    assert all(os.path.getmtime(f) == 1_000_000_000 for f in files)
    assert prepare_coraal(str(tmp_path / "data"), out, max_segment_seconds=5, **SPLIT)
    assert all(os.path.getmtime(f) > 1_000_000_000 for f in files)


def test_loads_with_speechbrain(tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_coraal(str(tmp_path / "data"), out, **SPLIT)
    for name in ("train", "valid", "test"):
        data = DynamicItemDataset.from_csv(os.path.join(out, name + ".csv"))
        data.set_output_keys(["id", "wav", "start", "stop", "wrd", "wrd_raw"])
        items = list(data)
        assert items and all(float(i["stop"]) > float(i["start"]) >= 0 for i in items)
        assert all(os.path.isfile(i["wav"]) for i in items)
    # the project's loader reads each segment at 16 kHz from the 44.1 kHz interview
    from aode.data import read_audio_segment

    for row in read_manifest(os.path.join(out, "train.csv")):
        audio = read_audio_segment(row["wav"], row["start"], row["stop"])
        assert abs(len(audio) - float(row["duration"]) * 16000) <= 16
        assert float(audio.abs().max()) > 0.01  # the segment holds the placed speech


def test_command_line(tmp_path):
    make_coraal(str(tmp_path / "data"))
    script = os.path.join(REPO, "data_prep", "coraal.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                               text=True, check=True).stdout
    for option in ("--data_folder", "--save_folder", "--keep_interviewer",
                   "--max_segment_seconds", "--n_valid_speakers", "--n_test_speakers", "--seed"):
        assert option in help_text
    out = str(tmp_path / "out")
    run = subprocess.run([sys.executable, script, "--data_folder", str(tmp_path / "data"),
                          "--save_folder", out, "--n_valid_speakers", "1",
                          "--n_test_speakers", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "train.csv:" in run.stdout and "skipped 1: pause-only row" in run.stdout
