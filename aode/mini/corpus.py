"""Generate the miniature multi-domain English speech corpus (text -> espeak-ng -> effects).

The data of the miniature AoDE experiment (a CPU-sized analogue of the paper's Parakeet
Table VII): a general domain for the generalist and four target domains analogous to the
paper's, each differing from general in several of accent, speaking rate, prosody, noise,
channel and vocabulary (see ``DOMAIN_SPECS``):

==========  ==================================================================================
general     "LibriSpeech": read stories, everyday talk, public life; en-us / en (British) /
            en-gb-x-rp voices, 25 variants, 135-205 wpm, white/pink noise at 15-40 dB SNR;
            about 1,400 word types, which cover 76-89 % of the targets' running words (their
            names, dialect and jargon stay new). ``test_clean``: same voices, no noise.
            ``test_other``: unseen voice variants, 140-200 wpm, noise at 15-25 dB SNR.
vctk        "Noisy VCTK": short read prompts; Scottish accent; white/pink/brown noise at
            8-18 dB SNR.
coraal      "CORAAL": conversational transcript-like talk; New York City US accent; fast
            (190-230 wpm), flat prosody; babble of 3-6 talkers at 15-25 dB SNR.
jl          "JL Corpus": 26 scripted phrases repeated in many voices (Lancashire accent,
            19 variants) with strong emotion-like prosody (pitch 20-90, range 0-100, 120-220
            wpm); almost clean. Its splits share the phrases by design (JL's scripted
            sentences): valid/test differ from train in voice/prosody draws only.
ne          "Google NE": news-style read speech with numbers spelt out; West Midlands
            accent (used nowhere else), slow (130-150 wpm); mild reverberation (measured RIRs,
            tail scaled to 10-30 %) and pink noise at 25-35 dB SNR.
==========  ==================================================================================

Calibrated against the shipped generalist (generator 1.3, fresh seed-1 sets, 50 utterances):
its WER is 14 % on general test_clean and 28 % on test_other; on general text read cleanly it
is 28 % in the NYC and Lancashire accents, 48 % West Midlands, 53 % Scottish and 80 % Caribbean
(en-029, hence unused); a telephone channel alone takes a CORAAL-like set to 85 % (hence
unused: ``effects.telephone`` stays available).

Output (the project's manifest contract, :mod:`aode.manifest`)::

    OUT/<domain>/<split>.csv     ID,duration,wav,start,stop,spk_id,wrd,wrd_raw,
                                 voice,rate,pitch,range,snr,effect
    OUT/<domain>/wav/<ID>.wav    16 kHz mono 16-bit
    OUT/corpus_info.json         config, seed, version, counts, hours, vocabulary overlaps

Everything random is drawn up front in the parent process from the seed (texts, voices,
rates, pitches, padding, levels, effect parameters, a per-utterance noise seed), so the result
does not depend on how the worker processes are scheduled. Only espeak-ng's waveform is not
bit-exact: it depends slightly on what the engine synthesised before in the same process (its
pitch-flutter state, which no API resets), so a rerun's durations may differ by a few tens of
ms (up to 61 ms seen) and levels by a fraction of a dB; texts, voices, prosody, effects and IDs
are identical. ``corpus_info.json`` is written last; a later call with the same (scaled)
config, seed and generator version returns it without regenerating.

CLI: ``python -m aode.mini.corpus --out DIR [--seed N] [--scale S] [--workers W]``.
"""

import argparse
import copy
import json
import multiprocessing
import os
import random
import sys
import time

from aode.atomic import atomic_write_json
from aode.manifest import write_manifest
from aode.mini import effects
from aode.mini import textgen
from aode.text import normalize_words

GENERATOR_VERSION = "1.3"
SAMPLE_RATE = 16000
EXTRA_COLUMNS = ("voice", "rate", "pitch", "range", "snr", "effect")
INFO_FILE = "corpus_info.json"

DEFAULT_CONFIG = {
    "general": {"train": 4000, "valid": 100, "test_clean": 100, "test_other": 100},
    "vctk": {"train": 400, "valid": 50, "test": 100},
    "coraal": {"train": 400, "valid": 50, "test": 100},
    "jl": {"train": 400, "valid": 50, "test": 100},
    "ne": {"train": 400, "valid": 50, "test": 100},
}


def _voices(langs, variants):
    return [f"{lang}+{v}" for lang in langs for v in variants]


# Per domain: voices, uniform ranges for rate (espeak-ng words per minute), pitch and pitch
# range (0-100, espeak default 50) and the effect recipe. ``splits`` overrides per split.
DOMAIN_SPECS = {
    "general": {
        # A broad "LibriSpeech": many voice variants of the three general accents, a wide range
        # of rates and mild-to-moderate noise, so that the generalist is robust, not brittle.
        "voices": _voices(["en-us"], ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4"])
        + _voices(["en"], ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4"])
        + _voices(["en-gb-x-rp"], ["m1", "m2", "m3", "m4", "f1", "f2", "f3"]),
        "rate": (135, 205),
        "pitch": (30, 70),
        "range": (30, 80),
        "effects": {"noise": {"kinds": ["white", "pink"], "snr": (15, 40)}},
        "splits": {
            "test_clean": {"effects": {}},
            "test_other": {
                "voices": _voices(["en-us"], ["m6", "f5"])
                + _voices(["en"], ["m7", "steph"])
                + _voices(["en-gb-x-rp"], ["m6"]),
                "rate": (140, 200),
                "effects": {"noise": {"kinds": ["white", "pink"], "snr": (15, 25)}},
            },
        },
    },
    "vctk": {
        "voices": _voices(["en-gb-scotland"], ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4"]),
        "rate": (150, 180),
        "pitch": (30, 70),
        "range": (40, 80),
        "effects": {"noise": {"kinds": ["white", "pink", "brown"], "snr": (8, 18)}},
    },
    "coraal": {
        "voices": _voices(["en-us-nyc"], ["m1", "m2", "m3", "m5", "f1", "f2", "f4"]),
        "rate": (190, 230),
        "pitch": (30, 60),
        "range": (25, 55),
        "effects": {"babble": {"talkers": (3, 6), "snr": (15, 25)}},
    },
    "jl": {
        "voices": _voices(
            ["en-gb-x-gbclan"],
            [
                "m1",
                "m2",
                "m3",
                "m4",
                "m5",
                "m6",
                "f1",
                "f2",
                "f3",
                "f4",
                "f5",
                "Annie",
                "aunty",
                "linda",
                "steph",
                "michel",
                "travis",
                "quincy",
                "grandma",
            ],
        ),
        "rate": (120, 220),
        "pitch": (20, 90),
        "range": (0, 100),
        "effects": {"noise": {"kinds": ["white", "pink"], "snr": (30, 40)}},
    },
    "ne": {
        "voices": _voices(["en-gb-x-gbcwmd"], ["m1", "m2", "m3", "m4", "f1", "f2", "f3"]),
        "rate": (130, 150),
        "pitch": (40, 60),
        "range": (50, 80),
        "effects": {
            "reverb": {"rirs": list(effects.RIR_NAMES), "wet": (0.1, 0.3)},
            "noise": {"kinds": ["pink"], "snr": (25, 35)},
        },
    },
}

# The babble noise is made of other utterances of the corpus: general-domain sentences in
# general voices, synthesised clean once per worker process.
BABBLE_POOL_SIZE = 24
LEVEL_DBFS = (-30.0, -20.0)
LEAD_PAD = (0.05, 0.25)
TRAIL_PAD = (0.10, 0.30)


# ------------------------------------------------------------------------- planning
def scaled_config(config=None, scale=1.0):
    """``config`` (default ``DEFAULT_CONFIG``) with every count times ``scale`` (at least 1)."""
    config = copy.deepcopy(DEFAULT_CONFIG if config is None else config)
    for domain, splits in config.items():
        if domain not in DOMAIN_SPECS:
            raise ValueError(f"unknown domain {domain!r}; choose from {list(DOMAIN_SPECS)}")
        for split, n in splits.items():
            splits[split] = max(1, int(round(n * scale))) if n > 0 else 0
    return config


def _split_spec(domain, split):
    spec = dict(DOMAIN_SPECS[domain])
    spec.update(DOMAIN_SPECS[domain].get("splits", {}).get(split, {}))
    spec.pop("splits", None)
    return spec


def _draw_chain(recipe, rng):
    chain = []
    if "reverb" in recipe:
        r = recipe["reverb"]
        chain.append({"op": "reverb", "rir": rng.choice(r["rirs"]), "wet": round(rng.uniform(*r["wet"]), 3)})
    if "noise" in recipe:
        r = recipe["noise"]
        chain.append({"op": "noise", "kind": rng.choice(r["kinds"]), "snr": round(rng.uniform(*r["snr"]), 2)})
    if "babble" in recipe:
        r = recipe["babble"]
        talkers = rng.randint(*r["talkers"])
        chain.append(
            {
                "op": "babble",
                "snr": round(rng.uniform(*r["snr"]), 2),
                "picks": rng.sample(range(BABBLE_POOL_SIZE), talkers),
                "offsets": [round(rng.random(), 4) for _ in range(talkers)],
            }
        )
    if "telephone" in recipe:
        chain.append({"op": "telephone"})
    chain.append({"op": "level", "dbfs": round(rng.uniform(*LEVEL_DBFS), 2)})
    return chain


def plan_corpus(out_folder, seed=0, config=None):
    """Every utterance of the corpus as a spec dict (no audio): the texts and all random
    choices. ``config`` is already scaled. Deterministic in ``seed``."""
    config = scaled_config(config, 1.0)
    texts = textgen.plan_texts(config, seed=seed)
    out_folder = os.path.abspath(out_folder)
    plan = {}
    for domain, splits in config.items():
        plan[domain] = {}
        for split in splits:
            spec = _split_spec(domain, split)
            rng = random.Random(f"aode-mini/{seed}/{domain}/{split}/audio")
            rows = []
            for i, raw in enumerate(texts[domain][split]):
                uid = f"{domain}-{split}-{i:05d}"
                rows.append(
                    {
                        "ID": uid,
                        "wav": os.path.join(out_folder, domain, "wav", f"{uid}.wav"),
                        "wrd_raw": raw,
                        "wrd": normalize_words(raw),
                        "voice": rng.choice(spec["voices"]),
                        "rate": rng.randint(*spec["rate"]),
                        "pitch": rng.randint(*spec["pitch"]),
                        "range": rng.randint(*spec["range"]),
                        "lead": round(rng.uniform(*LEAD_PAD), 3),
                        "trail": round(rng.uniform(*TRAIL_PAD), 3),
                        "chain": _draw_chain(spec["effects"], rng),
                        "seed": rng.getrandbits(63),
                    }
                )
            plan[domain][split] = rows
    return plan


def babble_pool(seed=0):
    """Specs of the clean utterances that babble noise is built from."""
    rng = random.Random(f"aode-mini/{seed}/babble")
    spec = DOMAIN_SPECS["general"]
    pool = []
    for raw in textgen.generate_texts("general", BABBLE_POOL_SIZE, seed=f"{seed}-babble"):
        pool.append(
            {
                "text": raw,
                "voice": rng.choice(spec["voices"]),
                "rate": rng.randint(*spec["rate"]),
                "pitch": rng.randint(*spec["pitch"]),
                "range": rng.randint(*spec["range"]),
            }
        )
    return pool


def vocabulary_overlaps(plan_or_texts):
    """Per target domain, :func:`textgen.vocabulary_overlap` of all its texts against the
    general training texts."""
    texts = {
        d: {s: [r["wrd_raw"] if isinstance(r, dict) else r for r in rows] for s, rows in splits.items()}
        for d, splits in plan_or_texts.items()
    }
    general = texts.get("general", {}).get("train", [])
    out = {}
    for domain, splits in texts.items():
        if domain == "general" or not general:
            continue
        out[domain] = textgen.vocabulary_overlap([t for rows in splits.values() for t in rows], general)
    return out


# ------------------------------------------------------------------------- rendering
_WORKER = {}


def _init_worker(pool_specs):
    if _WORKER.get("babble_specs") != pool_specs:
        _WORKER.pop("babble", None)
    _WORKER["babble_specs"] = pool_specs


def _synth():
    if _WORKER.get("pid") != os.getpid():
        from aode.mini.synth import Synthesizer

        _WORKER["tts"] = Synthesizer(SAMPLE_RATE)
        _WORKER["pid"] = os.getpid()
        _WORKER.pop("babble", None)
    return _WORKER["tts"]


def _babble_sources():
    if "babble" not in _WORKER:
        tts = _synth()
        sources = []
        for b in _WORKER["babble_specs"]:
            x = tts.synthesize(b["text"], b["voice"], rate=b["rate"], pitch=b["pitch"], range_=b["range"])
            sources.append(effects.trim_silence(x, lead=0.0, trail=0.0))
        _WORKER["babble"] = sources
    return _WORKER["babble"]


def render(row):
    """Synthesise one planned utterance, apply its effects and write its wav.

    Returns ``(ID, number of samples, RMS dBFS)``.
    """
    import numpy as np

    tts = _synth()
    x = tts.synthesize(row["wrd_raw"], row["voice"], rate=row["rate"], pitch=row["pitch"], range_=row["range"])
    x = effects.trim_silence(x, lead=row["lead"], trail=row["trail"])
    needs_babble = any(spec["op"] == "babble" for spec in row["chain"])
    y = effects.apply_chain(
        x,
        row["chain"],
        np.random.default_rng(row["seed"]),
        _babble_sources() if needs_babble else None,
    )
    write_wav(row["wav"], y)
    return row["ID"], len(y), effects.rms_dbfs(y)


def write_wav(path, x, sample_rate=SAMPLE_RATE):
    """Write float samples in [-1, 1] as 16-bit mono PCM WAV.

    Written in place: a wav of an interrupted run is rewritten by the next one, since
    ``corpus_info.json`` (written last) is what marks the corpus complete."""
    import wave

    import numpy as np

    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def _manifest_row(row, n_samples):
    duration = n_samples / SAMPLE_RATE
    snr = effects.chain_snr(row["chain"])
    return {
        "ID": row["ID"],
        "duration": duration,
        "wav": row["wav"],
        "start": 0.0,
        "stop": duration,
        "spk_id": row["voice"],
        "wrd": row["wrd"],
        "wrd_raw": row["wrd_raw"],
        "voice": row["voice"],
        "rate": row["rate"],
        "pitch": row["pitch"],
        "range": row["range"],
        "snr": "" if snr is None else f"{snr:.2f}",
        "effect": effects.describe_chain(row["chain"]),
    }


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    # fork is cheap and needs no __main__ guard; the parent never touches espeak-ng's engine
    # before forking (the Synthesizer is created lazily per process id).
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")


# ------------------------------------------------------------------------- public API
def load_info(out_folder):
    path = os.path.join(out_folder, INFO_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate_corpus(out_folder, seed=0, config=None, scale=1.0, workers=2, progress=True):
    """Generate the corpus under ``out_folder`` and return its info dict.

    ``config``: ``{domain: {split: count}}`` (default ``DEFAULT_CONFIG``), every count times
    ``scale``. Skipped (the stored info is returned) when ``out_folder/corpus_info.json``
    holds the same scaled config, seed and generator version.
    """
    config = scaled_config(config, scale)
    out_folder = os.path.abspath(out_folder)
    stored = load_info(out_folder)
    if (
        stored
        and stored.get("config") == config
        and stored.get("seed") == seed
        and stored.get("version") == GENERATOR_VERSION
    ):
        if progress:
            print(f"[aode.mini] corpus already generated in {out_folder}; skipping")
        stored["skipped"] = True
        return stored

    start = time.time()
    plan = plan_corpus(out_folder, seed=seed, config=config)
    rows = [r for splits in plan.values() for split_rows in splits.values() for r in split_rows]
    for domain in plan:
        os.makedirs(os.path.join(out_folder, domain, "wav"), exist_ok=True)
    pool_specs = babble_pool(seed)

    lengths = {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(rows), desc="aode.mini corpus", unit="utt", disable=not progress) if tqdm else None
    if workers and workers > 1:
        with _mp_context().Pool(workers, initializer=_init_worker, initargs=(pool_specs,)) as pool:
            for uid, n, _ in pool.imap_unordered(render, rows, chunksize=8):
                lengths[uid] = n
                if bar:
                    bar.update()
    else:
        _init_worker(pool_specs)
        for row in rows:
            uid, n, _ = render(row)
            lengths[uid] = n
            if bar:
                bar.update()
    if bar:
        bar.close()

    counts, hours, manifests = {}, {}, {}
    for domain, splits in plan.items():
        counts[domain], hours[domain], manifests[domain] = {}, {}, {}
        for split, split_rows in splits.items():
            manifest_rows = [_manifest_row(r, lengths[r["ID"]]) for r in split_rows]
            path = os.path.join(out_folder, domain, f"{split}.csv")
            write_manifest(path, manifest_rows, extra_columns=EXTRA_COLUMNS)
            counts[domain][split] = len(manifest_rows)
            hours[domain][split] = round(sum(r["duration"] for r in manifest_rows) / 3600, 4)
            manifests[domain][split] = path
        hours[domain]["total"] = round(sum(hours[domain].values()), 4)
    elapsed = time.time() - start
    audio_s = sum(lengths.values()) / SAMPLE_RATE
    overlaps = vocabulary_overlaps(plan)
    info = {
        "generator": "aode.mini.corpus",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "config": config,
        "sample_rate": SAMPLE_RATE,
        "domains": {d: _describe_domain(d) for d in plan},
        "counts": counts,
        "hours": hours,
        "total_hours": round(audio_s / 3600, 4),
        "vocabulary_overlap": overlaps,
        "manifests": manifests,
        "generation_seconds": round(elapsed, 2),
        "realtime_factor": round(audio_s / max(elapsed, 1e-9), 1),
        "workers": workers,
        "notes": {
            "jl": "jl splits share the scripted phrases by design; they differ in voice/prosody draws only",
            "vocabulary_overlap": "share of each target's word types (all splits) found in general/train texts",
            "determinism": "all choices are seeded; espeak-ng audio may differ by a few tens of ms between runs",
        },
    }
    atomic_write_json(os.path.join(out_folder, INFO_FILE), info, indent=2)
    if progress:
        print(summary(info))
    info["skipped"] = False
    return info


def prepare_synthetic_corpus(save_folder, seed=0, scale=1.0, config=None):
    """The corpus as an experiment's preparation step (``prepare:``, or the ``synthetic_corpus``
    shorthand of aode.config.ExperimentConfig): :func:`generate_corpus` in ``save_folder``,
    skipped when it is there already."""
    print(f"[aode] synthetic corpus in {save_folder}", flush=True)
    return generate_corpus(save_folder, seed=seed, config=config, scale=scale)


def _describe_domain(domain):
    spec = copy.deepcopy(DOMAIN_SPECS[domain])
    return json.loads(json.dumps(spec))


def summary(info):
    """Human-readable summary of a corpus info dict."""
    lines = [
        f"[aode.mini] generated {info['total_hours']:.2f} h in {info['generation_seconds']:.1f} s "
        f"({info['realtime_factor']:.0f}x real time, {info['workers']} workers), seed {info['seed']}"
    ]
    for domain, splits in info["counts"].items():
        hrs = info["hours"][domain]
        parts = ", ".join(f"{s} {n} ({hrs[s] * 60:.1f} min)" for s, n in splits.items())
        line = f"  {domain:8s} {hrs['total']:.3f} h: {parts}"
        ov = info["vocabulary_overlap"].get(domain)
        if ov:
            line += (
                f"; word types shared with general/train {ov['types']:.0%} "
                f"({ov['shared_types']}/{ov['target_types']}), tokens covered {ov['tokens']:.0%}"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier on every count")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    info = generate_corpus(args.out, seed=args.seed, scale=args.scale, workers=args.workers, progress=not args.quiet)
    if info.get("skipped") and not args.quiet:
        print(summary(info))
    return 0


if __name__ == "__main__":
    from aode.cli import run_main

    sys.exit(run_main(main))
