"""The files of a model folder, named once for everything that reads or writes one.

A model folder (an expert's export, a merge, the shipped mini generalist, a hub snapshot) is
what ``save_pretrained`` writes:

* ``config.json`` (:data:`CONFIG_FILE`, read as a plain dict by :func:`read_config_json`);
* the weights (:func:`find_weight_files`): ``model.safetensors``, shards listed by
  ``model.safetensors.index.json``, or legacy ``pytorch_model.bin[.index.json]``; a peft
  LoRA adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` instead
  (:func:`is_lora_folder`);
* the processor files (:data:`PROCESSOR_FILES`): tokenizer, feature extractor, processor,
  generation config;
* AoDE's ``aode.json`` provenance (:func:`write_provenance`, :func:`read_provenance`);
* optionally ``fisher.safetensors`` (:mod:`aode.fisher_file`).

Expert export and merging copy the same processor files (:func:`copy_processor_files`).
"""

import fnmatch
import json
import logging
import os
import shutil
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "PROVENANCE_FILE",
    "PROCESSOR_FILES",
    "read_config_json",
    "is_lora_folder",
    "find_weight_files",
    "is_processor_file",
    "copy_processor_files",
    "write_provenance",
    "read_provenance",
]

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "aode.json"
LORA_CONFIG_FILE = "adapter_config.json"

# Files (fnmatch patterns) that describe the processor / tokenizer / feature extractor /
# generation of a model folder; config.json and the weights are written separately. The
# union of what transformers' save_pretrained writes for the families AoDE supports (Whisper:
# tokenizer*, vocab.json, merges.txt, normalizer.json, added_tokens.json,
# special_tokens_map.json, preprocessor_config.json, generation_config.json; CTC models:
# vocab.json or tokenizer.json, processor_config.json, preprocessor_config.json) and of the
# tokenizer files other checkpoints carry (sentencepiece ``spiece.model`` / ``spm.model`` /
# ``tokenizer.model``, ``*.tiktoken``, chat templates). One list, so an expert's export and a
# merge of experts carry the same files: a file the list misses would be lost by a merge
# and a model would decode differently after it.
PROCESSOR_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "normalizer.json",
    "spiece.model",
    "spm.model",
    "sentencepiece*.model",
    "*.tiktoken",
    "chat_template*",
)


def read_config_json(folder: str | os.PathLike) -> dict | None:
    """``config.json`` of a model folder as a plain dict, or None when it has none.

    (For the transformers config object of a folder or hub id see
    :func:`aode.models.load_hf_config`.)
    """
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_lora_folder(folder: str | os.PathLike) -> bool:
    """True for a peft LoRA adapter folder (it has ``adapter_config.json``)."""
    return os.path.isfile(os.path.join(folder, LORA_CONFIG_FILE))


def find_weight_files(folder: str | os.PathLike) -> tuple[str, list[str]]:
    """``("safetensors" | "bin", [files])`` of a model folder, shards in order."""
    folder = os.fspath(folder)
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return "safetensors", [single]
    for kind, index_name in (("safetensors", "model.safetensors.index.json"), ("bin", "pytorch_model.bin.index.json")):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
            paths = [os.path.join(folder, name) for name in files]
            for p in paths:
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{index} lists shard {p}, which does not exist")
            return kind, paths
    legacy = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(legacy):
        return "bin", [legacy]
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    raise FileNotFoundError(
        f"no weights in {folder} (looked for model.safetensors, model.safetensors.index.json, "
        f"pytorch_model.bin[.index.json]); it holds {sorted(os.listdir(folder))}"
    )


def is_processor_file(name: str) -> bool:
    """True when a file name matches :data:`PROCESSOR_FILES`."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in PROCESSOR_FILES)


def copy_processor_files(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = True) -> list[str]:
    """Copy the processor files (:data:`PROCESSOR_FILES`) of folder ``src`` into ``dst``.

    ``overwrite=False`` keeps files ``dst`` already has (an export: what ``save_pretrained``
    wrote wins). Returns the names copied; a ``src`` that is no local folder (a hub id)
    copies nothing.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isdir(src):
        return []
    copied = []
    for name in sorted(os.listdir(src)):
        path, target = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.isfile(path) or not is_processor_file(name):
            continue
        if not overwrite and os.path.exists(target):
            continue
        shutil.copy2(path, target)
        copied.append(name)
    return copied


def write_provenance(folder: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write a model folder's ``aode.json``."""
    with open(os.path.join(folder, PROVENANCE_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, default=str)


def read_provenance(folder: str | os.PathLike) -> dict | None:
    """A model folder's ``aode.json``; None when it has none or it cannot be read."""
    path = os.path.join(folder, PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        logger.warning("unreadable provenance file %s", path)
        return None
