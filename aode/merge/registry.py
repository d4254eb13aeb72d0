"""The registry of merge methods (AoDE, paper III-C, and the Table IV alternatives).

A merge method is a plain function called once per parameter name::

    fn(tensors, weights, base, generator, **options) -> torch.Tensor

* ``tensors``: one float32 tensor per member, all of the same shape;
* ``weights``: float32 tensor, one weight per member, as given for this parameter (the
  driver applies ``weight_rules``; whether a method normalises them is its own business);
* ``base``: the original model's float32 tensor, or ``None`` when no base was given (or the
  method does not use it);
* ``generator``: a ``torch.Generator`` seeded from the merge seed and the parameter name, so
  random methods are deterministic and independent of the order of the tensors;
* ``options``: the method's keyword options.

The streaming driver (:mod:`aode.merge.driver`) owns I/O, dtypes, checks and weight rules.

Methods are registered with :func:`register`, which also records what the driver needs to
know about them:

* ``needs_base``: the method works on deltas ``theta_i - theta_0`` and fails without a base;
* ``uses_base``: the driver should read and pass the base tensor (implied by ``needs_base``);
* ``elementwise``: the result at an element depends only on the members' values at that
  element (and the weights), so the driver may call the method on flattened 1-D slices of a
  large tensor to bound memory; such a method must not depend on the shape it is given;
* ``propagates_nonfinite``: a NaN/inf in any input always makes the output non-finite at
  that element (true of sums and averages with finite weights), so the driver may check
  the output only and look for the culprit member when it fails (saves a pass per input);
* ``min_members`` / ``max_members``: how many members the method accepts;
* ``whole_model``: the method is no per-tensor function but a whole-model procedure
  ``fn(plan, output, run)`` that receives the checked :class:`~aode.merge.driver.MergePlan`
  and :class:`~aode.merge.driver.MergeRun` and writes ``output`` itself (AdaMerging learns
  coefficients on data, then calls the driver);
* ``statistics``: the kind of per-member statistics file the method reads (``"fisher"``,
  ``"gram"``; :mod:`aode.merge.inputs` computes missing ones from each member's data);
* ``needs_data``: the method fits on dev sets (option ``data``; :mod:`aode.merge.inputs`
  fills it from the recipe's dev sets);
* ``needs_member_data``: the method reads each member's own data itself (option
  ``member_manifests``: one manifest per input, the original's last with ``include_base``;
  :mod:`aode.merge.inputs` fills it from the recipe's member data);
* ``setup``: optional hook ``setup(member_dirs, options) -> (options, aligned)`` run once per
  merge; it may consume options and return ``aligned``, a dict ``kwarg -> list`` of one
  tensor source per member (an object with ``info(name)`` and ``read(name, start, stop)``,
  or ``None``), which the driver reads alongside the members (same slices) and passes to the
  method as ``kwarg=[tensor or None per member]`` (used by Fisher merging);
* ``options``: ``{name: default}`` of the options the method takes besides its function's
  keyword arguments: those its ``setup`` hook consumes (``fisher_files``), or every option of
  a whole-model method (its function takes none);
* ``aligned``: the function's keyword arguments that ``setup`` fills (``fishers``): not
  options a user gives;
* ``display_name`` and ``reference``: the method's name in tables and the paper it comes
  from (authors, title, venue), as mergekit's ``@merge_method`` carries name and reference;
* ``checks``: ``{option: check}``, a check being ``value -> None`` (fine) or the problem
  (``"must be a fraction from 0 to 1"``); :mod:`aode.merge.checks` has the shared ones.
  Every call of the method checks the options it is given (a registered function with
  checks is returned wrapped), the driver checks them when a merge is planned, and the
  hparams schemas before any work;
* ``mergekit``: a :class:`MergekitMapping`: the mergekit method this one implements and how
  mergekit's parameters map onto ours; :mod:`aode.merge.mergekit_config` reads mergekit
  configs through these mappings only.

A method's options are thus declared once, by its signature, ``options`` and ``checks``; the
hparams schemas check a merge's options against them (names, the type of each default, the
declared checks) before any work (:func:`aode.merge.checks.check_method_options`).

Every module of this package is imported with the package (:func:`load_methods`), so a new
method is one file with one decorated function; nothing else lists the methods.
"""

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any
from typing import Callable
from typing import Optional

__all__ = [
    "MethodSpec",
    "MergekitParam",
    "MergekitMapping",
    "REQUIRED",
    "register",
    "get_method",
    "get_spec",
    "available_methods",
    "registered_specs",
    "mergekit_specs",
    "load_methods",
]

# A merge method's first four arguments: tensors, weights, base, generator (the rest are options).
FIXED_ARGS = 4
# Modules of this package that register no method (the driver's machinery); every other
# module is imported by load_methods().
NOT_METHOD_MODULES = frozenset(
    {"registry", "checks", "driver", "read", "write", "inputs", "averager", "mergekit_config"}
)


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()  # a mergekit parameter without a default


@dataclass(frozen=True)
class MergekitParam:
    """One parameter of a mergekit method (mergekit's ``ConfigParameterDef``).

    ``scope``: ``"shared"`` (top-level ``parameters`` only), ``"input"`` (per model, the base
    too) or ``"non_base"`` (per model, the base's ignored); ``kind``: ``float`` or ``bool``;
    ``default``: mergekit's default, :data:`REQUIRED` when it has none.
    """

    scope: str
    kind: type
    default: Any = REQUIRED


# What mergekit's base_model is to a method: the original of task vectors (``original``), one
# more member (``member``: mergekit's linear adds it to the models), or the t = 0 end of an
# interpolation whose mergekit parameter ``t`` gives our option ``t`` or, when ``t`` varies by
# tensor, the weights [1 - t, t] (``start``: slerp).
BASE_MODEL_ROLES = ("original", "member", "start")


@dataclass(frozen=True, eq=False)
class MergekitMapping:
    """How a mergekit method maps onto a registered one (``register(mergekit=...)``).

    * ``parameters``: mergekit's parameters of the method, ``{name: MergekitParam}``, in the
      order they are read (each one given is checked to take a single value);
    * ``options``: ``{our option: mergekit parameter}``: our option gets the parameter's value
      (mergekit's default when not given), cast to its kind;
    * ``method``: mergekit's name (``merge_method``); None: the same as ours;
    * ``base_model``: one of :data:`BASE_MODEL_ROLES`;
    * ``weights``: mergekit's ``weight`` parameter gives our weights (``weight_rules`` where
      filters give tensors different weights);
    * ``refused``: ``{boolean parameter: why}``: a ``true`` we cannot do, refused as
      ``parameters.<name>: true is not supported for <method> <why>``;
    * ``notes``: ``notes(mergekit method, {parameter: value}) -> [warning, ...]`` about values
      that are accepted but not mergekit's result bit for bit.
    """

    parameters: Mapping[str, MergekitParam]
    options: Mapping[str, str] = field(default_factory=dict)
    method: Optional[str] = None
    base_model: str = "original"
    weights: bool = True
    refused: Mapping[str, str] = field(default_factory=dict)
    notes: Optional[Callable[[str, dict], list]] = None

    def __post_init__(self):
        problems = []
        if self.base_model not in BASE_MODEL_ROLES:
            problems.append(f"base_model must be one of {BASE_MODEL_ROLES}, got {self.base_model!r}")
        wanted = list(self.options.values()) + list(self.refused)
        wanted += ["weight"] if self.weights else []
        wanted += ["t"] if self.base_model == "start" else []
        problems += [f"{key!r} is no parameter of the mapping" for key in wanted if key not in self.parameters]
        problems += [f"refused {key!r} is no boolean" for key in self.refused if self.parameters[key].kind is not bool]
        if problems:
            raise ValueError(f"mergekit mapping {self.method or ''}: " + "; ".join(problems))


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable
    needs_base: bool = False
    uses_base: bool = False
    elementwise: bool = False
    propagates_nonfinite: bool = False
    min_members: int = 1
    max_members: Optional[int] = None
    setup: Optional[Callable] = None
    whole_model: bool = False
    statistics: Optional[str] = None
    needs_data: bool = False
    needs_member_data: bool = False
    options: tuple = ()  # ((name, default), ...): see ``options`` in the module docstring
    aligned: tuple = ()
    display_name: Optional[str] = None
    reference: Optional[str] = None
    checks: tuple = ()  # ((option, check), ...)
    mergekit: Optional[MergekitMapping] = None

    def declared_options(self) -> dict:
        """``{name: default}`` (``None`` when there is none) of the options a user may give:
        the function's keyword arguments after (tensors, weights, base, generator), less those
        its setup hook fills (``aligned``), plus ``options`` (a whole-model method has only those)."""
        declared = {}
        if not self.whole_model:
            for p in list(inspect.signature(self.fn).parameters.values())[FIXED_ARGS:]:
                if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in self.aligned:
                    continue
                declared[p.name] = None if p.default is p.empty else p.default
        declared.update(dict(self.options))
        return declared

    def check_values(self, options: Mapping) -> None:
        """Raise ValueError naming every option in ``options`` that its declared check refuses
        (``<method> option <name> <problem> (got <value>)``); other options are not looked at."""
        checks = dict(self.checks)
        problems = [
            f"{self.name} option {name} {problem} (got {value!r})"
            for name, value in options.items()
            if name in checks and (problem := checks[name](value)) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))


_METHODS = {}


def _with_checks(fn: Callable) -> Callable:
    """``fn`` checking the options of every call against its spec's ``checks`` first."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args, **options):
        if len(args) > FIXED_ARGS:  # options given by position
            options = dict(list(signature.bind_partial(*args, **options).arguments.items())[FIXED_ARGS:])
        checked.merge_spec.check_values(options)
        return fn(*args, **options)

    return checked


def register(
    name: str,
    *,
    needs_base: bool = False,
    uses_base: Optional[bool] = None,
    elementwise: bool = False,
    propagates_nonfinite: bool = False,
    min_members: int = 1,
    max_members: Optional[int] = None,
    setup: Optional[Callable] = None,
    whole_model: bool = False,
    statistics: Optional[str] = None,
    needs_data: bool = False,
    needs_member_data: bool = False,
    options: Optional[dict] = None,
    aligned: tuple = (),
    display_name: Optional[str] = None,
    reference: Optional[str] = None,
    checks: Optional[dict] = None,
    mergekit: Optional[MergekitMapping] = None,
) -> Callable[[Callable], Callable]:
    """Decorator: register a merge method under ``name`` (see the module docstring). Returns the
    function itself, or, when it declares ``checks``, the function checking them on every call."""

    def decorator(fn):
        known = _METHODS.get(name)
        if known is not None and getattr(known.fn, "__wrapped__", known.fn) is not fn:
            raise ValueError(f"merge method {name!r} is already registered")
        mapping = mergekit
        if mapping is not None and mapping.method is None:
            mapping = replace(mapping, method=name)
        if mapping is not None:
            taken = mergekit_specs().get(mapping.method)
            if taken is not None and taken.name != name:
                raise ValueError(f"mergekit method {mapping.method!r} is already mapped onto {taken.name!r}")
        spec = MethodSpec(
            name=name,
            fn=fn,
            needs_base=needs_base,
            uses_base=needs_base if uses_base is None else (uses_base or needs_base),
            elementwise=elementwise,
            propagates_nonfinite=propagates_nonfinite,
            min_members=min_members,
            max_members=max_members,
            setup=setup,
            whole_model=whole_model,
            statistics=statistics,
            needs_data=needs_data,
            needs_member_data=needs_member_data,
            options=tuple((options or {}).items()),
            aligned=tuple(aligned),
            display_name=display_name,
            reference=reference,
            checks=tuple((checks or {}).items()),
            mergekit=mapping,
        )
        unknown = sorted(set(dict(spec.checks)) - set(spec.declared_options()))
        if unknown:
            raise ValueError(f"merge method {name!r}: checks for options it does not take: {unknown}")
        method = _with_checks(fn) if spec.checks else fn
        spec = replace(spec, fn=method)
        _METHODS[name] = spec
        method.merge_spec = spec
        return method

    return decorator


def load_methods() -> None:
    """Import every module of this package but the driver's machinery
    (:data:`NOT_METHOD_MODULES`): each method module registers its methods on import."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in NOT_METHOD_MODULES:
            importlib.import_module(f"{__package__}.{module.name}")


def _ensure_loaded():
    # Importing the package registers the methods (aode/merge/__init__.py calls load_methods).
    import aode.merge  # noqa: F401


def get_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a registered method; unknown name -> ValueError."""
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known methods: {', '.join(available_methods())}") from None


def get_method(name: str) -> Callable:
    """The function registered as ``name``; unknown name -> ValueError listing the known ones."""
    return get_spec(name).fn


def available_methods() -> list:
    """Sorted names of the registered methods."""
    _ensure_loaded()
    return sorted(_METHODS)


def registered_specs() -> list:
    """The :class:`MethodSpec` of every registered method, sorted by name."""
    _ensure_loaded()
    return [_METHODS[name] for name in sorted(_METHODS)]


def mergekit_specs() -> dict:
    """``{mergekit method: MethodSpec}`` of the registered methods that declare a mergekit
    mapping, sorted by mergekit name."""
    _ensure_loaded()
    mapped = {spec.mergekit.method: spec for spec in _METHODS.values() if spec.mergekit is not None}
    return dict(sorted(mapped.items()))
