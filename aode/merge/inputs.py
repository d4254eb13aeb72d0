"""What data-aware merge methods need from data, made before the merge: per-member statistics
files (``fisher``: diagonal Fishers; ``regmean``: Gram matrices) computed from each member's
own data, and the dev sets a learnt merge fits on (``adamerging``).

A method declares its needs in the registry (``statistics="gram"``, ``needs_data=True``);
:func:`data_options` fills the method's options from the manifests a recipe names, computing
any statistics file that is missing (with a progress bar, on the given device) and reusing
the ones that exist. Every check runs before the first statistics pass, so a member without
data is reported before any work.
"""

import os
from dataclasses import dataclass
from typing import Callable
from typing import Mapping
from typing import Optional

from aode.reuse import may_reuse
from aode.reuse import read_stamp_file
from aode.reuse import statistics_stamp
from aode.reuse import write_stamp_file

from .registry import get_spec

__all__ = ["data_options", "reads_data", "STATISTICS"]


@dataclass(frozen=True)
class Statistics:
    """A kind of per-member statistics file: its estimator and the merge option naming the files."""

    estimator: Callable
    option: str
    default_path: Callable


def _gram():
    from aode.gram import estimate_gram
    from aode.gram import gram_path

    return Statistics(estimate_gram, "gram_files", gram_path)


def _fisher():
    from aode.fisher import estimate_fisher
    from aode.fisher_file import fisher_path

    return Statistics(estimate_fisher, "fisher_files", fisher_path)


STATISTICS = {"gram": _gram, "fisher": _fisher}


def reads_data(method: str) -> bool:
    """Whether merge method ``method`` reads data: statistics of each member, dev sets, or the
    members' own manifests (then the manifests are part of the merge's stamp)."""
    spec = get_spec(method)
    return bool(spec.statistics or spec.needs_data or spec.needs_member_data)


def data_options(
    method: str,
    options: Optional[Mapping],
    members: Mapping[str, str],
    original: Optional[str] = None,
    original_name: str = "original",
    include_original: bool = False,
    member_data: Optional[Mapping[str, str]] = None,
    dev_sets: Optional[Mapping[str, str]] = None,
    statistics_folder: Optional[str] = None,
    beside_members: bool = False,
    n_utterances: int = 200,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """``options`` completed with what ``method`` needs from data (module docstring).

    Args:
        members: ``{name: model folder}`` in merge order.
        original: the original's folder; its statistics (with ``include_original``) are
            computed on ``member_data[original_name]`` (general-domain data).
        member_data: ``{member name (or original_name): manifest}``: each member's own
            training data, for statistics.
        dev_sets: ``{name: manifest}``: the sets a learnt merge fits on (the targets' and the
            general domain's dev sets).
        statistics_folder: where statistics files are read or written, ``<folder>/<name>/``.
        beside_members: members' files in their own folders instead (``fisher.safetensors``,
            ``gram.safetensors``, where the methods look by default); the original's still
            goes to ``statistics_folder``: a hub cache is no place to write.
        overwrite: an existing statistics file made from another model, manifest or sampling
            (:mod:`aode.reuse`) is recomputed instead of refused.
    Options already given (e.g. ``gram_files``, ``data``) are kept as they are.
    """
    spec = get_spec(method)
    options = dict(options or {})
    if spec.needs_data and "data" not in options:
        if not dev_sets:
            raise ValueError(
                f"merge method {method!r} fits on data: name the target domains' and the general domain's "
                "dev sets in dev_sets {name: manifest}"
            )
        options["data"] = dict(dev_sets)
        options.setdefault("device", device)
    if spec.statistics is None and not spec.needs_member_data:
        return options
    kind = STATISTICS[spec.statistics]() if spec.statistics else None
    if (kind is not None and kind.option in options) or "member_manifests" in options:
        return options
    inputs = dict(members)
    if include_original:
        if original is None:
            raise ValueError("include_original needs the original model")
        inputs[original_name] = original
    member_data = dict(member_data or {})
    missing = [n for n in inputs if n not in member_data]
    if missing:
        raise ValueError(
            f"merge method {method!r} needs {spec.statistics or 'the'} statistics of every member, computed on "
            f"its own data: member_data names no manifest for {missing} (the original: general-domain data)"
        )
    absent = [member_data[n] for n in inputs if not os.path.isfile(member_data[n])]
    if absent:
        raise ValueError(f"member_data: no such manifest: {', '.join(absent)}")
    if kind is None:  # the method reads the members' data itself
        options["member_manifests"] = [member_data[n] for n in inputs]
        options.setdefault("n_utterances", n_utterances)
        options.setdefault("batch_size", batch_size)
        options.setdefault("device", device)
        return options
    paths = []
    for name, folder in inputs.items():
        if beside_members and name in members:
            paths.append(kind.default_path(folder))
        elif statistics_folder is None:
            raise ValueError(f"the statistics of {name} need a statistics_folder to be written to")
        else:
            paths.append(kind.default_path(os.path.join(statistics_folder, _safe(name))))
    stamps = [
        statistics_stamp(spec.statistics, folder, member_data[name], n_utterances, batch_size, seed)
        for name, folder in inputs.items()
    ]
    for (name, folder), path, stamp in zip(inputs.items(), paths, stamps):
        if os.path.isfile(path) and may_reuse(
            f"{spec.statistics} statistics of {name}", path, read_stamp_file(path), stamp, overwrite
        ):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"[aode] {spec.statistics} statistics of {name} on {member_data[name]}", flush=True)
        kind.estimator(
            folder,
            member_data[name],
            out_path=path,
            n_utterances=n_utterances,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=progress,
        )
        write_stamp_file(path, stamp)
    options[kind.option] = paths
    return options


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
