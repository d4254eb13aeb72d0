"""What a training run needs on disk, besides the model, the optimizer, the STLR scheduler and the
epoch counter, so that a run killed and rerun with the same command exports the bytes of a run
that was never interrupted (on the same machine and thread count).

* :class:`GlobalRNG`: the global random states (torch CPU and CUDA, Python ``random``, NumPy)
  that dropout, LoRA dropout, layerdrop and SpecAugment-style masking draw from; per process.
* :class:`SeededRandomSampler`: the ``steps_per_epoch`` sampler, one seeded stream across the
  epochs as before, with the generator state at the start of the epoch in progress and at its end.
* :class:`AtomicCheckpointer`: SpeechBrain's ``Checkpointer`` whose checkpoint exists only once
  complete (its ``CKPT.yaml`` written last, atomically), so a ``kill -9`` during a save leaves no
  checkpoint that the rerun would trust and fail to load.

SpeechBrain's ``SaveableDataLoader`` (the train loader ``Brain.fit`` builds, registered as
``dataloader-TRAIN``) saves how many batches of the epoch were drawn; on a mid-epoch recovery it
fast-forwards the sampler by that many batches, and the Brain saves its step counters.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import shutil
import time
from typing import Any

import numpy as np
import speechbrain as sb
import torch
import yaml
from speechbrain.utils.checkpoints import CKPT_PREFIX
from speechbrain.utils.checkpoints import METAFNAME
from speechbrain.utils.checkpoints import mark_as_loader
from speechbrain.utils.checkpoints import mark_as_saver
from speechbrain.utils.checkpoints import register_checkpoint_hooks
from speechbrain.utils.distributed import ddp_barrier
from speechbrain.utils.distributed import if_main_process

from aode.atomic import atomic_open

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """This process's global random states, as tensors and plain Python values
    (``torch.load(..., weights_only=True)`` reads them back)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set this process's global random states to ``state`` (from :func:`capture_rng_state`)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint has CUDA random states for %d devices, this process sees %d: not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


class GlobalRNG:
    """Checkpointable global random states of every process (rank 0's file is the recoverable's
    own, rank ``r``'s is ``rng-rank<r>.ckpt`` beside it).

    A state saved at the end of an epoch is restored at once. A mid-epoch one is held until
    :meth:`restore_pending`, which the Brain calls once the train loader's iterator exists (at
    the first batch, or at the end of the train stage if no batch was left): creating that
    iterator draws a number from torch's global generator (the loader's base seed), which the
    uninterrupted run drew at the start of the epoch, before the state was saved.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    @staticmethod
    def _path(path: str | os.PathLike) -> pathlib.Path:
        rank = int(os.environ.get("RANK", 0))
        path = pathlib.Path(path)
        return path if rank == 0 else path.with_name(f"{path.stem}-rank{rank}{path.suffix}")

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        torch.save(capture_rng_state(), self._path(path))

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = True) -> None:
        own = self._path(path)
        if not own.exists():
            logger.warning("no random state of this process in %s: rank 0's is used", own.parent)
            own = pathlib.Path(path)
        state = torch.load(own, weights_only=True)
        if end_of_epoch:
            restore_rng_state(state)
            self.pending = None
        else:
            self.pending = state

    def restore_pending(self) -> None:
        """Restore the state a mid-epoch checkpoint held back (no-op when there is none)."""
        if self.pending is not None:
            restore_rng_state(self.pending)
            self.pending = None


# Every process saves its own state (the hook does not run on rank 0 only).
register_checkpoint_hooks(GlobalRNG, save_on_main_only=False)


@register_checkpoint_hooks
class SeededRandomSampler(torch.utils.data.RandomSampler):
    """``num_samples`` indices per epoch, without replacement within a pass over the data, from
    one generator seeded with ``seed``: each epoch continues the stream of the last (the orders
    of an uninterrupted run are those of ``RandomSampler(..., generator=manual_seed(seed))``).

    Checkpointable: an end-of-epoch checkpoint restores the generator as the epoch left it, a
    mid-epoch one as the epoch in progress found it, so that epoch's order is drawn again and
    SpeechBrain's ``SaveableDataLoader`` skips the batches already trained on.
    """

    def __init__(self, data_source, num_samples: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        super().__init__(data_source, replacement=False, num_samples=num_samples, generator=generator)
        self.epoch_start_state = generator.get_state()

    def __iter__(self):
        self.epoch_start_state = self.generator.get_state()
        yield from super().__iter__()

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        torch.save({"epoch_start": self.epoch_start_state, "end": self.generator.get_state()}, path)

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = True) -> None:
        state = torch.load(path, weights_only=True)
        self.generator.set_state(state["end"] if end_of_epoch else state["epoch_start"])


class AtomicCheckpointer(sb.utils.checkpoints.Checkpointer):
    """SpeechBrain's ``Checkpointer``, but a checkpoint folder becomes one (SpeechBrain lists a
    ``CKPT+...`` folder once its ``CKPT.yaml`` exists) only when every process has written its
    files: the meta file is written last, under a temporary name renamed into place. SpeechBrain
    writes it first, so a kill during a save left a checkpoint with a missing or truncated file
    that the rerun picked as the most recent and failed to load. Folders a kill left without
    their meta file are removed at the next save.
    """

    _meta_to_write: tuple[pathlib.Path, dict[str, Any]] | None = None

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):  # noqa: B006 (SpeechBrain's signature)
        meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch}
        meta.update(meta_to_include)
        self._meta_to_write = (pathlib.Path(fpath), meta)
        return meta

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006
        if if_main_process():
            self.remove_incomplete()
        checkpoint = super().save_checkpoint(meta=meta, end_of_epoch=end_of_epoch, name=name, verbosity=verbosity)
        ddp_barrier()  # every process's files are on disk
        if self._meta_to_write is not None:  # the main process
            fpath, saved = self._meta_to_write
            self._meta_to_write = None
            with atomic_open(fpath) as f:
                f.write("# yamllint disable\n")
                f.write(yaml.dump(saved))
        # every process lists the new checkpoint from here on: SpeechBrain's delete_checkpoints,
        # which follows, makes one collective call per deletion and would hang on different lists
        ddp_barrier()
        return checkpoint

    def remove_incomplete(self) -> list[pathlib.Path]:
        """Remove the ``CKPT+...`` folders without a meta file (a save that was killed)."""
        removed = []
        if self.checkpoints_dir.is_dir():
            for folder in self.checkpoints_dir.iterdir():
                if folder.is_dir() and folder.name.startswith(CKPT_PREFIX) and not (folder / METAFNAME).exists():
                    logger.info("removing %s, a checkpoint whose save did not finish", folder)
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed
