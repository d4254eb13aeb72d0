"""RegMean++: Nguyen, Tran, Ho, Hy, Bui & Ho-Nguyen (arXiv 2508.03121, 2025), "RegMean++: Enhancing
Effectiveness and Generalization of Regression Mean for Model Merging"; reference code
github.com/nthehai01/RegMean-plusplus (``fusion_bench/method/regmean_plusplus``).

RegMean (:mod:`aode.merge.regmean`) solves, for every linear layer on its own,

    W* = argmin_W  sum_i w_i || X_i W^T - X_i W_i^T ||^2

with ``X_i`` the inputs that layer receives in candidate ``i`` itself. RegMean++ keeps the
formula and changes ``X_i``: the layers are merged one after the other in forward order, and
the inputs of layer ``l`` for candidate ``i`` are those of the MERGED model so far: candidate
``i``'s data run through the already merged layers ``< l`` and then through candidate ``i``'s
own layer ``l``. The paper calls the first part the cross-layer dependency (what the merged
earlier layers hand on) and the second the intra-layer one (within a transformer block, the
block's later linears see the candidate's own earlier sub-layers: its own attention, norms
and FFN first linear feed the FFN second linear's Gram). The reference code does exactly
that: it merges the embedding (the plain average) first, feeds each candidate's data through
it, then for each transformer layer runs the candidate's own whole layer on the merged
hidden states with Gram hooks on that layer's Linears, merges the layer (RegMean on its
Linears, the plain average of its other tensors) and feeds the merged layer's output on.

Here (generic over model families; nothing branches on the family):

* Groups: every ``nn.Linear`` with a Gram (:func:`aode.gram._linear_weights`: untied, stored)
  belongs to the layer around it, as the model places it (:meth:`aode.models.ASRModel.layer_of`;
  Parakeet: ``encoder.layers.N``; Whisper: ``encoder.layers.N``, ``decoder.layers.N``); a
  Linear outside any layer (Parakeet's subsampling projection) is a group of its own. A
  group's tensors are all tensors under its block (norms, convolutions, biases, BatchNorm
  statistics) or the lone Linear's weight and bias. Groups are ordered by when their first
  Linear runs in a forward pass (recorded with hooks on one batch).
* Every other tensor ("loose": convolutional front ends, embeddings, final norms, heads) is
  data-independent in RegMean, the plain weighted average; it is set to that average from
  the start, as the reference code merges the embedding before the first layer. So even the
  first group's inputs come from the merged front end (they equal RegMean's only when the
  candidates share their front end).
* For group ``g`` and each input ``i`` (the members, then the original with
  ``include_base``): one working model (loaded once, from the base folder, else member 0)
  holds the merged groups ``< g``, the averaged loose tensors and input ``i``'s own tensors
  of group ``g``; input ``i``'s data subset runs through it with Gram hooks on group ``g``'s
  Linears, per-frame normalised as :mod:`aode.gram` does (``G = 1/n sum_t x_t x_t^T`` over
  every row a Linear sees, padding included, symmetrised, float32). The forward pass stops
  at the first Linear of group ``g + 1`` (a private exception from a pre-hook), so later
  groups never run; if the recorded order interleaves groups (not the case for Parakeet
  or Whisper) every pass runs to the end instead (a warning). Group ``g`` is then merged
  with :func:`aode.merge.regmean.regmean_linear` (``alpha``, ``ridge`` as RegMean's) on its
  Linear weights and the weighted average on its other tensors, rounded to the stored dtype
  and set in the working model. A Linear some input never reached gets the plain average.
  Decoder cross-attention keys/values read the encoder output of the working model, which
  is fully merged by the time the decoder's groups come (they run later).
* The output is written by RegMean's own code: the Grams are saved (:func:`aode.gram.save_gram`,
  one file per input, in a temporary folder beside the output) and
  :func:`aode.merge.merge_models` runs ``method="regmean"`` with ``gram_files`` set to them.
  Same Grams, same closed form, same weights: the written tensors are the progressively
  merged ones (the test checks this), and ``aode.json`` records ``method: regmean_pp``, these
  options and the group order under ``regmean_pp``.

Deviations from the reference code: it stores each candidate's hidden states between layers
and runs one layer at a time (model-specific code per architecture); here every group
re-runs the model from the audio up to the next group (generic; for G groups of similar
cost about (G + 1) / 2 full forward passes per input in all, against about one in the
reference code and in RegMean: the mini model's 5 groups took 1.8x RegMean's Gram passes). Its
Grams are unweighted and have no ridge; ours take the merge weights and RegMean's relative
ridge (``ridge = 0`` is the exact formula). Its final norm / head after the last layer stay
the pretrained model's; ours are averaged, as RegMean does.

Options: ``member_manifests`` (required: one manifest per input, the experts' own training
data, the original's general-domain data last with include_base; the recipes fill it),
``n_utterances`` (200; a seeded subset per input, :func:`aode.data.subset_loader` with the
merge seed), ``batch_size`` (8), ``max_duration`` (None), ``device`` ("cpu"), ``alpha``
(0.9), ``ridge`` (1e-4), ``progress`` (True).

Memory: every input's tensors in float32 at once (inputs x model: 11 MB each for the mini
model, about 1 GB for whisper-small), each input's data subset (the audio of
``n_utterances`` utterances, decoded once), the working model and one group's Gram
accumulators; the Grams go to disk group by group (for whisper-small 1.3 GB per input).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import torch
from tqdm.auto import tqdm

from .checks import positive_integer
from .linear import weighted_average
from .registry import register
from .regmean import CHECKS as REGMEAN_CHECKS
from .regmean import DEFAULT_ALPHA
from .regmean import DEFAULT_RIDGE
from .regmean import _check_options as _check_regmean_options
from .regmean import regmean_linear

if TYPE_CHECKING:
    from aode.models import ASRModel

    from .driver import MergePlan
    from .driver import MergeRun
    from .driver import _Inputs

logger = logging.getLogger(__name__)

__all__ = ["regmean_pp", "progressive_merge", "check_options", "linear_groups", "model_blocks"]

DEFAULTS = {
    "n_utterances": 200,
    "batch_size": 8,
    "max_duration": None,
    "device": "cpu",
    "alpha": DEFAULT_ALPHA,
    "ridge": DEFAULT_RIDGE,
    "progress": True,
}
# The outermost ``...layers.N`` of a bare module or tensor name (no model to ask): its block.
BLOCK = re.compile(r"^((?:.*?\.)?layers\.\d+)\.")


class _Stop(Exception):
    """Raised by a pre-hook on the next group's first Linear: group g has seen its inputs."""


def check_options(options: Mapping[str, Any], n_inputs: int) -> dict[str, Any]:
    """The options with defaults applied; a ValueError naming a bad or unknown one."""
    from .checks import data_options

    out, manifests = data_options(
        "regmean_pp",
        options,
        DEFAULTS,
        "member_manifests",
        "regmean_pp needs member_manifests: one manifest per input, each member's own training data "
        "(with include_base the original's general-domain data last; the recipes fill it from member_data)",
    )
    manifests = [os.fspath(m) for m in manifests]
    if len(manifests) != n_inputs:
        raise ValueError(
            f"regmean_pp member_manifests has {len(manifests)} entries for {n_inputs} inputs "
            "(one per member; with include_base the original's last)"
        )
    missing = [m for m in manifests if not os.path.isfile(m)]
    if missing:
        raise ValueError(f"regmean_pp member_manifests: no such manifest: {', '.join(missing)}")
    out["member_manifests"] = manifests
    for key in ("n_utterances", "batch_size"):
        if int(out[key]) < 1:
            raise ValueError(f"regmean_pp {key} must be a positive integer, got {out[key]}")
        out[key] = int(out[key])
    if out["max_duration"] is not None and not float(out["max_duration"]) > 0:
        raise ValueError(f"regmean_pp max_duration must be positive (or None), got {out['max_duration']}")
    try:
        _check_regmean_options(out["alpha"], out["ridge"])
    except ValueError as e:
        raise ValueError(f"regmean_pp: {str(e).removeprefix('regmean: ')}") from None
    out["alpha"], out["ridge"] = float(out["alpha"]), float(out["ridge"])
    return out


def _pattern_block(name: str) -> str | None:
    match = BLOCK.match(name)
    return match.group(1) if match else None


def linear_groups(module_names: Iterable[str], block_of: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """``{Linear module name: group}``: the block ``block_of`` puts its weight in (a tensor
    name -> its block's name, or None; :func:`model_blocks`), else the Linear itself. Without
    ``block_of``, the outermost ``...layers.N`` of the bare name."""
    if block_of is None:
        return {name: _pattern_block(name) or name for name in module_names}
    return {name: block_of(f"{name}.weight") or name for name in module_names}


def model_blocks(asr: ASRModel, names: Iterable[str]) -> dict[str, str]:
    """``{tensor name: its block's name}`` for the ``names`` (of ``hf_model``) that the model
    places in a layer (:meth:`~aode.models.ASRModel.layer_of` gives a layer index); a block is
    named by the module path its tensors share (``encoder.layers.3``)."""
    layers = {name: asr.layer_of(name) for name in names}
    paths = {}
    for name, layer in layers.items():
        if layer is not None and layer[1] is not None:
            paths.setdefault(layer, []).append(name.split(".")[:-1])
    label = {layer: ".".join(os.path.commonprefix(p)) for layer, p in paths.items()}
    return {name: label[layer] for name, layer in layers.items() if layer in label}


def _forward_order(asr, modules, group_of, batch, device):
    """The groups in the order their Linears first run on ``batch``, and whether each
    group's Linear calls are contiguous (no group runs again after a later one started)."""
    calls, handles = [], []
    for name in group_of:
        handles.append(modules[name].register_forward_pre_hook(lambda m, args, g=group_of[name]: calls.append(g)))
    try:
        with torch.no_grad():
            asr(*asr.batch_inputs(batch.to(device)))
    finally:
        for h in handles:
            h.remove()
    runs = [g for k, g in enumerate(calls) if k == 0 or calls[k - 1] != g]
    order = list(dict.fromkeys(runs))
    return order, len(runs) == len(order)


def _group_grams(asr, modules, group_linears, stop_linears, batches, device):
    """Per-frame Grams ``{module: float32 in x in or None (never ran)}`` of ``group_linears``
    over ``batches``, each pass stopped at the first of ``stop_linears`` to run."""
    from aode.gram import _GramHooks

    hooks = _GramHooks({m: modules[m] for m in group_linears}, device)

    def stop(module, args):
        raise _Stop

    handles = [modules[m].register_forward_pre_hook(stop) for m in stop_linears]
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    asr(*asr.batch_inputs(batch.to(device)))
                except _Stop:
                    pass
    finally:
        hooks.remove()
        for h in handles:
            h.remove()
    grams = {}
    for m in group_linears:
        n = hooks.frames[m]
        if n == 0:
            grams[m] = None
            continue
        g = hooks.sums.pop(m) / n
        grams[m] = ((g + g.T) / 2).float().cpu()
    return grams, {m: hooks.frames[m] for m in group_linears}


def progressive_merge(
    plan: MergePlan, options: dict[str, Any], gram_dir: str, sources: _Inputs | None = None
) -> tuple[list[str], dict[str, torch.Tensor], dict]:
    """RegMean++'s Grams, group by group on the progressively merged model (module docstring).

    ``plan``: the :class:`~aode.merge.driver.MergePlan`; ``options``: checked
    (:func:`check_options`); ``gram_dir``: where one Gram file per input is written.
    ``sources``: the plan's opened inputs (:class:`aode.merge.driver._Inputs`), else opened here.

    Returns ``(gram_files, merged, record)``: the Gram file of each input, ``{stored name:
    merged tensor in its stored dtype}`` of every float tensor the working model holds (what
    the ``regmean`` merge with these Gram files writes), and a record for ``aode.json``.
    """
    from aode.data import subset_loader
    from aode.gram import _linear_weights
    from aode.gram import save_gram
    from aode.models import load_asr_model
    from aode.models import resolve_model_folder

    from .driver import _Inputs

    if sources is None:
        with _Inputs(_check_plan(plan)) as opened:
            return progressive_merge(plan, options, gram_dir, opened)
    start = time.time()
    device = options["device"]
    inputs = sources.inputs
    skeleton = resolve_model_folder(plan.base if plan.base is not None else plan.members[0])
    asr = load_asr_model(skeleton).to(device).eval()
    hf = asr.hf_model
    modules = dict(hf.named_modules())
    linears = _linear_weights(asr, skeleton)  # module -> stored weight name
    state = hf.state_dict()
    infos = inputs[0].infos
    # {state-dict key: stored tensor name} of the float tensors (the model's stored_name)
    stored = asr.stored_names(infos, [k for k, t in state.items() if t.is_floating_point()])
    blocks = model_blocks(asr, stored)
    group_of = linear_groups(linears, blocks.get)
    groups = set(group_of.values())
    lone = {f"{m}.{p}": g for m, g in group_of.items() if g == m for p in ("weight", "bias")}
    unit = {}
    for key in stored:
        block = blocks.get(key)
        unit[key] = lone.get(key, block if block in groups else None)
    # every input's tensors, float32 (inputs x model)
    tensors = [{k: src.read(name).float().reshape(state[k].shape) for k, name in stored.items()} for src in inputs]
    merged = {}

    def set_merged(key, value):
        name = stored[key]
        merged[name] = value.to(infos[name].dtype)
        state[key].copy_(merged[name])

    with torch.no_grad():
        for key in stored:
            if unit[key] is None:  # loose tensors: the plain weighted average throughout
                set_merged(key, weighted_average([t[key] for t in tensors], plan.weights_for(stored[key])))
    batches, utterances = [], []
    for manifest in options["member_manifests"]:
        loader, n = subset_loader(
            manifest, asr, options["n_utterances"], options["batch_size"], plan.seed, options["max_duration"]
        )
        batches.append(list(loader))
        utterances.append(n)
    if not all(batches):
        empty = [m for m, b in zip(options["member_manifests"], batches) if not b]
        raise ValueError(f"regmean_pp: no usable utterance in {', '.join(empty)}")
    order, contiguous = _forward_order(asr, modules, group_of, batches[0][0], device)
    if not contiguous:
        logger.warning("regmean_pp: the model's groups of Linears interleave; every pass runs the whole model")
    never = sorted(groups - set(order))
    if never:
        logger.warning("regmean_pp: the Linears of %s never ran: plain average", never)
    members_of = {g: [m for m in linears if group_of[m] == g] for g in order}
    keys_of = {g: [k for k in stored if unit[k] == g] for g in groups}
    os.makedirs(gram_dir, exist_ok=True)
    parts = [[] for _ in inputs]  # per input: the Gram file of each group
    frames = {}
    bar = tqdm(total=len(order) * len(inputs), disable=not options["progress"], desc="RegMean++", unit="pass")
    try:
        for index, group in enumerate(order):
            stop = members_of[order[index + 1]] if contiguous and index + 1 < len(order) else []
            per_input = []
            for i, own in enumerate(tensors):
                with torch.no_grad():
                    for key in keys_of[group]:
                        state[key].copy_(own[key])
                grams, seen = _group_grams(asr, modules, members_of[group], stop, batches[i], device)
                per_input.append(grams)
                frames.setdefault(group, []).append(seen[members_of[group][0]])
                bar.update()
            with_grams = [m for m in members_of[group] if all(g[m] is not None for g in per_input)]
            partial = [m for m in members_of[group] if m not in with_grams and any(g[m] is not None for g in per_input)]
            if partial:
                logger.warning("regmean_pp: %s ran for some inputs only: plain average", partial)
            for i, grams in enumerate(per_input):
                path = os.path.join(gram_dir, f"input{i}.group{index}.safetensors")
                parts[i].append(save_gram(path, {linears[m]: grams[m] for m in with_grams}))
            gram_of = {f"{m}.weight": [g[m] for g in per_input] for m in with_grams}
            with torch.no_grad():
                for key in keys_of[group]:
                    values, w = [t[key] for t in tensors], plan.weights_for(stored[key])
                    if key in gram_of:
                        value = regmean_linear(values, w, gram_of[key], alpha=options["alpha"], ridge=options["ridge"])
                    else:
                        value = weighted_average(values, w)
                    set_merged(key, value)
    finally:
        bar.close()
    with torch.no_grad():
        for group in never:  # never ran: RegMean's plain average (no Gram)
            for key in keys_of[group]:
                set_merged(key, weighted_average([t[key] for t in tensors], plan.weights_for(stored[key])))
    files = _join_parts(parts, gram_dir, options, utterances, plan.seed)
    record = {
        "groups": order,
        "early_stop": contiguous,
        "utterances": utterances,
        "frames": frames,
        "seconds": round(time.time() - start, 1),
    }
    return files, merged, record


def _join_parts(parts, gram_dir, options, utterances, seed):
    """One Gram file per input from its per-group files (one input's Grams in memory at a time)."""
    from aode.gram import load_gram
    from aode.gram import save_gram

    files = []
    for i, paths in enumerate(parts):
        grams = {}
        for path in paths:
            grams.update(load_gram(path))
        metadata = {
            "method": "regmean_pp (inputs from the progressively merged model)",
            "utterances": utterances[i],
            "manifest": os.path.abspath(options["member_manifests"][i]),
            "seed": seed,
        }
        files.append(save_gram(os.path.join(gram_dir, f"input{i}.safetensors"), grams, metadata))
        for path in paths:
            os.remove(path)
    return files


def _check_plan(plan):
    """The plan's inputs as an ``average`` plan: opening it (:class:`aode.merge.driver._Inputs`)
    checks configs and tensor names and shapes as the driver does, before any work."""
    from .driver import MergePlan

    rules = [(p, w.tolist()) for p, w in plan.weight_rules]
    return MergePlan(plan.members, "average", plan.weights.tolist(), plan.base, plan.include_base, rules)


@register(
    "regmean_pp",
    display_name="RegMean++",
    reference='Nguyen, Tran, Ho, Hy, Bui & Ho-Nguyen, "RegMean++: Enhancing Effectiveness and Generalization of '
    'Regression Mean for Model Merging", arXiv 2508.03121, 2025',
    whole_model=True,
    needs_member_data=True,
    options={**DEFAULTS, "member_manifests": None},
    checks={**REGMEAN_CHECKS, "n_utterances": positive_integer, "batch_size": positive_integer},
)
def regmean_pp(plan: MergePlan, output: str | os.PathLike, run: MergeRun) -> str:
    """RegMean++ (module docstring): Grams from the progressively merged model, then RegMean's
    merge (:func:`aode.merge.merge_models` with ``method="regmean"``) writes ``output``."""
    from .driver import _Inputs
    from .driver import merge_models

    options = dict(plan.options)
    options.setdefault("progress", run.progress)
    options = check_options(options, plan.n_inputs)
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not run.overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True to replace it")
    parent = os.path.dirname(output)
    with _Inputs(_check_plan(plan)) as sources:  # configs and tensors agree: checked before any work
        os.makedirs(parent, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=f".{os.path.basename(output)}.grams.") as gram_dir:
            files, _, record = progressive_merge(plan, options, gram_dir, sources)
            recorded = {k: v for k, v in options.items() if k != "progress"}
            recorded["member_manifests"] = [os.path.abspath(m) for m in options["member_manifests"]]
            logger.info("regmean_pp: Grams of %d groups in %.1f s", len(record["groups"]), record["seconds"])
            return merge_models(
                plan.members,
                output,
                method="regmean",
                weights=plan.weights.tolist(),
                base=plan.base,
                include_base=plan.include_base,
                weight_rules=[(p, w.tolist()) for p, w in plan.weight_rules],
                options={"gram_files": files, "alpha": options["alpha"], "ridge": options["ridge"]},
                seed=plan.seed,
                **run.keywords(method="regmean_pp", options=recorded, regmean_pp={"options": recorded, **record}),
            )
