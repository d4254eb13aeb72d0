"""The routed model (issue 20): one base model, each domain expert as a compact delta
(:mod:`aode.compact`), a router that sends each utterance to its domain's expert.

Folder layout (written atomically, :func:`build_routed_model`)::

    <folder>/base/                    the base model folder (config, weights, processor files, aode.json)
    <folder>/deltas/<domain>.safetensors   each expert as a Delta from the base
    <folder>/router/                  Router.save (aode.route), when there is a router
    <folder>/routed.json              format version, form, rank, domains, routes, sizes, errors
    <folder>/README.md                the model card

Routes: each domain (its delta alone), ``base`` (no delta) and ``fallback`` (a combination of
the domain deltas, by default ``base + sum_d delta_d / (n + 1)``, AoDE with the original;
``mean``: ``/ n``; ``base``: none). A combination is never stored: its terms are applied one by
one. The router's classes map to routes (a domain to itself, ``general`` to ``general_route``);
when it is unsure (``aode.route.FALLBACK``) the utterance takes the ``fallback`` route.

:class:`RoutedASR` loads the base model once and every delta. :meth:`RoutedASR.set_route`
activates a route without touching the base weights in place:

* a factored delta of a ``Linear`` (or a ``Conv1d`` without groups; exact types, not
  subclasses that may change ``forward``) is added on the forward
  path by a forward hook, ``y += (x @ V) @ U.T`` (a convolution: a rank-r convolution then a
  1x1 one), for every module that holds that weight;
* every other delta (dense vectors, small matrices, embeddings, depthwise kernels) is swapped
  in: the parameter's data is pointed at ``base + delta`` built once per switch, and pointed
  back at the untouched base tensor on the next switch. Embeddings are swapped, not hooked,
  because a tied weight is also used outside its module (SpeechBrain's Whisper projects the
  decoder output on ``embed_tokens.weight`` directly).

The base tensors are never written, so they stay bit-identical after any number of switches
(tested). :meth:`RoutedASR.transcribe` splits a batch by route, decodes each group once with its
route active and returns the hypotheses in the batch's order; the Brain evaluates a
RoutedASR as an ASRModel (:func:`evaluate_routed`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aode.atomic import atomic_folder
from aode.atomic import atomic_open
from aode.atomic import atomic_write_json
from aode.compact import DEFAULT_MIN_FACTORED
from aode.compact import CompactError
from aode.compact import Delta
from aode.compact import check_expert
from aode.compact import compact_delta
from aode.compact import folder_weight_bytes
from aode.config import ConfigError
from aode.models import ASRModel
from aode.models import load_asr_model

logger = logging.getLogger(__name__)

__all__ = [
    "ROUTED_FILE",
    "FORMAT_VERSION",
    "BASE_ROUTE",
    "FALLBACK_ROUTE",
    "FALLBACKS",
    "fallback_weights",
    "build_routed_model",
    "read_routed_info",
    "RoutedASR",
    "memory_report",
    "evaluate_routed",
    "measure_throughput",
    "transcribe_main",
]

ROUTED_FILE = "routed.json"
FORMAT_VERSION = 1
BASE_ROUTE = "base"
FALLBACK_ROUTE = "fallback"
FALLBACKS = ("with_original", "mean", "base")
# The router's two non-domain answers, as aode.route names them (FALLBACK, GENERAL).
ROUTER_FALLBACK = "fallback"
ROUTER_GENERAL = "general"


def fallback_weights(domains: Sequence[str], fallback: str) -> dict[str, float]:
    """The fallback route as ``{domain: weight}``: ``with_original`` 1/(n+1) each (AoDE with
    the original), ``mean`` 1/n (AoDE), ``base`` none."""
    n = len(domains)
    if fallback == "with_original":
        return {d: 1.0 / (n + 1) for d in domains}
    if fallback == "mean":
        return {d: 1.0 / n for d in domains}
    if fallback == "base":
        return {}
    raise CompactError(f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")


def _load_router(router: Any) -> Any:
    if router is None or hasattr(router, "route"):
        return router
    from aode.route import Router  # written alongside; imported only when a router is used

    if not os.path.isdir(router):
        raise CompactError(f"router folder {router} does not exist")
    return Router.load(router)


def _route_of_class(classes: Sequence[str], domains: Sequence[str], general_route: str) -> dict[str, str]:
    out = {}
    for name in classes:
        if name in domains:
            out[name] = name
        elif name == ROUTER_GENERAL:
            out[name] = general_route
        else:
            raise CompactError(
                f"the router's class {name!r} has no route: it is neither a domain ({', '.join(domains)}) "
                f"nor {ROUTER_GENERAL!r}"
            )
    return out


def _copy_base(base: str, target: str) -> None:
    from aode.model_folder import CONFIG_FILE
    from aode.model_folder import PROVENANCE_FILE
    from aode.model_folder import copy_processor_files
    from aode.model_folder import find_weight_files

    os.makedirs(target)
    _, files = find_weight_files(base)
    names = [os.path.basename(f) for f in files] + [CONFIG_FILE, PROVENANCE_FILE]
    names += [n for n in os.listdir(base) if n.endswith(".index.json")]
    for name in names:
        if os.path.isfile(os.path.join(base, name)):
            shutil.copy2(os.path.join(base, name), os.path.join(target, name))
    copy_processor_files(base, target)


def build_routed_model(
    base: str | os.PathLike,
    experts: Mapping[str, str | os.PathLike],
    out_folder: str | os.PathLike,
    *,
    form: str = "svd",
    rank: int | None = 16,
    energy: float | None = None,
    router: Any = None,
    fallback: str = "with_original",
    general_route: str = BASE_ROUTE,
    min_factored: int = DEFAULT_MIN_FACTORED,
    overwrite: bool = False,
) -> str:
    """Write the routed model folder (module docstring) of ``base`` and ``{domain: expert
    folder}``; returns its path. ``router``: None, a Router or a Router folder. Everything is
    checked (names, routes, lineage, architectures) before any delta is computed."""
    from aode.models import resolve_model_folder
    from aode.reuse import model_fingerprint

    domains = list(experts)
    if not domains:
        raise CompactError("a routed model needs at least one expert")
    for reserved in (BASE_ROUTE, FALLBACK_ROUTE):
        if reserved in domains:
            raise CompactError(f"{reserved!r} is a route of its own and cannot name a domain")
    weights = fallback_weights(domains, fallback)
    routes = {d: {d: 1.0} for d in domains} | {BASE_ROUTE: {}, FALLBACK_ROUTE: weights}
    if general_route not in routes:
        raise CompactError(f"general_route {general_route!r} is not a route; choose one of {sorted(routes)}")
    base_folder = resolve_model_folder(base)
    for domain, folder in experts.items():
        check_expert(base_folder, folder, domain)
    router = _load_router(router)
    route_of_class = _route_of_class(router.classes, domains, general_route) if router is not None else {}
    deltas = {}
    for domain, folder in experts.items():
        logger.info("delta of %s (%s, rank %s)", domain, form, rank)
        deltas[domain] = compact_delta(
            base_folder, folder, form=form, rank=rank, energy=energy, min_factored=min_factored, check=False
        )
    model_bytes = folder_weight_bytes(base_folder)
    info = {
        "format_version": FORMAT_VERSION,
        "kind": "routed",
        "form": form,
        "rank": rank,
        "energy": energy,
        "min_factored": min_factored,
        "base": os.fspath(base),
        "base_fingerprint": model_fingerprint(base_folder),
        "domains": domains,
        "experts": {d: os.fspath(f) for d, f in experts.items()},
        "routes": routes,
        "fallback": fallback,
        "general_route": general_route,
        "route_of_class": route_of_class,
        "router": None
        if router is None
        else {
            "classes": list(router.classes),
            "layers": list(router.layers),
            "threshold": router.threshold,
            "general_bias": router.general_bias,
        },
        "threshold": None if router is None else router.threshold,
        "sizes": {
            "model_bytes": model_bytes,
            "deltas": {d: delta.summary(model_bytes) for d, delta in deltas.items()},
            "all_deltas_bytes": sum(delta.nbytes() for delta in deltas.values()),
        },
        "errors": {d: delta.errors for d, delta in deltas.items()},
        "ranks": {d: {n: delta.rank_of(n) for n in delta.factors} for d, delta in deltas.items()},
        "ignored": {d: delta.meta.get("ignored", []) for d, delta in deltas.items()},
    }
    with atomic_folder(out_folder, overwrite=overwrite) as tmp:
        _copy_base(base_folder, os.path.join(tmp, "base"))
        os.makedirs(os.path.join(tmp, "deltas"))
        for domain, delta in deltas.items():
            delta.save(os.path.join(tmp, "deltas", f"{domain}.safetensors"))
        if router is not None:
            router.save(os.path.join(tmp, "router"))
        atomic_write_json(os.path.join(tmp, ROUTED_FILE), info, indent=1)
        with atomic_open(os.path.join(tmp, "README.md")) as f:
            f.write(routed_card(info, os.path.basename(os.path.normpath(os.fspath(out_folder)))))
    return os.fspath(out_folder)


def routed_card(info: Mapping[str, Any], name: str) -> str:
    """The model card (``README.md``) of a routed folder, in :mod:`aode.model_card`'s style:
    YAML metadata for the hub, then what the folder holds and how to use it."""
    from aode.model_card import TAGS
    from aode.model_card import TASK

    sizes = info["sizes"]
    mib = sizes["model_bytes"] / 2**20
    lines = [
        "---",
        "library_name: speechbrain",
        f"pipeline_tag: {TASK}",
        "tags:",
        *[f"- {t}" for t in (*TAGS, "routing", "low-rank")],
        "---",
        "",
        f"# {name}",
        "",
        f"A routed AoDE model: the base model `{info['base']}` and {len(info['domains'])} domain experts stored "
        f"as {info['form']} deltas from it (rank {info['rank']}); each utterance is decoded with its domain's "
        "delta, chosen by the router (or given).",
        "",
        "| route | delta | size (MiB) | of the model | max relative error |",
        "|---|---|---:|---:|---:|",
    ]
    for domain in info["domains"]:
        s = sizes["deltas"][domain]
        lines.append(
            f"| `{domain}` | expert `{info['experts'][domain]}` | {s['bytes'] / 2**20:.2f} | "
            f"{100 * s['fraction_of_model']:.1f} % | {s['max_relative_error']:.3g} |"
        )
    fallback = info["routes"][FALLBACK_ROUTE]
    combo = " + ".join(f"{w:.3g} x {d}" for d, w in fallback.items()) or "nothing"
    lines += [
        f"| `{BASE_ROUTE}` | none | 0 | 0 % | 0 |",
        f"| `{FALLBACK_ROUTE}` | base + {combo} ({info['fallback']}; not stored) | 0 | 0 % | |",
        "",
        f"The base model weighs {mib:.2f} MiB; all deltas {sizes['all_deltas_bytes'] / 2**20:.2f} MiB.",
        "",
    ]
    if info.get("router"):
        router = info["router"]
        lines += [
            f"Router: classes {', '.join(router['classes'])} on layers {router['layers']}, threshold "
            f"{router['threshold']}; class to route: "
            + ", ".join(f"{c} -> {r}" for c, r in info["route_of_class"].items())
            + f"; unsure -> {FALLBACK_ROUTE}.",
            "",
        ]
    else:
        lines += ["No router: give each utterance's route (`--route`).", ""]
    lines += [
        "## Usage",
        "",
        "```bash",
        f"python recipes/route/transcribe.py {name} audio.wav [more.wav or manifest.csv ...] --routes_out routes.csv",
        "```",
        "",
        "```python",
        "from aode.routed import RoutedASR",
        f"model = RoutedASR({name!r})",
        "texts = model.transcribe(wavs, wav_lens)  # routes from the router; or routes=[...]",
        "```",
        "",
    ]
    return "\n".join(lines)


def read_routed_info(folder: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(folder, ROUTED_FILE)
    if not os.path.isfile(path):
        raise CompactError(f"{folder} is not a routed model folder (no {ROUTED_FILE})")
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format_version") != FORMAT_VERSION:
        raise CompactError(f"{path}: format version {info.get('format_version')}, this AoDE reads {FORMAT_VERSION}")
    return info


def _holders(root: nn.Module, tensor: torch.Tensor) -> list[tuple[nn.Module, str, str]]:
    """Every (module, attribute, 'param'|'buffer') under ``root`` that holds ``tensor``."""
    out = []
    for module in root.modules():
        for key, value in module._parameters.items():
            if value is tensor:
                out.append((module, key, "param"))
        for key, value in module._buffers.items():
            if value is tensor:
                out.append((module, key, "buffer"))
    return out


def _hookable(module: nn.Module, key: str) -> bool:
    if key != "weight":
        return False
    # Exact types only: a subclass may change forward (Parakeet's CTC head, a Conv1d, transposes
    # its input); its delta is swapped in instead, which is right for any module.
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv1d and module.groups == 1 and module.padding_mode == "zeros"


class RoutedASR(ASRModel):
    """A routed model folder as one ASR model (module docstring). ``options`` go to the base
    model as :func:`aode.models.load_asr_model` takes them (``beam_size``, ...)."""

    def __init__(self, folder: str | os.PathLike, **options: Any) -> None:
        super().__init__()
        folder = os.fspath(folder)
        self.info = read_routed_info(folder)
        self.folder = folder
        self.base = load_asr_model(os.path.join(folder, "base"), **options)
        self.family = self.base.family
        self.text_field = self.base.text_field
        self.text_keys = self.base.text_keys
        self.option_names = self.base.option_names
        self.domains = list(self.info["domains"])
        self.deltas = {d: Delta.load(os.path.join(folder, "deltas", f"{d}.safetensors")) for d in self.domains}
        self.routes = {name: dict(terms) for name, terms in self.info["routes"].items()}
        router_folder = os.path.join(folder, "router")
        self.router = _load_router(router_folder) if os.path.isdir(router_folder) else None
        self.route_of_class = dict(self.info.get("route_of_class") or {})
        self.general_route = self.info.get("general_route", BASE_ROUTE)
        self.fixed_route = None  # one route for everything (oracle evaluation of a set)
        self.route_log = {}  # utterance id -> route, filled by transcribe_outputs
        self._route = BASE_ROUTE
        self._terms = {}  # hooked module -> [(U, V)] of the active route (U scaled by the weight)
        self._swapped = {}  # hf name -> the base + delta tensor in use
        self._prepare()

    # ------------------------------------------------------------------ the mechanism
    def _prepare(self) -> None:
        hf = self.base.hf_model
        stored = set().union(*(d.names() for d in self.deltas.values()))
        names = [n for n, _ in hf.named_parameters()] + [n for n, _ in hf.named_buffers()]
        hf_of = {s: n for n, s in self.base.stored_names(stored, names).items()}
        unknown = sorted(stored - set(hf_of))
        if unknown:
            raise CompactError(
                f"{self.folder}: the deltas change tensors the base model does not have ({len(unknown)}, "
                f"e.g. {unknown[:3]})"
            )
        self._hf_of = hf_of
        self._holders = {}
        self._mechanism = {}
        self._hooks = []
        hooked = set()
        params = dict(hf.named_parameters())
        for stored_name, hf_name in hf_of.items():
            tensor = params[hf_name] if hf_name in params else hf.get_buffer(hf_name)
            holders = _holders(hf, tensor)
            self._holders[hf_name] = holders
            factored = all(stored_name not in d.dense for d in self.deltas.values())
            hook = factored and all(kind == "param" and _hookable(m, key) for m, key, kind in holders)
            self._mechanism[stored_name] = "hook" if hook else "swap"
            if hook:
                for module, _, _ in holders:
                    if id(module) not in hooked:
                        hooked.add(id(module))
                        self._hooks.append(module.register_forward_hook(self._hook_of(module)))
        self._capture_pristine()

    def _capture_pristine(self) -> None:
        hf = self.base.hf_model
        self._pristine = {}
        for stored_name, hf_name in self._hf_of.items():
            if self._mechanism[stored_name] == "swap":
                module, key, kind = self._holders[hf_name][0]
                current = module._parameters[key] if kind == "param" else module._buffers[key]
                self._pristine[hf_name] = current.data if kind == "param" else current
        del hf

    def _hook_of(self, module: nn.Module):
        conv = isinstance(module, nn.Conv1d)

        def hook(mod, inputs, output):
            terms = self._terms.get(id(mod))
            if not terms:
                return None
            x = inputs[0]
            for u, v in terms:
                u, v = u.to(x.dtype), v.to(x.dtype)
                if conv:
                    a = v.T.reshape(v.shape[1], *mod.weight.shape[1:])
                    low = F.conv1d(x, a, None, mod.stride, mod.padding, mod.dilation)
                    output = output + F.conv1d(low, u.unsqueeze(-1))
                else:
                    output = output + (x @ v) @ u.T
            return output

        return hook

    def _set_tensor(self, hf_name: str, value: torch.Tensor) -> None:
        for module, key, kind in self._holders[hf_name]:
            if kind == "param":
                module._parameters[key].data = value
            else:
                module._buffers[key] = value

    def set_route(self, name: str) -> None:
        """Activate route ``name`` (a domain, ``base``, ``fallback``): hooks get its factors,
        swapped tensors point at base + its delta; the base tensors are never written."""
        if name not in self.routes:
            raise CompactError(f"no route {name!r} in {self.folder}; its routes are {sorted(self.routes)}")
        if name == self._route:
            return
        with torch.inference_mode(False), torch.no_grad():
            for hf_name in self._swapped:
                self._set_tensor(hf_name, self._pristine[hf_name])
            self._swapped, terms, sums = {}, {}, {}
            for domain, weight in self.routes[name].items():
                delta = self.deltas[domain]
                for stored_name in delta.names():
                    hf_name = self._hf_of[stored_name]
                    if self._mechanism[stored_name] == "hook":
                        u, v = delta.factors[stored_name]
                        for module, _, _ in self._holders[hf_name]:
                            terms.setdefault(id(module), []).append((u * weight, v))
                    else:
                        d = weight * delta.tensor(stored_name)
                        sums[hf_name] = sums[hf_name] + d if hf_name in sums else d
            for hf_name, diff in sums.items():
                pristine = self._pristine[hf_name]
                value = (pristine.float() + diff.to(pristine.device)).to(pristine.dtype)
                self._set_tensor(hf_name, value)
                self._swapped[hf_name] = value
            self._terms = terms
        self._route = name

    @property
    def route_name(self) -> str:
        return self._route

    def use_route(self, name: str | None) -> None:
        """Decode everything with route ``name`` (oracle routing of a whole set); None: route
        each utterance with the router."""
        self.fixed_route = name
        self.set_route(name or BASE_ROUTE)

    def _apply(self, fn, recurse=True):
        # .to(device) / .half(): restore the base, move everything, activate the route again.
        route = self._route
        if hasattr(self, "_pristine"):
            self.set_route(BASE_ROUTE)
        out = super()._apply(fn, recurse)
        if hasattr(self, "_pristine"):
            for delta in self.deltas.values():
                delta.factors = {n: (fn(u), fn(v)) for n, (u, v) in delta.factors.items()}
                delta.dense = {n: fn(d) for n, d in delta.dense.items()}
            self._capture_pristine()
            self.set_route(route)
        return out

    # ------------------------------------------------------------------ routing
    def route(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> list[str]:
        """The route of each utterance: the router's class (from the base model's own encoder
        states, the base route active) mapped to its route; unsure: ``fallback``."""
        if self.router is None:
            raise CompactError(f"{self.folder} has no router: give each utterance's route")
        previous = self._route
        self.set_route(BASE_ROUTE)
        try:
            classes = self.router.route(self.base, wavs, wav_lens)
        finally:
            self.set_route(previous)
        out = []
        for name in classes:
            if name == ROUTER_FALLBACK:
                out.append(FALLBACK_ROUTE)
            elif name in self.route_of_class:
                out.append(self.route_of_class[name])
            elif name == ROUTER_GENERAL:
                out.append(self.general_route)
            else:
                raise CompactError(f"the router answered {name!r}, which has no route")
        return out

    @torch.no_grad()
    def transcribe(self, wavs: torch.Tensor, wav_lens: torch.Tensor, routes: Sequence[str] | None = None) -> list[str]:
        """Hypotheses of a padded batch: routes from the router (None) or given, the batch
        split by route, each group decoded once with its route active, in the batch's order."""
        if routes is None:
            routes = self.route(wavs, wav_lens)
        routes = list(routes)
        if len(routes) != len(wavs):
            raise CompactError(f"{len(routes)} routes for {len(wavs)} utterances")
        for name in set(routes):
            if name not in self.routes:
                raise CompactError(f"no route {name!r} in {self.folder}; its routes are {sorted(self.routes)}")
        hyps: list[str | None] = [None] * len(routes)
        previous = self._route
        try:
            for name in dict.fromkeys(routes):
                index = [i for i, r in enumerate(routes) if r == name]
                group_wavs, group_lens = _sub_batch(wavs, wav_lens, index)
                self.set_route(name)
                for i, hyp in zip(index, self.base.transcribe(group_wavs, group_lens)):
                    hyps[i] = hyp
        finally:
            self.set_route(previous)
        return hyps

    def transcribe_routed(self, wavs, wav_lens, routes=None) -> tuple[list[str], list[str]]:
        """(hypotheses, routes) of a padded batch."""
        routes = list(routes) if routes is not None else self.route(wavs, wav_lens)
        return self.transcribe(wavs, wav_lens, routes), routes

    # ------------------------------------------------------------------ what the Brain asks
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The base model's forward with the active route (the fixed one, else ``base``)."""
        return self.base(*args, **kwargs)

    def transcribe_outputs(self, outputs: dict[str, torch.Tensor], batch: Any) -> list[str]:
        """With a fixed route the forward outputs were computed under it and are decoded as
        they are; otherwise the batch is routed and decoded by groups (the outputs, computed
        with the base route for the loss, are not used)."""
        ids = list(batch.id)
        if self.fixed_route is not None:
            hyps = self.base.transcribe_outputs(outputs, batch)
            routes = [self.fixed_route] * len(ids)
        else:
            wavs, wav_lens = batch.sig
            hyps, routes = self.transcribe_routed(wavs, wav_lens)
        self.route_log.update(zip(ids, routes))
        return hyps

    def text_items(self, text):
        return self.base.text_items(text)

    def unknown_characters(self, characters):
        return self.base.unknown_characters(characters)

    def batch_inputs(self, batch):
        return self.base.batch_inputs(batch)

    def batch_targets(self, batch):
        return self.base.batch_targets(batch)

    def loss(self, outputs, tokens, tokens_lens):
        return self.base.loss(outputs, tokens, tokens_lens)

    def prediction_entropy(self, batch):
        return self.base.prediction_entropy(batch)

    @property
    def hf_model(self):
        return self.base.hf_model

    @property
    def config(self):
        return self.base.config

    @property
    def tokenizer(self):
        return self.base.tokenizer

    def layer_of(self, name):
        return self.base.layer_of(name)

    def stored_name(self, name):
        return self.base.stored_name(name)

    def freeze_fixed_parameters(self):
        self.base.freeze_fixed_parameters()

    def export(self, folder, provenance=None):
        raise CompactError("a routed model is not one model folder; materialise a route with aode.compact.materialise")


def _sub_batch(wavs: torch.Tensor, wav_lens: torch.Tensor, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``index`` of a padded batch, cut to their own longest length (relative
    lengths recomputed): a group pads as if it had been batched alone."""
    samples = (wav_lens * wavs.shape[1]).round().long()
    picked = torch.as_tensor(list(index), device=wavs.device)
    longest = int(samples[picked].max())
    return wavs[picked, :longest], samples[picked].to(wav_lens.dtype) / longest


# ---------------------------------------------------------------------- memory, speed


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def memory_report(model: RoutedASR) -> dict[str, Any]:
    """Bytes held by a loaded routed model against one model: the base's parameters and
    buffers, every delta, the active route's swapped tensors, the router (its tensors when it
    is a Module, else its folder's files)."""
    # the base tensors that the active route's swapped tensors replace stay held (restored on
    # the next switch): the base is its own tensors, whatever route is active
    swapped_storages = {t.untyped_storage().data_ptr() for t in model._swapped.values()}
    held = [
        t
        for t in list(model.base.parameters()) + list(model.base.buffers())
        if t.untyped_storage().data_ptr() not in swapped_storages
    ]
    base = _tensor_bytes(held + list(model._pristine.values()))
    deltas = sum(d.nbytes() for d in model.deltas.values())
    swapped = sum(t.numel() * t.element_size() for t in model._swapped.values())
    if model.router is None:
        router = 0
    elif isinstance(model.router, nn.Module):
        router = _tensor_bytes(list(model.router.parameters()) + list(model.router.buffers()))
    else:  # aode.route.Router: its tensors (standardisation and classifier) as held
        router = sum(t.numel() * t.element_size() for t in vars(model.router).values() if torch.is_tensor(t))
    total = base + deltas + swapped + router
    return {
        "one_model_bytes": base,
        "deltas_bytes": deltas,
        "active_swapped_bytes": swapped,
        "router_bytes": router,
        "total_bytes": total,
        "ratio_to_one_model": total / base,
    }


def _read_utterances(manifests: Mapping[str, str]) -> list[tuple[str, str, torch.Tensor]]:
    from aode.data import read_audio_segment
    from aode.manifest import read_manifest

    out = []
    for name, path in manifests.items():
        for row in read_manifest(path):
            out.append((row["ID"], name, read_audio_segment(row["wav"], row["start"], row["stop"])))
    return out


def _batches(utterances, batch_size):
    for start in range(0, len(utterances), batch_size):
        chunk = utterances[start : start + batch_size]
        signals = [s for _, _, s in chunk]
        longest = max(len(s) for s in signals)
        wavs = torch.nn.utils.rnn.pad_sequence(signals, batch_first=True)
        lens = torch.tensor([len(s) / longest for s in signals])
        yield chunk, wavs, lens


def measure_throughput(
    folder: str | os.PathLike,
    manifests: Mapping[str, str],
    batch_size: int = 25,
    device: str = "cpu",
    oracle: bool = True,
    seed: int = 0,
    repeats: int = 3,
    **options: Any,
) -> dict[str, Any]:
    """Utterances per second of the routed model and of the base model alone on the same
    batches: the utterances of every manifest (``{route or set name: manifest}``), mixed in a
    seeded order so that a batch holds several routes; ``oracle``: each utterance's route is
    its manifest's name, else the router decides. Both models first decode every batch once
    untimed (a first pass pays for the kernels of each new input shape, which once made the
    model timed first look slower), then are timed in turn ``repeats`` times: the medians,
    and every time. Also the memory report."""
    import random
    import statistics

    utterances = _read_utterances(manifests)
    random.Random(seed).shuffle(utterances)
    batches = list(_batches(utterances, batch_size))
    plain = load_asr_model(os.path.join(folder, "base"), **options).eval().to(device)
    routed = RoutedASR(folder, **options).eval().to(device)
    counts = Counter()

    def run_plain():
        for _, wavs, lens in batches:
            plain.transcribe(wavs.to(device), lens.to(device))

    def run_routed(counts=None):
        for chunk, wavs, lens in batches:
            routes = [name for _, name, _ in chunk] if oracle else None
            _, used = routed.transcribe_routed(wavs.to(device), lens.to(device), routes)
            if counts is not None:
                counts.update(used)

    times = {"base": [], "routed": []}
    with torch.inference_mode():
        run_plain()
        run_routed(counts)  # the untimed pass counts the routes
        for _ in range(repeats):
            for name, run in (("base", run_plain), ("routed", run_routed)):
                start = time.perf_counter()
                run()
                times[name].append(round(time.perf_counter() - start, 3))
    base_seconds, routed_seconds = statistics.median(times["base"]), statistics.median(times["routed"])
    n = len(utterances)
    return {
        "utterances": n,
        "batch_size": batch_size,
        "routing": "oracle" if oracle else "router",
        "route_counts": dict(counts),
        "protocol": f"one untimed pass each, then {repeats} timed passes in turn; medians",
        "base_seconds": base_seconds,
        "routed_seconds": routed_seconds,
        "base_times": times["base"],
        "routed_times": times["routed"],
        "base_utt_per_s": n / base_seconds,
        "routed_utt_per_s": n / routed_seconds,
        "memory": memory_report(routed),
    }


# ---------------------------------------------------------------------- evaluation


def routed_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the routed folder's routed.json, deltas, router files and base weights."""
    from aode.reuse import file_fingerprint
    from aode.reuse import model_fingerprint

    digest = hashlib.sha256()
    digest.update(f"base\0{model_fingerprint(os.path.join(folder, 'base'))}\0".encode())
    for sub in ("", "deltas", "router"):
        path = os.path.join(folder, sub)
        if not os.path.isdir(path):
            continue
        for root, _, files in sorted(os.walk(path)):
            if sub == "" and root != os.path.normpath(path):
                continue
            for name in sorted(files):
                if sub == "" and name != ROUTED_FILE:
                    continue
                rel = os.path.relpath(os.path.join(root, name), folder)
                digest.update(f"{rel}\0{file_fingerprint(os.path.join(root, name))}\0".encode())
    return digest.hexdigest()


def evaluate_routed(
    folder: str | os.PathLike,
    test_sets: Mapping[str, str],
    out_folder: str | os.PathLike,
    *,
    routes_of_set: Mapping[str, str] | None = None,
    batch_size: int = 8,
    normalizer: str = "whisper",
    beam_size: int = 1,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    max_duration: float | None = None,
    skip_unreadable_audio: bool = False,
    label: str | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`aode.evaluate.evaluate_model` for a routed folder: ``{set: result}`` with
    ``wer``, ``cer``, counts and hypotheses as there, plus ``routing`` (the set's route under
    ``routes_of_set``, oracle routing, else ``router``), ``routes`` (``{utterance: route}``)
    and ``route_counts``; cached in ``<out_folder>/<set>.json`` under a key of the routed
    folder's content, the manifest, the routing and the scoring settings."""
    from aode.evaluate import cache_key
    from aode.evaluate import decode_sets
    from aode.evaluate import split_cached
    from aode.evaluate import test_brain

    folder = os.fspath(folder)
    info = read_routed_info(folder)
    routes_of_set = dict(routes_of_set or {})
    for name, route in routes_of_set.items():
        if route not in info["routes"]:
            raise CompactError(f"test set {name!r}: no route {route!r}; the routes are {sorted(info['routes'])}")
    if set(test_sets) - set(routes_of_set) and not os.path.isdir(os.path.join(folder, "router")):
        missing = sorted(set(test_sets) - set(routes_of_set))
        raise CompactError(f"{folder} has no router and routes_of_set gives no route for {missing}")
    fingerprint = routed_fingerprint(folder)

    def key_of(name, manifest):
        key = cache_key(None, manifest, normalizer, beam_size, max_duration, skip_unreadable_audio)
        return key | {"model": fingerprint, "routing": routes_of_set.get(name, "router")}

    results, todo = split_cached(test_sets, out_folder, key_of)
    if not todo:
        return results
    label = label or os.path.basename(os.path.normpath(folder))
    routed = RoutedASR(folder, beam_size=beam_size).eval()
    brain = test_brain(routed, normalizer, device)

    def around_set(name):
        routed.use_route(routes_of_set.get(name))
        routed.route_log = {}

        def routes():
            counts = dict(Counter(routed.route_log.values()))
            logger.info("%s on %s: routes %s", label, name, counts)
            return {
                "routing": routes_of_set.get(name, "router"),
                "routes": dict(routed.route_log),
                "route_counts": counts,
            }

        return routes

    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress, max_duration=max_duration)
    results |= decode_sets(brain, todo, out_folder, folder, label, skip_unreadable_audio, around_set, **options)
    routed.use_route(None)
    return results


# ---------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one ``error:`` line and exit 2, through aode.cli.run_main
        raise ConfigError(f"{self.prog}: {message}")


def _inputs(paths: Sequence[str]) -> list[tuple[str, str, float, float | None]]:
    from aode.manifest import read_manifest

    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise CompactError(f"input {path} does not exist")
        if path.endswith(".csv"):
            try:
                rows = read_manifest(path)
            except ValueError as err:
                raise CompactError(str(err)) from None
            out += [(r["ID"], r["wav"], float(r["start"] or 0), float(r["stop"]) if r["stop"] else None) for r in rows]
        else:
            out.append((os.path.splitext(os.path.basename(path))[0], path, 0.0, None))
    return out


def transcribe_main(argv: Sequence[str]) -> list[tuple[str, str, str]]:
    """``recipes/route/transcribe.py``: prints ``id<TAB>route<TAB>text`` per utterance."""
    parser = _Parser(
        prog="recipes/route/transcribe.py",
        description="Transcribe wav files or manifests with a routed AoDE model (aode.routed).",
    )
    parser.add_argument("folder", help="a routed model folder (aode.routed.build_routed_model)")
    parser.add_argument("inputs", nargs="+", help="wav files and/or manifest CSVs")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--route", default=None, help="one route for every utterance instead of the router")
    parser.add_argument("--routes_out", default=None, help="write ID,route to this CSV")
    args = parser.parse_args(list(argv))
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, not {args.batch_size}")
    info = read_routed_info(args.folder)
    if args.route is not None and args.route not in info["routes"]:
        raise CompactError(f"no route {args.route!r}; the routes are {sorted(info['routes'])}")
    if args.route is None and not os.path.isdir(os.path.join(args.folder, "router")):
        raise CompactError(f"{args.folder} has no router: give --route ({', '.join(sorted(info['routes']))})")
    inputs = _inputs(args.inputs)
    from aode.data import read_audio_segment

    model = RoutedASR(args.folder).eval().to(args.device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), args.batch_size):
            chunk = inputs[start : start + args.batch_size]
            try:
                signals = [read_audio_segment(wav, s, e) for _, wav, s, e in chunk]
            except (OSError, ValueError, RuntimeError) as err:
                raise CompactError(f"cannot read audio: {err}") from None
            longest = max(len(s) for s in signals)
            wavs = torch.nn.utils.rnn.pad_sequence(signals, batch_first=True).to(args.device)
            lens = torch.tensor([len(s) / longest for s in signals], device=args.device)
            routes = [args.route] * len(chunk) if args.route else None
            hyps, used = model.transcribe_routed(wavs, lens, routes)
            for (utt, *_), route, hyp in zip(chunk, used, hyps):
                print(f"{utt}\t{route}\t{hyp}", flush=True)
                out.append((utt, route, hyp))
    if args.routes_out:
        with atomic_open(args.routes_out, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ID", "route"])
            writer.writerows((u, r) for u, r, _ in out)
    return out
