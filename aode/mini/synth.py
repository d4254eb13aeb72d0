"""espeak-ng speech synthesis through ctypes, for the miniature corpus.

This is the ONLY module of the package that touches espeak-ng. espeak-ng is GPL-3.0; it is
loaded at run time from the optional PyPI package ``espeakng-loader`` (which ships
``libespeak-ng`` and its data), never imported by the rest of :mod:`aode`. Install it with::

    pip install espeakng-loader        # or: pip install -e .[mini]

The engine is a process-wide singleton inside libespeak-ng and is not thread-safe: use one
:class:`Synthesizer` per process (the corpus generator runs one per worker process). Its output
is not bit-exact across calls: variants with pitch flutter (most ``+f``/``+m`` variants) carry
state from earlier utterances in the process, which moves durations by up to ~300 samples.

Voices are named ``<language>[+<variant>]`` as espeak-ng understands them, e.g. ``en-us``,
``en`` (British English), ``en-gb-scotland``, ``en-us+f3``, ``en-029+m2``.
:func:`list_voices` and :func:`list_variants` read what the installed data provides.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading

import numpy as np

_INSTALL_HINT = (
    "aode.mini.synth needs espeak-ng, which is loaded from the optional package "
    "'espeakng-loader' (GPL-3.0). Install it with `pip install espeakng-loader` "
    "or `pip install -e .[mini]`."
)

# espeak_AUDIO_OUTPUT
AUDIO_OUTPUT_RETRIEVAL = 1
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
espeakRATE = 1
espeakVOLUME = 2
espeakPITCH = 3
espeakRANGE = 4
espeakPUNCTUATION = 5
espeakCAPITALS = 6
espeakWORDGAP = 7
# flags
espeakCHARS_UTF8 = 1
espeakINITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1

OUTPUT_SAMPLE_RATE = 16000


def _loader():
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - exercised through the message test
        raise ImportError(_INSTALL_HINT) from err
    return espeakng_loader


def data_path() -> str:
    """The espeak-ng data folder shipped by ``espeakng-loader``."""
    return _loader().get_data_path()


def _voice_files(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            out[name.lower()] = os.path.join(root, name)
    return out


def list_voices(prefix: str | None = "en") -> list[str]:
    """Language voice names available in the data (lowercase), e.g. ``en-us``, ``en-029``.

    ``prefix`` keeps one language and its regional voices; ``None`` or ``""`` lists all.
    """
    voices = _voice_files(os.path.join(data_path(), "lang"))
    return sorted(v for v in voices if not prefix or v == prefix or v.startswith(prefix + "-"))


def list_variants() -> list[str]:
    """Variant names available in the data (as spelt in the data, e.g. ``m3``, ``f2``, ``klatt``)."""
    folder = os.path.join(data_path(), "voices", "!v")
    return sorted(os.listdir(folder))


_LIB = None
_LIB_LOCK = threading.Lock()
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _load_lib():
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            loader = _loader()
            lib = ctypes.CDLL(loader.get_library_path())
            c = ctypes
            signatures = {  # name: (argument types, return type), from espeak-ng's speak_lib.h
                "espeak_Initialize": ([c.c_int, c.c_int, c.c_char_p, c.c_int], c.c_int),
                "espeak_SetSynthCallback": ([_CALLBACK_TYPE], None),
                "espeak_SetVoiceByName": ([c.c_char_p], c.c_int),
                "espeak_SetParameter": ([c.c_int, c.c_int, c.c_int], c.c_int),
                "espeak_Synth": (
                    [c.c_char_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint, c.c_void_p, c.c_void_p],
                    c.c_int,
                ),
            }
            for name, (argtypes, restype) in signatures.items():
                getattr(lib, name).argtypes = argtypes
                getattr(lib, name).restype = restype
            lib.espeak_Synchronize.restype = ctypes.c_int
            _LIB = lib
    return _LIB


class Synthesizer:
    """One espeak-ng engine (per process) that returns 16 kHz float32 waveforms.

    >>> tts = Synthesizer()                                   # doctest: +SKIP
    >>> wav = tts.synthesize("Hello there.", voice="en-us+f3", rate=170)  # doctest: +SKIP
    """

    _instance_pid = None

    def __init__(self, sample_rate=OUTPUT_SAMPLE_RATE):
        self.lib = _load_lib()
        self.sample_rate = sample_rate
        self._chunks = []
        self._callback = _CALLBACK_TYPE(self._collect)  # keep a reference alive
        native = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path().encode(), espeakINITIALIZE_DONT_EXIT
        )
        if native <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({native}); data path {data_path()}")
        self.native_rate = native
        self.lib.espeak_SetSynthCallback(self._callback)
        self._languages = set(list_voices(""))
        self._variants = {v.lower(): v for v in list_variants()}
        g = np.gcd(sample_rate, native)
        self._up, self._down = sample_rate // g, native // g

    def _collect(self, wav, numsamples, events):
        if numsamples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def check_voice(self, voice: str) -> None:
        """Raise ``ValueError`` unless ``voice`` (``lang[+variant]``) exists in the data.

        espeak-ng silently falls back to a default for unknown variants; this does not.
        """
        lang, _, variant = voice.partition("+")
        if lang.lower() not in self._languages:
            raise ValueError(f"unknown espeak-ng voice {lang!r}")
        if variant and variant.lower() not in self._variants:
            raise ValueError(f"unknown espeak-ng variant {variant!r}")

    def synthesize_native(
        self,
        text: str,
        voice: str = "en-us",
        rate: float = 175,
        pitch: float = 50,
        range_: float = 50,
        volume: float = 100,
    ) -> np.ndarray:
        """int16 samples at the engine's native rate (22050 Hz for espeak-ng)."""
        self.check_voice(voice)
        lang, _, variant = voice.partition("+")
        name = lang if not variant else f"{lang}+{self._variants[variant.lower()]}"
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise ValueError(f"espeak-ng refused voice {name!r}")
        for param, value in (
            (espeakRATE, rate),
            (espeakPITCH, pitch),
            (espeakRANGE, range_),
            (espeakVOLUME, volume),
        ):
            self.lib.espeak_SetParameter(param, int(round(value)), 0)
        self._chunks = []
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, espeakCHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err}")
        self.lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def synthesize(self, text: str, voice: str = "en-us", **prosody: float) -> np.ndarray:
        """float32 waveform in [-1, 1] at ``self.sample_rate`` (16 kHz by default); ``prosody``
        (rate, pitch, range_, volume) as :meth:`synthesize_native` takes it."""
        native = self.synthesize_native(text, voice, **prosody)
        x = native.astype(np.float32) / 32768.0
        if self._up != self._down and len(x):
            x = _resample(x, self._up, self._down).astype(np.float32)
        return x


@functools.lru_cache(maxsize=None)
def _resample_filter(up, down):
    # the anti-aliasing FIR that scipy.signal.resample_poly designs, computed once
    from scipy.signal import firwin

    max_rate = max(up, down)
    return firwin(20 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up


def _resample(x, up, down):
    from scipy.signal import resample_poly

    return resample_poly(x, up, down, window=_resample_filter(up, down))
