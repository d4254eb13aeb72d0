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
``lam``). Each mergekit default is passed explicitly, so ours never applies its own:

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
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Optional

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


# mergekit method -> our method
SUPPORTED_METHODS = {
    "linear": "average",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare_linear": "dare_linear",
    "dare_ties": "dare_ties",
    "breadcrumbs": "breadcrumbs",
    "breadcrumbs_ties": "breadcrumbs_ties",
    "slerp": "slerp",
    "model_stock": "model_stock",
}
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
REQUIRED = object()  # a mergekit parameter without a default


@dataclass(frozen=True)
class _Param:
    scope: str  # "shared" (top-level only), "input" (per model, the base too), "non_base"
    kind: type  # float or bool
    default: Any = REQUIRED


def _gta(normalize, rescale, gamma=False):
    """mergekit's GeneralizedTaskArithmeticMerge parameters (generalized_task_arithmetic.py)."""
    params = {
        "int8_mask": _Param("shared", bool, False),
        "normalize": _Param("shared", bool, normalize),
        "rescale": _Param("shared", bool, rescale),
        "lambda": _Param("shared", float, 1.0),
        "weight": _Param("non_base", float),
        "density": _Param("non_base", float, 1.0),
    }
    if gamma:
        params["gamma"] = _Param("non_base", float, 0.01)
    return params


# mergekit 0.1.5's parameter specs of the methods we support, with their defaults.
MERGEKIT_PARAMETERS = {
    "linear": {"weight": _Param("input", float), "normalize": _Param("shared", bool, True)},
    "task_arithmetic": _gta(normalize=False, rescale=False),
    "ties": _gta(normalize=True, rescale=False),
    "dare_linear": _gta(normalize=False, rescale=True),
    "dare_ties": _gta(normalize=False, rescale=True),
    "breadcrumbs": _gta(normalize=False, rescale=False, gamma=True),
    "breadcrumbs_ties": _gta(normalize=False, rescale=False, gamma=True),
    "slerp": {"t": _Param("shared", float)},
    "model_stock": {"filter_wise": _Param("shared", bool, False)},
}
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties")

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


def _single(chains, key, method, what="one value"):
    """The one value every chain can take, else an error naming ``key``."""
    values = set()
    for chain in chains:
        values |= _values(chain)
    if len(values) != 1:
        shown = sorted(values, key=repr)
        raise MergekitConfigError(
            f"parameter {key!r} takes the values {shown} here (per model, per tensor filter, or the default "
            f"{MERGEKIT_PARAMETERS[method][key].default!r} where nothing is given); ours takes {what} for all "
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
    def n_inputs(self):
        return len(self.members) + (1 if self.include_base else 0)

    @property
    def weights_vary_by_tensor(self):
        if self.slerp_t_chain is not None:
            return True
        return self.weight_chains is not None and any(len(_values(c)) > 1 for c in self.weight_chains)

    def weights_for(self, name):
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

    def summary(self):
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


def read_mergekit_config(config) -> MergekitPlan:
    """A mergekit YAML file (or its dict) read, checked and mapped onto our merge.

    Reads no model file: :func:`prepare_merge` adds what needs the members' headers.
    Raises :class:`MergekitConfigError` naming the key of the first problem.
    """
    from .registry import get_spec

    data, source = _load(config)
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

    method = data.get("merge_method")
    if not isinstance(method, str):
        raise MergekitConfigError(f"merge_method is missing or not a name; supported: {sorted(SUPPORTED_METHODS)}")
    if method not in SUPPORTED_METHODS:
        what = "a mergekit method that is not available here" if method in OTHER_MERGEKIT_METHODS else "unknown"
        raise MergekitConfigError(
            f"merge_method {method!r} is {what}; supported mergekit methods: "
            + ", ".join(f"{k} (ours: {v})" for k, v in SUPPORTED_METHODS.items())
        )
    ours = SUPPORTED_METHODS[method]
    get_spec(ours)  # registered
    spec = MERGEKIT_PARAMETERS[method]
    notes = []

    # --- models and base
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise MergekitConfigError("models must list the models to merge ([{model: path}, ...])")
    refs, own = [], []
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
            raise MergekitConfigError(f"{where}: model {entry['model']!r} is listed twice (mergekit refuses it too)")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise MergekitConfigError(f"{where}.parameters must be a mapping, got {params!r}")
        refs.append(ref)
        own.append(params)
    base_model = data.get("base_model")
    base_ref = _model_ref(base_model, "base_model") if base_model is not None else None
    base_index = next((i for i, r in enumerate(refs) if _same(r, base_ref)), None)

    # --- parameters: names and placement
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
    for i, params in enumerate(own):
        for key in params:
            if key not in spec:
                raise MergekitConfigError(
                    f"models[{i}].parameters: unknown parameter {key!r} for mergekit's {method} (mergekit would "
                    f"ignore it); its parameters: {known}"
                )
            if spec[key].scope == "shared":
                raise MergekitConfigError(
                    f"models[{i}].parameters: {key!r} is a global parameter of mergekit's {method}: give it under "
                    "the top-level parameters (mergekit ignores it under a model)"
                )
    glob_conds = {k: _parse_setting(v, spec[k], f"parameters.{k}") for k, v in glob.items()}
    own_conds = [
        {k: _parse_setting(v, spec[k], f"models[{i}].parameters.{k}") for k, v in params.items()}
        for i, params in enumerate(own)
    ]

    def shared_chain(key):
        return _chain([glob_conds.get(key, [])], spec[key])

    def input_chain(i, key):
        scopes = [own_conds[i].get(key, []) if i is not None else [], glob_conds.get(key, [])]
        return _chain(scopes, spec[key])

    # --- inputs per method
    include_base = False
    weight_inputs = None  # indices into refs (None: the base when not listed)
    slerp_t_chain = None
    options = {}
    if method in TASK_VECTOR_METHODS or method in ("model_stock", "slerp"):
        if base_ref is None:
            raise MergekitConfigError(f"base_model is missing: mergekit's {method} needs one")
    if method in TASK_VECTOR_METHODS or method == "model_stock":
        member_idx = [i for i in range(len(refs)) if i != base_index]
        if base_index is not None and own[base_index]:
            notes.append(f"the parameters of base_model {base_model!r} under models are ignored (as by mergekit)")
        members = [refs[i] for i in member_idx]
        base = base_ref
        if method == "model_stock" and len(members) < 2:
            raise MergekitConfigError(
                f"models: mergekit's model_stock needs at least two models besides base_model, got {len(members)}"
            )
        if not members:
            raise MergekitConfigError(f"models: no model to merge besides base_model {base_model!r}")
        weight_inputs = member_idx if method != "model_stock" else None
    elif method == "linear":
        member_idx = [i for i in range(len(refs)) if i != base_index]
        members = [refs[i] for i in member_idx]
        base = base_ref
        include_base = base_ref is not None
        weight_inputs = member_idx + ([base_index] if include_base else [])
        if include_base:
            notes.append(
                (
                    logging.INFO,
                    f"linear: base_model {base_model!r} is averaged in as one more member (as mergekit does), "
                    "weighted last",
                )
            )
        if not members and not include_base:
            raise MergekitConfigError("models: nothing to merge")
    else:  # slerp: base_model is the t = 0 end
        others = [r for i, r in enumerate(refs) if i != base_index]
        if len(others) != 1:
            raise MergekitConfigError(
                f"models: mergekit's slerp merges base_model and exactly one other model, got {len(others)} others"
            )
        members = [base_ref, others[0]]
        base = None
        chain = shared_chain("t")
        if len(_values(chain)) == 1:
            t = chain[0].value
            if t is None:
                raise MergekitConfigError("parameters.t is missing: mergekit's slerp needs it (0 = base_model)")
            options["t"] = float(t)
        else:
            slerp_t_chain = chain
            notes.append((logging.INFO, "slerp: t varies by tensor: mapped to weights [1 - t, t] per tensor"))

    # --- weights
    weight_chains = None
    if weight_inputs is not None:
        weight_chains = [input_chain(i, "weight") for i in weight_inputs]
        for i, chain in zip(weight_inputs, weight_chains):  # missing whatever the tensor: an error now
            if all(c.value is None for c in chain):
                ref = base_model if i is None or i == base_index else data["models"][i]
                ref = ref["model"] if isinstance(ref, dict) else ref
                raise MergekitConfigError(
                    f"parameter 'weight' of model {ref!r} is missing: mergekit's {method} needs a weight for "
                    "every model (under the model's parameters, or once under the top-level parameters)"
                )

    # --- options
    def per_input_single(key):
        return _single([input_chain(i, key) for i in weight_inputs], key, method)

    def shared_single(key):
        return _single([shared_chain(key)], key, method)

    if method == "linear":
        options["normalize"] = bool(shared_single("normalize"))
    elif method in TASK_VECTOR_METHODS:
        lam = float(shared_single("lambda"))
        normalize = bool(shared_single("normalize"))
        rescale = bool(shared_single("rescale"))
        density = float(per_input_single("density"))
        shared_single("int8_mask")  # accepted (a memory saving, same result) and ignored
        if method == "task_arithmetic":
            options.update(lam=lam, normalize=normalize)
            if density != 1.0 or rescale:
                notes.append("task_arithmetic: density and rescale are ignored (mergekit ignores them too)")
        elif method == "ties":
            if rescale:
                raise MergekitConfigError(
                    "parameters.rescale: true is not supported for ties (ours has no L1 rescale); remove it"
                )
            options.update(density=density, lam=lam, normalize=normalize)
        elif method == "dare_linear":
            if normalize:
                raise MergekitConfigError(
                    "parameters.normalize: true is not supported for dare_linear (ours sums the weighted task "
                    "vectors, mergekit's default); remove it or use dare_ties"
                )
            options.update(density=density, lam=lam, rescale=rescale)
        elif method == "dare_ties":
            options.update(density=density, lam=lam, rescale=rescale, normalize=normalize)
        else:
            gamma = float(per_input_single("gamma"))
            options.update(density=density, gamma=gamma, lam=lam, normalize=normalize, rescale=rescale)
        if method.startswith("dare") and density < 1:
            notes.append(
                f"{method}: density {density} < 1: our masks come from a per-tensor generator (seeded by the merge "
                "seed) and rescale divides by the density; mergekit draws from its global RNG and restores the L1 "
                "norm: the result is not mergekit's bit for bit (see aode.merge.dare)"
            )
    elif method == "model_stock":
        if shared_single("filter_wise"):
            raise MergekitConfigError(
                "parameters.filter_wise: true is not supported for model_stock (ours: one ratio per tensor)"
            )

    # --- dtype, out_dtype, tokenizer
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
            if base_ref is None:
                raise MergekitConfigError("tokenizer_source: base needs base_model")
        else:
            ref = _model_ref(tokenizer_source, "tokenizer_source")
            if not any(_same(ref, r) for r in refs + [base_ref]):
                raise MergekitConfigError(
                    f"tokenizer_source: {tokenizer_source!r} is not one of the models; ours copies the tokenizer "
                    "(processor files) from the base, else the first member"
                )
    plan = MergekitPlan(
        source=source,
        mergekit_method=method,
        method=ours,
        members=members,
        base=base,
        base_model=base_ref,
        include_base=include_base,
        options=options,
        dtype=dtype,
        out_dtype=out_dtype,
        tokenizer_source=tokenizer_source,
        notes=notes,
        weight_chains=weight_chains,
        slerp_t_chain=slerp_t_chain,
    )
    return plan


# ----------------------------------------------------------------- weights per tensor


def _escape(text):
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _first_rule(rules, name, default):
    for pattern, w in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return w
    return default


def weight_rules_for(plan, names):
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


def prepare_merge(plan, members=None, base=None, include_base=None, seed=0):
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


def hparams_from_mergekit(hp, config, overrides=None):
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


def merge_from_config(config, output, seed=0, overwrite=False, progress=True):
    """Merge as the mergekit config says into the model folder ``output``; returns it."""
    from .driver import merge_models

    plan = read_mergekit_config(config)
    kwargs = prepare_merge(plan, seed=seed)
    return merge_models(output=output, progress=progress, overwrite=overwrite, **kwargs)


def main(argv=None):
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
