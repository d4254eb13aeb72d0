"""What the merge driver checks before and while it merges, with errors that name the culprit.

Before any tensor is merged: the call's arguments (member count for the method, one finite
weight per member, the method's options: their names and the checks its registration declares;
:func:`check_method_options`, which the hparams schemas run before any work, also checks each
value against the type of its default; the shared checks a registration declares are here:
:func:`fraction`, :func:`finite_number`, ...), the members' configs (``model_type``,
``vocab_size`` and every shape or depth key of :func:`aode.models.architecture_signature`:
members of another architecture or width are named with the key that differs), their tensors
(same names, shapes and float-ness), and the shapes of aligned per-member files (Fishers).
While merging: every tensor read is finite, and non-float tensors (index tables, counters)
agree between members, since they are copied, not merged.
"""

import inspect
import logging
import math
import os
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Callable

import torch

from .registry import FIXED_ARGS
from .registry import MethodSpec

logger = logging.getLogger(__name__)

__all__ = [
    "MergeError",
    "CONFIG_FIELDS",
    "STEP_COUNTERS",
    "as_weights",
    "check_member_count",
    "check_options",
    "check_method_options",
    "declared_options",
    "finite_number",
    "fraction",
    "interval",
    "boolean",
    "torch_device",
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


class MergeError(ValueError):
    """Members that cannot be merged (mismatch, non-finite values, ...)."""


def as_weights(values: Iterable[float] | None, n: int, what: str) -> torch.Tensor:
    """``values`` as a float32 tensor of ``n`` finite weights (None: all 1)."""
    if values is None:
        return torch.ones(n, dtype=torch.float32)
    w = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if w.numel() != n:
        raise ValueError(f"{what}: {w.numel()} weights for {n} members (with include_base the base is the last member)")
    if not torch.isfinite(w).all():
        raise ValueError(f"{what}: non-finite weight in {w.tolist()}")
    return w


def check_member_count(spec: MethodSpec, n_inputs: int) -> None:
    """Raise ValueError unless the method ``spec`` takes ``n_inputs`` members."""
    if n_inputs < spec.min_members or (spec.max_members and n_inputs > spec.max_members):
        want = f"exactly {spec.min_members}" if spec.min_members == spec.max_members else f"at least {spec.min_members}"
        raise ValueError(f"merge method {spec.name!r} takes {want} members, got {n_inputs}")


def declared_options(spec: MethodSpec) -> dict:
    """``{name: default}`` of the options a user may give the method ``spec``
    (:meth:`~aode.merge.registry.MethodSpec.declared_options`)."""
    return spec.declared_options()


# --- option checks a registration declares (register(checks={option: check})): each takes the
# value and returns None when it is fine, else the problem ("must be ...").


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value: Any) -> str | None:
    """Any finite number."""
    return None if _is_number(value) and math.isfinite(value) else "must be a finite number"


def fraction(value: Any) -> str | None:
    """A number from 0 to 1 (a share of elements, a quantile)."""
    if not _is_number(value) or not math.isfinite(value):
        return "must be a number"
    return None if 0.0 <= value <= 1.0 else "must be a fraction from 0 to 1"


def interval(low: float, high: float, *, open_low: bool = False, allow_none: bool = False) -> Callable:
    """A check: a number in ``[low, high]`` (``(low, high]`` with ``open_low``), or None with
    ``allow_none``; the problem reads ``must be [None or ]in [low, high]``."""
    text = f"must be {'None or ' if allow_none else ''}in {'(' if open_low else '['}{low}, {high}]"

    def check(value):
        if value is None and allow_none:
            return None
        if not _is_number(value) or not math.isfinite(value):
            return text
        return None if (low < value if open_low else low <= value) and value <= high else text

    return check


def positive_integer(value: Any) -> str | None:
    """A whole number of at least 1 (steps, utterances, a batch size)."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    return None if whole and value >= 1 else "must be a positive integer"


def positive_number(value: Any) -> str | None:
    """A finite number above 0 (a learning rate)."""
    return None if _is_number(value) and math.isfinite(value) and value > 0 else "must be a number > 0"


def one_of(*choices: str) -> Callable:
    """A check: one of ``choices``."""

    def check(value):
        return None if value in choices else f"must be one of {list(choices)}"

    return check


def boolean(value: Any) -> str | None:
    """True or false."""
    return None if isinstance(value, bool) else "must be true or false"


def torch_device(value: Any) -> str | None:
    """None or a torch device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    if value is None:
        return None
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return "must be None or a torch device name such as 'cuda'"
    return None


def _option_problem(value, default):
    """Why ``value`` cannot replace an option's ``default`` by its type (None: it can)."""
    if value is None:
        return None if default is None else "must not be null"
    if isinstance(default, bool):
        return boolean(value)
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if isinstance(default, float):
        return None if _is_number(value) and math.isfinite(value) else "must be a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a string"
    return None


def check_method_options(method: str, options: Mapping | None) -> dict:
    """``options`` unchanged when merge method ``method`` takes each of them with a value of
    the right kind (the type of its default, then its declared check); else ValueError naming
    every unknown option (with the closest declared name) and every wrong value. Run by the
    hparams schemas (``method_options``, an experiment's ``merge_methods``) before any folder
    is made."""
    from aode.config import known_names

    from .registry import get_spec

    spec = get_spec(method)
    declared = spec.declared_options()
    options = dict(options or {})
    known_names(list(options), declared, f"{method} option", known=sorted(declared))
    problems = [
        f"{method} option {name} {problem} (got {value!r})"
        for name, value in options.items()
        if (problem := _option_problem(value, declared[name])) is not None
    ]
    if problems:
        raise ValueError("; ".join(problems))
    spec.check_values(options)
    return options


def data_options(
    method: str, options: Mapping[str, Any], defaults: Mapping[str, Any], data_key: str, missing: str
) -> tuple[dict[str, Any], Any]:
    """The options of a whole-model method that reads data: ``options`` with ``defaults``
    applied (a ValueError naming any option that is neither a default's nor ``data_key``),
    and the value of ``data_key`` (manifests), one path alone as a list of one; a ValueError
    ``missing`` when it is not given."""
    from aode.config import known_names

    choices = sorted([*defaults, data_key])
    unknown = [k for k in options if k not in choices]
    if unknown:
        known_names(unknown, choices, f"{method} option")
    out = {**defaults, **options}
    data = out.get(data_key)
    if not data:
        raise ValueError(missing)
    return out, [data] if isinstance(data, (str, os.PathLike)) else data


def option_defaults(fn: Callable, given: Mapping) -> dict:
    """The method's options that ``given`` leaves at their defaults, with those defaults (the
    values a merge ran with, for its provenance; aligned inputs such as ``grams`` excluded)."""
    params = list(inspect.signature(fn).parameters.values())[FIXED_ARGS:]
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.default is not None and p.name not in given
    }


def check_options(spec: MethodSpec, options: dict, aligned: dict) -> None:
    """Raise ValueError for an option the method ``spec`` does not take (after its setup hook:
    ``options`` then hold what the function receives besides ``aligned``)."""
    if spec.whole_model:
        return
    params = list(inspect.signature(spec.fn).parameters.values())[FIXED_ARGS:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        from aode.config import known_names

        known_names(unknown, accepted, f"{spec.name} option", known=[a for a in accepted if a not in aligned])


class _ConfigView:
    """A config.json dict seen as :func:`aode.models.architecture_signature` reads a config."""

    def __init__(self, config):
        self._config = config
        self.model_type = config.get("model_type")
        self.vocab_size = config.get("vocab_size")

    def to_dict(self):
        return self._config


def _signature(config) -> dict:
    from aode.models import architecture_signature

    return architecture_signature(_ConfigView(config))


def check_configs(sources: Sequence) -> None:
    """Members whose configs disagree on :data:`CONFIG_FIELDS`, or on a shape or depth key of
    the architecture signature that both configs set (``hidden_size``, ``num_hidden_layers``,
    ``encoder_config.num_attention_heads``, ...), cannot be merged: MergeError naming the
    member, the keys and both values, before any tensor is compared."""
    ref = next((s for s in sources if s.config is not None), None)
    if ref is None:
        return
    ref_signature = _signature(ref.config)
    for other in sources:
        if other is ref or other.config is None:
            continue
        signature = _signature(other.config)
        differ = [(field, ref.config.get(field), other.config.get(field)) for field in CONFIG_FIELDS]
        differ = [(key, a, b) for key, a, b in differ if a != b]
        differ += [
            (key, ref_signature[key], signature[key])
            for key in ref_signature
            if key not in CONFIG_FIELDS and key in signature and signature[key] != ref_signature[key]
        ]
        if differ:
            shown = "; ".join(
                f"config field {key!r} differs: {a!r} in {ref.label} but {b!r} in {other.label}"
                for key, a, b in differ[:4]
            )
            raise MergeError(f"{shown}; models of different architectures or widths cannot be merged")


def _is_float(dtype):
    return dtype.is_floating_point


def check_tensors(sources: Sequence) -> None:
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


def check_aligned(aligned: dict, ref: Any) -> None:
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


def agreeing_non_float(name: str, inputs: Sequence) -> torch.Tensor:
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


def nonfinite_error(src: Any, name: str) -> MergeError:
    """The error naming the member ``src`` whose tensor ``name`` has NaN or inf."""
    return MergeError(f"{src.label}: tensor {name!r} has non-finite values (NaN or inf)")


def read_checked(
    src: Any,
    name: str,
    start: int | None = None,
    stop: int | None = None,
    buffer: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Tensor ``name`` of ``src`` (elements [start, stop)) as float32; with ``check``,
    MergeError when it has non-finite values."""
    try:
        t = src.read(name, start, stop, buffer).float()
    except OSError as err:  # a file truncated or changed since it was opened
        raise MergeError(f"{src.label} cannot be read: {err}") from err
    if check and not all_finite(t):
        raise nonfinite_error(src, name)
    return t
