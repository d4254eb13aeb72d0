"""The Fisher file: what :mod:`aode.fisher` writes and the ``fisher`` merge method reads.

One ``.safetensors`` file per model, by default ``fisher.safetensors`` inside the model
folder (:func:`fisher_path`). Its tensors are the diagonal Fishers, keyed like the tensors
of the folder's weights (``model.safetensors`` names: ``model.``-prefixed for Whisper
exports), each of the same shape, stored as float32, finite and non-negative; tensors
without a Fisher (buffers, frozen parameters) are absent. The header metadata is
``{"format": "pt", "content": "diagonal fisher"}``.
"""

import os

import torch

__all__ = ["FISHER_FILE", "FISHER_DTYPE", "FISHER_METADATA", "fisher_path", "save_fisher", "load_fisher"]

FISHER_FILE = "fisher.safetensors"
FISHER_DTYPE = torch.float32
FISHER_METADATA = {"format": "pt", "content": "diagonal fisher"}


def fisher_path(model_folder: str | os.PathLike) -> str:
    """Where a model folder's Fisher is written and read by default."""
    return os.path.join(os.fspath(model_folder), FISHER_FILE)


def _file(path: str | os.PathLike) -> str:
    """A Fisher file path, or a model folder's Fisher file."""
    path = os.fspath(path)
    return fisher_path(path) if os.path.isdir(path) else path


def save_fisher(path: str | os.PathLike, fisher_dict: dict[str, torch.Tensor]) -> str:
    """Write diagonal Fishers ``{tensor name: tensor}`` where Fisher merging looks for them.

    ``path`` is a ``.safetensors`` file or a model folder (then ``<folder>/fisher.safetensors``).
    Values are stored float32; they must be finite and non-negative. The file is written
    atomically. Returns its path.
    """
    from safetensors.torch import save_file

    from aode.atomic import atomic_path

    path = _file(path)
    out = {}
    for name, t in fisher_dict.items():
        t = t.detach().to("cpu", FISHER_DTYPE).contiguous()
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"Fisher of {name!r} has negative or non-finite values")
        out[name] = t
    with atomic_path(path) as tmp:
        save_file(out, tmp, metadata=dict(FISHER_METADATA))
    return path


def load_fisher(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``{tensor name: float32 tensor}`` of a Fisher file (or a model folder's)."""
    from safetensors.torch import load_file

    return load_file(_file(path))
