"""Decode models on test sets with the shared Brain, caching hypotheses and WER.

A result is ``<eval_folder>/<model name>/<test set>.json`` with WER, CER, counts (utterances
scored and in the manifest, unreadable IDs), the per-utterance hypotheses and a key (the model's
and the manifest's content fingerprints, :mod:`aode.reuse`, and the scoring settings); the same
key is never decoded twice, so reporting again is free, and a changed model, manifest or
setting is decoded again.
"""

import json
import logging
import os
import time

import torch

from aode.atomic import atomic_write_json
from aode.reuse import file_fingerprint
from aode.reuse import model_fingerprint

logger = logging.getLogger(__name__)


def cache_key(model, manifest, normalizer, beam_size, max_duration=None, skip_unreadable_audio=False):
    """What a cached result was computed from: the model's weights and the manifest by content,
    and every setting that changes which utterances are scored or how."""
    return {
        "model": model_fingerprint(model),
        "manifest": file_fingerprint(manifest),
        "normalizer": normalizer,
        "beam_size": beam_size,
        "max_duration": max_duration,
        "skip_unreadable_audio": bool(skip_unreadable_audio),
    }


def read_cached(path, key):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    return result if result.get("key") == key else None


def split_cached(test_sets, out_folder, key_of):
    """``({set: cached result}, {set: (manifest, key)} still to decode)``: a set's result in
    ``<out_folder>/<set>.json`` is reused only when it was made under ``key_of(set, manifest)``."""
    results, todo = {}, {}
    for name, manifest in test_sets.items():
        key = key_of(name, manifest)
        cached = read_cached(os.path.join(out_folder, f"{name}.json"), key)
        if cached is not None:
            results[name] = cached
        else:
            todo[name] = (manifest, key)
    return results, todo


def test_brain(asr, normalizer, device):
    """The Brain that decodes and scores test sets with ``asr`` (an :class:`aode.models.ASRModel`)."""
    from aode.brain import ASRBrain
    from aode.config import BrainConfig

    return ASRBrain({"model": asr}, BrainConfig(normalizer=normalizer), run_opts={"device": device})


def decode_set(
    brain,
    name,
    manifest,
    out_folder,
    batch_size=8,
    num_workers=0,
    progress=True,
    max_duration=None,
    skip_unreadable_audio=False,
    label="model",
):
    """Decode and score one test set with ``brain``'s model: ``wer``, ``cer``, the counts
    (scored, in the manifest, unreadable IDs), ``seconds`` and the per-utterance
    ``hypotheses``; the per-utterance errors go to ``<out_folder>/<name>_utterances.csv``."""
    import speechbrain as sb
    from tqdm import tqdm

    from aode.data import make_dataset
    from aode.data import unreadable_allowance_of_test_sets

    dataset = make_dataset(
        manifest,
        brain.asr,
        max_duration=max_duration,
        skip_log=os.path.join(out_folder, "skipped_audio.csv"),
        max_unreadable_fraction=unreadable_allowance_of_test_sets(skip_unreadable_audio),
    )
    manifest_rows, unreadable = dataset.manifest_rows, dataset.unreadable
    dataset = dataset.filtered_sorted(sort_key="duration", reverse=True)  # less padding
    brain.utterance_output = os.path.join(out_folder, f"{name}_utterances.csv")
    start = time.time()
    loader = brain.make_dataloader(
        dataset, sb.Stage.TEST, batch_size=batch_size, num_workers=num_workers, ckpt_prefix=None
    )
    brain.on_stage_start(sb.Stage.TEST)
    brain.modules.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"{label} on {name}", unit="batch", disable=not progress, dynamic_ncols=True):
            brain.evaluate_batch(batch, stage=sb.Stage.TEST)
        brain.on_stage_end(sb.Stage.TEST, 0.0, None)
    stats = brain.last_stats
    result = {
        "wer": stats["WER"],
        "cer": stats["CER"],
        "utterances": len(brain.utterances),
        "manifest_utterances": manifest_rows,
        "unreadable": unreadable,
        "seconds": round(time.time() - start, 2),
        "hypotheses": brain.utterances,
    }
    logger.info(
        "%s on %s: WER %.2f (%d of %d utts, %.1f s)",
        label,
        name,
        stats["WER"],
        len(brain.utterances),
        manifest_rows,
        result["seconds"],
    )
    return result


def evaluate_model(
    model,
    test_sets,
    out_folder,
    batch_size=8,
    normalizer="whisper",
    beam_size=1,
    device="cpu",
    num_workers=0,
    progress=True,
    max_duration=None,
    skip_unreadable_audio=False,
    label=None,
):
    """WER of ``model`` (folder or hub id) on each ``{name: manifest}``; cached per set.

    Returns ``{name: result dict}`` (``wer``, ``cer``, ``utterances`` scored,
    ``manifest_utterances``, ``unreadable`` IDs, ``seconds``, ...). The model is loaded only
    when some set is not cached yet. A test row whose audio cannot be read is an error
    (:class:`aode.data.UnreadableAudioError`) unless ``skip_unreadable_audio``; then it is
    skipped, listed in ``skipped_audio.csv`` and counted. ``label`` names the model in the
    progress bar (default: the folder's name).
    """
    from aode.models import load_asr_model

    results, todo = split_cached(
        test_sets,
        out_folder,
        lambda name, manifest: cache_key(model, manifest, normalizer, beam_size, max_duration, skip_unreadable_audio),
    )
    if not todo:
        return results
    label = label or os.path.basename(os.path.normpath(str(model)))
    brain = test_brain(load_asr_model(model, beam_size=beam_size).eval(), normalizer, device)
    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress, max_duration=max_duration)
    return results | decode_sets(brain, todo, out_folder, str(model), label, skip_unreadable_audio, **options)


def decode_sets(brain, todo, out_folder, model, label, skip_unreadable_audio=False, around_set=None, **options):
    """:func:`decode_set` for each ``{set: (manifest, cache key)}`` of ``todo``, each result
    written to ``<out_folder>/<set>.json`` with the model, set, manifest and key; returns them.
    ``around_set(name)``, when given, runs before a set is decoded and returns a function that
    gives, after, what the result adds (a routed model's routes)."""
    results = {}
    for name, (manifest, key) in todo.items():
        after = around_set(name) if around_set else dict
        decoded = decode_set(
            brain, name, manifest, out_folder, skip_unreadable_audio=skip_unreadable_audio, label=label, **options
        )
        result = {"model": model, "test_set": name, "manifest": manifest, "key": key, **decoded, **after()}
        atomic_write_json(os.path.join(out_folder, f"{name}.json"), result, indent=1)
        results[name] = result
    return results


def scored_counts(results):
    """``{set: (utterances scored, utterances in the manifest)}`` of :func:`evaluate_model`'s
    results (results cached before the count was kept: the scored count for both; results
    without counts are left out)."""
    return {
        s: (r["utterances"], r.get("manifest_utterances", r["utterances"]))
        for s, r in results.items()
        if "utterances" in r
    }


def evaluate_models(models, test_sets, eval_folder, counts=None, **kwargs):
    """``{model name: {set: WER}}`` for ``{model name: folder}`` x ``{set: manifest}``;
    ``counts``, when given, is filled with ``{model name: {set: (scored, in the manifest)}}``."""
    table = {}
    for name, folder in models.items():
        results = evaluate_model(folder, test_sets, os.path.join(eval_folder, name), label=name, **kwargs)
        table[name] = {s: results[s]["wer"] for s in test_sets}
        if counts is not None:
            counts[name] = scored_counts({s: results[s] for s in test_sets})
    return table
