"""The miniature synthetic corpus (aode.mini): texts, effects, synthesis, generator."""

import csv
import json
import os
import sys

import numpy as np
import pytest

from aode.manifest import MANIFEST_COLUMNS
from aode.manifest import read_manifest
from aode.mini import corpus
from aode.mini import effects
from aode.mini import textgen
from aode.text import normalize_words

SCALE = 0.01  # general 30/1/1/1, each target 4/1/1 utterances


def _has_espeak():
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return False
    return True


needs_espeak = pytest.mark.skipif(not _has_espeak(), reason="espeakng-loader not installed")


def _manifests(folder):
    out = {}
    for domain, splits in corpus.scaled_config(None, SCALE).items():
        for split in splits:
            out[(domain, split)] = read_manifest(os.path.join(folder, domain, f"{split}.csv"))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same small corpus twice: through the API with 2 worker processes, and through the
    CLI in-process, to show that scheduling does not matter."""
    first = str(tmp_path_factory.mktemp("mini_a"))
    second = str(tmp_path_factory.mktemp("mini_b"))
    if not _has_espeak():
        pytest.skip("espeakng-loader not installed")
    info = corpus.generate_corpus(first, seed=0, scale=SCALE, workers=2, progress=False)
    assert corpus.main(["--out", second, "--seed", "0", "--scale", str(SCALE), "--workers", "1", "--quiet"]) == 0
    return first, second, info


# --------------------------------------------------------------------------- text only
def test_number_words():
    assert textgen.number_words(0) == "zero"
    assert textgen.number_words(42) == "forty two"
    assert textgen.number_words(342) == "three hundred and forty two"
    assert textgen.number_words(7_000_005) == "seven million and five"
    assert textgen.year_words(1968) == "nineteen sixty eight"
    assert textgen.year_words(1905) == "nineteen oh five"


def test_texts_are_deterministic_and_seed_dependent():
    cfg = corpus.scaled_config(None, 0.05)
    a = corpus.plan_corpus("/x", seed=0, config=cfg)
    b = corpus.plan_corpus("/x", seed=0, config=cfg)
    c = corpus.plan_corpus("/x", seed=1, config=cfg)
    assert a == b  # texts, voices, rates, pitches, effect parameters, noise seeds, IDs
    for domain in ("general", "vctk", "coraal", "ne"):
        texts_a = [r["wrd"] for r in a[domain]["train"]]
        texts_c = [r["wrd"] for r in c[domain]["train"]]
        assert texts_a != texts_c
    assert [r["seed"] for r in a["jl"]["train"]] != [r["seed"] for r in c["jl"]["train"]]


def test_wrd_is_normalised_and_lengths_reasonable():
    plan = textgen.plan_texts(corpus.scaled_config(None, 0.1), seed=3)
    for domain, splits in plan.items():
        for texts in splits.values():
            for raw in texts:
                wrd = normalize_words(raw)
                assert wrd and set(wrd) <= set("abcdefghijklmnopqrstuvwxyz' "), raw
                assert 3 <= len(wrd.split()) <= textgen.MAX_WORDS[domain], raw
                assert raw[0].isupper()


def test_splits_disjoint_in_text_except_jl():
    plan = textgen.plan_texts(corpus.DEFAULT_CONFIG, seed=0)
    for domain, splits in plan.items():
        train = {normalize_words(t) for t in splits["train"]}
        held = {normalize_words(t) for s, texts in splits.items() if s != "train" for t in texts}
        if domain == "jl":
            assert held <= train  # the scripted phrases are shared by design
            assert len(train) == len(textgen.JL_PHRASES)
        else:
            assert not train & held, domain
            assert len(train) == len(splits["train"])  # unique within the split too


def test_vocabulary_overlap_in_target_band():
    """Most of each target's running words occur in the general training text, but not all:
    its names, dialect and jargon stay new (default sizes). A 30-50 % type overlap (generator
    1.1) left every target foreign to the character-CTC generalist: 52-66 % WER on target
    texts read by general voices with no effect at all, against 10 % on general text."""
    plan = textgen.plan_texts(corpus.DEFAULT_CONFIG, seed=0)
    overlaps = corpus.vocabulary_overlaps(plan)
    assert set(overlaps) == set(textgen.TARGET_DOMAINS)
    for domain, ov in overlaps.items():
        assert 0.55 <= ov["types"] <= 0.90, (domain, ov)
        assert 0.72 <= ov["tokens"] <= 0.92, (domain, ov)
        assert ov["tokens"] > ov["types"]  # shared words are the frequent ones
    general = textgen.word_types(plan["general"]["train"])
    assert 400 <= len(general) <= 2000


# --------------------------------------------------------------------------- effects
def test_effects_behave():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    assert effects.high_band_ratio(tone) > 0.05
    assert effects.high_band_ratio(effects.telephone(tone)) < 1e-3
    assert len(effects.telephone(tone)) == len(tone)

    a = effects.colored_noise("pink", 16000, np.random.default_rng(5))
    b = effects.colored_noise("pink", 16000, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert abs(effects.rms(a) - 1) < 1e-3
    for kind in effects.NOISE_KINDS:
        noise = effects.colored_noise(kind, 16000, rng)
        mixed = effects.mix_at_snr(tone, noise, 10.0)
        snr = 10 * np.log10(effects.active_power(tone) / np.mean((mixed - tone) ** 2))
        assert abs(snr - 10.0) < 0.1

    wet = effects.reverb(tone, "rir2", 0.3)
    assert len(wet) == len(tone) and abs(effects.rms(wet) - effects.rms(tone)) < 1e-3
    assert abs(effects.rms_dbfs(effects.set_level(tone, -26.0)) - (-26.0)) < 0.5
    sources = [tone, np.roll(tone, 100), tone[::-1].copy()]
    bab = effects.babble(8000, sources, [0, 2], [0.1, 0.7])
    assert len(bab) == 8000 and abs(effects.rms(bab) - 1) < 1e-3
    chain = [
        {"op": "babble", "snr": 12.0, "picks": [0, 1], "offsets": [0.0, 0.5]},
        {"op": "telephone"},
        {"op": "level", "dbfs": -25.0},
    ]
    assert effects.describe_chain(chain) == "babble2@12.0dB+telephone"
    assert effects.chain_snr(chain) == 12.0
    assert effects.describe_chain([{"op": "level", "dbfs": -20}]) == "clean"


# --------------------------------------------------------------------------- synthesis
def test_synth_import_error_names_the_package(monkeypatch):
    from aode.mini import synth

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import now fails
    with pytest.raises(ImportError, match="pip install espeakng-loader") as err:
        synth.Synthesizer()
    assert "mini" in str(err.value) and "GPL" in str(err.value)
    with pytest.raises(ImportError, match="espeakng-loader"):
        synth.list_voices()


def test_only_synth_loads_espeak():
    here = os.path.dirname(corpus.__file__)
    for name in os.listdir(here):
        if name.endswith(".py") and name != "synth.py":
            with open(os.path.join(here, name), encoding="utf-8") as f:
                assert "espeakng_loader" not in f.read(), name


@needs_espeak
def test_synthesizer_voices():
    from aode.mini import synth

    assert {"en", "en-us", "en-029", "en-gb-scotland", "en-us-nyc"} <= set(synth.list_voices())
    tts = synth.Synthesizer()
    x = tts.synthesize("Hello there.", voice="en-us+f3", rate=170)
    assert x.dtype == np.float32 and 0.4 < len(x) / 16000 < 2.5 and np.abs(x).max() > 0.05
    for spec in corpus.DOMAIN_SPECS.values():
        for voices in [spec["voices"]] + [s["voices"] for s in spec.get("splits", {}).values() if "voices" in s]:
            for voice in voices:
                tts.check_voice(voice)
    with pytest.raises(ValueError):
        tts.check_voice("en-us+nosuchvariant")
    with pytest.raises(ValueError):
        tts.check_voice("xx-nowhere")


# --------------------------------------------------------------------------- generator
def test_manifests_follow_the_contract(built):
    first, _, info = built
    config = corpus.scaled_config(None, SCALE)
    assert info["config"] == config and info["seed"] == 0 and not info["skipped"]
    ids = set()
    for (domain, split), rows in _manifests(first).items():
        assert len(rows) == config[domain][split] == info["counts"][domain][split]
        with open(os.path.join(first, domain, f"{split}.csv"), newline="") as f:
            header = next(csv.reader(f))
        assert header == MANIFEST_COLUMNS + list(corpus.EXTRA_COLUMNS)
        for row in rows:
            assert row["ID"] not in ids and "," not in row["ID"]
            ids.add(row["ID"])
            assert os.path.isabs(row["wav"]) and os.path.dirname(row["wav"]) == os.path.join(first, domain, "wav")
            assert row["wrd"] == normalize_words(row["wrd_raw"])
            assert row["spk_id"] == row["voice"]
            assert float(row["start"]) == 0 and float(row["stop"]) == float(row["duration"])
            assert (row["snr"] == "") == ("dB" not in row["effect"])  # clean or channel only
    with open(os.path.join(first, corpus.INFO_FILE)) as f:
        stored = json.load(f)
    assert set(stored["vocabulary_overlap"]) == set(textgen.TARGET_DOMAINS)
    assert stored["hours"]["general"]["total"] > 0 and stored["realtime_factor"] > 0
    assert stored["version"] == corpus.GENERATOR_VERSION


def test_audio_is_16k_mono_and_matches_durations(built):
    import soundfile as sf

    first, _, _ = built
    for rows in _manifests(first).values():
        for row in rows:
            meta = sf.info(row["wav"])
            assert meta.samplerate == 16000 and meta.channels == 1 and meta.subtype == "PCM_16"
            assert abs(meta.frames / 16000 - float(row["duration"])) < 0.001
            assert 1.0 < float(row["duration"]) < 7.0


def test_same_seed_same_corpus(built):
    """Everything the generator controls is identical. espeak-ng's waveform depends a little on
    what the engine synthesised before in the same process (its pitch-flutter state; measured:
    up to 61 ms seen with generator 1.3's voices), so audio is compared by duration (100 ms,
    against utterances of 1-7 s) and level (1 dB)."""
    import soundfile as sf

    first, second, _ = built
    a, b = _manifests(first), _manifests(second)
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key])
        for ra, rb in zip(a[key], b[key]):
            for col in (
                "ID",
                "spk_id",
                "wrd",
                "wrd_raw",
                "voice",
                "rate",
                "pitch",
                "range",
                "snr",
                "effect",
            ):
                assert ra[col] == rb[col], (key, col)
            assert os.path.basename(ra["wav"]) == os.path.basename(rb["wav"])
            assert abs(float(ra["duration"]) - float(rb["duration"])) < 0.1
            xa, _ = sf.read(ra["wav"])
            xb, _ = sf.read(rb["wav"])
            assert abs(effects.rms_dbfs(xa) - effects.rms_dbfs(xb)) < 1.0


def _audio(folder, domain, split):
    import soundfile as sf

    rows = read_manifest(os.path.join(folder, domain, f"{split}.csv"))
    return [sf.read(r["wav"], dtype="float32")[0] for r in rows]


def test_domains_differ_measurably(built):
    first, _, _ = built
    general = _audio(first, "general", "train")
    # babble of other talkers on every coraal utterance, at 15-25 dB
    coraal = read_manifest(os.path.join(first, "coraal", "train.csv"))
    assert all(r["effect"].startswith("babble") and 15 <= float(r["snr"]) <= 25 for r in coraal)
    # additive noise at 8-18 dB: a much lower blind SNR estimate than general's 15-40 dB
    gen_snr = np.median([effects.estimate_snr_db(x) for x in general])
    vctk_snr = np.median([effects.estimate_snr_db(x) for x in _audio(first, "vctk", "train")])
    assert vctk_snr < gen_snr - 8, (vctk_snr, gen_snr)
    # test_clean has no added noise at all
    clean = _audio(first, "general", "test_clean")
    assert min(effects.estimate_snr_db(x) for x in clean) > 60
    # ne is read slower than coraal is spoken
    rows = {d: read_manifest(os.path.join(first, d, "train.csv")) for d in ("ne", "coraal")}
    rate = {d: np.mean([len(r["wrd"].split()) / float(r["duration"]) for r in rows[d]]) for d in rows}
    assert rate["coraal"] > 1.2 * rate["ne"], rate


def test_skip_when_done(built, capsys):
    first, _, _ = built
    info_path = os.path.join(first, corpus.INFO_FILE)
    wav = _manifests(first)[("general", "train")][0]["wav"]
    csv_path = os.path.join(first, "general", "train.csv")
    before = [os.stat(p).st_mtime_ns for p in (info_path, wav, csv_path)]
    info = corpus.generate_corpus(first, seed=0, scale=SCALE, workers=2, progress=True)
    assert info["skipped"]
    assert "skipping" in capsys.readouterr().out
    assert [os.stat(p).st_mtime_ns for p in (info_path, wav, csv_path)] == before
