"""Google NE (OpenSLR 70) preparation on a miniature copy of the unzipped archives (48 kHz)."""

import filecmp
import os
import re
import shutil

import pytest
from prep_fixtures_b import SPLITS
from prep_fixtures_b import by_id
from prep_fixtures_b import check_exits_on_missing_data
from prep_fixtures_b import check_help
from prep_fixtures_b import check_prepared
from prep_fixtures_b import check_skip_then_redo
from prep_fixtures_b import corpus_fixture
from prep_fixtures_b import layout_error
from prep_fixtures_b import load_with_speechbrain
from prep_fixtures_b import read_csv
from prep_fixtures_b import recorded_options
from prep_fixtures_b import rows_by_split
from prep_fixtures_b import run_script
from prep_fixtures_b import sentence
from prep_fixtures_b import truncate
from prep_fixtures_b import write_audio
from prep_fixtures_b import write_text

from aode.manifest import read_manifest
from aode.text import normalize_words
from data_prep.common import EmptyPreparationError
from data_prep.common import LayoutError
from data_prep.google_ne import main
from data_prep.google_ne import parse_index_line
from data_prep.google_ne import prepare_google_ne
from data_prep.google_ne import speaker_of

RATE = 48000

# (folder, FileID, tsv line after the FileID) -- the real files' formats, defects included
LINES = [
    ("en_ng_female", "ngf_00295_01314275188", "\t" + sentence(0)),
    ("en_ng_female", "ngf_00295_01598447523", "\tYou've done well, haven't you?"),
    ("en_ng_female", "ngf_00295_00870216455", "\t" + sentence(2)),
    # the known defect: an extra middle field; the sentence is the LAST field
    ("en_ng_female", "ngf_00610_00456789012", "\tA thin stripe\tA thin stripe runs down the middle."),
    ("en_ng_female", "ngf_00610_01876543210", "\t" + sentence(4)),
    ("en_ng_female", "ngf_01208_00011122233", "\t" + sentence(5)),
    ("en_ng_female", "ngf_01208_00044455566", "\t  What joy   there is in living.  "),
    ("en_ng_male", "ngm_00123_01111111111", "\t" + sentence(7)),
    ("en_ng_male", "ngm_00123_01222222222", "\t" + sentence(8)),
    ("en_ng_male", "ngm_00456_01333333333", "\t" + sentence(9)),
    ("en_ng_male", "ngm_00456_01444444444", "\t" + sentence(0)),
    ("en_ng_male", "ngm_00789_01555555555", "\t" + sentence(1)),
    ("en_ng_male", "ngm_00789_01666666666", "\t" + sentence(2)),
    # a trailing tab, and an empty or filled middle field before a trailing tab: the
    # sentence survives (HF's loader strips the line first)
    ("en_ng_male", "ngm_00456_01555555555", "\t" + sentence(3) + "\t"),
    ("en_ng_female", "ngf_00610_00777777777", "\t\t" + sentence(6)),
    ("en_ng_female", "ngf_01208_00888888888", "\tMend the coat\t" + sentence(8) + "\t"),
]


def hf_fields(line):
    """The oracle: how HF datasets' openslr.py (``_generate_examples``, the branch SLR70
    takes) splits an index line; it keeps the line when this gives exactly two fields."""
    line = re.sub(r"\t[^\t]*\t", "\t", line.strip())
    return re.split(r"\t\t?", line)


def build_google_ne(root, flat=False):
    """Write the miniature corpus; returns (expected rows by ID, planted defects)."""
    expected = {}
    tsv = {}
    for i, (folder, file_id, rest) in enumerate(LINES):
        folder = "" if flat else folder
        wav = os.path.join(root, folder, file_id + ".wav")
        duration = write_audio(wav, i, RATE)
        text = " ".join(hf_fields(file_id + rest)[1].split())
        expected[file_id] = {
            "duration": duration,
            "wav": wav,
            "spk_id": file_id[:9],
            "wrd_raw": text,
            "wrd": normalize_words(text),
        }
        tsv.setdefault(folder, []).append(file_id + rest)
    female = "" if flat else "en_ng_female"
    male = "" if flat else "en_ng_male"
    # defects: truncated audio, audio not in the index, index line without audio,
    # empty sentence, a line that lost its tab
    write_audio(os.path.join(root, male, "ngm_00789_01777777777.wav"), 3, RATE)
    truncate(os.path.join(root, male, "ngm_00789_01777777777.wav"))
    tsv[male].append("ngm_00789_01777777777\t" + sentence(3))
    write_audio(os.path.join(root, female, "ngf_01208_00099999999.wav"), 6, RATE)
    tsv[female].append("ngf_00295_01000000000\tThis line has no audio.")
    write_audio(os.path.join(root, male, "ngm_00123_01888888888.wav"), 4, RATE)
    tsv[male].append("ngm_00123_01888888888\t  ")
    tsv[female].append("ngf_00295_00000000009 This line lost its tab")
    for folder, lines in tsv.items():
        # the male index with Windows line ends, to be tolerant of either
        end = "\r\n" if folder == male and not flat else "\n"
        write_text(os.path.join(root, folder, "line_index.tsv"), end.join(lines) + end)
    return expected


gne = corpus_fixture(build_google_ne, "slr70")


def test_manifests_row_by_row(gne):
    data, save, expected = gne
    summary = prepare_google_ne(data, save)
    rows = check_prepared(save, expected)
    speakers = {s: {r["spk_id"] for r in rows[s]} for s in SPLITS}
    assert len(speakers["valid"]) == 1 and len(speakers["test"]) == 1  # 10 % of 6, at least 1
    assert len(speakers["train"]) == 4
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    for s in SPLITS:
        assert summary[f"{s}.csv"][0] == len(rows[s])
    all_rows = by_id(sum(rows.values(), []))
    assert all_rows["ngf_00610_00456789012"]["wrd_raw"] == "A thin stripe runs down the middle."
    assert all_rows["ngf_00295_01598447523"]["wrd"] == "you've done well haven't you"
    assert all_rows["ngf_01208_00044455566"]["wrd_raw"] == "What joy there is in living."
    assert {r["spk_id"] for r in all_rows.values()} == {
        "ngf_00295",
        "ngf_00610",
        "ngf_01208",
        "ngm_00123",
        "ngm_00456",
        "ngm_00789",
    }


def test_defects_are_skipped_with_reasons(gne):
    data, save, expected = gne
    prepare_google_ne(data, save)
    skipped = {row["ID"]: row for row in read_csv(os.path.join(save, "skipped.csv"))}
    assert set(skipped) == {
        "ngm_00789_01777777777",
        "ngf_01208_00099999999",
        "ngf_00295_01000000000",
        "ngm_00123_01888888888",
        "ngf_00295_00000000009 This line lost its tab",
    }
    assert skipped["ngm_00789_01777777777"]["reason"].startswith("unreadable audio (truncated")
    assert skipped["ngf_01208_00099999999"]["reason"] == "audio without transcript"
    assert skipped["ngf_00295_01000000000"]["reason"] == "transcript without audio"
    assert "line_index.tsv:" in skipped["ngf_00295_01000000000"]["file"]
    assert skipped["ngm_00123_01888888888"]["reason"] == "empty text after cleaning"
    assert skipped["ngf_00295_00000000009 This line lost its tab"]["reason"] == ("malformed line_index.tsv line")
    ids = {r["ID"] for rows in rows_by_split(save).values() for r in rows}
    assert ids == set(expected)


def test_flat_layout(tmp_path):
    root = str(tmp_path / "flat")
    expected = build_google_ne(root, flat=True)
    save = str(tmp_path / "out")
    prepare_google_ne(root, save)
    check_prepared(save, expected)


def test_layout_errors(tmp_path):
    root = tmp_path / "zipped"
    write_audio(str(root / "loose" / "ngf_00295_01314275188.wav"), 0, RATE)
    message = layout_error(prepare_google_ne, root, tmp_path / "out", zipped="en_ng_female.zip")
    assert "en_ng_female/line_index.tsv" in message


def test_same_seed_same_split_and_seed_matters(gne, tmp_path):
    data, _, _ = gne
    splits = set()
    for seed in range(8):
        save = str(tmp_path / f"seed{seed}")
        prepare_google_ne(data, save, seed=seed)
        rows = rows_by_split(save)
        splits.add(tuple(frozenset(r["spk_id"] for r in rows[s]) for s in ("valid", "test")))
        if seed == 0:
            again = str(tmp_path / "seed0_again")
            prepare_google_ne(data, again, seed=0)
            for s in SPLITS:
                assert filecmp.cmp(os.path.join(save, f"{s}.csv"), os.path.join(again, f"{s}.csv"), shallow=False)
    assert len(splits) > 1


def test_fractions(gne):
    data, save, _ = gne
    prepare_google_ne(data, save, valid_fraction=0.2, test_fraction=0.34)
    rows = rows_by_split(save)
    assert len({r["spk_id"] for r in rows["valid"]}) == 1
    assert len({r["spk_id"] for r in rows["test"]}) == 2
    assert len({r["spk_id"] for r in rows["train"]}) == 3
    with pytest.raises(ValueError, match="non-empty train"):
        prepare_google_ne(data, save + "2", valid_fraction=0.5, test_fraction=0.5)


def test_skip_when_prepared_and_redo_when_options_change(gne):
    data, save, _ = gne
    check_skip_then_redo(prepare_google_ne, data, save, seed=7)


def test_speaker_parsing():
    assert speaker_of("ngf_00295_01314275188") == ("ngf_00295", True)
    assert speaker_of("ngm_00123_01111111111") == ("ngm_00123", True)
    assert speaker_of("ngf_00295_0131_x")[0] == "ngf_00295"
    assert speaker_of("ngf_00295") == ("ngf", False)
    assert speaker_of("odd") == ("odd", False)


def test_manifests_load_in_speechbrain(gne):
    data, save, expected = gne
    prepare_google_ne(data, save)
    ids = []
    for s in SPLITS:
        items = load_with_speechbrain(os.path.join(save, f"{s}.csv"))
        ids += [item["id"] for item in items]
        for item in items:
            assert item["wrd_raw"] == expected[item["id"]]["wrd_raw"]
    assert sorted(ids) == sorted(expected)


def test_command_line(gne, capsys):
    data, save, expected = gne
    main(["--data_folder", data, "--save_folder", save, "--seed", "3"])
    out = capsys.readouterr().out
    assert "train.csv:" in out and "test.csv:" in out
    assert "skipped 1: transcript without audio" in out
    assert recorded_options(save)["seed"] == 3
    check_exits_on_missing_data(main, data, save)


def test_runs_as_a_script():
    check_help("google_ne", ("--valid_fraction", "--test_fraction", "--seed"))


@pytest.mark.parametrize(
    "line",
    [
        "ngf_00295_01314275188\tA thin stripe runs down the middle.\n",
        "ngf_00295_01314275188\tA thin stripe runs down the middle.\t\n",  # trailing tab
        "ngf_00295_01314275188\tA thin stripe runs down the middle.\t\t\r\n",
        "ngf_00295_01314275188\tA thin stripe\tA thin stripe runs down the middle.\n",
        "ngf_00295_01314275188\tA thin stripe\tA thin stripe runs down the middle.\t\n",
        "ngf_00295_01314275188\t\tA thin stripe runs down the middle.\n",  # empty middle field
        "  ngf_00295_01314275188\t A thin  stripe runs down the middle. \n",
    ],
)
def test_index_lines_parse_as_hf_loader(line):
    """Every line HF's loader keeps gives its FileID and sentence (whitespace collapsed)."""
    fields = hf_fields(line)
    assert len(fields) == 2
    assert parse_index_line(line) == (fields[0], " ".join(fields[1].split()))
    assert parse_index_line(line) == ("ngf_00295_01314275188", "A thin stripe runs down the middle.")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("ngf_00295_00000000009 This line lost its tab\n", None),  # HF: one field, dropped
        ("ngf_00295_00000000009\ta\tb\tc\n", None),  # HF: three fields, dropped
        ("\tno FileID\n", None),
        ("ngf_00295_00000000009\t  \n", ("ngf_00295_00000000009", "")),  # reported as empty text
        ("ngf_00295_00000000009\t\t\n", ("ngf_00295_00000000009", "")),
    ],
)
def test_index_lines_hf_drops(line, expected):
    assert parse_index_line(line) == expected


def merge_into_one_folder(root):
    """What ``unzip en_ng_female.zip -d X; unzip -o en_ng_male.zip -d X`` leaves: both zips
    hold line_index.tsv at their root, so the male index replaces the female one. Returns X
    and the two original index files' texts."""
    merged = os.path.join(root, "merged")
    texts = {}
    for gender in ("female", "male"):
        folder = os.path.join(root, f"en_ng_{gender}")
        with open(os.path.join(folder, "line_index.tsv"), encoding="utf-8", newline="") as f:
            texts[gender] = f.read()
        os.makedirs(merged, exist_ok=True)
        for name in os.listdir(folder):
            os.replace(os.path.join(folder, name), os.path.join(merged, name))
        os.rmdir(folder)
    return merged, texts


def moved(expected, folder):
    return {k: dict(v, wav=os.path.join(folder, os.path.basename(v["wav"]))) for k, v in expected.items()}


def test_both_zips_unzipped_into_one_folder_is_refused(gne):
    data, save, _ = gne
    merge_into_one_folder(data)
    with pytest.raises(LayoutError) as err:
        prepare_google_ne(data, save)
    message = str(err.value)
    assert "unzip each archive into its own folder" in message
    assert "line_index_female.tsv" in message
    assert re.search(r"\b10 ngf_\*\.wav", message)  # every female WAV, none indexed
    assert "\n" not in message
    assert not os.path.exists(os.path.join(save, "train.csv"))
    assert not os.path.exists(os.path.join(save, "prep_options.json"))


def test_separately_published_index_files_next_to_the_wavs(gne):
    data, save, expected = gne
    merged, texts = merge_into_one_folder(data)
    # the user fetched line_index_{female,male}.tsv; the male zip's line_index.tsv stays
    for gender, text in texts.items():
        write_text(os.path.join(merged, f"line_index_{gender}.tsv"), text)
    prepare_google_ne(data, save)
    check_prepared(save, moved(expected, merged))
    skipped = read_csv(os.path.join(save, "skipped.csv"))
    assert len(skipped) == 5  # the planted defects, each once: the repeated index counts once
    assert not any("duplicate" in row["reason"] for row in skipped)


def test_separate_index_files_above_the_unzipped_folders(gne):
    data, save, expected = gne
    for gender in ("female", "male"):
        shutil.copy(
            os.path.join(data, f"en_ng_{gender}", "line_index.tsv"), os.path.join(data, f"line_index_{gender}.tsv")
        )
    prepare_google_ne(data, save)
    check_prepared(save, expected)
    skipped = read_csv(os.path.join(save, "skipped.csv"))
    assert len({row["ID"] for row in skipped}) == 5  # the planted defects
    assert not any("duplicate" in row["reason"] for row in skipped)


def test_index_apart_from_its_wavs_fails_then_rerun_works(gne):
    """Most WAVs unmatched (the indexes sit beside the audio folder, not above it): finish()
    refuses with the likely cause, marks nothing prepared; fixed, the rerun does the work."""
    data, save, expected = gne
    audio = os.path.join(data, "audio")
    for gender in ("female", "male"):
        folder = os.path.join(data, f"en_ng_{gender}")
        os.makedirs(audio, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".wav"):
                os.replace(os.path.join(folder, name), os.path.join(audio, name))
    with pytest.raises(EmptyPreparationError) as err:
        prepare_google_ne(data, save)
    assert "not in the same folder tree" in str(err.value)
    assert os.path.isfile(os.path.join(save, "skipped.csv"))
    assert not os.path.exists(os.path.join(save, "train.csv"))
    assert not os.path.exists(os.path.join(save, "prep_options.json"))
    for gender in ("female", "male"):  # fixed: the index files moved to the WAVs
        os.replace(
            os.path.join(data, f"en_ng_{gender}", "line_index.tsv"), os.path.join(audio, f"line_index_{gender}.tsv")
        )
    assert prepare_google_ne(data, save) is not None
    check_prepared(save, moved(expected, audio))


def test_dollar_text_loads_in_speechbrain_and_ours(gne):
    data, save, _ = gne
    wav = os.path.join(data, "en_ng_male", "ngm_00789_01999999999.wav")
    write_audio(wav, 5, RATE)
    with open(os.path.join(data, "en_ng_male", "line_index.tsv"), "a", encoding="utf-8") as f:
        f.write("ngm_00789_01999999999\tIt cost $20 and $.50 in all.\n")
    prepare_google_ne(data, save)
    found = []
    for s in SPLITS:
        path = os.path.join(save, f"{s}.csv")
        ours = {r["ID"]: r for r in read_manifest(path)}
        for item in load_with_speechbrain(path):
            assert item["id"] in ours
            if item["id"] == "ngm_00789_01999999999":
                found.append((item["wrd_raw"], ours[item["id"]]["wrd_raw"]))
    assert found == [("It cost \uff0420 and \uff04.50 in all.", "It cost $20 and $.50 in all.")]


def _cli(*args):
    return run_script("google_ne", *args, timeout=120)


def test_command_line_exit_status(gne, tmp_path):
    data, save, expected = gne
    good = _cli("--data_folder", data, "--save_folder", save)
    assert good.returncode == 0, good.stderr
    assert "train.csv:" in good.stdout and "test.csv:" in good.stdout
    merge_into_one_folder(data)
    bad = _cli("--data_folder", data, "--save_folder", str(tmp_path / "again"))
    assert bad.returncode == 2
    assert bad.stdout == ""
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and bad.stderr.rstrip("\n").endswith(errors[0])
    assert "unzip each archive into its own folder" in errors[0]


def test_zero_fraction_writes_no_manifest_for_that_set(gne):
    """An empty manifest loads in neither reader (SpeechBrain's DynamicItemDataset raises on
    one), so a held-out set of fraction 0 gets no file; a stale one is removed."""
    data, save, expected = gne
    prepare_google_ne(data, save)
    summary = prepare_google_ne(data, save, valid_fraction=0)
    assert list(summary) == ["train.csv", "test.csv"]
    assert not os.path.exists(os.path.join(save, "valid.csv"))
    ids = [item["id"] for s in ("train", "test") for item in load_with_speechbrain(os.path.join(save, f"{s}.csv"))]
    assert sorted(ids) == sorted(expected)
    assert prepare_google_ne(data, save, valid_fraction=0) is None  # complete, so skipped
