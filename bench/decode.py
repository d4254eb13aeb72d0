#!/usr/bin/env python3
"""Decoding throughput: AoDE's batched evaluation against transformers.pipeline.

    python bench/decode.py [--model aode/mini_generalist] [--manifest CSV] [--n 100]

Same model, same recordings (a manifest; by default the real recordings in tests/data
repeated to --n utterances), greedy decoding. AoDE: ``aode.evaluate.evaluate_model``
(the shared Brain, batches sorted by duration, no cache). transformers: the
``automatic-speech-recognition`` pipeline fed the same 16 kHz arrays, with
``batch_size``. Reports utterances per second and appends to bench/RESULTS.md.
"""

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def default_manifest(n):
    from conftest import sample_rows

    from aode.manifest import write_manifest

    rows = sample_rows()
    rows = [{**rows[i % len(rows)], "ID": f"u{i:04d}"} for i in range(n)]
    path = os.path.join(tempfile.mkdtemp(), "decode.csv")
    write_manifest(path, rows)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "aode", "mini_generalist"))
    parser.add_argument("--manifest")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    args = parser.parse_args()
    from transformers import pipeline

    from aode.data import read_audio_segment
    from aode.evaluate import evaluate_model
    from aode.manifest import read_manifest

    manifest = args.manifest or default_manifest(args.n)
    rows = read_manifest(manifest)
    audio = [read_audio_segment(r["wav"], float(r["start"]), float(r["stop"])).numpy() for r in rows]
    seconds_audio = sum(len(a) for a in audio) / 16000

    cache = tempfile.mkdtemp()
    evaluate_model(
        args.model,
        {"warm": default_manifest(4)},
        cache,
        batch_size=4,
        normalizer="basic",
        device=args.device,
        progress=False,
    )
    start = time.perf_counter()
    ours = evaluate_model(
        args.model,
        {"bench": manifest},
        cache,
        batch_size=args.batch_size,
        normalizer="basic",
        device=args.device,
        progress=False,
    )["bench"]
    aode_s = time.perf_counter() - start
    shutil.rmtree(cache)

    asr = pipeline("automatic-speech-recognition", model=args.model, device=args.device)
    asr(audio[:2], batch_size=2)
    start = time.perf_counter()
    outputs = asr(audio, batch_size=args.batch_size)
    pipe_s = time.perf_counter() - start
    hyp_by_id = {h["ID"]: h["hyp"] for h in ours["hypotheses"]}
    same = sum(o["text"].strip() == hyp_by_id[r["ID"]] for o, r in zip(outputs, rows))

    machine = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    )
    text = (
        f"\n### Decoding: batched evaluation vs transformers.pipeline ({datetime.date.today()}, {machine}, "
        f"torch {torch.__version__})\n\n"
        f"Model `{os.path.relpath(args.model, ROOT)}`, {len(rows)} utterances ({seconds_audio:.0f} s of audio), "
        f"batch size {args.batch_size}, greedy.\n\n"
        "| decoder | seconds | utterances/s | real-time factor |\n|---|---|---|---|\n"
        f"| aode.evaluate (ASRBrain) | {aode_s:.2f} | {len(rows) / aode_s:.1f} | {aode_s / seconds_audio:.4f} |\n"
        f"| transformers.pipeline | {pipe_s:.2f} | {len(rows) / pipe_s:.1f} | {pipe_s / seconds_audio:.4f} |\n\n"
        f"Identical transcripts: {same} of {len(rows)} (batches differ between the two decoders, and a "
        "padding-sensitive model may then differ slightly).\n"
    )
    print(text)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
