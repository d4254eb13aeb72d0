"""Which model a model folder was fine-tuned or merged from, as its ``aode.json`` records it.

Averaging experts only makes sense around the model they all started from: merged with another
"original", a merge silently mixes two unrelated weight sets. :func:`check_original` compares
the original a merge is given with each member's recorded base.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from aode.config import ConfigError
from aode.model_folder import read_provenance
from aode.reuse import STAMP_KEY
from aode.reuse import model_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["ForeignOriginalError", "recorded_base", "check_original"]


class ForeignOriginalError(ConfigError):
    """The original given to a merge is not the base model its members were made from."""


def recorded_base(folder: str | os.PathLike) -> tuple[str | None, str | None]:
    """(fingerprint, name as recorded) of the base model ``folder`` was made from: an expert's
    ``model_source``, a merge's original; (None, None) when its aode.json does not say."""
    info = read_provenance(folder) or {}
    if info.get("kind") == "expert":
        name = info.get("base_model")
        fingerprint = info.get("base_model_fingerprint")
    elif info.get("kind") == "merge":
        name = info.get("base")
        fingerprint = (info.get(STAMP_KEY) or {}).get("original")
    else:
        return None, None
    if fingerprint is None and name:
        fingerprint = model_fingerprint(name)  # recorded before fingerprints were kept
        if fingerprint.startswith("id:"):
            fingerprint = None  # a name that no longer resolves: unknown, not different
    return fingerprint, name


def check_original(original: str, members: Mapping[str, str], allow_foreign: bool = False) -> None:
    """Raise :class:`ForeignOriginalError` when ``original`` is not the recorded base of a member
    (``{name: folder}``) unless ``allow_foreign``; members that record no base are logged."""
    expected = model_fingerprint(original)
    unknown = []
    for name, folder in members.items():
        fingerprint, base = recorded_base(folder)
        if fingerprint is None:
            unknown.append(name)
        elif fingerprint != expected:
            message = (
                f"the original {original!r} is not the model that member {name!r} ({folder}) was made from: "
                f"its aode.json records {base!r}"
            )
            if not allow_foreign:
                raise ForeignOriginalError(
                    f"{message}; merge with that model as original, or pass --allow_foreign_original True"
                )
            logger.warning("%s (allowed by allow_foreign_original)", message)
    if unknown:
        logger.info("members %s record no base model: the original cannot be checked against them", unknown)
