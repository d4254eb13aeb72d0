#!/usr/bin/env python3
"""Training throughput of ASRBrain's step against a bare PyTorch loop, same model and batch.

    python bench/train_step.py [--configs tiny_ctc tiny_whisper whisper_small] [--steps 5]

The bare loop: forward, the same loss, backward, clip over all parameters, AdamW step,
zero_grad. The Brain: ``ASRBrain.fit_batch`` (LLRD groups, STLR, all-group clipping,
SpeechBrain's autocast/scaler plumbing). Both get warm-up steps first. Reports utterances
per second and peak RSS (CPU) or peak CUDA memory, and appends a table to bench/RESULTS.md.
"""

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

CONFIGS = {
    # name: (aode.builders function, its kwargs, batch size)
    "tiny_ctc": ("build_parakeet_ctc", dict(hidden_size=144, num_layers=4, num_heads=4, intermediate_size=576), 8),
    "tiny_whisper": ("build_whisper", dict(d_model=64, layers=2, heads=2, ffn=128), 4),
    "whisper_small": ("build_whisper", dict(d_model=768, layers=12, heads=12, ffn=3072), 2),
}


def build(name, folder):
    import aode.builders

    builder, kwargs, _ = CONFIGS[name]
    return getattr(aode.builders, builder)(folder, **kwargs)


def make_batch(asr, batch_size):
    import speechbrain as sb
    from conftest import sample_rows

    from aode.data import make_dataset
    from aode.manifest import write_manifest

    path = os.path.join(tempfile.mkdtemp(), "bench.csv")
    write_manifest(path, sample_rows())
    data = make_dataset(path, asr)
    return sb.dataio.batch.PaddedBatch([data[i % len(data)] for i in range(batch_size)])


def bare_step(asr, batch, optimizer, device):
    loss = asr.batch_loss(batch.to(device))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(asr.parameters(), 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn, steps, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(name, steps, warmup, device):
    from aode.brain import ASRBrain
    from aode.config import BrainConfig
    from aode.models import load_asr_model
    from aode.schedule import STLR

    folder = tempfile.mkdtemp()
    build(name, folder)
    _, _, batch_size = CONFIGS[name]
    torch.manual_seed(0)
    asr = load_asr_model(folder).to(device)
    batch = make_batch(asr, batch_size)
    params = sum(p.numel() for p in asr.parameters())
    optimizer = torch.optim.AdamW(asr.parameters(), lr=1e-5)
    for _ in range(warmup):
        bare_step(asr, batch, optimizer, device)
    bare = timed(lambda: bare_step(asr, batch, optimizer, device), steps, device)

    asr = load_asr_model(folder)
    brain = ASRBrain(
        {"model": asr},
        BrainConfig(lr=1e-5, llrd_alpha=0.9),
        scheduler=STLR(1000),
        run_opts={"device": device, "max_grad_norm": 5.0},
    )
    brain.on_fit_start()
    brain.modules.train()
    for _ in range(warmup):
        brain.fit_batch(batch)
    ours = timed(lambda: brain.fit_batch(batch), steps, device)
    if device.startswith("cuda"):
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA peak)"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (peak RSS)"
    return {
        "config": name,
        "params": params,
        "batch": batch_size,
        "bare": batch_size * steps / bare,
        "brain": batch_size * steps / ours,
        "overhead": 100 * (ours / bare - 1),
        "memory": memory,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny_ctc", "tiny_whisper", "whisper_small"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    args = parser.parse_args()
    rows = [run(name, args.steps, args.warmup, args.device) for name in args.configs]
    machine = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    )
    lines = [
        f"\n### Training step: ASRBrain vs a bare loop ({datetime.date.today()}, {machine}, "
        f"torch {torch.__version__}, {args.steps} timed steps after {args.warmup} warm-up)\n",
        "| config | parameters | batch | bare loop utt/s | ASRBrain utt/s | Brain overhead | memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['bare']:.2f} | "
            f"{r['brain']:.2f} | {r['overhead']:+.1f} % | {r['memory']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
