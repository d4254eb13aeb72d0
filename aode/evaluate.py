"""Decode models on test sets with the shared Brain, caching hypotheses and WER.

A result is ``<eval_folder>/<model name>/<test set>.json`` with WER, CER, counts, the
per-utterance hypotheses and a key (model weights fingerprint, manifest content hash,
normaliser, beam); the same key is never decoded twice, so reporting again is free.
"""

import hashlib
import json
import logging
import os
import time

import torch

from aode.atomic import atomic_write_json

logger = logging.getLogger(__name__)


def _file_fingerprint(path):
    stat = os.stat(path)
    return f"{os.path.basename(path)}:{stat.st_size}:{int(stat.st_mtime)}"


def model_fingerprint(model):
    """Identifies a model folder's weights (names, sizes, mtimes) or a hub id as given."""
    if not os.path.isdir(model):
        return str(model)
    # weights and config only: a fisher.safetensors written beside them changes no output
    parts = sorted(
        _file_fingerprint(os.path.join(model, f))
        for f in os.listdir(model)
        if f.startswith(("model", "pytorch_model")) or f == "config.json"
    )
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def manifest_fingerprint(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def cache_key(model, manifest, normalizer, beam_size):
    return {
        "model": model_fingerprint(model),
        "manifest": manifest_fingerprint(manifest),
        "normalizer": normalizer,
        "beam_size": beam_size,
    }


def read_cached(path, key):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    return result if result.get("key") == key else None


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
):
    """WER of ``model`` (folder or hub id) on each ``{name: manifest}``; cached per set.

    Returns ``{name: result dict}`` (``wer``, ``cer``, ``utterances``, ``seconds``, ...).
    The model is loaded only when some set is not cached yet.
    """
    from aode.brain import ASRBrain
    from aode.data import make_dataset
    from aode.models import load_asr_model

    results, todo = {}, {}
    for name, manifest in test_sets.items():
        key = cache_key(model, manifest, normalizer, beam_size)
        cached = read_cached(os.path.join(out_folder, f"{name}.json"), key)
        if cached is not None:
            results[name] = cached
        else:
            todo[name] = (manifest, key)
    if not todo:
        return results
    asr = load_asr_model(model, beam_size=beam_size).eval()
    hparams = {"normalizer": normalizer, "max_duration": max_duration}
    brain = ASRBrain(modules={"model": asr}, hparams=hparams, run_opts={"device": device})
    for name, (manifest, key) in todo.items():
        dataset = make_dataset(manifest, asr, hparams, skip_log=os.path.join(out_folder, "skipped_audio.csv"))
        dataset = dataset.filtered_sorted(sort_key="duration", reverse=True)  # less padding
        brain.hparams.utterance_output = os.path.join(out_folder, f"{name}_utterances.csv")
        start = time.time()
        with torch.inference_mode():
            brain.evaluate(
                dataset, test_loader_kwargs={"batch_size": batch_size, "num_workers": num_workers}, progressbar=progress
            )
        stats = brain.last_stats
        result = {
            "model": str(model),
            "test_set": name,
            "manifest": manifest,
            "key": key,
            "wer": stats["WER"],
            "cer": stats["CER"],
            "utterances": len(brain.utterances),
            "seconds": round(time.time() - start, 2),
            "hypotheses": brain.utterances,
        }
        atomic_write_json(os.path.join(out_folder, f"{name}.json"), result, indent=1)
        logger.info(
            "%s on %s: WER %.2f (%d utts, %.1f s)", model, name, stats["WER"], len(brain.utterances), result["seconds"]
        )
        results[name] = result
    return results


def evaluate_models(models, test_sets, eval_folder, **kwargs):
    """``{model name: {set: WER}}`` for ``{model name: folder}`` x ``{set: manifest}``."""
    table = {}
    for name, folder in models.items():
        results = evaluate_model(folder, test_sets, os.path.join(eval_folder, name), **kwargs)
        table[name] = {s: results[s]["wer"] for s in test_sets}
    return table
