"""What the per-member statistics estimators share (:mod:`aode.fisher`, :mod:`aode.gram`): the
model's parameters named as its folder stores them, and their command line.

Both estimators run a member on its own data and write one tensor per stored weight, keyed by
the weight's name in the folder (``model.safetensors``), so a merge reads them beside the
weights. Which name a parameter is stored under is the model's to say
(:meth:`aode.models.ASRModel.stored_name`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from aode.models import ASRModel

logger = logging.getLogger(__name__)

__all__ = ["tensor_names", "stored_parameter_names", "statistics_main"]


def tensor_names(model_folder: str | os.PathLike) -> set[str]:
    """The tensor names of a model folder's weights (every shard; no tensor is read)."""
    from aode.merge.read import open_model

    src = open_model(os.fspath(model_folder))
    try:
        return set(src.infos)
    finally:
        src.close()


def stored_parameter_names(asr: ASRModel, model_folder: str | os.PathLike) -> dict[str, str]:
    """``{hf_model parameter name: its tensor name in the folder's weights}``
    (:meth:`aode.models.ASRModel.stored_names`), frozen parameters included (Whisper's fixed
    sinusoidal positions: a merge needs a statistic per stored tensor). Parameters the folder
    lacks are logged and left out; none at all is a ValueError."""
    names = [name for name, _ in asr.hf_model.named_parameters()]
    mapping = asr.stored_names(tensor_names(model_folder), names)
    unmatched = [name for name in names if name not in mapping]
    if unmatched:
        logger.warning(
            "%s: %d parameters have no tensor in the saved weights and get no statistics (first: %s)",
            model_folder,
            len(unmatched),
            unmatched[0],
        )
    if not mapping:
        raise ValueError(f"{model_folder}: no parameter matches a tensor of its saved weights")
    return mapping


def statistics_main(
    argv: Sequence[str] | None,
    estimator: Callable[..., Any],
    prog: str,
    description: str,
    default_file: str,
    extra: Sequence[tuple[str, dict[str, Any]]] = (),
) -> None:
    """The command line of a per-member statistics estimator (``aode.gram``, ``aode.fisher``):
    ``<model folder> <manifest>`` and the sampling options they share; ``extra``: more
    ``(flag, argparse kwargs)`` passed through to ``estimator`` by name."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("model_folder", help="the member: an expert folder, or the original (folder or hub id)")
    parser.add_argument("manifest", help="its training manifest (the original: general-domain data)")
    parser.add_argument("--n_utterances", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_duration", type=float, default=None, help="skip longer utterances (seconds)")
    parser.add_argument("--out", default=None, help=f"the file to write (default <model folder>/{default_file})")
    parser.add_argument("--overwrite", action="store_true", help="recompute an existing file")
    parser.add_argument("--no_progress", action="store_true")
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from aode.models import resolve_model_folder

    out = args.pop("out") or os.path.join(resolve_model_folder(args["model_folder"]), default_file)
    progress = not args.pop("no_progress")
    estimator(args.pop("model_folder"), args.pop("manifest"), out_path=out, progress=progress, **args)
    print(f"written to {out}")
