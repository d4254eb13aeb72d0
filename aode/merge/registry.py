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
  ``fn(plan, output, progress=..., overwrite=..., **driver_kwargs)`` that receives the checked
  :class:`~aode.merge.driver.MergePlan` and writes ``output`` itself (AdaMerging learns
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
  a whole-model method (its function takes ``**driver_kwargs``);
* ``aligned``: the function's keyword arguments that ``setup`` fills (``fishers``): not
  options a user gives.

A method's options are thus declared once, by its signature and ``options``; the hparams
schemas check a merge's options against them (names, the type of each default, fractions)
before any work (:func:`aode.merge.checks.check_method_options`).
"""

from dataclasses import dataclass
from typing import Callable
from typing import Optional

__all__ = ["MethodSpec", "register", "get_method", "get_spec", "available_methods"]


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


_METHODS = {}


def register(
    name,
    *,
    needs_base=False,
    uses_base=None,
    elementwise=False,
    propagates_nonfinite=False,
    min_members=1,
    max_members=None,
    setup=None,
    whole_model=False,
    statistics=None,
    needs_data=False,
    needs_member_data=False,
    options=None,
    aligned=(),
):
    """Decorator: register a merge method under ``name`` (see the module docstring)."""

    def decorator(fn):
        if name in _METHODS and _METHODS[name].fn is not fn:
            raise ValueError(f"merge method {name!r} is already registered")
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
        )
        _METHODS[name] = spec
        fn.merge_spec = spec
        return fn

    return decorator


def _ensure_loaded():
    # Importing the package registers the built-in methods (one module each).
    import aode.merge  # noqa: F401


def get_spec(name):
    """The :class:`MethodSpec` of a registered method; unknown name -> ValueError."""
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known methods: {', '.join(available_methods())}") from None


def get_method(name):
    """The function registered as ``name``; unknown name -> ValueError listing the known ones."""
    return get_spec(name).fn


def available_methods():
    """Sorted names of the registered methods."""
    _ensure_loaded()
    return sorted(_METHODS)
