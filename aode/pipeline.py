"""One merge, the way every AoDE command makes it, and the merge recipe's whole job.

:func:`merge_members` is the one path from members to a merged model folder, used by the
merge recipe (recipes/average/merge.py, through :func:`merge_and_evaluate`) and by every merge
of an experiment (:meth:`aode.experiment.Experiment.merge`):

1. the original is checked against the members' recorded base (:func:`aode.lineage.check_original`);
2. the merge is stamped (:func:`aode.reuse.merge_stamp`: members, original, method, options,
   weights, seed, and the manifests a data-aware method reads); a finished folder made from the
   same stamp is reused, one made from another is refused unless ``overwrite``
   (:func:`aode.reuse.may_reuse`);
3. the statistics or dev sets a data-aware method needs are made (:func:`aode.merge.inputs.data_options`);
4. the members are merged (:func:`aode.merge.merge_models`, which writes aode.json and the card).

:func:`merge_and_evaluate` adds what the recipe does around it: the hub token and the models
checked before any work, a mergekit config's per-tensor weights, then every model decoded on
every test set (:func:`aode.evaluate.evaluate_models`), the merged model's card rewritten with
its WERs, the report (:func:`aode.report.write_report`) and the upload.

Importing this module hands the merge registry's checks to the hparams schemas
(:func:`aode.config.provide_merge_methods`); the heavy modules (torch, the merge methods) are
imported when a merge runs.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Optional
from typing import Union

from aode.config import ORIGINAL_NAME
from aode.config import ConfigError
from aode.config import ExperimentConfig
from aode.config import MergeConfig
from aode.config import provide_merge_methods

__all__ = ["Merged", "merge_members", "read_mergekit_config", "merge_and_evaluate", "evaluation_options"]


def _method_names():
    from aode.merge.registry import available_methods

    return available_methods()


def _check_method_options(method, options):
    from aode.merge.checks import check_method_options

    return check_method_options(method, options)


provide_merge_methods(_method_names, _check_method_options)


@dataclasses.dataclass(frozen=True)
class Merged:
    """A merge's model ``folder``; ``reused``: found finished from the same ``stamp``."""

    folder: str
    reused: bool
    stamp: dict[str, Any]


def _untimed(stage, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def member_weights(weights, members: Mapping[str, str], include_original: bool):
    """``weights`` as a list in merge order: a list as it is, ``{name: weight}`` by member name
    (the original's under ``original``, 1 when not named), None for uniform."""
    if not isinstance(weights, dict):
        return weights
    return [weights[name] for name in members] + ([weights.get("original", 1.0)] if include_original else [])


def merge_members(
    members: Mapping[str, str],
    output: str,
    *,
    original: str,
    original_name: str = ORIGINAL_NAME,
    method: str = "average",
    options: Optional[Mapping[str, Any]] = None,
    include_original: bool = False,
    weights: Union[None, list[float], dict[str, float]] = None,
    weight_rules: Optional[list[Any]] = None,
    seed: int = 0,
    member_data: Optional[Mapping[str, str]] = None,
    dev_sets: Optional[Mapping[str, str]] = None,
    statistics_folder: Optional[str] = None,
    beside_members: bool = False,
    n_utterances: int = 200,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    allow_foreign_original: bool = False,
    what: str = "merged model",
    announce: Optional[str] = None,
    timed: Callable[..., Any] = _untimed,
) -> Merged:
    """Merge (or find) ``members`` (``{name: model folder}``, in merge order) into ``output``
    (module docstring, steps 1 to 4).

    ``member_data`` (``{member name or original_name: manifest}``) and ``dev_sets`` are what a
    data-aware method reads (its statistics, written in ``statistics_folder`` or, with
    ``beside_members``, in the members' folders; its dev sets); they are in the stamp only for
    such a method. ``what`` names the output in the reuse messages; ``announce`` is printed just
    before the members are merged; ``timed(stage, fn, *args, **kwargs)`` runs the statistics
    (``"statistics"``) and the merge (``"merge"``). A member without data or a missing manifest
    is a :class:`aode.config.ConfigError`, raised before any statistics pass.
    """
    from aode import merge
    from aode.lineage import check_original
    from aode.merge.inputs import data_options
    from aode.merge.inputs import reads_data
    from aode.reuse import STAMP_KEY
    from aode.reuse import may_reuse
    from aode.reuse import merge_stamp
    from aode.reuse import recorded_stamp

    check_original(original, members, allow_foreign_original)  # before any work
    folders = list(members.values())
    weights = member_weights(weights, members, include_original)
    member_data = dict(member_data or {})
    dev_sets = dict(dev_sets or {})
    reads = {**member_data, **{f"dev {n}": p for n, p in dev_sets.items()}}
    data_aware = reads_data(method)
    stamp = merge_stamp(
        folders,
        original,
        method,
        include_original,
        options,
        weights,
        weight_rules,
        seed,
        data=reads if reads and data_aware else None,
        statistics_utterances=n_utterances,
    )
    found = os.path.isfile(os.path.join(output, "config.json"))
    if found and may_reuse(what, output, recorded_stamp(output), stamp, overwrite):
        return Merged(output, True, stamp)
    if data_aware:  # Fisher/Gram statistics and dev sets, before the merge
        try:
            options = timed(
                "statistics",
                data_options,
                method,
                options,
                members,
                original=original,
                original_name=original_name,
                include_original=include_original,
                member_data=member_data,
                dev_sets=dev_sets,
                statistics_folder=statistics_folder,
                beside_members=beside_members,
                n_utterances=n_utterances,
                batch_size=batch_size,
                seed=seed,
                device=device,
                progress=progress,
                overwrite=overwrite,
            )
        except ValueError as err:  # a member without data, a missing manifest: before any work
            raise ConfigError(str(err)) from None
    if announce:
        print(announce, flush=True)
    timed(
        "merge",
        merge.merge_models,  # looked up at call time (the tests stand in for it)
        folders,
        output,
        method=method,
        weights=weights,
        base=original,
        include_base=include_original,
        options=options,
        weight_rules=weight_rules,
        seed=seed,
        overwrite=found,
        progress=progress,
        extra_provenance={STAMP_KEY: stamp},
    )
    return Merged(output, False, stamp)


def read_mergekit_config(hp: dict[str, Any], overrides) -> tuple[dict[str, Any], Any]:
    """(hparams, the mergekit config or None): with ``mergekit_config`` set, its merge part
    (members, base, method, weights, options) replaces the hparams' (read before any work)."""
    if not hp.get("mergekit_config"):
        return hp, None
    from aode.merge.mergekit_config import MergekitConfigError
    from aode.merge.mergekit_config import hparams_from_mergekit

    try:
        return hparams_from_mergekit(hp, hp["mergekit_config"], overrides)
    except MergekitConfigError as err:
        raise ConfigError(f"{hp['mergekit_config']}: {err}") from None


def evaluation_options(config: MergeConfig | ExperimentConfig) -> dict[str, Any]:
    """How a merge's or an experiment's models are decoded and scored: the config's settings as
    :func:`aode.evaluate.evaluate_model` takes them (both YAML kinds declare them alike)."""
    return dict(
        batch_size=config.eval_batch_size,
        normalizer=config.normalizer,
        device=config.device,
        progress=config.progressbar,
        skip_unreadable_audio=config.skip_unreadable_audio,
    )


def merge_and_evaluate(config: MergeConfig, mergekit=None) -> Optional[str]:
    """The merge recipe's job for a validated :class:`aode.config.MergeConfig` (``mergekit``:
    from :func:`read_mergekit_config`): merge the experts into ``<output_folder>/merged``, decode
    every model on every test set, write the report and the merged model's card; returns the
    report's text (None without test sets)."""
    from aode.evaluate import evaluate_models
    from aode.model_card import check_hub_token
    from aode.model_card import push_to_hub
    from aode.model_card import write_model_card
    from aode.models import resolve_model_folder
    from aode.report import write_report

    check_hub_token(config.push_to_hub)  # --push_to_hub without a token: exit 2 before any work
    # Before any work: every member and the original must be reachable (a hub id through the
    # Hugging Face cache, as from_pretrained finds it).
    original = resolve_model_folder(config.original)
    experts = collections.OrderedDict((name, resolve_model_folder(path)) for name, path in config.experts.items())
    weights, weight_rules = config.weights, config.weight_rules
    if mergekit is not None:  # members' headers: checks and per-tensor weights, before any work
        from aode.merge.mergekit_config import MergekitConfigError
        from aode.merge.mergekit_config import prepare_merge

        try:
            prepared = prepare_merge(mergekit, list(experts.values()), original, config.include_original, config.seed)
        except MergekitConfigError as err:
            raise ConfigError(f"{config.mergekit_config}: {err}") from None
        weights, weight_rules = prepared["weights"], prepared["weight_rules"]
    out = config.output_folder
    member_data = dict(config.member_data)
    if "original" in member_data:
        member_data.setdefault(config.original_name, member_data.pop("original"))
    merged = merge_members(
        experts,
        os.path.join(out, "merged"),
        original=original,
        weights=weights,
        weight_rules=weight_rules,
        member_data=member_data,
        statistics_folder=os.path.join(out, "statistics"),
        original_name=config.original_name,
        method=config.method,
        options=config.method_options,
        include_original=config.include_original,
        seed=config.seed,
        dev_sets=config.dev_sets,
        n_utterances=config.statistics_utterances,
        batch_size=config.statistics_batch_size,
        device=config.device,
        progress=config.progressbar,
        overwrite=config.overwrite,
        allow_foreign_original=config.allow_foreign_original,
    )
    if merged.reused:
        print(f"merged model found in {merged.folder}, made from the same members and settings: reused")
    else:
        print(f"merged model written to {merged.folder}")
    merged = merged.folder
    models = collections.OrderedDict([(config.original_name, original)])
    if config.evaluate_experts:
        models.update(experts)
    models.update(config.extra_models)
    models[config.merged_name] = merged
    test_sets = collections.OrderedDict(config.test_sets)
    if not test_sets:
        print("no test sets named: nothing evaluated")
        push_to_hub(merged, config.push_to_hub)
        return None
    counts = {}
    table = evaluate_models(
        models,
        test_sets,
        os.path.join(out, "eval"),
        counts=counts,
        beam_size=config.beam_size,
        **evaluation_options(config),
    )
    write_model_card(merged, table[config.merged_name])  # the card, with the merged model's WER on each test set
    _, text = write_report(
        table,
        out,
        next(iter(models)),
        config.forgetting_sets,
        expert_of=dict(config.expert_of_test_set) or None,
        title=config.title,
        counts=counts,
    )
    print(text)
    push_to_hub(merged, config.push_to_hub)  # the finished folder, its card with the WERs and aode.json
    return text
