"""What every preparation shares (data_prep/common.py): the same-speaker segment merger, the
root finder, the recorded options and the command-line runner."""

import json
import os

import pytest

from data_prep.common import OPTIONS_FILE
from data_prep.common import VERSION_KEY
from data_prep.common import LayoutError
from data_prep.common import cli_parser
from data_prep.common import find_root
from data_prep.common import folders_below
from data_prep.common import merge_same_speaker
from data_prep.common import prep_options
from data_prep.common import run_cli


def item(speaker, start, stop, text):
    return {"speaker": speaker, "start": start, "stop": stop, "text": text}


def spans(segments):
    return [(s["speaker"], s["start"], s["stop"], [i["text"] for i in s["items"]]) for s in segments]


def test_merge_same_speaker_hand_computed():
    items = [
        item("A", 0.0, 2.0, "a1"),
        item("A", 2.5, 5.0, "a2"),  # span 0-5 = 5.0 <= 5: joins
        item("A", 5.5, 6.0, "a3"),  # span 0-6 = 6.0 > 5: a new segment
        item("B", 6.0, 7.0, "b1"),  # another speaker: a new segment
        None,  # a skipped item ends B's segment
        item("B", 7.0, 8.0, "b2"),  # so this one starts a new one
        item("B", 6.5, 7.5, "b3"),  # out of order: the span is min start .. max stop
    ]
    before = [dict(i) if i else None for i in items]
    assert spans(merge_same_speaker(items, 5)) == [
        ("A", 0.0, 5.0, ["a1", "a2"]),
        ("A", 5.5, 6.0, ["a3"]),
        ("B", 6.0, 7.0, ["b1"]),
        ("B", 6.5, 8.0, ["b2", "b3"]),
    ]
    assert items == before  # the input is not changed
    assert merge_same_speaker([], 5) == [] and merge_same_speaker([None, None], 5) == []


def test_merge_same_speaker_may_join():
    items = [item("A", 0.0, 1.0, "x"), item("A", 1.5, 2.0, "y"), item("A", 3.5, 4.0, "z")]
    # refuse gaps of 1 s or more: y joins x (gap 0.5 s), z does not (gap 1.5 s)
    close = merge_same_speaker(items, 30, may_join=lambda seg, it: it["start"] - seg["stop"] < 1)
    assert spans(close) == [("A", 0.0, 2.0, ["x", "y"]), ("A", 3.5, 4.0, ["z"])]
    assert spans(merge_same_speaker(items, 30)) == [("A", 0.0, 4.0, ["x", "y", "z"])]


def test_folders_below_and_find_root(tmp_path):
    for path in ("b/deep/deeper", "a/x", ".hidden/corpus", "__MACOSX/corpus", "c/corpus"):
        os.makedirs(tmp_path / path)
    root = str(tmp_path)
    names = [os.path.relpath(f, root) for f in folders_below(root)]
    # breadth first, name order; hidden and __MACOSX folders left out with what is below them
    assert names == [
        ".",
        "a",
        "b",
        "c",
        os.path.join("a", "x"),
        os.path.join("b", "deep"),
        os.path.join("c", "corpus"),
        os.path.join("b", "deep", "deeper"),
    ]
    assert [os.path.relpath(f, root) for f in folders_below(root, depth=1)] == [".", "a", "b", "c"]
    assert [os.path.relpath(f, root) for f in folders_below(root, depth=0)] == ["."]

    def has_corpus(folder):
        return os.path.isdir(os.path.join(folder, "corpus"))

    assert find_root(folders_below(root, depth=1), has_corpus) == os.path.join(root, "c")
    assert find_root(folders_below(root, depth=0), has_corpus) is None
    # explicit candidates: the first that qualifies wins, in the order given
    assert find_root([root, os.path.join(root, "a")], os.path.isdir) == root
    assert find_root([os.path.join(root, "nowhere")], os.path.isdir) is None


def test_prep_options_records_the_version_under_one_key(tmp_path):
    options = prep_options("mini", 3, str(tmp_path / "data"), seed=7)
    assert options == {"corpus": "mini", VERSION_KEY: 3, "data_folder": str(tmp_path / "data"), "seed": 7}
    assert VERSION_KEY == "format"


def _fake_prepare(data_folder, save_folder, fail=None, seed=1):
    """Writes one manifest and the options once; None when already done."""
    if fail == "layout":
        raise LayoutError(f"no corpus under {data_folder!r}")
    if fail == "option":
        raise ValueError("seed must be positive")
    options_path = os.path.join(save_folder, OPTIONS_FILE)
    if os.path.exists(options_path):
        return None
    os.makedirs(save_folder, exist_ok=True)
    with open(os.path.join(save_folder, "train.csv"), "w") as f:
        f.write("ID,duration,wav,start,stop,spk_id,wrd,wrd_raw\nu1,3600.000,/a.wav,0.000,3600.000,s,hi,Hi\n")
    with open(os.path.join(save_folder, "skipped.csv"), "w") as f:
        f.write("ID,file,reason\nu2,/b.wav,too short\n")
    with open(options_path, "w") as f:
        json.dump({"seed": seed}, f)
    return {"train.csv": (1, 1.0)}


def _parser():
    parser = cli_parser("A fake corpus.", "where it is")
    parser.add_argument("--fail", default=None)
    parser.add_argument("--seed", type=int, default=1)
    return parser


def test_run_cli(tmp_path, capsys):
    save = str(tmp_path / "out")
    argv = ["--data_folder", str(tmp_path), "--save_folder", save, "--seed", "5"]
    assert run_cli(_fake_prepare, _parser(), argv, ["train.csv"]) == 0
    out = capsys.readouterr().out
    assert out == "train.csv: 1 utterances, 1.00 h\nskipped 1: too short\n"
    with open(os.path.join(save, OPTIONS_FILE)) as f:
        assert json.load(f) == {"seed": 5}  # the flags reach prepare by their names
    # already prepared: said so, and the summary is read back from the folder
    assert run_cli(_fake_prepare, _parser(), argv, lambda args: ["train.csv"]) == 0
    assert capsys.readouterr().out == (
        f"already prepared with the same options: {save}\ntrain.csv: 1 utterances, 1.00 h\nskipped 1: too short\n"
    )
    for fail in ("layout", "option"):
        with pytest.raises(SystemExit) as exit_:
            run_cli(_fake_prepare, _parser(), argv + ["--fail", fail], ["train.csv"])
        assert exit_.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
