"""Per-member Gram matrices of every linear layer's inputs, for RegMean (:mod:`aode.merge.regmean`).

:func:`estimate_gram` runs one member over a seeded random subset of a manifest (its own
training manifest for an expert; general-domain data for the original when it joins the
merge) and accumulates, for every ``nn.Linear`` of the model, the Gram matrix of the
layer's inputs

    G = 1/n sum_t x_t x_t^T        (in_features x in_features)

over all ``n`` input rows ("frames") the layer saw: the encoder frames of every utterance
for encoder layers, the teacher-forced token positions for a decoder's. Forward hooks
accumulate ``x^T x`` batch by batch (float32 products, float64 sums) and drop the
activations at once: nothing but the accumulators is kept.

Why per frame: a raw Gram grows with the amount of audio, so in a merge the domain with the
longest utterances would dominate every layer (the prototype of issue 12 saw it); dividing
by the frame count makes each member's Gram a mean second moment, comparable between
members whatever their utterance lengths. Member weights then scale them (RegMean's ``w_i``).

Frames of a padded batch count the padding too (the rows a layer computes); utterances are
sorted by duration before batching, so a batch pads little, and ``batch_size=1`` counts no
padding at all.

The file
--------
``gram.safetensors`` in the member's folder (:func:`gram_path`), written atomically. Keys:
the Linear's weight tensor name as stored in the folder's weights (the model's
:meth:`~aode.models.ASRModel.stored_name`: ``model.``-prefixed for Whisper exports); values
float32 ``in x in``, symmetric. A weight tied to another module (shared between several
names) gets no Gram, nor does a Linear that never ran; RegMean averages those plainly. Metadata: ``content: gram``,
``normalisation: per frame``, ``utterances``, ``manifest``, ``seed`` and ``frames`` (JSON:
weight name -> frames seen).

Memory: one ``in x in`` float64 accumulator per Linear, i.e. 8 bytes x sum of in^2 over the
model's Linears (the model's activations are never stored). For whisper-small (d = 768,
FFN 3072, 12 + 12 layers): per encoder layer q, k, v, out, fc1 take 768-wide inputs and fc2
3072-wide (5 x 768^2 + 3072^2 = 12.4 M), per decoder layer 9 x 768^2 + 3072^2 = 14.7 M
(self- and cross-attention), in all 325.6 M entries: 2.6 GB of accumulators while
estimating, a 1.3 GB float32 file per member.

Command line::

    python -m aode.gram <model folder> <manifest> [--n_utterances 200 --batch_size 8 --device cpu]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import torch
from tqdm.auto import tqdm

from aode.member_statistics import statistics_main
from aode.member_statistics import stored_parameter_names

if TYPE_CHECKING:
    from aode.models import ASRModel

logger = logging.getLogger(__name__)

__all__ = ["GRAM_FILE", "GRAM_METADATA", "gram_path", "estimate_gram", "save_gram", "load_gram", "gram_command"]

GRAM_FILE = "gram.safetensors"
GRAM_METADATA = {"format": "pt", "content": "gram", "normalisation": "per frame"}


def gram_path(model_folder: str | os.PathLike) -> str:
    """Where a model folder's Gram file is written and read by default."""
    return os.path.join(os.fspath(model_folder), GRAM_FILE)


def gram_command(
    model_folder: str | os.PathLike, manifest: str = "<its training manifest>", out: str | os.PathLike | None = None
) -> str:
    """The command that writes ``model_folder``'s Gram file (to ``out``; for error messages)."""
    command = f"python -m aode.gram {model_folder} {manifest}"
    if out is not None and os.path.abspath(out) != os.path.abspath(gram_path(model_folder)):
        command += f" --out {out}"
    return command


def save_gram(
    path: str | os.PathLike, grams: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> str:
    """Write ``{weight name: in x in tensor}`` (float32, finite) atomically; ``path`` is a
    ``.safetensors`` file or a model folder. ``metadata``: more string entries for the header."""
    from safetensors.torch import save_file

    from aode.atomic import atomic_path

    path = os.fspath(path)
    if os.path.isdir(path):
        path = gram_path(path)
    out = {}
    for name, g in grams.items():
        g = g.detach().to("cpu", torch.float32).contiguous()
        if g.dim() != 2 or g.shape[0] != g.shape[1] or not torch.isfinite(g).all():
            raise ValueError(f"Gram of {name!r} is not a finite square matrix (shape {list(g.shape)})")
        out[name] = g
    meta = dict(GRAM_METADATA)
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(out, tmp, metadata=meta)
    return path


def load_gram(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``{weight name: float32 in x in}`` of a Gram file (or a model folder's)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    return load_file(gram_path(path) if os.path.isdir(path) else path)


def _linear_weights(asr: ASRModel, model_folder: str | os.PathLike) -> dict[str, str]:
    """``{module name: stored weight name}`` of the model's untied ``nn.Linear`` layers."""
    names = stored_parameter_names(asr, model_folder)  # hf parameter name -> stored tensor name
    hf = asr.hf_model
    owners = {}
    for pname, p in hf.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    linears = {}
    for mname, module in hf.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        pname = f"{mname}.weight" if mname else "weight"
        if len(owners.get(id(module.weight), [])) > 1:
            logger.info("%s: weight tied to %s: no Gram (plain average)", pname, owners[id(module.weight)])
        elif pname not in names:
            logger.warning("%s: no stored tensor for this Linear's weight: no Gram", pname)
        else:
            linears[mname] = names[pname]
    if not linears:
        raise ValueError(f"{model_folder}: no nn.Linear with a stored weight: nothing to estimate")
    return linears


class _GramHooks:
    """Forward pre-hooks that add ``x^T x`` of each Linear's input to a float64 accumulator."""

    def __init__(self, modules, device):
        self.sums, self.frames, self._handles = {}, {}, []
        for name, module in modules.items():
            self.sums[name] = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device=device)
            self.frames[name] = 0
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            self.sums[name].add_(x.T @ x)
            self.frames[name] += x.shape[0]

        return hook

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def estimate_gram(
    model_folder: str | os.PathLike,
    manifest: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    n_utterances: int = 200,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_duration: float | None = None,
    overwrite: bool = False,
) -> str:
    """Per-frame Gram matrices of every Linear's inputs of ``model_folder`` on ``manifest``.

    Args:
        model_folder: a model folder or hub id (:func:`aode.models.load_asr_model`).
        manifest: the member's training manifest (the original: general-domain data);
            ``n_utterances`` rows are drawn at random with ``seed`` (all when fewer).
        out_path: the ``.safetensors`` file to write; default ``<model_folder>/gram.safetensors``
            (where the ``regmean`` merge looks). If it exists nothing is computed (unless
            ``overwrite``).
        batch_size: utterances per forward pass (padding counts as frames; see the module
            docstring).
        device: where the model runs and the accumulators live (``cpu``, ``cuda:0``).
        max_duration: drop utterances longer than this many seconds (as in training).

    Returns the path of the Gram file.
    """

    from aode.data import subset_loader
    from aode.models import load_asr_model
    from aode.models import resolve_model_folder

    folder = resolve_model_folder(model_folder)
    out_path = os.fspath(out_path) if out_path is not None else gram_path(folder)
    if os.path.isfile(out_path) and not overwrite:
        logger.info("Gram file %s exists: nothing to do", out_path)
        return out_path
    if n_utterances < 1 or batch_size < 1:
        raise ValueError("n_utterances and batch_size must be positive")
    asr = load_asr_model(folder).to(device).eval()
    linears = _linear_weights(asr, folder)
    modules = dict(asr.hf_model.named_modules())
    loader, _ = subset_loader(manifest, asr, n_utterances, batch_size, seed, max_duration)
    hooks = _GramHooks({m: modules[m] for m in linears}, device)
    utterances = 0
    try:
        with torch.no_grad():
            for batch in tqdm(loader, disable=not progress, desc=f"Gram {os.path.basename(folder)}", unit="batch"):
                asr(*asr.batch_inputs(batch.to(device)))
                utterances += len(batch.id)
    finally:
        hooks.remove()
    grams, frames = {}, {}
    for mname, stored in linears.items():
        n = hooks.frames[mname]
        if n == 0:
            logger.warning("%s: %s never ran: no Gram (plain average)", folder, mname)
            continue
        g = hooks.sums.pop(mname) / n
        grams[stored] = ((g + g.T) / 2).float().cpu()
        frames[stored] = n
    metadata = {
        "utterances": utterances,
        "manifest": os.path.abspath(manifest),
        "seed": seed,
        "frames": json.dumps(frames, sort_keys=True),
    }
    save_gram(out_path, grams, metadata)
    logger.info("Grams of %d Linears of %s from %d utterances written to %s", len(grams), folder, utterances, out_path)
    return out_path


def main(argv: Sequence[str] | None = None) -> None:
    statistics_main(
        argv,
        estimate_gram,
        "python -m aode.gram",
        "Per-frame Gram matrices of every linear layer's inputs (for the regmean merge), "
        "written to <model folder>/gram.safetensors.",
        GRAM_FILE,
    )


if __name__ == "__main__":
    from aode.cli import run_main

    run_main(main)
