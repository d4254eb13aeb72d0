"""AdaMerging: Yang, Wang, Shen, Liu, Guo, Wang & Tao, "AdaMerging: Adaptive Model Merging for
Multi-Task Learning", ICLR 2024; layer-wise, with an unsupervised and a supervised objective.

The merged model is task arithmetic with one coefficient per member per parameter tensor
(the paper's "layer-wise" AdaMerging: its code keeps one lambda per state-dict entry)::

    theta_l = theta_0,l + sum_i clamp(lam_{i,l}, 0, 1) (theta_{i,l} - theta_0,l)

Only the coefficients ``lam`` train (Adam); the members and the original stay frozen and the
merged weights are rebuilt from them at every step, so the result is an ordinary merge of the
members (no weight of the merged model is trained). The clamp is the paper's code's.

Objectives (option ``objective``):

* ``entropy`` (unsupervised, the paper's): the mean Shannon entropy of the model's own
  predictions on untranscribed audio (:meth:`aode.models.ASRModel.prediction_entropy`: CTC
  frame posteriors over the valid frames; an attention decoder's token posteriors along its
  own greedy hypothesis). Transcripts are never read.
* ``loss`` (supervised): the ASR training loss (:meth:`aode.models.ASRModel.batch_loss`) on
  transcribed dev sets.

``data``: the sets the objective is measured on, ``{name: manifest}`` (or a list): the target
domains' dev (or untranscribed) sets AND the general domain's (the original's) dev set, so
that not forgetting is part of the objective. Each step draws one batch from every set and
averages their objectives: every set weighs the same, whatever its size, unless option
``data_weights`` (``{set name: weight}``, 1 for a set it does not name; normalised) says
otherwise, e.g. the general set at 4 to make not forgetting count as much as the 4 targets.

Options and defaults: ``data`` (required), ``objective`` ("entropy"), ``steps`` (100), ``lr``
(0.005), ``batch_size`` (8), ``init`` (None: ``1/N``, the plain average of the N members, i.e.
AoDE; the paper's prior is 0.3 for 8 tasks), ``n_utterances`` (None: every row; else a seeded
subset per set), ``max_duration`` (None), ``device`` ("cpu"), ``progress`` (True),
``max_decode_ratio`` (None: the model's default; an attention decoder's greedy hypotheses for
the entropy objective stop at this fraction of the encoder frames: Whisper's 1500 frames make
the default 1.0 a 448-token cap, which a model that rarely emits end-of-text reaches on every
batch; CTC ignores it). The paper
trains 500 steps at lr 1e-3; 100 steps at 5e-3 allow the same total movement of a coefficient
(0.5) in a fifth of the forward passes. Deterministic given ``seed`` (the merge seed): the
batch order and every draw come from it.

Not elementwise and not per-tensor: :func:`adamerge` is a whole-model method (registered with
``whole_model=True``; :func:`aode.merge.merge_models` hands it the whole plan). The learnt
coefficients are written as the merge's ``weight_rules`` (one exact tensor name each) of a
``task_arithmetic`` merge done by the streaming driver, and, with the objective's trace, under
``adamerging`` in the merged folder's ``aode.json``. Tensors that are no parameter of the model
(BatchNorm running statistics) get the plain average of the members, as the driver gives every
method. Members must be full model folders of the original's architecture.

Memory: the original model, every member's task vector in float32 (N x model: 3.9 GB for four
whisper-small experts), Adam's two moments of the coefficients (negligible), and one batch's
activations and gradients through the model (as in training).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import torch
from tqdm.auto import tqdm

from .checks import one_of
from .checks import positive_integer
from .checks import positive_number
from .registry import register

if TYPE_CHECKING:
    from .driver import MergePlan
    from .driver import MergeRun

logger = logging.getLogger(__name__)

__all__ = ["adamerge", "learn_coefficients", "OBJECTIVES"]

OBJECTIVES = ("entropy", "loss")
DEFAULTS = {
    "objective": "entropy",
    "steps": 100,
    "lr": 0.005,
    "batch_size": 8,
    "init": None,
    "n_utterances": None,
    "max_duration": None,
    "device": "cpu",
    "progress": True,
    "max_decode_ratio": None,
    "data_weights": None,
}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options with defaults applied; a ValueError naming a bad or unknown one."""
    from .checks import data_options

    out, data = data_options(
        "adamerging",
        options,
        DEFAULTS,
        "data",
        "adamerging needs data: option data = {name: manifest} with the target domains' dev sets and "
        "the general domain's (the recipes fill it from dev_sets)",
    )
    out["data"] = dict(data) if isinstance(data, dict) else {os.path.basename(os.fspath(p)): p for p in data}
    missing = [p for p in out["data"].values() if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"adamerging data: no such manifest: {', '.join(map(str, missing))}")
    weights = out["data_weights"] or {}
    unknown_sets = [k for k in weights if k not in out["data"]]
    if unknown_sets:
        raise ValueError(
            f"adamerging data_weights names sets that data lacks: {unknown_sets} (sets: {list(out['data'])})"
        )
    if any(float(v) < 0 for v in weights.values()) or sum(float(weights.get(k, 1.0)) for k in out["data"]) <= 0:
        raise ValueError(f"adamerging data_weights must be non-negative with a positive sum, got {weights}")
    out["data_weights"] = {k: float(weights.get(k, 1.0)) for k in out["data"]}
    if out["objective"] not in OBJECTIVES:
        raise ValueError(f"adamerging objective must be one of {OBJECTIVES}, got {out['objective']!r}")
    if int(out["steps"]) < 1 or int(out["batch_size"]) < 1:
        raise ValueError("adamerging steps and batch_size must be positive")
    if not float(out["lr"]) > 0:
        raise ValueError(f"adamerging lr must be positive, got {out['lr']}")
    if out["init"] is not None and not 0.0 <= float(out["init"]) <= 1.0:
        raise ValueError(f"adamerging init must lie in [0, 1] (coefficients are clamped there), got {out['init']}")
    return out


def _stored_names(asr, folder):
    """``{name in asr.named_parameters(): tensor name in the folder's weights}`` of its float
    parameters (the model's :meth:`~aode.models.ASRModel.stored_name`)."""
    from aode.member_statistics import stored_parameter_names

    stored = stored_parameter_names(asr, folder)  # hf_model name -> stored name
    params = dict(asr.named_parameters())
    return {
        name: stored[hf] for name, hf in asr.hf_names().items() if hf in stored and params[name].is_floating_point()
    }


def _use_member_mean_buffers(asr, folder, sources, device):
    """Float buffers (BatchNorm running statistics) set to the members' mean, as the merge
    writes them, so the objective is measured on the model that will be written."""
    from aode.member_statistics import tensor_names

    buffers = {n: b for n, b in asr.hf_model.named_buffers() if b.is_floating_point()}
    for hf, key in asr.stored_names(tensor_names(folder), buffers).items():
        if any(key not in src.infos for src in sources):
            continue
        buf = buffers[hf]
        mean = sum(src.read(key).to(device, torch.float32) for src in sources) / len(sources)
        buf.copy_(mean.reshape(buf.shape).to(buf.dtype))


def _endless_batches(manifest, asr, batch_size, seed, n_utterances, max_duration):
    """Shuffled batches of a manifest, reshuffled (with ``seed``) at every pass."""
    import speechbrain as sb

    from aode.config import MAX_UNREADABLE_FRACTION
    from aode.data import make_dataset

    dataset = make_dataset(manifest, asr, max_duration=max_duration, max_unreadable_fraction=MAX_UNREADABLE_FRACTION)
    ids = list(range(len(dataset)))
    rng = random.Random(seed)
    if n_utterances is not None and n_utterances < len(ids):
        ids = sorted(rng.sample(ids, int(n_utterances)))
    while True:
        rng.shuffle(ids)
        for start in range(0, len(ids), batch_size):
            yield sb.dataio.batch.PaddedBatch([dataset[i] for i in ids[start : start + batch_size]])


def learn_coefficients(
    members: Sequence[str], base: str, data: Any, seed: int = 0, **options: Any
) -> tuple[dict[str, list[float]], dict]:
    """Learn AdaMerging's layer-wise coefficients (module docstring).

    Returns ``(coefficients, trace)``: ``{stored tensor name: [lam_1, ..., lam_N]}`` (clamped
    to [0, 1]) and ``{"objective": [value per step], "seconds": ...}``.
    """
    from torch.nn.utils.stateless import _reparametrize_module

    from aode.merge.read import open_model
    from aode.models import load_asr_model
    from aode.models import resolve_model_folder

    opts = check_options({**options, "data": data})
    device = opts["device"]
    torch.manual_seed(seed)
    base_folder = resolve_model_folder(base)
    decode = {} if opts["max_decode_ratio"] is None else {"max_decode_ratio": float(opts["max_decode_ratio"])}
    asr = load_asr_model(base_folder, **decode).to(device).eval()
    names = _stored_names(asr, base_folder)
    params = dict(asr.named_parameters())
    sources = [open_model(m) for m in members]
    try:
        deltas = {}
        for name, stored in names.items():
            theta0 = params[name].detach()
            stack = []
            for src in sources:
                if stored not in src.infos:
                    raise ValueError(f"adamerging: member {src.label} has no tensor {stored!r}")
                stack.append(src.read(stored).to(device, torch.float32).reshape(theta0.shape) - theta0.float())
            deltas[name] = torch.stack(stack)
        _use_member_mean_buffers(asr, base_folder, sources, device)
    finally:
        for src in sources:
            src.close()
    # Only tensors that some member changed need a coefficient (the others stay the original's).
    names = {n: s for n, s in names.items() if bool(deltas[n].abs().amax() > 0)}
    for p in asr.parameters():
        p.requires_grad_(False)
    n_members = len(members)
    init = 1.0 / n_members if opts["init"] is None else float(opts["init"])
    lam = torch.nn.Parameter(torch.full((len(names), n_members), init, device=device))
    optimizer = torch.optim.Adam([lam], lr=float(opts["lr"]))
    streams = {
        set_name: _endless_batches(
            path, asr, int(opts["batch_size"]), seed + k, opts["n_utterances"], opts["max_duration"]
        )
        for k, (set_name, path) in enumerate(opts["data"].items())
    }
    objective = asr.prediction_entropy if opts["objective"] == "entropy" else asr.batch_loss
    set_weights = {k: w / sum(opts["data_weights"].values()) for k, w in opts["data_weights"].items()}
    trace, start = [], time.time()
    bar = tqdm(range(int(opts["steps"])), disable=not opts["progress"], desc=f"AdaMerging ({opts['objective']})")
    for _ in bar:
        optimizer.zero_grad()
        total = 0.0
        for set_name, stream in streams.items():
            if set_weights[set_name] == 0:
                continue
            # rebuilt per set: each backward frees its graph, so one set's activations are held
            # at a time (one graph over all sets would hold them all)
            merged = _merged_parameters(params, deltas, names, lam)
            with _reparametrize_module(asr, merged, tie_weights=True):
                value = objective(next(stream).to(device)) * set_weights[set_name]
            value.backward()
            total += float(value.detach())
        optimizer.step()
        trace.append(total)
        bar.set_postfix(objective=f"{total:.4f}")
        if not math.isfinite(total):
            raise FloatingPointError(f"adamerging: the {opts['objective']} objective became {total}")
    coefficients = {stored: row.tolist() for stored, row in zip(names.values(), lam.detach().clamp(0, 1).cpu())}
    return coefficients, {"objective": trace, "seconds": round(time.time() - start, 1)}


def _merged_parameters(params, deltas, names, lam):
    clamped = lam.clamp(0.0, 1.0)
    merged = {}
    for row, name in enumerate(names):
        coeff = clamped[row].view(-1, *([1] * params[name].dim()))
        merged[name] = params[name].detach() + (coeff * deltas[name]).sum(0)
    return merged


@register(
    "adamerging",
    display_name="AdaMerging",
    reference='Yang, Wang, Shen, Liu, Guo, Wang & Tao, "AdaMerging: Adaptive Model Merging for Multi-Task '
    'Learning", ICLR 2024',
    needs_base=True,
    whole_model=True,
    needs_data=True,
    options={**DEFAULTS, "data": None},
    checks={
        "objective": one_of("entropy", "loss"),
        "steps": positive_integer,
        "lr": positive_number,
        "batch_size": positive_integer,
    },
)
def adamerge(plan: MergePlan, output: str | os.PathLike, run: MergeRun) -> str:
    """Learn the coefficients, then merge with them (module docstring). ``plan``: the
    :class:`~aode.merge.driver.MergePlan` (its options hold AdaMerging's); ``run``: how to run
    the merge (:class:`~aode.merge.driver.MergeRun`)."""
    from .driver import merge_models

    if plan.include_base:
        raise ValueError(
            "adamerging learns how much of each member to add to the original: the original is already "
            "the starting point (include_original must be False)"
        )
    options = dict(plan.options)
    options.setdefault("progress", run.progress)
    coefficients, trace = learn_coefficients(plan.members, plan.base, seed=plan.seed, **options)
    rules = [[name, values] for name, values in coefficients.items()]
    record = {
        "options": {k: v for k, v in check_options(options).items() if k != "progress"},
        "coefficients": coefficients,
        "objective_first": trace["objective"][0],
        "objective_last": trace["objective"][-1],
        "objective": trace["objective"],
        "seconds": trace["seconds"],
    }
    record["options"]["data"] = {k: os.path.abspath(v) for k, v in record["options"]["data"].items()}
    logger.info("adamerging: objective %.4f -> %.4f", trace["objective"][0], trace["objective"][-1])
    return merge_models(
        plan.members,
        output,
        method="task_arithmetic",
        # Tensors without a rule (no parameter, or unchanged by every member; BatchNorm
        # statistics) get lam = 1/N: task arithmetic's plain average, as during learning.
        weights=[1.0 / len(plan.members)] * len(plan.members),
        base=plan.base,
        weight_rules=rules,
        options={"lam": 1.0},
        seed=plan.seed,
        **run.keywords(method="adamerging", adamerging=record),
    )
