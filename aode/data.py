"""The shared data pipeline: manifest -> DynamicItemDataset with 16 kHz mono audio.

A row's audio is its ``wav`` file(s) from ``start`` to ``stop`` seconds, read at the
file's own rate with soundfile, channels averaged to mono, files of a multi-file row
(``aode.manifest.WAV_SEPARATOR``) summed sample by sample (DiPCo's close-talk sum), and
resampled to 16 kHz. No rate is assumed: it is read from each file.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from typing import TYPE_CHECKING

import soundfile as sf
import speechbrain as sb
import torch
import torchaudio

from aode.config import MAX_UNKNOWN_CHAR_FRACTION
from aode.config import MAX_UNREADABLE_FRACTION
from aode.config import ConfigError
from aode.manifest import read_manifest
from aode.manifest import split_wav_field
from aode.transcripts import check_transcripts

if TYPE_CHECKING:
    from speechbrain.dataio.dataset import DynamicItemDataset

    from aode.models import ASRModel

logger = logging.getLogger(__name__)


class UnreadableAudioError(ConfigError):
    """More of a manifest's audio cannot be read than the run allows."""


def unreadable_allowance_of_test_sets(skip_unreadable_audio: bool) -> float:
    """What a test set may lose to unreadable audio: nothing, or anything when skipped on request."""
    return 1.0 if skip_unreadable_audio else 0.0


SAMPLE_RATE = 16000
# How far a segment's stop may lie past the end of its file: manifests round times to the
# millisecond and corpora's own timings overshoot a little. One value for the manifest check
# and the reader, so a row the check accepts is never refused later in the middle of training.
END_TOLERANCE_SECONDS = 0.05


@functools.lru_cache(maxsize=16)
def _resampler(orig, new):
    return torchaudio.transforms.Resample(orig, new)


def read_audio_segment(
    wav: str, start: float | str = 0.0, stop: float | str | None = None, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Float32 mono tensor of ``wav`` (one path or several joined by the separator) from
    ``start`` to ``stop`` seconds, at ``sample_rate``."""
    signals = []
    for path in split_wav_field(wav):
        info = sf.info(path)
        first = int(round(float(start) * info.samplerate))
        last = info.frames if stop is None else int(round(float(stop) * info.samplerate))
        if first < 0 or last > info.frames + END_TOLERANCE_SECONDS * info.samplerate or last <= first:
            raise ValueError(f"segment {start}-{stop} s is outside {path} ({info.frames / info.samplerate:.3f} s)")
        data, rate = sf.read(path, start=first, stop=min(last, info.frames), dtype="float32", always_2d=True)
        signal = torch.from_numpy(data).mean(dim=1)
        if rate != sample_rate:
            signal = _resampler(rate, sample_rate)(signal.unsqueeze(0)).squeeze(0)
        signals.append(signal)
    if not signals:
        raise ValueError(f"no audio file in wav field {wav!r}")
    length = max(len(s) for s in signals)
    mixed = torch.zeros(length)
    for signal in signals:
        mixed[: len(signal)] += signal
    return mixed


def check_manifest(
    path: str | os.PathLike, check_audio: bool = True
) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """Rows of a manifest whose audio is readable, and the (ID, reason) of the others.

    Raises a clear error for a missing or empty manifest or missing columns.
    """
    rows = read_manifest(path)
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    bad = []
    if check_audio:
        for row in rows:
            for file in split_wav_field(row["wav"]):
                try:
                    info = sf.info(file)
                    if float(row["stop"]) > info.frames / info.samplerate + END_TOLERANCE_SECONDS:
                        raise ValueError("segment runs past the end of the audio")
                except Exception as err:  # soundfile raises several types
                    bad.append((row["ID"], f"{file}: {err}"))
                    break
    return rows, bad


def make_dataset(
    path: str | os.PathLike,
    model: ASRModel,
    *,
    check_audio: bool = True,
    skip_log: str | os.PathLike | None = None,
    stage: str = "test",
    max_unreadable_fraction: float = 0.0,
    max_duration: float | None = None,
    max_unknown_char_fraction: float = MAX_UNKNOWN_CHAR_FRACTION,
) -> DynamicItemDataset:
    """A ``DynamicItemDataset`` from a manifest with ``sig`` and the model's text items;
    utterances longer than ``max_duration`` seconds (None: none) are left out.

    Rows whose audio cannot be read are refused (:class:`UnreadableAudioError`, the count and
    the first files named) when they are more than ``max_unreadable_fraction`` of the manifest
    (0: any is refused; training passes its ``max_unreadable_fraction``, 1 % by default, and
    evaluation 0 unless unreadable test audio is skipped on request); the others are dropped,
    counted and (with ``skip_log``) appended to that CSV. The dataset's ``manifest_rows`` and
    ``unreadable`` (IDs) say what was dropped.
    Transcripts the model cannot use are refused (:func:`aode.transcripts.check_transcripts`;
    ``stage``: ``"train"`` for training and validation sets, ``"test"`` for test sets; above
    ``max_unknown_char_fraction`` of characters a CTC vocabulary lacks, a training set is).
    """
    rows, bad = check_manifest(path, check_audio)
    check_transcripts(rows, model, path, max_unknown_char_fraction, stage)
    if len(bad) > max_unreadable_fraction * len(rows):
        first = "; ".join(reason for _, reason in bad[:3])
        raise UnreadableAudioError(
            f"manifest {path}: the audio of {len(bad)} of {len(rows)} rows cannot be read "
            f"({100 * len(bad) / len(rows):.1f} %, more than the {100 * max_unreadable_fraction:g} % allowed); "
            f"first: {first}"
            + (
                "; to score the readable rows only, pass --skip_unreadable_audio True (the tables show the count)"
                if max_unreadable_fraction == 0.0
                else "; fix the paths or raise --max_unreadable_fraction"
            )
        )
    if bad:
        logger.warning(
            "%s: skipping %d of %d rows with unreadable audio (first: %s)", path, len(bad), len(rows), bad[0]
        )
        if skip_log:
            os.makedirs(os.path.dirname(os.path.abspath(skip_log)), exist_ok=True)
            new = not os.path.exists(skip_log)
            with open(skip_log, "a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["manifest", "ID", "reason"])
                writer.writerows([path, i, r] for i, r in bad)
    bad_ids = {i for i, _ in bad}
    data = {r["ID"]: {k: v for k, v in r.items() if k != "ID"} for r in rows if r["ID"] not in bad_ids}
    if not data:
        raise ValueError(f"manifest {path}: no readable rows")
    for entry in data.values():
        entry["duration"] = float(entry["duration"])
    dataset = sb.dataio.dataset.DynamicItemDataset(data)
    add_pipelines(dataset, model)
    if max_duration:
        dataset = dataset.filtered_sorted(key_max_value={"duration": float(max_duration)})
    dataset.manifest_rows = len(rows)
    dataset.unreadable = [i for i, _ in bad]
    return dataset


def add_pipelines(dataset: DynamicItemDataset, model: ASRModel) -> None:
    """Audio (``sig``) and text (``text`` and the model family's ``text_keys``) pipelines."""

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return read_audio_segment(wav, float(start), float(stop))

    @sb.utils.data_pipeline.takes(model.text_field)
    @sb.utils.data_pipeline.provides("text", *model.text_keys)
    def text_pipeline(text):
        yield text
        yield from model.text_items(text)

    keys = ["id", "sig", "text", *model.text_keys]
    dataset.add_dynamic_item(audio_pipeline)
    dataset.add_dynamic_item(text_pipeline)
    dataset.set_output_keys(keys)


def subset_loader(
    manifest: str, model: ASRModel, n_utterances: int, batch_size: int, seed: int, max_duration: float | None = None
) -> tuple[torch.utils.data.DataLoader, int]:
    """A loader over a seeded random choice of ``n_utterances`` of ``manifest``'s rows, longest
    first (batches of similar length pad little), and the number chosen: the one sampling
    that per-member statistics (Fisher, Gram matrices) use."""
    import random

    dataset = make_dataset(manifest, model, max_duration=max_duration, max_unreadable_fraction=MAX_UNREADABLE_FRACTION)
    ids = list(dataset.data_ids)
    if len(ids) < n_utterances:
        logger.info("the manifest has %d usable utterances (< %d): using all", len(ids), n_utterances)
    chosen = sorted(random.Random(seed).sample(range(len(ids)), min(n_utterances, len(ids))))
    chosen.sort(key=lambda i: (-float(dataset.data[ids[i]]["duration"]), ids[i]))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, chosen),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=sb.dataio.batch.PaddedBatch,
    )
    return loader, len(chosen)
