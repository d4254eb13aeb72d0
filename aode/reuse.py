"""When a finished output may be reused: only if what it was made from is the same.

Every stage that skips work because its output exists (a merge, an expert, a statistics file,
an experiment stage) records what it was made from, its *stamp*: the fingerprints of its input
models (the bytes of their weights and config) and manifests (their bytes), and every setting
that changes the result. A rerun computes the stamp it would use and compares:

* the same stamp: the output is reused (one line says so);
* another stamp, or an output made before stamps were kept: the run stops with
  :class:`StaleOutputError` (``error: ...``, exit 2) naming what differs, unless the user passes
  ``overwrite`` (``--overwrite True``), which redoes the stage and says so in one line.

Evaluations are keyed the same way (model fingerprint + manifest fingerprint + scoring
settings, :mod:`aode.evaluate`), and a key that differs simply decodes again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from aode.atomic import atomic_write_json
from aode.config import ConfigError
from aode.config import TrainingConfig

__all__ = [
    "StaleOutputError",
    "model_fingerprint",
    "file_fingerprint",
    "stamp_differences",
    "may_reuse",
    "read_stamp_file",
    "write_stamp_file",
]

STAMP_KEY = "made_from"  # the key of a model folder's aode.json that holds its stamp
_CHUNK = 16 * 2**20
_memo: dict[tuple, str] = {}


class StaleOutputError(ConfigError):
    """An output exists that was made from other inputs or settings than this run's."""


def _sha256(path: str) -> str:
    stat = os.stat(path)
    # ctime too: a write in place that keeps the size and resets the mtime still changes it
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _memo:  # the bytes are hashed once per process while the file is unchanged
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                digest.update(block)
        _memo[key] = digest.hexdigest()
    return _memo[key]


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (a manifest), or ``missing:<path>`` when there is none."""
    path = os.fspath(path)
    return _sha256(path) if os.path.isfile(path) else f"missing:{path}"


def _model_files(folder: str) -> list[str]:
    from aode.model_folder import CONFIG_FILE

    names = [
        name
        for name in os.listdir(folder)
        if name == CONFIG_FILE
        or name.startswith(("model", "pytorch_model", "adapter_model", "adapter_config"))
        and name.endswith((".safetensors", ".bin", ".json"))
    ]
    return sorted(names)


def model_fingerprint(model: str | os.PathLike | None) -> str | None:
    """What identifies a model: sha256 over its folder's weight files and config.json (names
    and bytes; the tokenizer, model card, aode.json and statistics files beside them do not
    change its outputs), a hub id resolved through the Hugging Face cache when it is there, or
    the id itself when it is not."""
    if model is None:
        return None
    folder = os.fspath(model)
    if not os.path.isdir(folder):
        try:
            from aode.models import resolve_model_folder

            folder = resolve_model_folder(folder)
        except (FileNotFoundError, ValueError, OSError):
            return f"id:{model}"
    digest = hashlib.sha256()
    for name in _model_files(folder):
        digest.update(f"{name}\0{_sha256(os.path.join(folder, name))}\0".encode())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def stamp_differences(recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded stamp and the one this run would write, one phrase per
    key (``[]``: the same); a missing record is one difference."""
    if recorded is None:
        return ["it has no record of what it was made from (made by an older AoDE, or by hand)"]
    old, new = _canonical(dict(recorded)), _canonical(dict(wanted))
    phrases = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            phrases.append(f"{key}: {_short(old.get(key, '(unset)'))} -> {_short(new.get(key, '(unset)'))}")
    return phrases


def may_reuse(
    what: str, where: str, recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any], overwrite: bool
) -> bool:
    """True when the existing output ``where`` (``what``: "merged model", "expert coraal", ...)
    was made from ``wanted``; False when it must be redone (``overwrite``: said in one line);
    else :class:`StaleOutputError` naming the differences and ``--overwrite``."""
    differences = stamp_differences(recorded, wanted)
    if not differences:
        return True
    listed = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
    if overwrite:
        print(f"[aode] redoing the {what} in {where}: made from other inputs ({listed})", flush=True)
        return False
    raise StaleOutputError(
        f"the {what} in {where} was made from other inputs than this run's ({listed}); "
        "pass --overwrite True to redo it, or choose another output_folder"
    )


def stamp_path(path: str | os.PathLike) -> str:
    """The stamp file beside an output file (statistics): ``<path>.made_from.json``."""
    return f"{os.fspath(path)}.{STAMP_KEY}.json"


def read_stamp_file(path: str | os.PathLike) -> dict | None:
    """The stamp recorded beside ``path``, or None."""
    try:
        with open(stamp_path(path), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_stamp_file(path: str | os.PathLike, stamp: Mapping[str, Any]) -> None:
    atomic_write_json(stamp_path(path), _canonical(dict(stamp)), indent=1)


def recorded_stamp(folder: str | os.PathLike) -> dict | None:
    """The stamp in a model folder's aode.json, or None."""
    from aode.model_folder import read_provenance

    return (read_provenance(folder) or {}).get(STAMP_KEY)


# ----------------------------------------------------------------------------------- stamps
# What each kind of output is made from, declared once here.

# Training keys that change no weight of the expert: where files go, how fast, what is shown.
TRAINING_KEYS_NOT_IN_STAMP = frozenset(
    {
        "output_folder",
        "data_folder",
        "prep_folder",
        "prep_options",  # the manifests' bytes are in the stamp instead
        "pretrained_cache",
        "test_csv",
        "extra_test_csvs",
        "eval_batch_size",
        "num_workers",
        "check_audio",
        "skip_unreadable_audio",
        "overwrite",
        "progressbar",
        "push_to_hub",
        "find_unused_parameters",  # a DDP bookkeeping flag (set by layerdrop), not a training choice
    }
)


def training_stamp(config: TrainingConfig) -> dict[str, Any]:
    """An expert's stamp: every training setting that changes its weights (the settings by
    name, ``config.model_dump()``), with the starting model (``model_source``, ``init_from``)
    and the manifests (``train_csv``, ``valid_csv``) by fingerprint."""
    stamp = {
        key: value
        for key, value in config.model_dump().items()
        if key not in TRAINING_KEYS_NOT_IN_STAMP
        and isinstance(value, (int, float, str, bool, list, tuple, dict, type(None)))
    }
    stamp.update(
        model_source=model_fingerprint(config.model_source or None),
        init_from=model_fingerprint(config.init_from or None),
        train_csv=file_fingerprint(config.train_csv),
        valid_csv=file_fingerprint(config.valid_csv),
    )
    return _canonical(stamp)


def merge_stamp(
    members: list[str],
    original: str | None,
    method: str,
    include_original: bool,
    options: Mapping[str, Any] | None,
    weights: Any,
    weight_rules: Any,
    seed: int,
    data: Mapping[str, str] | None = None,
    statistics_utterances: int | None = None,
) -> dict[str, Any]:
    """A merge's stamp: its members and original by fingerprint (in merge order), the method,
    its options as given, the weights, and the manifests a data-aware method reads (``data``:
    {name: manifest}, by fingerprint; None for the other methods, which
    :func:`aode.merge.inputs.reads_data` tells apart)."""
    stamp = {
        "members": [model_fingerprint(m) for m in members],
        "original": model_fingerprint(original),
        "include_original": bool(include_original),
        "method": method,
        "options": dict(options or {}),
        "weights": weights,
        "weight_rules": weight_rules,
        "seed": seed,
    }
    if data:
        stamp["data"] = {name: file_fingerprint(path) for name, path in data.items()}
        stamp["statistics_utterances"] = statistics_utterances
    return _canonical(stamp)


def statistics_stamp(kind: str, model: str, manifest: str, n_utterances: int, batch_size: int, seed: int) -> dict:
    """A statistics file's stamp (Fisher, Gram): the model and the manifest by fingerprint and
    the sampling that chose its utterances."""
    return _canonical(
        {
            "kind": kind,
            "model": model_fingerprint(model),
            "manifest": file_fingerprint(manifest),
            "n_utterances": n_utterances,
            "batch_size": batch_size,
            "seed": seed,
        }
    )


TRAINING_STAMP_FILE = "made_from.json"  # in a training output folder, written before the first step


def claim_training_folder(output: str, stamp: Mapping[str, Any], overwrite: bool, expert_dir: str = "expert") -> None:
    """Make ``output`` a training folder of the run stamped ``stamp``: a folder left by the same
    run (finished, or checkpointed and interrupted) is resumed as it is; one left by a run with
    other settings or data is refused (:class:`StaleOutputError`), or with ``overwrite`` its
    checkpoints, expert and log are deleted first. The stamp is then written in the folder."""
    import shutil

    path = os.path.join(output, TRAINING_STAMP_FILE)
    expert = os.path.join(output, expert_dir)
    save = os.path.join(output, "save")
    has_work = os.path.isdir(expert) or (os.path.isdir(save) and any(n.startswith("CKPT") for n in os.listdir(save)))
    if os.path.isfile(path) or has_work:
        recorded = None
        try:
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            recorded = recorded_stamp(expert) if os.path.isdir(expert) else None
        if has_work and not may_reuse("training run", output, recorded, stamp, overwrite):
            for stale in (save, expert):
                shutil.rmtree(stale, ignore_errors=True)
            if os.path.isfile(os.path.join(output, "train_log.txt")):
                os.remove(os.path.join(output, "train_log.txt"))
    atomic_write_json(path, _canonical(dict(stamp)), indent=1)
