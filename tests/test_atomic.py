"""aode.atomic (the project's one atomic-write helper) and aode.model_folder's file list."""

import json
import os

import pytest

from aode.atomic import atomic_folder
from aode.atomic import atomic_open
from aode.atomic import atomic_path
from aode.atomic import atomic_write_json
from aode.atomic import temp_path
from aode.model_folder import PROCESSOR_FILES
from aode.model_folder import copy_processor_files
from aode.model_folder import is_processor_file


def test_temp_path_is_hidden_beside_and_keeps_the_extension(tmp_path):
    tmp = temp_path(tmp_path / "wer.csv")
    folder, name = os.path.split(tmp)
    assert folder == str(tmp_path)
    assert name.startswith(f".wer.tmp-{os.getpid()}-") and name.endswith(".csv")
    assert temp_path(tmp_path / "wer.csv") != tmp


def test_atomic_path_renames_on_success_and_replaces(tmp_path):
    final = tmp_path / "sub" / "out.txt"  # the folder is created
    with atomic_path(final) as tmp:
        assert not final.exists()
        with open(tmp, "w") as f:
            f.write("one")
    assert final.read_text() == "one"
    with atomic_open(final) as f:
        f.write("two")
    assert final.read_text() == "two"
    assert os.listdir(final.parent) == ["out.txt"]


@pytest.mark.parametrize("how", ["path", "open", "json"])
def test_crash_inside_leaves_no_final_file_and_no_temp(tmp_path, how):
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="crash"):
        if how == "path":
            with atomic_path(final) as tmp:
                with open(tmp, "w") as f:
                    f.write("half")
                raise RuntimeError("crash")
        elif how == "open":
            with atomic_open(final) as f:
                f.write("half")
                raise RuntimeError("crash")
        else:
            atomic_write_json(final, {"x": object()}, default=lambda o: (_ for _ in ()).throw(RuntimeError("crash")))
    assert os.listdir(tmp_path) == []


def test_crash_keeps_the_previous_file(tmp_path):
    final = tmp_path / "out.json"
    atomic_write_json(final, {"a": 1}, indent=1)
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(final) as f:
            f.write("{")
            raise KeyboardInterrupt
    assert json.loads(final.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_folder(tmp_path):
    final = tmp_path / "merged"
    with atomic_folder(final) as tmp:
        assert os.path.isdir(tmp) and os.listdir(tmp) == []
        (open(os.path.join(tmp, "a"), "w")).close()
    assert os.listdir(final) == ["a"]
    with pytest.raises(FileExistsError):
        with atomic_folder(final):
            pass
    with atomic_folder(final, overwrite=True) as tmp:
        (open(os.path.join(tmp, "b"), "w")).close()
    assert os.listdir(final) == ["b"]
    assert os.listdir(tmp_path) == ["merged"]


def test_atomic_folder_crash_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "new") as tmp:
            (open(os.path.join(tmp, "a"), "w")).close()
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []
    old = tmp_path / "old"
    with atomic_folder(old) as tmp:
        (open(os.path.join(tmp, "kept"), "w")).close()
    with pytest.raises(RuntimeError):
        with atomic_folder(old, overwrite=True) as tmp:
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == ["old"] and os.listdir(old) == ["kept"]


def test_atomic_folder_refuses_one_that_appears_meanwhile(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared"):
        with atomic_folder(final):
            os.makedirs(final)
    assert os.listdir(tmp_path) == ["out"]


def test_one_processor_file_list_for_export_and_merge(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    os.makedirs(src)
    os.makedirs(dst)
    names = [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "preprocessor_config.json",
        "processor_config.json",
        "normalizer.json",
        "generation_config.json",
        "tokenizer.model",
        "spm.model",
        "spiece.model",
        "feature_extractor_config.json",
    ]
    for name in names + ["config.json", "model.safetensors", "aode.json"]:
        (src / name).write_text(name)
    assert all(is_processor_file(n) for n in names)
    assert not any(is_processor_file(n) for n in ("config.json", "model.safetensors", "aode.json"))
    assert "spm.model" in PROCESSOR_FILES
    (dst / "vocab.json").write_text("saved by save_pretrained")
    copied = copy_processor_files(src, dst, overwrite=False)  # an export
    assert sorted(copied) == sorted(n for n in names if n != "vocab.json")
    assert (dst / "vocab.json").read_text() == "saved by save_pretrained"
    assert sorted(copy_processor_files(src, dst)) == sorted(names)  # a merge
    assert (dst / "vocab.json").read_text() == "vocab.json"
    assert copy_processor_files("openai/whisper-tiny", dst) == []  # a hub id: nothing local
