"""Diagonal Fisher estimation for Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022).

:func:`estimate_fisher` computes, for one expert, the diagonal empirical Fisher of its own
training loss on a seeded random subset of its own training manifest, and writes it where
the ``fisher`` merge method (:mod:`aode.merge.fisher`) looks for it by default:
``<model folder>/fisher.safetensors``, keyed like the folder's ``model.safetensors``.

The estimator
-------------
The exact empirical Fisher is the mean over utterances of the squared per-utterance
gradient, ``F = 1/N sum_i g_i**2`` (``per_utterance=True``: batches of one utterance).
Per-utterance backward passes are slow on CPU, so by default it is estimated per
mini-batch: with ``g_b`` the gradient of the batch's (mean) loss over ``B`` utterances,

    F ~= 1/N sum_b B * (B * g_b**2)

``B * g_b**2`` estimates the batch's mean ``g_i**2`` when the per-utterance gradients are
uncorrelated around a negligible mean gradient (E[g_b**2] = E[g_i**2] / B), which is the
case for an expert at the end of fine-tuning on the very data it was trained on; each batch
counts for its ``B`` utterances. This keeps batched and per-utterance Fishers on the same
scale, which matters when members' Fishers are compared in one merge. Where the mean
gradient is not negligible the batched estimate overstates ``F`` (up to ``B`` times), the
same for every member estimated with the same settings.

The model is in eval mode (no dropout, BatchNorm on its running statistics) with gradients
on. Only trainable parameters get a Fisher; buffers (BatchNorm statistics) have none, so the
``fisher`` merge falls back to the plain weighted average for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from aode.fisher_file import fisher_path
from aode.fisher_file import load_fisher
from aode.fisher_file import save_fisher
from aode.member_statistics import statistics_main
from aode.member_statistics import stored_parameter_names

if TYPE_CHECKING:
    from speechbrain.dataio.batch import PaddedBatch

    from aode.models import ASRModel

logger = logging.getLogger(__name__)

# The file format (name, keys, dtype) is aode.fisher_file's; its reader and path are
# re-exported here for the estimator's users.
__all__ = ["estimate_fisher", "load_fisher", "fisher_path"]


def _batch_loss(asr: ASRModel, batch: PaddedBatch, device: str | torch.device) -> torch.Tensor:
    return asr.batch_loss(batch.to(device))


def estimate_fisher(
    model_folder: str | os.PathLike,
    manifest: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    n_utterances: int = 200,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    per_utterance: bool = False,
    max_duration: float | None = None,
    overwrite: bool = False,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``model_folder``'s training loss on its own data.

    Args:
        model_folder: a transformers model folder (an AoDE expert, :func:`aode.models.load_asr_model`).
        manifest: the expert's training manifest (AoDE CSV); ``n_utterances`` rows are drawn
            from it at random with ``seed``.
        out_path: the ``.safetensors`` file to write; default ``<model_folder>/fisher.safetensors``
            (where the ``fisher`` merge method looks). If it exists it is loaded and returned
            without any computation (unless ``overwrite``).
        batch_size: utterances per backward pass (the mini-batch estimator, module docstring).
        per_utterance: batches of one utterance: the exact per-utterance empirical Fisher.
        max_duration: drop utterances longer than this many seconds (as in training).

    Returns ``{tensor name: float32 tensor}``, named as in the folder's ``model.safetensors``
    (each parameter of ``asr.hf_model`` under the model's
    :meth:`~aode.models.ASRModel.stored_name`: ``model.``-prefixed for Whisper exports).
    """

    from aode.data import subset_loader
    from aode.models import load_asr_model

    model_folder = os.fspath(model_folder)
    out_path = os.fspath(out_path) if out_path is not None else fisher_path(model_folder)
    if os.path.isfile(out_path) and not overwrite:
        logger.info("Fisher %s exists: loading it", out_path)
        return load_fisher(out_path)
    if per_utterance:
        batch_size = 1
    if n_utterances < 1 or batch_size < 1:
        raise ValueError("n_utterances and batch_size must be positive")

    asr = load_asr_model(model_folder).to(device).eval()
    names = stored_parameter_names(asr, model_folder)  # hf_model name -> stored name
    params = dict(asr.hf_model.named_parameters())
    for p in asr.parameters():
        p.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)

    loader, _ = subset_loader(manifest, asr, n_utterances, batch_size, seed, max_duration)
    sums = {name: torch.zeros_like(params[name], dtype=torch.float32) for name in names}
    counted = skipped = 0
    torch.manual_seed(seed)
    for batch in tqdm(loader, disable=not progress, desc=f"Fisher {os.path.basename(model_folder)}", unit="batch"):
        n = len(batch.id)
        asr.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = _batch_loss(asr, batch, device)
            if not torch.isfinite(loss):
                logger.warning("non-finite loss on %s: batch skipped", batch.id)
                skipped += n
                continue
            loss.backward()
        scale = float(n * n)  # n * (n * g_b**2): n utterances, each ~ n * g_b**2
        for name in names:
            grad = params[name].grad
            if grad is not None:
                sums[name].add_(grad.detach().float().pow(2), alpha=scale)
        counted += n
    asr.zero_grad(set_to_none=True)
    if counted == 0:
        raise RuntimeError(f"Fisher of {model_folder}: no utterance gave a finite loss")
    if skipped:
        logger.warning("Fisher of %s: %d utterances skipped (non-finite loss)", model_folder, skipped)
    fisher = {names[name]: (s / counted).cpu() for name, s in sums.items()}
    save_fisher(out_path, fisher)  # atomic; creates the folder
    logger.info("Fisher of %s from %d utterances written to %s", model_folder, counted, out_path)
    return fisher


def main(argv: Sequence[str] | None = None) -> None:
    from aode.fisher_file import FISHER_FILE

    statistics_main(
        argv,
        estimate_fisher,
        "python -m aode.fisher",
        "Diagonal empirical Fisher of a member on its own data (for the fisher merge), "
        "written to <model folder>/fisher.safetensors.",
        FISHER_FILE,
        extra=[("--per_utterance", {"action": "store_true", "help": "exact per-utterance Fisher (slower)"})],
    )


if __name__ == "__main__":
    from aode.cli import run_main

    run_main(main)
