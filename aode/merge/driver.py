"""The streaming merge driver: AoDE (paper III-C) and the other merges, folder to folder.

:func:`merge_models` reads the members tensor by tensor (one tensor of every member at a
time; element-wise methods even get large tensors in slices), checks them, calls the merge
method (see :mod:`aode.merge.registry`) in float32 and writes each result, cast back to the
input dtype, straight into the output safetensors file. Peak memory is therefore about one
tensor per member (element-wise methods: a bounded slice), never a whole model per member.
"""

import datetime
import fnmatch
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import time

import torch
from tqdm.auto import tqdm

from aode.models import read_provenance
from .io import (SafetensorsWriter, copy_processor_files, open_model, safetensors_layout)
from .registry import get_spec

logger = logging.getLogger(__name__)

__all__ = ["merge_models", "tensor_seed", "MergeError"]

CONFIG_FIELDS = ("model_type", "vocab_size")
_FIXED_ARGS = 4  # tensors, weights, base, generator


class MergeError(ValueError):
    """Members that cannot be merged (mismatch, non-finite values, ...)."""


def tensor_seed(seed, name):
    """The generator seed of tensor ``name``: from the merge seed and the name only."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _as_weights(values, n, what):
    if values is None:
        return torch.ones(n, dtype=torch.float32)
    w = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if w.numel() != n:
        raise ValueError(f"{what}: {w.numel()} weights for {n} members"
                         " (with include_base the base is the last member)")
    if not torch.isfinite(w).all():
        raise ValueError(f"{what}: non-finite weight in {w.tolist()}")
    return w


def _option_names(fn):
    params = list(inspect.signature(fn).parameters.values())[_FIXED_ARGS:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


STEP_COUNTERS = ("num_batches_tracked",)
RUNNING_STATISTICS = ("running_mean", "running_var")


def _is_float(dtype):
    return dtype.is_floating_point


def _check_configs(sources):
    ref = next((s for s in sources if s.config is not None), None)
    if ref is None:
        return
    for other in sources:
        if other is ref or other.config is None:
            continue
        for field in CONFIG_FIELDS:
            a, b = ref.config.get(field), other.config.get(field)
            if a != b:
                raise MergeError(f"config field {field!r} differs: {a!r} in {ref.label} but "
                                 f"{b!r} in {other.label}; these models cannot be merged")


def _check_tensors(sources):
    ref = sources[0]
    warned = False
    for other in sources[1:]:
        for name, info in ref.infos.items():
            if name not in other.infos:
                raise MergeError(f"tensor {name!r} is in {ref.label} but missing from "
                                 f"{other.label}")
            o = other.infos[name]
            if tuple(o.shape) != tuple(info.shape):
                raise MergeError(f"tensor {name!r} has shape {list(info.shape)} in {ref.label} "
                                 f"but {list(o.shape)} in {other.label}")
            if _is_float(o.dtype) != _is_float(info.dtype):
                raise MergeError(f"tensor {name!r} is {info.dtype} in {ref.label} but "
                                 f"{o.dtype} in {other.label}")
            if o.dtype != info.dtype and not warned:
                logger.warning("tensor %r is %s in %s but %s in %s; the output keeps the "
                               "first member's dtypes", name, info.dtype, ref.label, o.dtype,
                               other.label)
                warned = True
        for name in other.infos:
            if name not in ref.infos:
                raise MergeError(f"tensor {name!r} is in {other.label} but missing from "
                                 f"{ref.label}")


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def merge_models(members, output, method="average", weights=None, base=None,
                 include_base=False, weight_rules=None, options=None, seed=0, progress=True,
                 overwrite=False, max_chunk_bytes=8 * 2**20, num_threads=1):
    """Merge model folders into the model folder ``output`` (AoDE, paper III-C).

    Args:
        members: model folders (or peft LoRA adapter folders, folded on the fly).
        output: the merged model folder; written to ``.<name>.tmp-<pid>`` beside it and
            renamed at the end. An existing ``output`` is refused unless ``overwrite``.
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
        progress: show a tqdm bar over tensors.
        overwrite: replace an existing ``output``.
        max_chunk_bytes: read buffers hold at most this many bytes over all inputs:
            element-wise methods get large tensors in slices of ``max_chunk_bytes / inputs``
            bytes per input (8 MiB keeps a slice of every member in the CPU cache while it
            is merged); other methods get whole tensors (then memory is about one tensor per
            member, e.g. N x 160 MB for Whisper small's token embedding).
        num_threads: torch intra-op threads during the merge (restored afterwards); None
            keeps the current setting. The default 1 is deliberate: the work is thousands
            of small cache-sized slices, which gain nothing from threads, and on a busy
            machine OpenMP's per-op barriers made 2 threads 10x slower than 1
            (bench/RESULTS.md, "Merge").

    Returns the output folder path.
    """
    spec = get_spec(method)
    members = [os.fspath(m) for m in members]
    if not members:
        raise ValueError("no members to merge")
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True to replace it")
    if spec.needs_base and base is None:
        raise ValueError(f"merge method {method!r} needs the original model: pass base=<folder>")
    if include_base and base is None:
        raise ValueError("include_base=True needs base=<folder>")
    n_inputs = len(members) + (1 if include_base else 0)
    if n_inputs < spec.min_members or (spec.max_members and n_inputs > spec.max_members):
        want = (f"exactly {spec.min_members}" if spec.min_members == spec.max_members
                else f"at least {spec.min_members}")
        raise ValueError(f"merge method {method!r} takes {want} members, got {n_inputs}")
    default_w = _as_weights(weights, n_inputs, "weights")
    rules = [(pattern, _as_weights(w, n_inputs, f"weight_rules[{pattern!r}]"))
             for pattern, w in (weight_rules or [])]
    options = dict(options or {})
    user_options = dict(options)

    opened = []
    aligned = {}
    saved_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        inputs = []
        for i, m in enumerate(members):
            src = open_model(m, label=f"member {i} '{m}'")
            opened.append(src)
            inputs.append(src)
        base_src = None
        if base is not None:
            base_src = open_model(os.fspath(base), label=f"base '{os.fspath(base)}'")
            opened.append(base_src)
            if include_base:
                inputs.append(base_src)
        checked = inputs + ([base_src] if base_src is not None and not include_base else [])
        _check_configs(checked)
        _check_tensors(checked)

        if spec.setup is not None:
            options, aligned = spec.setup([s.path for s in inputs], options)
        accepted = _option_names(spec.fn)
        if accepted is not None:
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise ValueError(f"merge method {method!r} has no option(s) {unknown}; its "
                                 f"options: {[a for a in accepted if a not in aligned]}")
        for kw, srcs in aligned.items():
            for src in srcs:
                if src is None:
                    continue
                for name in src.keys():
                    if name in inputs[0].infos and \
                            tuple(src.info(name).shape) != tuple(inputs[0].infos[name].shape):
                        raise MergeError(f"{kw} file {src.path}: tensor {name!r} has shape "
                                         f"{list(src.info(name).shape)}, the model has "
                                         f"{list(inputs[0].infos[name].shape)}")

        entries = safetensors_layout(
            [(n, i.dtype, tuple(i.shape)) for n, i in inputs[0].infos.items()])
        parent, leaf = os.path.split(output)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{leaf}.tmp-{os.getpid()}")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        writer = None
        start_time = time.time()
        logger.info("merging %d members with %r into %s (%d tensors)", n_inputs, method,
                    output, len(entries))
        try:
            writer = SafetensorsWriter(os.path.join(tmp, "model.safetensors"), entries,
                                       metadata={"format": "pt"})
            n_read = len(inputs) + (1 if spec.uses_base and base_src is not None else 0) \
                + sum(1 for srcs in aligned.values() if any(s is not None for s in srcs))
            scratch = _Scratch(max(4096, max_chunk_bytes // n_read))
            for name, dtype, shape in tqdm(entries, disable=not progress, unit="tensor",
                                           desc=f"merge ({method})"):
                _merge_tensor(name, dtype, shape, spec, inputs, base_src, aligned, options,
                              default_w, rules, seed, writer, scratch)
            writer.close()
            _write_folder_files(tmp, inputs, base_src)
            provenance = {
                "kind": "merge",
                "method": method,
                "members": [os.path.abspath(m) for m in members],
                "weights": default_w.tolist(),
                "weight_rules": [[p, w.tolist()] for p, w in rules],
                "base": os.path.abspath(os.fspath(base)) if base is not None else None,
                "include_base": bool(include_base),
                "options": _json_safe(user_options),
                "seed": seed,
                "member_provenance": [read_provenance(m) for m in members],
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
            with open(os.path.join(tmp, "aode.json"), "w", encoding="utf-8") as f:
                json.dump(provenance, f, indent=2)
            if os.path.exists(output):
                if not overwrite:
                    raise FileExistsError(f"{output} appeared during the merge")
                shutil.rmtree(output)
            os.rename(tmp, output)
        except BaseException:
            if writer is not None:
                writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("merged %s in %.1f s", output, time.time() - start_time)
        return output
    finally:
        torch.set_num_threads(saved_threads)
        for src in opened:
            src.close()
        for srcs in aligned.values():
            for s in srcs:
                if s is not None:
                    s.close()


def _base_used(spec, base_src):
    return spec.uses_base and base_src is not None


def _weights_for(name, default_w, rules):
    for pattern, w in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return w
    return default_w


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


def _all_finite(t):
    # One cheap reduction first; the exact test only when the sum is not finite (a NaN/inf
    # element, or a float32 overflow of the sum).
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


def _nonfinite_error(src, name):
    return MergeError(f"{src.label}: tensor {name!r} has non-finite values (NaN or inf)")


def _read_checked(src, name, start, stop, buffer=None, check=True):
    t = src.read(name, start, stop, buffer).float()
    if check and not _all_finite(t):
        raise _nonfinite_error(src, name)
    return t


def _merge_tensor(name, dtype, shape, spec, inputs, base_src, aligned, options, default_w,
                  rules, seed, writer, scratch):
    if not _is_float(dtype):
        # Integer / bool tensors (buffers: index tables) are copied from the first member and
        # must agree everywhere. BatchNorm's num_batches_tracked is the exception: a step
        # counter that differs between any two experts trained for different step counts and
        # that inference never reads (it matters only with momentum=None); the first
        # member's is kept.
        first = inputs[0].read(name)
        if name.endswith(STEP_COUNTERS):
            writer.write(name, first.to(dtype))
            return
        for src in inputs[1:]:
            other = src.read(name)
            if other.dtype != first.dtype or not torch.equal(other, first):
                raise MergeError(
                    f"non-float tensor {name!r} ({dtype}) differs between {inputs[0].label} "
                    f"and {src.label}; such tensors are copied, not merged, so they must agree")
        writer.write(name, first.to(dtype))
        return
    w = _weights_for(name, default_w, rules)
    if name.endswith(RUNNING_STATISTICS) and spec.name != "average":
        # BatchNorm statistics are no task vector: trimming, dropping or scaling their deltas
        # can make a variance negative (the model then decodes nothing); average them
        spec, options, aligned = get_spec("average"), {}, {}
    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    numel = math.prod(shape)
    # Slices of at most scratch.size bytes per input (float32), element-wise methods only.
    step = max(1, scratch.size // 4)
    if spec.elementwise and numel > step:
        ranges = [(s, min(s + step, numel)) for s in range(0, numel, step)]
    else:
        ranges = [(None, None)]
    itemsize = torch.empty((), dtype=dtype).element_size()
    for start, stop in ranges:
        nbytes = (numel if start is None else stop - start) * itemsize
        # Methods whose output is non-finite wherever an input is get their inputs checked
        # through the output (below); the others input by input.
        check = not spec.propagates_nonfinite
        tensors = [_read_checked(src, name, start, stop, scratch.get(i, nbytes), check)
                   for i, src in enumerate(inputs)]
        base_t = None
        if spec.uses_base and base_src is not None:
            base_t = _read_checked(base_src, name, start, stop, scratch.get("base", nbytes),
                                   check)
        extra = {}
        for kw, srcs in aligned.items():
            extra[kw] = [s.read(name, start, stop, scratch.get((kw, i), nbytes)).float()
                         if s is not None and name in s else None for i, s in enumerate(srcs)]
        out = spec.fn(tensors, w, base_t, generator, **options, **extra)
        del tensors, base_t, extra
        if tuple(out.shape) != tuple(shape if start is None else (stop - start,)):
            raise MergeError(f"method {spec.name!r} returned shape {list(out.shape)} for "
                             f"tensor {name!r} of shape {list(shape)}")
        if not _all_finite(out):
            suspects = inputs + ([base_src] if _base_used(spec, base_src) else [])
            for src in suspects:  # name the member that brought the NaN / inf
                if not _all_finite(src.read(name, start, stop).float()):
                    raise _nonfinite_error(src, name)
            raise MergeError(f"method {spec.name!r} produced non-finite values for tensor "
                             f"{name!r}")
        writer.write(name, out.to(dtype))


def _write_folder_files(tmp, inputs, base_src):
    src = base_src if base_src is not None else inputs[0]
    config = os.path.join(src.model_folder, "config.json")
    if os.path.isfile(config):
        shutil.copy2(config, os.path.join(tmp, "config.json"))
    else:
        logger.warning("%s has no config.json; the merged folder has none either", src.label)
    copied = copy_processor_files(src.model_folder, tmp)
    if src.path != src.model_folder:  # a LoRA adapter folder may carry its own processor
        copied += copy_processor_files(src.path, tmp)
    logger.info("copied %s from %s", sorted(set(copied)) or "no processor files", src.label)
