"""The streaming merge driver: AoDE (paper III-C) and the other merges, folder to folder.

:func:`merge_models` reads the members tensor by tensor (one tensor of every member at a
time; element-wise methods even get large tensors in slices), checks them, calls the merge
method (see :mod:`aode.merge.registry`) in float32 and writes each result, cast back to the
input dtype, straight into the output safetensors file. Peak memory is therefore about one
tensor per member (element-wise methods: a bounded slice), never a whole model per member.
"""

import contextlib
import datetime
import fnmatch
import hashlib
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from typing import Any

import torch
from tqdm.auto import tqdm

from aode.atomic import atomic_folder
from aode.model_card import write_model_card
from aode.model_folder import CONFIG_FILE
from aode.model_folder import copy_processor_files
from aode.model_folder import read_provenance
from aode.model_folder import write_provenance

from .checks import MergeError
from .checks import agreeing_non_float
from .checks import all_finite
from .checks import as_weights
from .checks import check_aligned
from .checks import check_configs
from .checks import check_member_count
from .checks import check_options
from .checks import check_tensors
from .checks import nonfinite_error
from .checks import option_defaults
from .checks import read_checked
from .read import open_model
from .registry import MethodSpec
from .registry import get_spec
from .write import SafetensorsWriter
from .write import safetensors_layout

logger = logging.getLogger(__name__)

__all__ = ["merge_models", "MergePlan", "MergeRun", "tensor_seed", "MergeError"]

RUNNING_STATISTICS = ("running_mean", "running_var")
PathLike = str | os.PathLike


def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of tensor ``name``: from the merge seed and the name only."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class MergePlan:
    """What a merge merges and how: :func:`merge_models`' arguments from ``members`` to
    ``seed``, checked when the plan is made, before any file is opened.

    After construction ``members`` and ``base`` are paths, ``spec`` is the method's
    :class:`~aode.merge.registry.MethodSpec`, ``weights`` a float32 tensor with one weight
    per input (the members, then the base with ``include_base``), ``weight_rules`` a list of
    ``(pattern, float32 tensor)`` and ``options`` a dict (the caller's, as given).
    """

    members: list
    method: str = "average"
    weights: Any = None
    base: str | None = None
    include_base: bool = False
    weight_rules: list | None = None
    options: dict | None = None
    seed: int = 0
    spec: MethodSpec = field(init=False)

    def __post_init__(self):
        self.spec = get_spec(self.method)
        self.members = [os.fspath(m) for m in self.members]
        if not self.members:
            raise ValueError("no members to merge")
        self.base = os.fspath(self.base) if self.base is not None else None
        if self.spec.needs_base and self.base is None:
            raise ValueError(f"merge method {self.method!r} needs the original model: pass base=<folder>")
        if self.include_base and self.base is None:
            raise ValueError("include_base=True needs base=<folder>")
        self.include_base = bool(self.include_base)
        check_member_count(self.spec, self.n_inputs)
        self.weights = as_weights(self.weights, self.n_inputs, "weights")
        self.weight_rules = [
            (pattern, as_weights(w, self.n_inputs, f"weight_rules[{pattern!r}]"))
            for pattern, w in (self.weight_rules or [])
        ]
        self.options = dict(self.options or {})
        self.spec.check_values(self.options)  # the values its registration checks, before any file is opened

    @property
    def n_inputs(self) -> int:
        return len(self.members) + (1 if self.include_base else 0)

    def weights_for(self, name: str) -> torch.Tensor:
        """The weights of tensor ``name``: the first matching rule's, else ``weights``."""
        for pattern, w in self.weight_rules:
            if fnmatch.fnmatchcase(name, pattern):
                return w
        return self.weights

    def provenance(self) -> dict:
        """The merged folder's ``aode.json``."""
        return {
            "kind": "merge",
            "method": self.method,
            "members": [os.path.abspath(m) for m in self.members],
            "weights": self.weights.tolist(),
            "weight_rules": [[p, w.tolist()] for p, w in self.weight_rules],
            "base": os.path.abspath(self.base) if self.base is not None else None,
            "include_base": self.include_base,
            "options": self.options,
            "option_defaults": option_defaults(self.spec.fn, self.options),
            "seed": self.seed,
            "member_provenance": [read_provenance(m) for m in self.members],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }


class _Inputs:
    """The opened sources of a plan, checked: ``inputs`` (members, then the base with
    include_base), ``base`` (or None), ``aligned`` per-member files and the method's
    ``options`` (after its setup hook). A context manager that closes them all."""

    def __init__(self, plan):
        self.plan = plan
        self.inputs, self.base, self.aligned, self.options = [], None, {}, dict(plan.options)
        self._opened = []

    def open(self):
        plan = self.plan
        for i, m in enumerate(plan.members):
            self.inputs.append(self._open(m, f"member {i} '{m}'"))
        if plan.base is not None:
            self.base = self._open(plan.base, f"base '{plan.base}'")
            if plan.include_base:
                self.inputs.append(self.base)
        checked = self.inputs + ([self.base] if self.base is not None and not plan.include_base else [])
        check_configs(checked)
        check_tensors(checked)
        spec = plan.spec
        if spec.setup is not None:
            self.options, self.aligned = spec.setup([s.path for s in self.inputs], self.options)
        check_options(spec, self.options, self.aligned)
        check_aligned(self.aligned, self.inputs[0])
        return self

    def _open(self, path, label):
        try:
            src = open_model(path, label=label)
        except OSError as err:  # a truncated or damaged weight file, a folder without weights
            raise MergeError(f"{label} cannot be read: {err}") from err
        self._opened.append(src)
        return src

    @property
    def base_used(self) -> bool:
        """Whether the method reads the base tensor (it uses one and one was given)."""
        return self.plan.spec.uses_base and self.base is not None

    @property
    def n_read(self) -> int:
        """How many sources a tensor is read from (members, base, aligned files)."""
        return (
            len(self.inputs)
            + (1 if self.base_used else 0)
            + sum(1 for srcs in self.aligned.values() if any(s is not None for s in srcs))
        )

    def __enter__(self):
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for src in self._opened:
            src.close()
        for srcs in self.aligned.values():
            for s in srcs:
                if s is not None:
                    s.close()


def _refuse_unknown(function: str, keywords: dict, settings: type) -> None:
    """The TypeError Python raises for a keyword ``function`` does not take (one not a field of
    the dataclass ``settings`` that its ``**keywords`` fill), before any other check."""
    names = {f.name for f in fields(settings)}
    unknown = [k for k in keywords if k not in names]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")


@contextlib.contextmanager
def _torch_threads(num_threads):
    saved = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True)
class MergeRun:
    """How :func:`merge_models` runs a merge, not what it merges (that is :class:`MergePlan`):
    its keyword arguments after ``seed``, checked when made.

    * ``progress``: show a tqdm bar over tensors.
    * ``overwrite``: replace an existing ``output``.
    * ``max_chunk_bytes``: read buffers hold at most this many bytes over all inputs and all
      pieces read ahead: element-wise methods get large tensors in slices of
      ``max_chunk_bytes / (inputs x (read_ahead + 1))`` bytes per input (the default keeps
      them within a CPU's last-level cache while they are merged); other methods get whole
      tensors (then memory is about one tensor per member, e.g. N x 160 MB for Whisper
      small's token embedding).
    * ``num_threads``: torch intra-op threads during the merge (restored afterwards); None
      keeps the current setting. The default 1 is deliberate: the work is thousands of small
      cache-sized slices, which gain nothing from threads, and on a busy machine OpenMP's
      per-op barriers made 2 threads 10x slower than 1 (bench/RESULTS.md, "Merge").
    * ``read_ahead``: pieces (slices or tensors) read ahead on a background thread while the
      current one is merged and written; 0 reads them in the calling thread. The result is
      the same either way (the same operations on the same values).
    * ``extra_provenance``: entries added to (or replacing) the merged folder's ``aode.json``
      (a whole-model method records what it learnt there).
    """

    progress: bool = True
    overwrite: bool = False
    max_chunk_bytes: int = 16 * 2**20
    num_threads: int | None = 1
    read_ahead: int = 2
    extra_provenance: dict | None = None

    def __post_init__(self):
        if not isinstance(self.read_ahead, int) or self.read_ahead < 0:
            raise ValueError(f"read_ahead must be a non-negative integer (pieces read ahead), got {self.read_ahead!r}")

    def keywords(self, **provenance: Any) -> dict:
        """This run as :func:`merge_models` keywords, ``provenance`` added to its
        ``extra_provenance``: how a whole-model method runs the merge it ends with."""
        keywords = {f.name: getattr(self, f.name) for f in fields(self)}
        keywords["extra_provenance"] = {**(self.extra_provenance or {}), **provenance}
        return keywords


def merge_models(
    members: Sequence[PathLike],
    output: PathLike,
    method: str = "average",
    weights: Sequence[float] | None = None,
    base: PathLike | None = None,
    include_base: bool = False,
    weight_rules: Sequence[tuple[str, Sequence[float]]] | None = None,
    options: dict | None = None,
    seed: int = 0,
    **run: Any,
) -> str:
    """Merge model folders into the model folder ``output`` (AoDE, paper III-C).

    The arguments from ``members`` to ``seed`` say what to merge (checked and grouped by
    :class:`MergePlan`); the keywords ``run`` how to run it (:class:`MergeRun`).

    Args:
        members: model folders (or peft LoRA adapter folders, folded on the fly).
        output: the merged model folder; written to a temporary folder beside it and
            renamed at the end (:func:`aode.atomic.atomic_folder`). An existing ``output``
            is refused unless ``overwrite``.
        method: a registered method name (:func:`aode.merge.available_methods`).
        weights: one per member (the base last with ``include_base``); default all 1.
            Whether they are normalised is the method's convention (``average`` divides by
            their sum, so [4, 1, 1, 1, 1] is the paper's 4/8 + 4 x 1/8).
        base: the original model folder; needed by task-vector methods, and the source of
            config.json and the processor files when given.
        include_base: also use the base as the last member ("AoDE with orig.").
        weight_rules: ``[(fnmatch pattern over tensor names, weights), ...]``; the first
            pattern matching a tensor gives its weights, else ``weights``.
        options: the method's keyword options (e.g. ``{"density": 0.2, "lam": 1.0}``).
        seed: seeds each tensor's generator together with the tensor name.
        run: the keywords of :class:`MergeRun`: ``progress``, ``overwrite``,
            ``max_chunk_bytes``, ``num_threads``, ``read_ahead``, ``extra_provenance``.

    Returns the output folder path.
    """
    _refuse_unknown("merge_models", run, MergeRun)
    plan = MergePlan(members, method, weights, base, include_base, weight_rules, options, seed)
    how = MergeRun(**run)
    if plan.spec.whole_model:
        return plan.spec.fn(plan, output, how)
    output = os.path.abspath(os.fspath(output))
    start_time = time.time()
    # The members are opened and checked first: a merge they refuse leaves no output folder behind.
    with (
        _torch_threads(how.num_threads),
        _Inputs(plan) as sources,
        atomic_folder(output, overwrite=how.overwrite) as tmp,
    ):
        _write_weights(plan, sources, os.path.join(tmp, "model.safetensors"), how)
        _write_folder_files(tmp, sources)
        write_provenance(tmp, {**plan.provenance(), **(how.extra_provenance or {})})
        write_model_card(tmp)  # README.md from aode.json, before the rename
    logger.info("merged %s in %.1f s", output, time.time() - start_time)
    return output


def _write_weights(plan, sources, path, how):
    inputs = sources.inputs
    entries = safetensors_layout([(n, i.dtype, tuple(i.shape)) for n, i in inputs[0].infos.items()])
    logger.info(
        "merging %d members with %r into %s (%d tensors)",
        plan.n_inputs,
        plan.spec.name,
        os.path.dirname(path),
        len(entries),
    )
    # max_chunk_bytes bounds every read buffer together: read_ahead + 1 sets, one buffer
    # per source in each.
    slot_bytes = max(4096, how.max_chunk_bytes // (sources.n_read * (how.read_ahead + 1)))
    pieces = list(_pieces(entries, plan, sources, slot_bytes))
    writer = SafetensorsWriter(path, entries, metadata={"format": "pt"})
    bar = tqdm(total=len(entries), disable=not how.progress, unit="tensor", desc=f"merge ({plan.spec.name})")
    reads = _ReadAhead(
        pieces, lambda piece, scratch: _read_piece(piece, plan, sources, scratch), how.read_ahead, slot_bytes
    )
    try:
        with bar, reads:
            for piece, read in reads:
                writer.write(piece.name, _merge_piece(piece, read, plan, sources))
                bar.update(piece.last)
    except BaseException:
        writer.abort()
        raise
    writer.close()


class _Scratch:
    """Reusable read buffers (one per input slot, ``size`` bytes each), so that reading a
    slice copies into memory that is already mapped and, for small slices, still cached."""

    def __init__(self, size):
        self.size = size
        self._buffers = {}

    def get(self, slot, nbytes):
        if nbytes > self.size:
            return None
        buf = self._buffers.get(slot)
        if buf is None:
            buf = self._buffers[slot] = torch.empty(self.size, dtype=torch.uint8)
        return buf


@dataclass(frozen=True)
class _Piece:
    """What one write of the output holds: tensor ``name`` whole (``start`` None) or
    elements [start, stop) of it, flattened; ``nbytes`` read per source; ``last``: whether
    it ends the tensor."""

    name: str
    dtype: torch.dtype
    shape: tuple
    start: int | None
    stop: int | None
    nbytes: int
    last: bool


def _method_for(name, plan, sources):
    """The method spec, options and aligned files that merge tensor ``name``."""
    if name.endswith(RUNNING_STATISTICS) and plan.spec.name != "average":
        # BatchNorm statistics are no task vector: trimming, dropping or scaling their deltas
        # can make a variance negative (the model then decodes nothing); average them
        return get_spec("average"), {}, {}
    return plan.spec, sources.options, sources.aligned


def _pieces(entries, plan, sources, slot_bytes):
    """The output's pieces in write order: whole tensors, or consecutive slices of at most
    ``slot_bytes`` per source (float32) for element-wise methods."""
    step = max(1, slot_bytes // 4)
    for name, dtype, shape in entries:
        numel = math.prod(shape)
        itemsize = dtype.itemsize
        if dtype.is_floating_point and _method_for(name, plan, sources)[0].elementwise and numel > step:
            for start in range(0, numel, step):
                stop = min(start + step, numel)
                yield _Piece(name, dtype, shape, start, stop, (stop - start) * itemsize, stop == numel)
        else:
            yield _Piece(name, dtype, shape, None, None, numel * itemsize, True)


def _read_piece(piece, plan, sources, scratch):
    """The inputs of ``piece`` (in ``scratch``'s buffers where they fit): a non-float
    tensor to copy, or ``(tensors, base, aligned extras)`` for the method."""
    name, start, stop, nbytes = piece.name, piece.start, piece.stop, piece.nbytes
    inputs = sources.inputs
    if not piece.dtype.is_floating_point:
        # Integer / bool tensors (buffers: index tables) are copied from the first member.
        return agreeing_non_float(name, inputs)
    spec, _, aligned = _method_for(name, plan, sources)
    # Methods whose output is non-finite wherever an input is get their inputs checked
    # through the output (_merge_piece); the others input by input.
    check = not spec.propagates_nonfinite
    tensors = [read_checked(src, name, start, stop, scratch.get(i, nbytes), check) for i, src in enumerate(inputs)]
    base_t = None
    if spec.uses_base and sources.base is not None:
        base_t = read_checked(sources.base, name, start, stop, scratch.get("base", nbytes), check)
    extra = {}
    for kw, srcs in aligned.items():
        extra[kw] = [
            s.read(name, start, stop, scratch.get((kw, i), nbytes)).float() if s is not None and name in s else None
            for i, s in enumerate(srcs)
        ]
    return tensors, base_t, extra


def _merge_piece(piece, read, plan, sources):
    """The merged ``piece`` in its dtype, from its inputs ``read`` (:func:`_read_piece`)."""
    name, shape, start, stop = piece.name, piece.shape, piece.start, piece.stop
    if not piece.dtype.is_floating_point:
        return read.to(piece.dtype)
    tensors, base_t, extra = read
    spec, options, _ = _method_for(name, plan, sources)
    generator = torch.Generator().manual_seed(tensor_seed(plan.seed, name))
    out = spec.fn(tensors, plan.weights_for(name), base_t, generator, **options, **extra)
    del tensors, extra
    if tuple(out.shape) != tuple(shape if start is None else (stop - start,)):
        raise MergeError(
            f"method {spec.name!r} returned shape {list(out.shape)} for tensor {name!r} of shape {list(shape)}"
        )
    if not all_finite(out):
        suspects = sources.inputs + ([sources.base] if base_t is not None else [])
        for src in suspects:  # name the member that brought the NaN / inf
            if not all_finite(src.read(name, start, stop).float()):
                raise nonfinite_error(src, name)
        raise MergeError(f"method {spec.name!r} produced non-finite values for tensor {name!r}")
    return out.to(piece.dtype)


_DONE = object()


class _ReadAhead:
    """Iterates ``(piece, read(piece, scratch))`` in order, reading up to ``depth`` pieces
    ahead on a background thread while the current one is merged and written, so the read
    (a copy out of the page cache, or the disk) overlaps the method and the write instead of
    adding to them (bench/RESULTS.md, "Merge"). ``depth`` 0 reads in the caller's thread.

    ``depth + 1`` buffer sets (:class:`_Scratch` of ``slot_bytes`` per source) rotate
    between the threads; a set comes back when the caller asks for the next piece (the
    previous one is written by then). A piece too large for a set (a whole tensor of a
    method that is not element-wise) is read only once every set is back, so at most one
    such piece is in memory at a time, as without read-ahead. An error of the reading
    thread is raised in the caller's at the piece where it happened. A context manager:
    leaving it stops the reading thread.
    """

    def __init__(self, pieces, read, depth, slot_bytes):
        self._pieces, self._read, self._depth = pieces, read, depth
        self._slot_bytes = slot_bytes
        self._sets = queue.Queue()
        for _ in range(depth + 1):
            self._sets.put(_Scratch(slot_bytes))
        self._ready = queue.Queue()
        self._stop = threading.Event()
        self._thread = None

    def _sets_for(self, piece):
        return 1 if piece.nbytes <= self._slot_bytes else self._depth + 1

    def __iter__(self):
        if self._depth == 0:
            scratch = self._sets.get()
            for piece in self._pieces:
                yield piece, self._read(piece, scratch)
            return
        self._thread = threading.Thread(target=self._run, name="aode-merge-read-ahead", daemon=True)
        self._thread.start()
        while (item := self._ready.get()) is not _DONE:
            piece, read, held, error = item
            if error is not None:
                raise error
            yield piece, read
            del read
            for scratch in held:
                self._sets.put(scratch)

    def _run(self):
        try:
            for piece in self._pieces:
                held = [self._sets.get() for _ in range(self._sets_for(piece))]
                if self._stop.is_set():
                    return
                try:
                    self._ready.put((piece, self._read(piece, held[0]), held, None))
                except BaseException as error:  # raised in the caller's thread, in order
                    self._ready.put((piece, None, held, error))
                    return
        finally:
            self._ready.put(_DONE)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            for _ in range(self._depth + 1):  # wake the thread if it waits for a set
                self._sets.put(None)
            self._thread.join()


def _write_folder_files(folder, sources):
    """config.json and the processor files, from the base when given, else member 0."""
    src = sources.base if sources.base is not None else sources.inputs[0]
    config = os.path.join(src.model_folder, CONFIG_FILE)
    if os.path.isfile(config):
        shutil.copy2(config, os.path.join(folder, CONFIG_FILE))
    else:
        logger.warning("%s has no config.json; the merged folder has none either", src.label)
    copied = copy_processor_files(src.model_folder, folder)
    if src.path != src.model_folder:  # a LoRA adapter folder may carry its own processor
        copied += copy_processor_files(src.path, folder)
    logger.info("copied %s from %s", sorted(set(copied)) or "no processor files", src.label)
