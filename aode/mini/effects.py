"""Signal effects for the miniature corpus: noise, babble, telephone band, reverb, level.

All functions take and return float32 mono waveforms at 16 kHz (``SAMPLE_RATE``) and draw
any randomness from a ``numpy.random.Generator`` passed in, so that a per-utterance seed fixes
the result. :func:`apply_chain` runs a list of effect specs (plain dicts, chosen up front by the
corpus generator) and :func:`describe_chain` gives the manifest's ``effect`` label.

Diagnostics used by the tests and the corpus summary: :func:`estimate_snr_db` and
:func:`high_band_ratio`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
RIR_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rirs")
RIR_NAMES = ("rir1", "rir2", "rir3", "rir4")
NOISE_KINDS = ("white", "pink", "brown")


# ----------------------------------------------------------------------------- levels
def rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def rms_dbfs(x: np.ndarray) -> float:
    return 20.0 * np.log10(max(rms(x), 1e-10))


def _frame_power(x, frame=320):
    n = len(x) // frame
    if n == 0:
        return np.array([np.mean(np.square(x, dtype=np.float64))]) if len(x) else np.zeros(1)
    frames = np.asarray(x[: n * frame], dtype=np.float64).reshape(n, frame)
    return np.mean(frames * frames, axis=1)


def active_power(x: np.ndarray, floor_db: float = -40.0) -> float:
    """Mean power over the frames within ``floor_db`` of the loudest 20 ms frame."""
    power = _frame_power(x)
    if not power.size or power.max() <= 0:
        return 0.0
    active = power[power >= power.max() * 10 ** (floor_db / 10)]
    return float(active.mean())


def set_level(x: np.ndarray, dbfs: float = -26.0, peak: float = 0.99) -> np.ndarray:
    """Scale to an RMS of ``dbfs`` (over active frames), then down if the peak exceeds ``peak``."""
    power = active_power(x)
    if power <= 0:
        return x.astype(np.float32)
    y = x * (10 ** (dbfs / 20) / np.sqrt(power))
    top = float(np.max(np.abs(y)))
    if top > peak:
        y = y * (peak / top)
    return y.astype(np.float32)


def trim_silence(
    x: np.ndarray, threshold_db: float = -45.0, lead: float = 0.1, trail: float = 0.2, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``threshold_db`` below the peak, then pad
    ``lead`` / ``trail`` seconds of digital silence."""
    if not len(x):
        return x.astype(np.float32)
    thresh = np.max(np.abs(x)) * 10 ** (threshold_db / 20)
    idx = np.flatnonzero(np.abs(x) > thresh)
    core = x[idx[0] : idx[-1] + 1] if len(idx) else x
    return np.concatenate(
        [
            np.zeros(int(lead * sample_rate), np.float32),
            core.astype(np.float32),
            np.zeros(int(trail * sample_rate), np.float32),
        ]
    )


# ----------------------------------------------------------------------------- noise
def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS ``white``, ``pink`` (1/f) or ``brown`` (1/f^2) noise of ``n`` samples."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
    if kind == "white" or n < 4:
        noise = rng.standard_normal(n)
    else:
        from scipy import fft

        size = fft.next_fast_len(n, real=True)  # shape a fast-length block, keep n samples
        spectrum = fft.rfft(rng.standard_normal(size))
        freqs = fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
        exponent = {"pink": 0.5, "brown": 1.0}[kind]
        # floor at 40 Hz so that brown noise is not all sub-audio rumble
        noise = fft.irfft(spectrum / np.maximum(freqs, 40.0) ** exponent, size)[:n]
    noise = noise - noise.mean()
    return (noise / max(rms(noise), 1e-12)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` set so that active speech power / noise power = SNR."""
    p_speech = active_power(speech)
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_speech <= 0 or p_noise <= 0:
        return speech.astype(np.float32)
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    return (speech + gain * noise).astype(np.float32)


def babble(n: int, sources: Sequence[np.ndarray], picks: Sequence[int], offsets: Sequence[float]) -> np.ndarray:
    """Sum of the ``sources`` named by ``picks`` (indices), each unit-RMS, looped to ``n``
    samples and started at ``offsets`` (fractions of its length)."""
    out = np.zeros(n, dtype=np.float64)
    for index, offset in zip(picks, offsets):
        src = np.asarray(sources[index % len(sources)], dtype=np.float64)
        if not len(src):
            continue
        src = src / max(np.sqrt(active_power(src)), 1e-12)
        start = int(offset * len(src)) % len(src)
        reps = int(np.ceil((n + start) / len(src))) + 1
        out += np.tile(src, reps)[start : start + n]
    out -= out.mean() if n else 0.0
    return (out / max(rms(out), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- channel
def telephone(x: np.ndarray, low: float = 300.0, high: float = 3400.0, mulaw: bool = True) -> np.ndarray:
    """Narrow-band telephone channel: 8 kHz resampling, 300-3400 Hz band-pass, optional G.711
    mu-law companding, back to 16 kHz (so almost no energy remains above 4 kHz)."""
    from scipy.signal import sosfilt

    y = resample(np.asarray(x, dtype=np.float64), 1, 2)
    y = sosfilt(_bandpass(low, high, SAMPLE_RATE // 2), y)
    if mulaw:
        mu = 255.0
        scale = max(float(np.max(np.abs(y))), 1e-9)
        z = np.sign(y / scale) * np.log1p(mu * np.abs(y / scale)) / np.log1p(mu)
        z = np.round(z * 127) / 127  # 8-bit code words
        y = scale * np.sign(z) * np.expm1(np.abs(z) * np.log1p(mu)) / mu
    y = resample(y, 2, 1)[: len(x)]
    return y.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _bandpass(low, high, sample_rate, order=6):
    from scipy.signal import butter

    return butter(order, [low, high], btype="bandpass", fs=sample_rate, output="sos")


@functools.lru_cache(maxsize=None)
def _resample_filter(up, down):
    # the same anti-aliasing FIR that scipy.signal.resample_poly designs, computed once
    from scipy.signal import firwin

    max_rate = max(up, down)
    half_len = 10 * max_rate
    return firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up


def resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Polyphase resampling by ``up / down`` with a cached filter (as ``resample_poly``)."""
    from scipy.signal import resample_poly

    return resample_poly(x, up, down, window=_resample_filter(up, down))


@functools.lru_cache(maxsize=None)
def load_rir(name: str) -> np.ndarray:
    """A room impulse response from ``rirs/`` aligned to its direct path, peak 1."""
    import soundfile as sf

    path = os.path.join(RIR_FOLDER, f"{name}.wav")
    rir, sr = sf.read(path, dtype="float64", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: expected {SAMPLE_RATE} Hz, got {sr}")
    rir = rir[:, 0]
    peak = int(np.argmax(np.abs(rir)))
    rir = rir[max(0, peak - 16) :]
    return rir / np.max(np.abs(rir))


def reverb(x: np.ndarray, rir_name: str = "rir1", wet: float = 0.3, direct_ms: float = 2.5) -> np.ndarray:
    """Convolve with a measured RIR whose tail (after ``direct_ms`` past the direct path) is
    scaled by ``wet`` (0 = dry, 1 = the full room). Output keeps the input length and RMS."""
    from scipy.signal import fftconvolve

    rir = load_rir(rir_name).copy()
    split = 16 + int(direct_ms * SAMPLE_RATE / 1000)
    rir[split:] *= wet
    y = fftconvolve(np.asarray(x, dtype=np.float64), rir)[: len(x)]
    y *= rms(x) / max(rms(y), 1e-12)
    return y.astype(np.float32)


# ----------------------------------------------------------------------------- chains
def apply_chain(
    x: np.ndarray,
    chain: Iterable[Mapping[str, Any]],
    rng: np.random.Generator,
    babble_sources: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Apply effect specs in order. Specs (dicts, key ``op``):

    * ``{"op": "noise", "kind": "pink", "snr": 30.0}``
    * ``{"op": "babble", "snr": 12.0, "picks": [3, 8, 1], "offsets": [0.1, 0.5, 0.7]}``
      (needs ``babble_sources``: a list of clean waveforms)
    * ``{"op": "telephone"}`` (``mulaw`` optional)
    * ``{"op": "reverb", "rir": "rir2", "wet": 0.3}``
    * ``{"op": "level", "dbfs": -26.0}``
    """
    y = np.asarray(x, dtype=np.float32)
    for spec in chain:
        op = spec["op"]
        if op == "noise":
            y = mix_at_snr(y, colored_noise(spec["kind"], len(y), rng), spec["snr"])
        elif op == "babble":
            if not babble_sources:
                raise ValueError("a babble effect needs babble_sources")
            noise = babble(len(y), babble_sources, spec["picks"], spec["offsets"])
            y = mix_at_snr(y, noise, spec["snr"])
        elif op == "telephone":
            y = telephone(y, mulaw=spec.get("mulaw", True))
        elif op == "reverb":
            y = reverb(y, spec["rir"], spec["wet"])
        elif op == "level":
            y = set_level(y, spec["dbfs"])
        else:
            raise ValueError(f"unknown effect {op!r}")
    return y


def describe_chain(chain: Iterable[Mapping[str, Any]]) -> str:
    """Short label for the manifest's ``effect`` column, e.g. ``babble5@12.3dB+telephone``."""
    parts = []
    for spec in chain:
        op = spec["op"]
        if op == "noise":
            parts.append(f"{spec['kind']}@{spec['snr']:.1f}dB")
        elif op == "babble":
            parts.append(f"babble{len(spec['picks'])}@{spec['snr']:.1f}dB")
        elif op == "reverb":
            parts.append(f"reverb:{spec['rir']}@{spec['wet']:.2f}")
        elif op == "telephone":
            parts.append("telephone")
    return "+".join(parts) if parts else "clean"


def chain_snr(chain: Iterable[Mapping[str, Any]]) -> float | None:
    """The SNR of the chain's additive noise (the lowest if several), or ``None`` if clean."""
    snrs = [spec["snr"] for spec in chain if spec["op"] in ("noise", "babble")]
    return min(snrs) if snrs else None


# ----------------------------------------------------------------------------- diagnostics
def estimate_snr_db(x: np.ndarray) -> float:
    """Blind SNR estimate: loud-frame power (95th percentile) over quiet-frame power (10th)."""
    power = _frame_power(np.asarray(x, dtype=np.float64))
    quiet = max(float(np.percentile(power, 10)), 1e-12)
    return 10.0 * np.log10(max(float(np.percentile(power, 95)), 1e-12) / quiet)


def high_band_ratio(x: np.ndarray, cutoff: float = 4000.0, sample_rate: int = SAMPLE_RATE) -> float:
    """Share of the signal's energy above ``cutoff`` Hz."""
    spectrum = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    total = spectrum.sum()
    return float(spectrum[freqs >= cutoff].sum() / total) if total > 0 else 0.0
