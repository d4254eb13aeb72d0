"""Merging with a mergekit YAML configuration (arcee-ai/mergekit, ``mergekit-yaml`` format).

Two entry points::

    python -m aode.merge.mergekit_config merge.yml OUTPUT_FOLDER [--seed 0] [--overwrite]
    python recipes/average/merge.py hparams/aode.yaml --mergekit_config merge.yml

The first only merges; the second takes the merge (members, base, method, weights, options)
from ``merge.yml`` and everything else (test sets, device, output folder, ...) from the
recipe's YAML. Both read and check the whole configuration, and the members' headers
(tensor names, dtypes, configs), before any tensor is merged; a bad configuration is one
error naming the key (exit code 2 on the command lines).

The configuration is mergekit's ``MergeConfiguration`` (mergekit/config.py) restricted to
whole-model merges::

    merge_method: ties
    base_model: path/to/original             # a folder (relative to the working directory,
    models:                                  #   as in mergekit) or a Hugging Face hub id
      - model: path/to/expert_a
        parameters: {weight: 1.0, density: 0.5}
      - model: path/to/expert_b
        parameters:
          weight: [{filter: self_attn, value: 2.0}, {value: 1.0}]
    parameters: {lambda: 1.0, normalize: true, density: 0.5}
    dtype: float32

Methods (mergekit name -> ours, our options with mergekit's defaults; ``lambda`` is our
``lam``), as each method's registration declares them (``register(mergekit=MergekitMapping(...))``,
:mod:`aode.merge.registry`; this reader has no table of its own). Each mergekit default is
passed explicitly, so ours never applies its own:

=================  ==================  ====================================================
mergekit           ours                parameters (mergekit default)
=================  ==================  ====================================================
linear             average             weight (required, per model), normalize (true)
task_arithmetic    task_arithmetic     weight (required), lambda (1), normalize (false)
ties               ties                weight, density (1), lambda (1), normalize (true)
dare_linear        dare_linear         weight, density (1), lambda (1), rescale (true)
dare_ties          dare_ties           weight, density (1), lambda (1), rescale (true),
                                       normalize (false)
breadcrumbs        breadcrumbs         weight, density (1), gamma (0.01), lambda (1),
                                       normalize (false), rescale (false)
breadcrumbs_ties   breadcrumbs_ties    as breadcrumbs
slerp              slerp               t (required; 0 = base_model, 1 = the other model)
model_stock        model_stock         filter_wise (false; true is refused)
=================  ==================  ====================================================

Parameters are resolved as mergekit resolves them: a model's own ``parameters`` first, then
the top-level ``parameters``, then the method's default (``weight`` and ``t`` have none: a
missing one is an error, as in mergekit). ``int8_mask`` (a memory saving of mergekit's TIES
mask, same result) is accepted and ignored; task arithmetic's ``density``/``rescale`` are
ignored by mergekit (no sparsification) and here too. ``{filter: s, value: v}`` rules (and
lists of them) select by substring of the tensor name, first match wins, ``*`` or no filter
matches all. How each parameter maps:

* ``weight`` -> the merge's ``weights`` and, where rules give tensors different weights,
  ``weight_rules`` (fnmatch patterns ``*s*``, checked against every tensor name of the
  members; when per-model rule lists cannot be written as one ordered list of patterns,
  one exact-name rule per tensor whose weights differ from the most common ones);
* slerp's ``t`` -> the option ``t``; with filter rules -> weights ``[1 - t, t]`` per tensor
  (our slerp takes ``t = w_2 / (w_1 + w_2)`` from the weights);
* ``density``, ``gamma`` (per model in mergekit) and the global ones -> one option for all
  members and tensors: accepted only when every value they can take is the same, else
  refused naming the key;
* a gradient (a list of values, which mergekit interpolates over its architecture's layer
  numbering) is refused unless all its values are equal.

``base_model``: for the task-vector methods and model_stock it is the original (``base``);
listed among ``models`` as well it is ignored there, as mergekit ignores it (its task vector is
zero and its weights are not read). For ``linear`` the base is one more member with its own
weight (mergekit adds it to the models when it is not listed; it then takes ``weight`` from the
top-level parameters): ours ``include_base`` (the recipe's ``include_original``), the base
weighted last. For ``slerp`` it is the ``t = 0`` end: ours merges ``[base_model, other]``.

``dtype`` (the computation dtype): float32, bfloat16 or float16 are accepted; ours always
computes in float32 and writes the members' dtype (a log line says so). ``out_dtype``: accepted
only when equal to the members' dtype (no cast). ``tokenizer_source``: ``base`` or one of the
models (ours copies config.json and the processor files from the base, else the first member;
the members must share one vocabulary); ``union`` is refused.

Refused, with an error naming the key, before any work: ``slices`` and ``modules`` (we merge
whole models), ``tokenizer``, ``chat_template``, unknown top-level keys, unknown parameters
(mergekit ignores them silently), a global parameter given per model (mergekit ignores it
there), methods we lack (della, della_linear, nuslerp, multislerp, karcher, sce, passthrough,
arcee_fusion, nearswap, ram, ...), ``rescale: true`` for ties (ours has no L1 rescale),
``normalize: true`` for dare_linear, ``filter_wise: true`` for model_stock, a LoRA reference
``model+lora`` (give the peft adapter folder itself as a model), duplicate models. Members of
different architectures are refused by the driver's checks (run here before any work).

Known differences in the results: DARE below density 1 draws its masks from our per-tensor
generator and rescales by ``1/density`` (mergekit: global RNG, L1 norm restored), see
:mod:`aode.merge.dare`; linear with the base listed in the middle of ``models`` sums in another
order (last-bit differences). Parity with mergekit 0.1.5's outputs is tested in
tests/test_mergekit_config.py.
"""

import argparse
import collections
import difflib
import fnmatch
import functools
import logging
import os
import sys
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Optional

from .registry import REQUIRED
from .registry import MethodSpec
from .registry import get_spec
from .registry import mergekit_specs

__all__ = [
    "MergekitConfigError",
    "MergekitPlan",
    "SUPPORTED_METHODS",
    "read_mergekit_config",
    "prepare_merge",
    "hparams_from_mergekit",
    "merge_from_config",
    "main",
]

logger = logging.getLogger(__name__)


class MergekitConfigError(ValueError):
    """A mergekit configuration that cannot be merged here (the message names the key)."""


class _FromRegistry(Mapping):
    """``{mergekit method: value(spec)}`` over the registered methods that declare a mergekit
    mapping (``register(mergekit=...)``, :func:`aode.merge.registry.mergekit_specs`), read
    when asked: a method registered later is in it."""

    def __init__(self, value):
        self._value = value

    def _table(self):
        return {method: self._value(spec) for method, spec in mergekit_specs().items()}

    def __getitem__(self, key):
        return self._table()[key]

    def __iter__(self):
        return iter(self._table())

    def __len__(self):
        return len(self._table())

    def __repr__(self):
        return repr(self._table())


# mergekit method -> our method
SUPPORTED_METHODS = _FromRegistry(lambda spec: spec.name)
# mergekit method -> its parameters, {name: MergekitParam} with mergekit 0.1.5's defaults
MERGEKIT_PARAMETERS = _FromRegistry(lambda spec: spec.mergekit.parameters)
# mergekit 0.1.5's other methods (mergekit/merge_methods/registry.py), for the error message.
OTHER_MERGEKIT_METHODS = (
    "arcee_fusion",
    "della",
    "della_linear",
    "karcher",
    "multislerp",
    "nearswap",
    "nuslerp",
    "passthrough",
    "ram",
    "ramplus_tl",
    "sce",
)

RELATIVE = "a relative model path is relative to the working directory, as in mergekit"

TOP_LEVEL_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source")
REFUSED_TOP_LEVEL = {
    "slices": "slices (layer ranges stacked from several models) are not supported: we merge whole models; "
    "use models: [{model: ..., parameters: ...}, ...]",
    "modules": "modules (per-module merges) are not supported: we merge whole models; use models: [...]",
    "tokenizer": "tokenizer (building a merged vocabulary) is not supported: the members of an AoDE merge share "
    "one tokenizer, copied from the base (else the first member); leave it out",
    "chat_template": "chat_template is not supported (ASR models); leave it out",
}
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float64"}


# ------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Cond:
    filter: Optional[str]  # None or "*": every tensor
    value: Any

    def matches(self, name):
        return self.filter is None or self.filter == "*" or self.filter in name


@functools.lru_cache(maxsize=None)
def _adapter(kind):
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def _validate_scalar(value, param, where):
    from pydantic import ValidationError

    if isinstance(value, (dict, list)) or value is None:
        raise MergekitConfigError(f"{where}: expected a {param.kind.__name__}, got {value!r}")
    try:
        return _adapter(param.kind).validate_python(value)
    except ValidationError:
        raise MergekitConfigError(f"{where}: expected a {param.kind.__name__}, got {value!r}") from None


def _scalar_or_gradient(value, param, where):
    """A scalar, or a list of scalars (mergekit's gradient) whose values are all equal."""
    if isinstance(value, list):
        if not value:
            return None
        values = [_validate_scalar(v, param, where) for v in value]
        if any(v != values[0] for v in values):
            raise MergekitConfigError(
                f"{where}: the gradient {value!r} is not supported: mergekit interpolates it over its own "
                "architecture's layer numbering, which the ASR models merged here lack; give a scalar, or "
                "{filter: <part of the tensor name>, value: <scalar>} rules"
            )
        return values[0]
    return _validate_scalar(value, param, where)


def _parse_setting(setting, param, where):
    """mergekit's ParameterSetting as a list of conditions (empty: not set here)."""
    is_cond = lambda x: isinstance(x, dict)  # noqa: E731
    if is_cond(setting) or (isinstance(setting, list) and setting and all(is_cond(x) for x in setting)):
        items = setting if isinstance(setting, list) else [setting]
        conds = []
        for i, item in enumerate(items):
            at = f"{where}[{i}]" if isinstance(setting, list) else where
            unknown = sorted(set(item) - {"filter", "value"})
            if unknown or "value" not in item:
                raise MergekitConfigError(
                    f"{at}: a conditional parameter is {{filter: <part of the tensor name>, value: <scalar>}}, "
                    f"got {item!r}"
                )
            flt = item.get("filter")
            if flt is not None and not isinstance(flt, str):
                raise MergekitConfigError(f"{at}: filter must be a string, got {flt!r}")
            value = _scalar_or_gradient(item["value"], param, at)
            if value is not None:
                conds.append(_Cond(flt, value))
        return conds
    if isinstance(setting, list) and any(isinstance(x, dict) for x in setting):
        raise MergekitConfigError(f"{where}: a list mixes {{filter, value}} rules and scalars: {setting!r}")
    value = _scalar_or_gradient(setting, param, where)
    return [] if value is None else [_Cond(None, value)]


def _chain(scopes, param):
    """The conditions in the order mergekit tries them (unreachable ones dropped), then the
    default as a catch-all; ``None`` stands for a missing required value."""
    chain = []
    for scope in scopes:
        for cond in scope:
            chain.append(cond)
            if cond.filter is None or cond.filter == "*":
                return chain
    chain.append(_Cond(None, None if param.default is REQUIRED else param.default))
    return chain


def _resolve(chain, name):
    for cond in chain:
        if cond.matches(name):
            return cond.value
    return None  # unreachable: the chain ends with a catch-all


def _values(chain):
    return {cond.value for cond in chain}


def _single(chains, key, param, what="one value"):
    """The one value every chain can take, else an error naming ``key`` (whose
    :class:`~aode.merge.registry.MergekitParam` is ``param``)."""
    values = set()
    for chain in chains:
        values |= _values(chain)
    if len(values) != 1:
        shown = sorted(values, key=repr)
        raise MergekitConfigError(
            f"parameter {key!r} takes the values {shown} here (per model, per tensor filter, or the default "
            f"{param.default!r} where nothing is given); ours takes {what} for all "
            f"members and tensors: give {key} once, or the same value everywhere"
        )
    return values.pop()


# ----------------------------------------------------------------------------- plan


@dataclass
class MergekitPlan:
    """A mergekit configuration mapped onto our merge.

    ``members`` and ``base`` are model references as written in the configuration (for the
    driver: ``members``, ``base``, ``include_base``); the weights need the tensor names when
    they vary by tensor, so :func:`prepare_merge` computes ``weights`` and ``weight_rules``.
    """

    source: str
    mergekit_method: str
    method: str
    members: list
    base: Optional[str]
    base_model: Optional[str]
    include_base: bool
    options: dict
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None
    notes: list = field(default_factory=list)
    # per input (members, then the base with include_base): mergekit's conditions for the
    # weight, and a fixed t for slerp's weights when t has filter rules
    weight_chains: Optional[list] = None
    slerp_t_chain: Optional[list] = None

    @property
    def n_inputs(self) -> int:
        return len(self.members) + (1 if self.include_base else 0)

    @property
    def weights_vary_by_tensor(self) -> bool:
        if self.slerp_t_chain is not None:
            return True
        return self.weight_chains is not None and any(len(_values(c)) > 1 for c in self.weight_chains)

    def weights_for(self, name: str) -> Optional[tuple]:
        """The weights of tensor ``name`` as mergekit resolves them (None: all 1)."""
        if self.slerp_t_chain is not None:
            t = _resolve(self.slerp_t_chain, name)
            if t is None:
                raise MergekitConfigError(
                    f"parameter 't' is not given for tensor {name!r}: no filter matches it and mergekit's slerp "
                    "has no default; add a rule without filter ({value: ...}) or a scalar t"
                )
            return (1.0 - t, t)
        if self.weight_chains is None:
            return None
        weights = []
        for ref, chain in zip(self._input_refs(), self.weight_chains):
            w = _resolve(chain, name)
            if w is None:
                raise MergekitConfigError(
                    f"parameter 'weight' of model {ref!r} is not given for tensor {name!r}: mergekit's "
                    f"{self.mergekit_method} has no default weight; give it under the model's parameters, "
                    "under the top-level parameters, or as a rule without filter"
                )
            weights.append(float(w))
        return tuple(weights)

    def _input_refs(self):
        return self.members + ([self.base] if self.include_base else [])

    def summary(self) -> str:
        base = f", base {self.base}" + (" (also a member)" if self.include_base else "") if self.base else ""
        return (
            f"mergekit {self.mergekit_method} -> {self.method}: {len(self.members)} members{base}, "
            f"options {self.options}"
        )


def _load(config):
    import yaml

    if isinstance(config, dict):
        return dict(config), "<mergekit config>"
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise MergekitConfigError(f"mergekit config not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise MergekitConfigError(f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise MergekitConfigError("a mergekit config is a mapping (merge_method, models, ...)")
    return data, path


def _model_ref(value, where):
    if isinstance(value, dict):
        raise MergekitConfigError(
            f"{where}: give the model as a folder path or hub id (a string); structured references "
            f"(path/revision/lora) are not supported, got {value!r}"
        )
    if not isinstance(value, str) or not value:
        raise MergekitConfigError(f"{where}: a model is a folder path or hub id, got {value!r}")
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        if "+" in value:
            raise MergekitConfigError(
                f"{where}: {value!r} looks like mergekit's model+lora reference, which is not supported; "
                "give the peft LoRA adapter folder itself as a model (the driver folds it onto its base)"
            )
        if "@" in value:
            raise MergekitConfigError(
                f"{where}: {value!r} looks like mergekit's model@revision reference, which is not supported; "
                "give a folder or a hub id without revision"
            )
    return path


def _same(a, b):
    return a is not None and b is not None and os.path.normpath(a) == os.path.normpath(b)


def _dtype(value, key):
    if value is None:
        return None
    name = str(value)
    name = name[len("torch.") :] if name.startswith("torch.") else name
    if name not in DTYPES:
        raise MergekitConfigError(f"{key}: unknown dtype {value!r}; known: {list(DTYPES)}")
    return name


def _check_top_level(data: dict) -> None:
    """Refused and unknown top-level keys, named."""
    for key in data:
        if key in REFUSED_TOP_LEVEL and data[key] is not None:
            raise MergekitConfigError(REFUSED_TOP_LEVEL[key])
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS and k not in REFUSED_TOP_LEVEL]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1, cutoff=0.6)
            hints.append(f"unknown mergekit config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise MergekitConfigError(
            "; ".join(hints) + f"; known: {list(TOP_LEVEL_KEYS)} (slices, modules, tokenizer, chat_template: refused)"
        )


def _method(data: dict) -> tuple[str, MethodSpec]:
    """mergekit's ``merge_method`` and the spec of our method that declares it."""
    method = data.get("merge_method")
    supported = mergekit_specs()
    if not isinstance(method, str):
        raise MergekitConfigError(f"merge_method is missing or not a name; supported: {sorted(supported)}")
    if method not in supported:
        what = "a mergekit method that is not available here" if method in OTHER_MERGEKIT_METHODS else "unknown"
        raise MergekitConfigError(
            f"merge_method {method!r} is {what}; supported mergekit methods: "
            + ", ".join(f"{k} (ours: {spec.name})" for k, spec in supported.items())
        )
    return method, get_spec(supported[method].name)


@dataclass
class _Models:
    """``models`` and ``base_model`` as read: each model's reference and its own parameters."""

    refs: list  # the models' paths (expanded)
    written: list  # the models as the configuration writes them (for errors)
    own: list  # each model's own parameters (a dict)
    base_model: Any  # base_model as written (None: not given)
    base_ref: Optional[str]
    base_index: Optional[int]  # where base_model is among the models (None: not listed)

    @classmethod
    def read(cls, data: dict) -> "_Models":
        models = data.get("models")
        if not isinstance(models, list) or not models:
            raise MergekitConfigError("models must list the models to merge ([{model: path}, ...])")
        refs, written, own = [], [], []
        for i, entry in enumerate(models):
            where = f"models[{i}]"
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, dict) or "model" not in entry:
                raise MergekitConfigError(f"{where}: expected {{model: <folder>, parameters: {{...}}}}, got {entry!r}")
            extra = sorted(set(entry) - {"model", "parameters"})
            if extra:
                raise MergekitConfigError(f"{where}: unknown key(s) {extra}; a model entry has model and parameters")
            ref = _model_ref(entry["model"], f"{where}.model")
            if any(_same(ref, r) for r in refs):
                raise MergekitConfigError(
                    f"{where}: model {entry['model']!r} is listed twice (mergekit refuses it too)"
                )
            params = entry.get("parameters") or {}
            if not isinstance(params, dict):
                raise MergekitConfigError(f"{where}.parameters must be a mapping, got {params!r}")
            refs.append(ref)
            written.append(entry["model"])
            own.append(params)
        base_model = data.get("base_model")
        base_ref = _model_ref(base_model, "base_model") if base_model is not None else None
        base_index = next((i for i, r in enumerate(refs) if _same(r, base_ref)), None)
        return cls(refs, written, own, base_model, base_ref, base_index)

    def others(self) -> list:
        """The indices of the models that are not base_model."""
        return [i for i in range(len(self.refs)) if i != self.base_index]

    def label(self, i: Optional[int]) -> Any:
        """Model ``i`` (None: base_model when not listed) as written."""
        return self.base_model if i is None or i == self.base_index else self.written[i]


@dataclass
class _Parameters:
    """The top-level and per-model ``parameters`` of mergekit's ``method``, parsed into
    conditions (checked against the method's parameters, each where mergekit reads it)."""

    method: str
    spec: Mapping  # {name: MergekitParam}
    glob: dict  # {name: conditions} of the top-level parameters
    own: list  # per model, {name: conditions}

    @classmethod
    def read(cls, data: dict, models: _Models, method: str, spec: Mapping) -> "_Parameters":
        glob = data.get("parameters") or {}
        if not isinstance(glob, dict):
            raise MergekitConfigError(f"parameters must be a mapping, got {glob!r}")
        known = sorted(spec)
        for key in glob:
            if key not in spec:
                raise MergekitConfigError(
                    f"parameters: unknown parameter {key!r} for mergekit's {method} (mergekit would ignore it); "
                    f"its parameters: {known}"
                )
        for i, params in enumerate(models.own):
            for key in params:
                if key not in spec:
                    raise MergekitConfigError(
                        f"models[{i}].parameters: unknown parameter {key!r} for mergekit's {method} (mergekit would "
                        f"ignore it); its parameters: {known}"
                    )
                if spec[key].scope == "shared":
                    raise MergekitConfigError(
                        f"models[{i}].parameters: {key!r} is a global parameter of mergekit's {method}: give it "
                        "under the top-level parameters (mergekit ignores it under a model)"
                    )
        glob_conds = {k: _parse_setting(v, spec[k], f"parameters.{k}") for k, v in glob.items()}
        own_conds = [
            {k: _parse_setting(v, spec[k], f"models[{i}].parameters.{k}") for k, v in params.items()}
            for i, params in enumerate(models.own)
        ]
        return cls(method, spec, glob_conds, own_conds)

    def shared_chain(self, key: str) -> list:
        return _chain([self.glob.get(key, [])], self.spec[key])

    def input_chain(self, i: Optional[int], key: str) -> list:
        """Model ``i``'s conditions for ``key`` (None: base_model when not listed)."""
        scopes = [self.own[i].get(key, []) if i is not None else [], self.glob.get(key, [])]
        return _chain(scopes, self.spec[key])

    def single(self, key: str, inputs: list) -> Any:
        """The one value of ``key`` (over ``inputs``' models when it is per model), cast to its kind."""
        param = self.spec[key]
        if param.scope == "shared":
            chains = [self.shared_chain(key)]
        else:
            chains = [self.input_chain(i, key) for i in inputs]
        return param.kind(_single(chains, key, param))


@dataclass
class _Inputs:
    """What base_model and the models are to our merge (one of the base_model roles)."""

    members: list
    base: Optional[str]
    include_base: bool = False
    inputs: list = field(default_factory=list)  # model indices per input (None: base_model, unlisted)
    weighted: bool = False  # mergekit's weight gives our weights
    options: dict = field(default_factory=dict)
    slerp_t_chain: Optional[list] = None


def _require_base(models: _Models, method: str) -> None:
    if models.base_ref is None:
        raise MergekitConfigError(f"base_model is missing: mergekit's {method} needs one")


def _base_as_original(models, params, method, spec, notes) -> _Inputs:
    """base_model is the original of the task vectors (our ``base``), listed or not."""
    _require_base(models, method)
    member_idx = models.others()
    if models.base_index is not None and models.own[models.base_index]:
        notes.append(f"the parameters of base_model {models.base_model!r} under models are ignored (as by mergekit)")
    members = [models.refs[i] for i in member_idx]
    if spec.min_members > 1 and len(members) < spec.min_members:
        raise MergekitConfigError(
            f"models: mergekit's {method} needs at least {spec.min_members} models besides base_model, "
            f"got {len(members)}"
        )
    if not members:
        raise MergekitConfigError(f"models: no model to merge besides base_model {models.base_model!r}")
    return _Inputs(members, models.base_ref, inputs=member_idx, weighted=spec.mergekit.weights)


def _base_as_member(models, params, method, spec, notes) -> _Inputs:
    """base_model, when given, is one more member (mergekit's linear adds it to the models)."""
    member_idx = models.others()
    include_base = models.base_ref is not None
    if include_base:
        notes.append(
            (
                logging.INFO,
                f"{method}: base_model {models.base_model!r} is averaged in as one more member (as mergekit does), "
                "weighted last",
            )
        )
    if not member_idx and not include_base:
        raise MergekitConfigError("models: nothing to merge")
    return _Inputs(
        [models.refs[i] for i in member_idx],
        models.base_ref,
        include_base=include_base,
        inputs=member_idx + ([models.base_index] if include_base else []),
        weighted=spec.mergekit.weights,
    )


def _base_as_start(models, params, method, spec, notes) -> _Inputs:
    """base_model is the t = 0 end and the one other model the t = 1 end: ours merges
    ``[base_model, other]``; ``t`` is our option, or weights [1 - t, t] when it varies by tensor."""
    _require_base(models, method)
    others = [models.refs[i] for i in models.others()]
    if len(others) != 1:
        raise MergekitConfigError(
            f"models: mergekit's {method} merges base_model and exactly one other model, got {len(others)} others"
        )
    inputs = _Inputs([models.base_ref, others[0]], None)
    chain = params.shared_chain("t")
    if len(_values(chain)) == 1:
        t = chain[0].value
        if t is None:
            raise MergekitConfigError(f"parameters.t is missing: mergekit's {method} needs it (0 = base_model)")
        inputs.options["t"] = float(t)
    else:
        inputs.slerp_t_chain = chain
        notes.append((logging.INFO, f"{method}: t varies by tensor: mapped to weights [1 - t, t] per tensor"))
    return inputs


# MergekitMapping.base_model -> how the models and base_model become our inputs
BASE_MODEL_ROLES = {"original": _base_as_original, "member": _base_as_member, "start": _base_as_start}


def _weight_chains(models: _Models, params: _Parameters, inputs: _Inputs) -> Optional[list]:
    """Each input's conditions for mergekit's ``weight`` (None: the method takes no weights);
    an input without a weight whatever the tensor is an error now."""
    if not inputs.weighted:
        return None
    chains = [params.input_chain(i, "weight") for i in inputs.inputs]
    for i, chain in zip(inputs.inputs, chains):
        if all(c.value is None for c in chain):
            raise MergekitConfigError(
                f"parameter 'weight' of model {models.label(i)!r} is missing: mergekit's {params.method} needs a "
                "weight for every model (under the model's parameters, or once under the top-level parameters)"
            )
    return chains


def _options(mapping, params: _Parameters, inputs: _Inputs, notes: list) -> dict:
    """Our options from mergekit's parameters, as the method's mapping declares: every parameter
    read (one value each), the refused values refused, the mapped ones renamed, notes added."""
    method = params.method
    consumed = {"weight"} | ({"t"} if mapping.base_model == "start" else set())
    values = {key: params.single(key, inputs.inputs) for key in mapping.parameters if key not in consumed}
    for key, why in mapping.refused.items():
        if values[key]:
            raise MergekitConfigError(f"parameters.{key}: true is not supported for {method} {why}")
    if mapping.notes is not None:
        notes.extend(mapping.notes(method, values))
    return {ours: values[theirs] for ours, theirs in mapping.options.items()}


def _output_settings(data: dict, models: _Models, notes: list) -> tuple:
    """``(dtype, out_dtype, tokenizer_source)``, checked."""
    dtype = _dtype(data.get("dtype"), "dtype")
    if dtype == "float64":
        raise MergekitConfigError("dtype: float64 is not supported: ours computes in float32")
    if dtype is not None:
        note = f"dtype {dtype}: ours computes every merge in float32 and writes the members' dtype"
        notes.append((logging.INFO, note) if dtype == "float32" else f"{note} (mergekit would compute in {dtype})")
    out_dtype = _dtype(data.get("out_dtype"), "out_dtype")
    tokenizer_source = data.get("tokenizer_source")
    if tokenizer_source is not None:
        if tokenizer_source == "union":
            raise MergekitConfigError(
                "tokenizer_source: union (a merged vocabulary) is not supported: the members must share one "
                "tokenizer; use base or leave it out"
            )
        if tokenizer_source == "base":
            if models.base_ref is None:
                raise MergekitConfigError("tokenizer_source: base needs base_model")
        else:
            ref = _model_ref(tokenizer_source, "tokenizer_source")
            if not any(_same(ref, r) for r in models.refs + [models.base_ref]):
                raise MergekitConfigError(
                    f"tokenizer_source: {tokenizer_source!r} is not one of the models; ours copies the tokenizer "
                    "(processor files) from the base, else the first member"
                )
    return dtype, out_dtype, tokenizer_source


def read_mergekit_config(config: str | os.PathLike | dict) -> MergekitPlan:
    """A mergekit YAML file (or its dict) read, checked and mapped onto our merge through the
    mergekit mapping its method's registration declares (``register(mergekit=...)``).

    Reads no model file: :func:`prepare_merge` adds what needs the members' headers.
    Raises :class:`MergekitConfigError` naming the key of the first problem.
    """
    data, source = _load(config)
    _check_top_level(data)
    method, spec = _method(data)
    mapping = spec.mergekit
    models = _Models.read(data)
    params = _Parameters.read(data, models, method, mapping.parameters)
    notes = []
    inputs = BASE_MODEL_ROLES[mapping.base_model](models, params, method, spec, notes)
    weight_chains = _weight_chains(models, params, inputs)
    options = {**inputs.options, **_options(mapping, params, inputs, notes)}
    dtype, out_dtype, tokenizer_source = _output_settings(data, models, notes)
    return MergekitPlan(
        source=source,
        mergekit_method=method,
        method=spec.name,
        members=inputs.members,
        base=inputs.base,
        base_model=models.base_ref,
        include_base=inputs.include_base,
        options=options,
        dtype=dtype,
        out_dtype=out_dtype,
        tokenizer_source=tokenizer_source,
        notes=notes,
        weight_chains=weight_chains,
        slerp_t_chain=inputs.slerp_t_chain,
    )


# ----------------------------------------------------------------- weights per tensor


def _escape(text):
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _first_rule(rules, name, default):
    for pattern, w in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return w
    return default


def weight_rules_for(plan: MergekitPlan, names: Sequence[str]) -> tuple[Optional[list], Optional[list]]:
    """``(weights, weight_rules)`` giving every tensor in ``names`` mergekit's weights.

    Compact rules ``*filter*`` in the order the filters first appear when they reproduce
    every tensor's weights; else one exact-name rule per tensor that differs from the most
    common weights. Checked against every name with the driver's own first-match rule.
    """
    exact = {name: plan.weights_for(name) for name in names}
    if not exact or all(w is None for w in exact.values()):
        return None, None
    counts = collections.Counter(exact.values())
    if len(counts) == 1:
        return list(next(iter(counts))), None
    chains = [plan.slerp_t_chain] if plan.slerp_t_chain is not None else plan.weight_chains
    filters = []
    for chain in chains:
        for cond in chain:
            if cond.filter is not None and cond.filter != "*" and cond.filter not in filters:
                filters.append(cond.filter)
    rules, default = [], None
    groups = collections.defaultdict(set)
    for name, w in exact.items():
        first = next((f for f in filters if f in name), None)
        groups[first].add(w)
    if all(len(v) == 1 for v in groups.values()):
        rules = [(f"*{_escape(f)}*", next(iter(groups[f]))) for f in filters if f in groups]
        default = next(iter(groups[None])) if None in groups else rules[-1][1]
    if not rules or any(_first_rule(rules, n, default) != w for n, w in exact.items()):
        default = counts.most_common(1)[0][0]
        rules = [(_escape(n), w) for n, w in exact.items() if w != default]
    return list(default), [[p, list(w)] for p, w in rules]


# ------------------------------------------------------------------------- prepare


def prepare_merge(
    plan: MergekitPlan,
    members: Optional[Sequence[str]] = None,
    base: Optional[str] = None,
    include_base: Optional[bool] = None,
    seed: int = 0,
) -> dict:
    """The keyword arguments of :func:`aode.merge.merge_models` for ``plan``.

    ``members``/``base``/``include_base`` default to the plan's (the recipe passes the
    resolved folders and its original). Opens the inputs' headers (no tensor is read) to run
    the driver's checks (configs, tensor names and shapes), resolve per-tensor weights and
    check ``out_dtype``. Raises :class:`MergekitConfigError`.
    """
    from .checks import check_configs
    from .checks import check_options
    from .checks import check_tensors
    from .driver import MergePlan
    from .read import open_model

    if members is None:
        members, base = plan.members, plan.base
    members = list(members)
    include_base = plan.include_base if include_base is None else include_base
    opened = []
    try:
        try:
            for i, m in enumerate(members):
                opened.append(open_model(m, f"member {i} '{m}'"))
            if base is not None:
                opened.append(open_model(base, f"base '{base}'"))
            check_configs(opened)
            check_tensors(opened)
        except FileNotFoundError as err:
            raise MergekitConfigError(f"{err} ({RELATIVE})") from None
        except (OSError, ValueError) as err:
            raise MergekitConfigError(str(err)) from None
        infos = opened[0].infos
    finally:
        for src in opened:
            src.close()
    float_names = [n for n, info in infos.items() if info.dtype.is_floating_point]
    weights, weight_rules = weight_rules_for(plan, float_names)
    if plan.out_dtype is not None:
        dtypes = sorted({str(infos[n].dtype).replace("torch.", "") for n in float_names})
        if dtypes != [plan.out_dtype]:
            raise MergekitConfigError(
                f"out_dtype: {plan.out_dtype} but the members' tensors are {', '.join(dtypes)}; ours writes the "
                "first member's dtype (no cast): leave out_dtype out or convert the members"
            )
    kwargs = dict(
        members=members,
        method=plan.method,
        weights=weights,
        base=base,
        include_base=include_base,
        weight_rules=weight_rules,
        options=dict(plan.options),
        seed=seed,
    )
    try:
        checked = MergePlan(**kwargs)
        check_options(checked.spec, checked.options, {})
    except ValueError as err:
        raise MergekitConfigError(str(err)) from None
    for note in plan.notes:  # (level, text), or text: a warning
        level, text = note if isinstance(note, tuple) else (logging.WARNING, note)
        logger.log(level, "%s: %s", plan.source, text)
    logger.info("%s", plan.summary())
    return kwargs


# --------------------------------------------------------------------- the recipe


MERGE_KEYS = ("experts", "method", "weights", "method_options", "include_original", "weight_rules")


def hparams_from_mergekit(
    hp: dict, config: str | os.PathLike | dict, overrides: dict | str | None = None
) -> tuple[dict, MergekitPlan]:
    """The recipe's hparams with the merge part taken from a mergekit config.

    Sets ``experts`` (named as in the hparams when the folder is one of its experts, else as
    written in the mergekit config), ``original`` (mergekit's base_model when the method
    uses it as the original), ``method``, ``weights``, ``method_options``,
    ``include_original``, ``weight_rules``. Refuses command-line overrides of those keys.
    Returns ``(hparams, plan)``; the recipe calls :func:`prepare_merge` once the folders
    are resolved.
    """
    import yaml

    plan = read_mergekit_config(config)
    given = overrides if isinstance(overrides, dict) else (yaml.safe_load(overrides) if overrides else None) or {}
    keys = MERGE_KEYS + (("original",) if plan.base is not None else ())
    clash = [k for k in keys if k in given]
    if clash:
        raise MergekitConfigError(
            f"--mergekit_config gives the merge; {', '.join('--' + k for k in clash)} cannot be given with it "
            "(put them in the mergekit config)"
        )
    from aode.models import resolve_model_folder

    for ref in plan.members + ([plan.base] if plan.base is not None else []):
        try:
            resolve_model_folder(ref)
        except FileNotFoundError as err:
            raise MergekitConfigError(f"{err} ({RELATIVE})") from None
    hp = dict(hp)
    norm = lambda p: os.path.abspath(os.path.expanduser(str(p)))  # noqa: E731
    known = {norm(p): name for name, p in (hp.get("experts") or {}).items()}
    experts = collections.OrderedDict()
    for ref in plan.members:
        name = known.get(norm(ref), ref)
        experts[name] = ref
    dropped = [name for name in (hp.get("experts") or {}) if name not in experts]
    if dropped:
        logger.warning("experts %s of the hparams are not in the mergekit config: not merged nor evaluated", dropped)
    hp["experts"] = dict(experts)
    if plan.base is not None:
        hp["original"] = plan.base
    hp["method"] = plan.method
    hp["method_options"] = dict(plan.options)
    hp["include_original"] = plan.include_base
    hp["weights"] = None  # set by prepare_merge
    hp["weight_rules"] = None
    return hp, plan


# ---------------------------------------------------------------------- standalone


def merge_from_config(
    config: str | os.PathLike | dict,
    output: str | os.PathLike,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Merge as the mergekit config says into the model folder ``output``; returns it."""
    from .driver import merge_models

    plan = read_mergekit_config(config)
    kwargs = prepare_merge(plan, seed=seed)
    return merge_models(output=output, progress=progress, overwrite=overwrite, **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aode.merge.mergekit_config",
        description="Merge model folders as a mergekit YAML config says (mergekit-yaml's format, whole models).",
    )
    parser.add_argument("config", help="mergekit YAML config (merge_method, base_model, models, parameters, ...)")
    parser.add_argument("output", help="the merged model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random methods (DARE) per tensor")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if os.path.exists(args.output) and not args.overwrite:
            raise MergekitConfigError(f"{args.output} exists; pass --overwrite to replace it")
        out = merge_from_config(
            args.config, args.output, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet
        )
    except MergekitConfigError as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return 2
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    from aode.cli import run_main

    sys.exit(run_main(main))
