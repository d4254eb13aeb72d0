"""CORAAL preparation on a miniature copy of the real layout (44.1 kHz interviews)."""

import csv
import os
import shutil

import pytest
import soundfile as sf
from prep_fixtures_a import HEADERLESS
from prep_fixtures_a import MAIN_BASE
from prep_fixtures_a import MAIN_SPK
from prep_fixtures_a import NO_AUDIO
from prep_fixtures_a import NO_TRANSCRIPT_BASE
from prep_fixtures_a import ORDER_BASE
from prep_fixtures_a import ORDER_ROWS
from prep_fixtures_a import TRUNCATED
from prep_fixtures_a import make_coraal
from prep_fixtures_b import check_help
from prep_fixtures_b import load_with_speechbrain
from prep_fixtures_b import run_script

from aode.manifest import MANIFEST_COLUMNS
from aode.manifest import read_manifest
from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.common import LayoutError
from data_prep.common import SkipLog
from data_prep.coraal import clean_content
from data_prep.coraal import interviewee_code
from data_prep.coraal import is_pause_only
from data_prep.coraal import prepare_coraal
from data_prep.coraal import read_transcript_table
from data_prep.coraal import segment_rows
from data_prep.coraal import split_speakers

CLI_SPLIT = ("--n_valid_speakers", "1", "--n_test_speakers", "1")  # SPLIT on the command line
SPLIT = dict(n_valid_speakers=1, n_test_speakers=1)

# ID -> (start, stop, speaker, wrd_raw) of every segment with the default options
EXPECTED = {
    f"{MAIN_BASE}_0002_0004": (
        2.5,
        8.75,
        MAIN_SPK,
        "The child almost hurt the small dog Drop the tue when you ask the figures",
    ),
    f"{MAIN_BASE}_0006_0006": (11.0, 13.72, MAIN_SPK, "At that high level the air is pure"),
    f"{MAIN_BASE}_0008_0008": (14.5, 17.03, MAIN_SPK, "A thin stripe runs down the buses middle"),
    f"{MAIN_BASE}_0010_0010": (17.6, 20.2, MAIN_SPK, "Sunday is the best part of the week"),
    "DCB_se1_ag1_f_01_2_0001_0001": (0.5, 3.65, MAIN_SPK, "Drop the tue."),
    "DCB_se1_ag2_m_02_1_0002_0002": (2.0, 3.88, "DCB_se1_ag2_m_02", "Tear thin sheep"),
    "ATL_se0_ag1_f_01_1_0001_0001": (0.5, 3.22, "ATL_se0_ag1_f_01", "At that high level"),
    "ATL_se0_ag2_m_02_1_0001_0001": (0.5, 2.54, "ATL_se0_ag2_m_02", "Mend the coat"),
    # rows out of file order: taken by StTime, so the interviewer's row 3 (3.5-5.3 s) ends
    # the segment of row 1 and rows 1 and 2 are not merged across it; the interviewer's long
    # row 4 (9.0-13.4 s) reaches into the gap between rows 5 and 6, which stay apart too
    f"{ORDER_BASE}_0001_0001": (0.5, 3.37, MAIN_SPK, "The child almost hurt the small dog"),
    f"{ORDER_BASE}_0002_0002": (5.5, 8.65, MAIN_SPK, "Drop the tue when you add the figures"),
    f"{ORDER_BASE}_0005_0005": (9.3, 12.2, MAIN_SPK, "At that high level the air is pure"),
    f"{ORDER_BASE}_0006_0006": (13.5, 16.03, MAIN_SPK, "A thin stripe runs down middle"),
    f"{ORDER_BASE}_0008_0008": (17.0, 19.6, MAIN_SPK, "Sunday is the best part of the week"),
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
    NO_AUDIO: "transcript without audio",
    NO_TRANSCRIPT_BASE: "audio without transcript",
    **{base: "transcript without header line" for base in HEADERLESS},
    f"{ORDER_BASE}_0003": "interviewer turn",
    f"{ORDER_BASE}_0004": "interviewer turn",
    f"{ORDER_BASE}_0007": "empty Content cell",
}
# Every skip reason the fixture produces, word for word: generic, so that the summary groups
# them (no file names, times or row numbers in them).
GENERIC_REASONS = {
    "interviewer turn (keep_interviewer off)",
    "pause-only row",
    "empty text after cleaning",
    "impossible time",
    "runs past the end of its audio",
    "unreadable audio",
    "transcript without audio",
    "audio without transcript",
    "transcript without header line",
    "empty Content cell",
}


@pytest.mark.parametrize(
    "content, expected",
    [
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
        # line-level notes in ( ) and { } are not words (they used to stay: "laughing yeah")
        ("(laughing) yeah I did", "yeah I did"),
        ("(coughing) okay, (whispered) yeah", "okay, yeah"),
        ("yeah {laughs} ok", "yeah ok"),
        # [ ] marks overlapping speech: its words stay, glued to an adjacent letter
        ("y[eah]", "yeah"),
        ("it was [um]- you know", "it was um- you know"),
        ("[At that high level] the air", "At that high level the air"),
        ("okay.[Yeah] right", "okay. Yeah right"),
        # a redaction takes its clitic along; an unclosed pause leaves no words
        ("Tell /RD-NAME-2/'s house", "Tell house"),
        ("Tell /RD-NAME-2/\u2019s house", "Tell house"),
        ("so (pause 0.5", "so"),
        ("(pause 0.5", ""),
        ("(pause 0.5 and then", "and then"),
        ("(laughing)", ""),
    ],
)
def test_clean_content(content, expected):
    assert clean_content(content) == expected


# NVIDIA/NeMo-speech-data-processor dataset_configs/english/coraal/config.yaml, the SubRegex
# processor's own test_cases (input -> output), all of which our cleaning reproduces.
NEMO_CASES = [
    ("something busses else", "something buses else"),
    ("something aks else", "something ask else"),
    ("something aksa else", "something aksa else"),
    ("something aksing else", "something asking else"),
    ("something busses aksed", "something buses asked"),
    ("something /RD-ADDRESS-4/ else", "something else"),
    ("something <laugh> else", "something else"),
    ("something (pause 0.17) else", "something else"),
    ("something {pause 0.17} else", "something else"),
    ("something /unintelligible/ else /inaudible/ w", "something else w"),
    ("something /else/", "something else"),
    ("something [els]e", "something else"),
]


@pytest.mark.parametrize("content, expected", NEMO_CASES)
def test_clean_content_matches_nemo_test_cases(content, expected):
    assert clean_content(content) == expected
    assert normalize_words(clean_content(content)) == expected


@pytest.mark.parametrize(
    "content, koenecke, ours",
    [
        # stanford-policylab/asr-disparities src/transcript_cleaning_functions.py remove_markers'
        # own example: a note in ( ) goes, as in clean_coraal
        ("We(BR) went", "We went", "We went"),
        # clean_coraal turns [ ] into { } and removes it with its words; snippet_generation.py
        # drops any line with a bracket. We keep the overlapped words, as NeMo does.
        ("[yeah] okay", "okay", "yeah okay"),
    ],
)
def test_clean_content_against_koenecke(content, koenecke, ours):
    assert clean_content(content) == ours


def test_pause_only_and_wrd_of_fixed_cases():
    assert is_pause_only("(pause 0.5") and is_pause_only("(pause 0.23)  {pause 1}")
    assert not is_pause_only("(laughing)") and not is_pause_only("(pause 0.5 yeah")
    # the stray pieces the old cleaning left in the CTC target
    assert normalize_words(clean_content("Tell /RD-NAME-2/'s house")) == "tell house"
    assert normalize_words(clean_content("we left (pause 0.5")) == "we left"
    assert normalize_words(clean_content("(laughing) yeah {laughs}")) == "yeah"


def test_interviewee_code():
    assert interviewee_code("DCB_se1_ag1_f_01_1") == "DCB_se1_ag1_f_01"
    assert interviewee_code("PRV_se0_ag2_m_02_12") == "PRV_se0_ag2_m_02"


def read_all(out):
    return {name: read_manifest(os.path.join(out, name + ".csv")) for name in ("train", "valid", "test")}


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
    assert str(folder) in str(err.value) and "Line\\tSpkr\\tStTime\\tContent\\tEnTime" in str(err.value)
    make_coraal(str(tmp_path / "data"))
    with pytest.raises(ValueError, match="too few"):
        prepare_coraal(str(tmp_path / "data"), str(tmp_path / "out"))  # 6 interviewees < 5+5+1
    assert not (tmp_path / "out").exists()


def test_skip_when_prepared_and_redo_on_new_options(tmp_path):
    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_coraal(str(tmp_path / "data"), out, **SPLIT)
    files = [os.path.join(out, n) for n in ("train.csv", "valid.csv", "test.csv", "skipped.csv", "prep_options.json")]
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
        ours = read_manifest(os.path.join(out, name + ".csv"))
        theirs = load_with_speechbrain(os.path.join(out, name + ".csv"))
        assert [(r["wrd"], r["wrd_raw"]) for r in theirs] == [(r["wrd"], r["wrd_raw"]) for r in ours]
    # the project's loader reads each segment at 16 kHz from the 44.1 kHz interview
    from aode.data import read_audio_segment

    for row in read_manifest(os.path.join(out, "train.csv")):
        audio = read_audio_segment(row["wav"], row["start"], row["stop"])
        assert abs(len(audio) - float(row["duration"]) * 16000) <= 16
        assert float(audio.abs().max()) > 0.01  # the segment holds the placed speech


def test_command_line(tmp_path):
    make_coraal(str(tmp_path / "data"))
    check_help(
        "coraal", ("--keep_interviewer", "--max_segment_seconds", "--n_valid_speakers", "--n_test_speakers", "--seed")
    )
    run = run_script(
        "coraal", "--data_folder", str(tmp_path / "data"), "--save_folder", str(tmp_path / "out"), *CLI_SPLIT
    )
    assert run.returncode == 0, run.stderr
    assert "train.csv:" in run.stdout and "skipped 1: pause-only row" in run.stdout


def test_rows_taken_in_start_time_order(tmp_path):
    """A segment never spans another speaker's row (Koenecke et al.'s own check in
    snippet_generation.py: the rows inside a snippet's time span are all the interviewee's),
    even when the transcript lists its rows out of StTime order."""
    make_coraal(str(tmp_path / "data"))
    for keep in (False, True):
        out = str(tmp_path / f"out_{keep}")
        prepare_coraal(str(tmp_path / "data"), out, keep_interviewer=keep, **SPLIT)
        # interviewee segments, as Koenecke et al. check (a kept interviewer row may contain
        # a whole overlapping interviewee row: row 4 holds row 5, as the transcript says)
        rows = [
            r
            for split in read_all(out).values()
            for r in split
            if r["ID"].startswith(ORDER_BASE) and r["spk_id"] == MAIN_SPK
        ]
        assert len(rows) == 5
        for row in rows:
            start, stop = float(row["start"]), float(row["stop"])
            inside = {
                spkr for spkr, st, en, content, _ in ORDER_ROWS if content and st >= start - 1e-6 and en <= stop + 1e-6
            }
            assert inside == {MAIN_SPK}, (row["ID"], inside)
    ids = {r["ID"] for split in read_all(str(tmp_path / "out_True")).values() for r in split}
    assert {f"{ORDER_BASE}_0003_0003", f"{ORDER_BASE}_0004_0004"} <= ids
    assert f"{ORDER_BASE}_0001_0002" not in ids and f"{ORDER_BASE}_0005_0006" not in ids


def test_unparseable_start_keeps_its_place_in_the_file():
    """A row with a non-numeric StTime is skipped where the transcriber put it, so it still
    separates its neighbours (it may hold speech)."""
    rows = [
        (1, "ATL_se0_ag1_f_01", "0.5", "one two", "1.0"),
        (2, "ATL_se0_ag1_f_01", "n/a", "three", "1.5"),
        (3, "ATL_se0_ag1_f_01", "1.2", "four", "2.0"),
        (4, "ATL_se0_ag1_f_01", "0.1", "zero", "0.4"),
    ]
    skipped = SkipLog()
    out = segment_rows("ATL_se0_ag1_f_01_1", rows, 3.0, "/x.wav", False, 30.0, skipped)
    assert [r["ID"] for r in out] == ["ATL_se0_ag1_f_01_1_0004_0001", "ATL_se0_ag1_f_01_1_0003_0003"]
    assert out[0]["wrd"] == "zero one two" and out[0]["start"] == 0.1
    assert [(s["ID"], s["reason"]) for s in skipped.rows] == [("ATL_se0_ag1_f_01_1_0002", "impossible time")]


def test_skip_reasons_are_generic(tmp_path):
    make_coraal(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    prepare_coraal(str(tmp_path / "data"), out, **SPLIT)
    skips = read_skips(out)
    assert {row["reason"] for row in skips.values()} == GENERIC_REASONS
    # the detail lives in the file column
    assert skips[NO_AUDIO]["file"].endswith(os.path.join("textfiles", NO_AUDIO + ".txt"))
    assert skips["DCA_se1_ag1_f_01_1"]["file"].endswith("DCA_se1_ag1_f_01_1.txt")
    assert skips[NO_TRANSCRIPT_BASE]["file"].endswith(NO_TRANSCRIPT_BASE + ".wav")
    assert skips[TRUNCATED]["file"].endswith(TRUNCATED + ".wav")
    out = str(tmp_path / "short")
    prepare_coraal(str(tmp_path / "data"), out, max_segment_seconds=5, **SPLIT)
    assert read_skips(out)[f"{MAIN_BASE}_0011"]["reason"] == ("row longer than max_segment_seconds=5")


def move_audio_out(data, elsewhere):
    """Leave only the textfiles (and metadata) under ``data``: the audio goes elsewhere."""
    os.makedirs(elsewhere)
    for name in os.listdir(data):
        if "_audio_part" in name:
            shutil.move(os.path.join(data, name), os.path.join(elsewhere, name))


def test_text_only_layout_is_refused_with_its_cause(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    make_coraal(data)
    move_audio_out(data, str(tmp_path / "audio"))
    for options in (SPLIT, {}):  # with the default 5 + 5 too: no "too few" in its place
        with pytest.raises(EmptyPreparationError) as err:
            prepare_coraal(data, out, **options)
        message = str(err.value)
        assert "audio_partNN" in message and "data_folder" in message, message
        assert "transcript without audio" in message
    assert not os.path.exists(os.path.join(out, "prep_options.json"))
    assert not os.path.exists(os.path.join(out, "train.csv"))
    skips = read_skips(out)
    assert {uid for uid, row in skips.items() if row["reason"] == "transcript without audio"} == {
        MAIN_BASE,
        ORDER_BASE,
        NO_AUDIO,
        *(
            b
            for b in [
                "DCB_se1_ag1_f_01_2",
                "DCB_se1_ag2_m_02_1",
                "ATL_se0_ag1_f_01_1",
                "ATL_se0_ag2_m_02_1",
                "PRV_se0_ag1_f_01_1",
            ]
        ),
    }
    # the command line: exit 2, one line
    run = run_script("coraal", "--data_folder", data, "--save_folder", out, *CLI_SPLIT)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "audio_partNN" in errors[0]
    # the audio unpacked under data_folder (in a subfolder of its own): the rerun does the work
    shutil.move(str(tmp_path / "audio"), os.path.join(data, "audio"))
    summary = prepare_coraal(data, out, **SPLIT)
    assert summary is not None and summary["train.csv"][0] > 0
    assert os.path.exists(os.path.join(out, "prep_options.json"))


def test_interviewee_count_counts_only_interviews_with_audio(tmp_path):
    data = str(tmp_path / "data")
    make_coraal(data)
    os.remove(os.path.join(data, "ATL_audio_part01", "ATL_se0_ag2_m_02_1.wav"))
    # 6 interviewees have a transcript, 4 have audio: too few for 2 + 2 + 1
    with pytest.raises(ValueError, match="4 interviewees with audio.*2 transcripts have no audio"):
        prepare_coraal(data, str(tmp_path / "out"), n_valid_speakers=2, n_test_speakers=2)
    assert not (tmp_path / "out").exists()


def test_transcript_encodings(tmp_path):
    """UTF-8 with a BOM, and cp1252 (a Windows-edited file: its ’ is byte 0x92) read right;
    latin-1 would turn 0x92 into a control character and "don't" into "don t"."""
    header = "Line\tSpkr\tStTime\tContent\tEnTime\n"
    path = tmp_path / "ATL_se0_ag1_f_01_1.txt"
    path.write_bytes((header + "1\tATL_se0_ag1_f_01\t0.5\tI don\u2019t know\t2.0\n").encode("cp1252"))
    (row,) = read_transcript_table(str(path))
    assert row[3] == "I don\u2019t know"
    assert normalize_words(clean_content(row[3])) == "i don't know"
    path.write_bytes(("\ufeff" + header + "1\tATL_se0_ag1_f_01\t0.5\tcaf\u00e9 \u2019bout\t2.0\n").encode("utf-8"))
    (row,) = read_transcript_table(str(path))
    assert row[1:] == ("ATL_se0_ag1_f_01", "0.5", "caf\u00e9 \u2019bout", "2.0")
