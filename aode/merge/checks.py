"""What the merge driver checks before and while it merges, with errors that name the culprit.

Before any tensor is merged: the call's arguments (member count for the method, one finite
weight per member, the method's options), the members' configs (``model_type``,
``vocab_size``), their tensors (same names, shapes and float-ness), and the shapes of
aligned per-member files (Fishers). While merging: every tensor read is finite, and
non-float tensors (index tables, counters) agree between members, since they are copied,
not merged.
"""

import inspect
import logging
import math

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "MergeError",
    "CONFIG_FIELDS",
    "STEP_COUNTERS",
    "as_weights",
    "check_member_count",
    "check_options",
    "option_defaults",
    "check_configs",
    "check_tensors",
    "check_aligned",
    "agreeing_non_float",
    "all_finite",
    "nonfinite_error",
    "read_checked",
]

CONFIG_FIELDS = ("model_type", "vocab_size")
# BatchNorm's step counter: differs between experts trained for different step counts and is
# never read at inference (it matters only with momentum=None); the first member's is kept.
STEP_COUNTERS = ("num_batches_tracked",)
_FIXED_ARGS = 4  # a merge method's tensors, weights, base, generator


class MergeError(ValueError):
    """Members that cannot be merged (mismatch, non-finite values, ...)."""


def as_weights(values, n: int, what: str) -> torch.Tensor:
    """``values`` as a float32 tensor of ``n`` finite weights (None: all 1)."""
    if values is None:
        return torch.ones(n, dtype=torch.float32)
    w = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if w.numel() != n:
        raise ValueError(f"{what}: {w.numel()} weights for {n} members (with include_base the base is the last member)")
    if not torch.isfinite(w).all():
        raise ValueError(f"{what}: non-finite weight in {w.tolist()}")
    return w


def check_member_count(spec, n_inputs: int) -> None:
    """Raise ValueError unless the method ``spec`` takes ``n_inputs`` members."""
    if n_inputs < spec.min_members or (spec.max_members and n_inputs > spec.max_members):
        want = f"exactly {spec.min_members}" if spec.min_members == spec.max_members else f"at least {spec.min_members}"
        raise ValueError(f"merge method {spec.name!r} takes {want} members, got {n_inputs}")


def _option_names(fn):
    params = list(inspect.signature(fn).parameters.values())[_FIXED_ARGS:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


def option_defaults(fn, given) -> dict:
    """The method's options that ``given`` leaves at their defaults, with those defaults (the
    values a merge ran with, for its provenance; aligned inputs such as ``grams`` excluded)."""
    params = list(inspect.signature(fn).parameters.values())[_FIXED_ARGS:]
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.default is not None and p.name not in given
    }


def check_options(spec, options: dict, aligned: dict) -> None:
    """Raise ValueError for an option the method ``spec`` does not take."""
    accepted = _option_names(spec.fn)
    if accepted is None:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"merge method {spec.name!r} has no option(s) {unknown}; its "
            f"options: {[a for a in accepted if a not in aligned]}"
        )


def check_configs(sources) -> None:
    """Members whose configs disagree on :data:`CONFIG_FIELDS` cannot be merged."""
    ref = next((s for s in sources if s.config is not None), None)
    if ref is None:
        return
    for other in sources:
        if other is ref or other.config is None:
            continue
        for field in CONFIG_FIELDS:
            a, b = ref.config.get(field), other.config.get(field)
            if a != b:
                raise MergeError(
                    f"config field {field!r} differs: {a!r} in {ref.label} but "
                    f"{b!r} in {other.label}; these models cannot be merged"
                )


def _is_float(dtype):
    return dtype.is_floating_point


def check_tensors(sources) -> None:
    """Same tensor names, shapes and float-ness in every member (dtypes may differ: the
    output keeps the first member's, with a warning)."""
    ref = sources[0]
    warned = False
    for other in sources[1:]:
        for name, info in ref.infos.items():
            if name not in other.infos:
                raise MergeError(f"tensor {name!r} is in {ref.label} but missing from {other.label}")
            o = other.infos[name]
            if tuple(o.shape) != tuple(info.shape):
                raise MergeError(
                    f"tensor {name!r} has shape {list(info.shape)} in {ref.label} but {list(o.shape)} in {other.label}"
                )
            if _is_float(o.dtype) != _is_float(info.dtype):
                raise MergeError(f"tensor {name!r} is {info.dtype} in {ref.label} but {o.dtype} in {other.label}")
            if o.dtype != info.dtype and not warned:
                logger.warning(
                    "tensor %r is %s in %s but %s in %s; the output keeps the first member's dtypes",
                    name,
                    info.dtype,
                    ref.label,
                    o.dtype,
                    other.label,
                )
                warned = True
        for name in other.infos:
            if name not in ref.infos:
                raise MergeError(f"tensor {name!r} is in {other.label} but missing from {ref.label}")


def check_aligned(aligned: dict, ref) -> None:
    """Aligned per-member files (``kwarg -> [source or None]``) match ``ref``'s shapes."""
    for kw, srcs in aligned.items():
        for src in srcs:
            if src is None:
                continue
            for name in src.keys():
                if name in ref.infos and tuple(src.info(name).shape) != tuple(ref.infos[name].shape):
                    raise MergeError(
                        f"{kw} file {src.path}: tensor {name!r} has shape "
                        f"{list(src.info(name).shape)}, the model has "
                        f"{list(ref.infos[name].shape)}"
                    )


def agreeing_non_float(name: str, inputs) -> torch.Tensor:
    """The first member's non-float tensor ``name``, checked equal in every member.

    Integer / bool tensors (buffers: index tables) are copied, not merged, so they must
    agree; a step counter (:data:`STEP_COUNTERS`) is the exception.
    """
    first = inputs[0].read(name)
    if name.endswith(STEP_COUNTERS):
        return first
    for src in inputs[1:]:
        other = src.read(name)
        if other.dtype != first.dtype or not torch.equal(other, first):
            raise MergeError(
                f"non-float tensor {name!r} ({first.dtype}) differs between {inputs[0].label} "
                f"and {src.label}; such tensors are copied, not merged, so they must agree"
            )
    return first


def all_finite(t: torch.Tensor) -> bool:
    """True when every element of ``t`` is finite."""
    # One cheap reduction first; the exact test only when the sum is not finite (a NaN/inf
    # element, or a float32 overflow of the sum).
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


def nonfinite_error(src, name: str) -> MergeError:
    """The error naming the member ``src`` whose tensor ``name`` has NaN or inf."""
    return MergeError(f"{src.label}: tensor {name!r} has non-finite values (NaN or inf)")


def read_checked(src, name, start=None, stop=None, buffer=None, check=True) -> torch.Tensor:
    """Tensor ``name`` of ``src`` (elements [start, stop)) as float32; with ``check``,
    MergeError when it has non-finite values."""
    t = src.read(name, start, stop, buffer).float()
    if check and not all_finite(t):
        raise nonfinite_error(src, name)
    return t
