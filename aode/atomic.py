"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Every output that a later run trusts because it exists (manifests, cached WERs, Fishers,
experts, merges, search and corpus records) is written under a temporary name in the same
folder and renamed at the end, so an interrupted run never leaves a half output behind.

One temporary-name scheme for the whole project: ``.<stem>.tmp-<pid>-<random><ext>`` beside
the final path (hidden, so globs skip it; the extension kept, so writers that infer the
format from it still work; the process id says who left it). On an exception the temporary
file or folder is removed and nothing is renamed; a process killed outright (SIGKILL) can
leave one behind, which no reader takes for an output.
"""

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import IO
from typing import Any

__all__ = ["temp_path", "atomic_path", "atomic_open", "atomic_write_json", "atomic_folder"]


def temp_path(path: str | os.PathLike) -> str:
    """A fresh temporary name beside ``path``: ``<folder>/.<stem>.tmp-<pid>-<random><ext>``."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; rename it to ``path`` on success.

    The body writes the temporary path (any writer: ``open``, ``save_file``, ``savefig``);
    an existing ``path`` is replaced. On an exception the temporary file is removed and
    ``path`` is left as it was. The parent folder is created when missing.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", **kwargs: Any
) -> Iterator[IO]:
    """``open`` for writing, atomically: the file appears under ``path`` when the block ends
    without an exception (``kwargs`` go to :func:`open`, e.g. ``newline=""`` for csv)."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding, **kwargs) as f:
        yield f


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump(obj)`` into ``path`` atomically (``dump_kwargs``: ``indent``, ...)."""
    with atomic_open(path) as f:
        json.dump(obj, f, **dump_kwargs)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield an empty temporary folder beside ``path``; rename it to ``path`` on success.

    An existing ``path`` is refused (FileExistsError, before the body runs and again at the
    rename if one appeared meanwhile) unless ``overwrite``; then it is moved aside, the new
    folder renamed in and the old one deleted, so ``path`` is missing only between two
    renames. On an exception the temporary folder is deleted and ``path`` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_path(path)
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path} appeared while it was being written")
            old = temp_path(path)
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
