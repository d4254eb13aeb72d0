"""The router (aode.route) and the encoder states it reads (ASRModel.encoder_states), on the
tiny test models and the real recordings of tests/data/samples: shapes and valid frames of
both families, padding-invariant pooled features, the interface, determinism, save/load,
the threshold, the report's confusion matrix against a hand count, reuse and refusals."""

import csv
import json
import math
import os

import pytest
import torch

from aode.data import read_audio_segment
from aode.manifest import read_manifest
from aode.manifest import write_manifest
from aode.models import load_asr_model
from aode.reuse import StaleOutputError
from aode.route import FALLBACK
from aode.route import GENERAL
from aode.route import Router
from aode.route import pooled_states
from aode.route import router_report
from aode.route import train_router


@pytest.fixture(scope="module", params=["ctc", "whisper"])
def tiny_model(request, tiny_parakeet, tiny_whisper):
    return {"ctc": tiny_parakeet, "whisper": tiny_whisper}[request.param]


@pytest.fixture(scope="module")
def two_recordings(speaker_csvs):
    """A short and a longer real recording (16 kHz tensors)."""
    rows = sorted(read_manifest(speaker_csvs["all"]), key=lambda r: float(r["duration"]))
    return [read_audio_segment(r["wav"], r["start"], r["stop"]) for r in (rows[0], rows[-1])]


def test_encoder_states_shapes_valid_frames_and_padding(tiny_model, two_recordings):
    asr = load_asr_model(tiny_model).eval()
    short, long = two_recordings
    assert len(short) < len(long)
    with torch.no_grad():
        alone, alone_valid = asr.encoder_states(short[None], torch.tensor([1.0]))
        batch = torch.zeros(2, len(long))
        batch[0, : len(short)], batch[1] = short, long
        lens = torch.tensor([len(short) / len(long), 1.0])
        states, valid = asr.encoder_states(batch, lens)
    encoder_layers = {asr.layer_of(n) for n, _ in asr.hf_model.named_parameters()}
    layers = 1 + max(i for stack, i in filter(None, encoder_layers) if stack == "encoder" and i is not None)
    assert len(states) == len(alone) == layers + 1  # the front end's output, then each layer's
    for state in states:
        assert state.ndim == 3 and state.shape[0] == 2 and state.shape[1] >= int(valid.max())
        assert state.shape[2] == states[0].shape[2]
    assert valid.dtype == torch.long and valid.shape == (2,)
    # about one encoder frame per 20 ms of audio (Whisper: 320 samples, rounded up; the tiny
    # Parakeet: 10 ms features subsampled twice)
    for n, v in zip((len(short), len(long)), valid.tolist()):
        assert abs(v - n / 320) <= 1.0, (n, v)
    assert int(alone_valid[0]) == int(valid[0])
    # padding does not change an utterance's pooled features
    pooled_alone = pooled_states(asr, short[None], torch.tensor([1.0]))
    pooled_batch = pooled_states(asr, batch, lens)
    for a, b in zip(pooled_alone, pooled_batch):
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(pooled_batch[-1][0], pooled_batch[-1][1])  # two utterances differ


def test_a_pass_up_to_a_middle_state_gives_the_full_passs_states_and_stops(tiny_model, two_recordings):
    """``up_to``: the states below the last are the full pass's own (the oracle: transformers'
    output_hidden_states), and the layers above are never run (counted by a hook)."""
    asr = load_asr_model(tiny_model).eval()
    short, long = two_recordings
    batch = torch.zeros(2, len(long))
    batch[0, : len(short)], batch[1] = short, long
    lens = torch.tensor([len(short) / len(long), 1.0])
    layers = asr.encoder_layers()
    runs = [0] * len(layers)
    handles = [
        layer.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1)) for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            full, valid = asr.encoder_states(batch, lens)
            assert len(full) == len(layers) + 1 and runs == [1] * len(layers)
            for up_to in range(len(layers) + 1):
                runs[:] = [0] * len(layers)
                states, part_valid = asr.encoder_states(batch, lens, up_to=up_to)
                assert len(states) == up_to + 1 and torch.equal(part_valid, valid)
                for a, b in zip(states, full):
                    assert torch.equal(a, b), up_to
                assert runs == [1] * min(up_to, len(layers)) + [0] * (len(layers) - min(up_to, len(layers)))
    finally:
        for handle in handles:
            handle.remove()
    # a router reading only the front end's state pools what the full pass gives
    pooled_full = pooled_states(asr, batch, lens)
    pooled_front = pooled_states(asr, batch, lens, layers=[0])
    torch.testing.assert_close(pooled_front[0], pooled_full[0], atol=0, rtol=0)


@pytest.fixture(scope="module")
def classes(speaker_csvs):
    """Two classes: speaker 1 as a domain, speaker 2 as the general data."""
    return {"spk1": speaker_csvs["spk1"], GENERAL: speaker_csvs["spk2"]}


@pytest.fixture(scope="module")
def trained(tiny_parakeet, classes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    router = train_router(
        tiny_parakeet, classes, folder, layers=(1, -1), utterances_per_class=10, progress=False, valid_manifests=classes
    )
    return router, str(folder)


def batch_of(manifest):
    rows = read_manifest(manifest)
    wavs = [read_audio_segment(r["wav"], r["start"], r["stop"]) for r in rows]
    longest = max(len(w) for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return [r["ID"] for r in rows], batch, torch.tensor([len(w) / longest for w in wavs])


def test_the_interface(trained, tiny_parakeet, classes):
    router, folder = trained
    assert isinstance(router, Router)
    assert router.classes == ("spk1", GENERAL) and router.layers == (1, -1) and router.threshold == 0.5
    assert FALLBACK == "fallback" and GENERAL == "general"
    assert os.path.isfile(os.path.join(folder, "router.json"))
    assert os.path.isfile(os.path.join(folder, "router.safetensors"))
    asr = load_asr_model(tiny_parakeet)
    ids, wavs, lens = batch_of(classes["spk1"])
    features = router.features(asr, wavs, lens)
    assert features.shape == (len(ids), 2 * 2 * 32)  # mean and std of two 32-wide states
    names, probs = router.predict(features)
    assert len(names) == len(ids) and set(names) <= set(router.classes)
    assert probs.shape == (len(ids),) and bool(((probs >= 0.5) & (probs <= 1)).all())
    routes = router.route(asr, wavs, lens)
    assert routes == [n if p >= router.threshold else FALLBACK for n, p in zip(names, probs.tolist())]
    assert names.count("spk1") == len(names)  # its own training data, separable in 128 dimensions
    record = json.load(open(os.path.join(folder, "router.json")))
    assert record["training"]["accuracy"] == 1.0 and record["training"]["utterances"] == {"spk1": 5, GENERAL: 5}
    table = list(csv.DictReader(open(os.path.join(folder, "thresholds.csv"))))
    assert [float(r["threshold"]) for r in table][:2] == [0.0, 0.3] and float(table[0]["fallback_fraction"]) == 0
    with pytest.raises(ValueError, match="do not fit this router"):
        router.predict(features[:, :10])


def test_same_seed_same_router(trained, tiny_parakeet, classes, tmp_path):
    router, _ = trained
    again = train_router(
        tiny_parakeet, classes, tmp_path / "again", layers=(1, -1), utterances_per_class=10, progress=False
    )
    for name in ("mean", "std", "weight", "bias"):
        assert torch.equal(getattr(router, name), getattr(again, name)), name
    # another seed draws other utterances when there are more than asked for
    a = train_router(tiny_parakeet, classes, tmp_path / "a", utterances_per_class=3, seed=1, progress=False)
    b = train_router(tiny_parakeet, classes, tmp_path / "b", utterances_per_class=3, seed=2, progress=False)
    assert not torch.equal(a.mean, b.mean)


def test_a_class_of_several_manifests_is_their_union(trained, tiny_parakeet, classes, tmp_path):
    """A general class given as two sources (the real model's synthetic and real general speech)
    trains on both: the oracle is the same rows in one manifest, which gives the same router
    (a convex fit: the same solution whatever the order of the rows)."""
    router, _ = trained
    rows = read_manifest(classes[GENERAL])
    halves = [str(tmp_path / "first.csv"), str(tmp_path / "second.csv")]
    write_manifest(halves[0], rows[: len(rows) // 2])
    write_manifest(halves[1], rows[len(rows) // 2 :])
    split = train_router(
        tiny_parakeet,
        {"spk1": classes["spk1"], GENERAL: halves},
        tmp_path / "split",
        layers=(1, -1),
        utterances_per_class=10,
        progress=False,
        valid_manifests={GENERAL: halves},
    )
    assert split.info["training"]["utterances"] == router.info["training"]["utterances"]
    assert split.info["manifests"][GENERAL] == halves
    assert split.info["validation"]["utterances"] == len(rows)
    for name in ("mean", "std"):
        torch.testing.assert_close(getattr(split, name), getattr(router, name), atol=1e-5, rtol=1e-5)
    features = torch.randn(7, router.feature_dim)
    torch.testing.assert_close(split.probabilities(features), router.probabilities(features), atol=2e-3, rtol=0)
    with pytest.raises(FileNotFoundError, match="general"):
        train_router(tiny_parakeet, {"spk1": classes["spk1"], GENERAL: [halves[0], "nowhere.csv"]}, tmp_path / "x")


def test_save_load_round_trip(trained, tiny_parakeet, classes, tmp_path):
    router, folder = trained
    loaded = Router.load(folder)
    assert (loaded.classes, loaded.layers, loaded.threshold) == (router.classes, router.layers, router.threshold)
    asr = load_asr_model(tiny_parakeet)
    _, wavs, lens = batch_of(classes[GENERAL])
    features = router.features(asr, wavs, lens)
    assert torch.equal(loaded.probabilities(features), router.probabilities(features))
    assert loaded.route(asr, wavs, lens) == router.route(asr, wavs, lens)
    loaded.save(tmp_path)
    assert torch.equal(Router.load(tmp_path).probabilities(features), router.probabilities(features))
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # atomic writes left nothing behind


def hand_router(threshold, bias=(0.0, 0.0, 0.0)):
    """A router over 4 features whose decision a test can work out: class i wins when feature
    i is the largest of the first three (standardisation is the identity)."""
    return Router(
        ("a", "b", GENERAL),
        (-1,),
        threshold,
        mean=torch.zeros(4),
        std=torch.ones(4),
        weight=torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]]),
        bias=torch.tensor(bias),
    )


def test_threshold_sends_the_unsure_to_fallback():
    features = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.1, 0.1, 0.1, 0], [0, 0.3, 0.25, 0]])
    names, probs = hand_router(0.5).predict(features)
    assert names[:2] == ["a", "b"] and names[3] == "b"
    torch.testing.assert_close(probs[2], torch.tensor(1 / 3))
    assert hand_router(0.5).decide(features) == ["a", "b", FALLBACK, FALLBACK]
    assert hand_router(0.0).decide(features) == names
    assert hand_router(1.0).decide(features) == [FALLBACK] * 4
    with pytest.raises(ValueError, match="threshold"):
        hand_router(1.5)


def test_route_all_to_fallback_with_a_high_threshold(trained, tiny_parakeet, classes, tmp_path):
    router, folder = trained
    unsure = Router.load(folder)
    unsure.threshold = 1.0 + 1e-9  # no probability reaches it: everything falls back
    asr = load_asr_model(tiny_parakeet)
    _, wavs, lens = batch_of(classes["spk1"])
    assert set(unsure.route(asr, wavs, lens)) == {FALLBACK}


def test_report_confusion_equals_a_hand_count(trained, tiny_parakeet, classes, speaker_csvs, tmp_path):
    router, _ = trained
    router = Router.load(trained[1])
    router.threshold = 0.9  # some of the tiny model's decisions may fall back
    asr = load_asr_model(tiny_parakeet)
    sets = {"spk1": classes["spk1"], "general/spk2": classes[GENERAL], "general/all": speaker_csvs["all"]}
    # the hand count: each utterance routed alone, through Router.route
    hand = {}
    for name, manifest in sets.items():
        true = name.split("/")[0]
        for row in read_manifest(manifest):
            wav = read_audio_segment(row["wav"], row["start"], row["stop"])
            routed = router.route(asr, wav[None], torch.tensor([1.0]))[0]
            hand[(true, routed)] = hand.get((true, routed), 0) + 1
    result = router_report(router, tiny_parakeet, sets, tmp_path, progress=False, batch_size=4)
    confusion = result["confusion"]
    assert confusion["rows"] == ["spk1", GENERAL] and confusion["columns"] == ["spk1", GENERAL, FALLBACK]
    expected = [[hand.get((t, r), 0) for r in confusion["columns"]] for t in confusion["rows"]]
    assert confusion["counts"] == expected
    assert sum(map(sum, expected)) == 5 + 5 + 10
    spk1 = result["sets"]["spk1"]
    assert spk1["utterances"] == 5 and math.isclose(spk1["accuracy"], hand.get(("spk1", "spk1"), 0) / 5)
    with open(tmp_path / "confusion.csv") as f:
        table = list(csv.DictReader(f))
    assert [[int(r[c]) for c in confusion["columns"]] for r in table] == expected
    assert "| true class | spk1 | general | fallback |" in (tmp_path / "confusion.md").read_text()
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report.json").read_text())["confusion"]["counts"] == expected
    routes = list(csv.DictReader(open(tmp_path / "routes.csv")))
    assert len(routes) == 20 and {r["routed"] for r in routes} <= {"spk1", GENERAL, FALLBACK}


def test_report_of_a_held_out_domain(trained, tiny_parakeet, classes, speaker_csvs, tmp_path):
    router, _ = trained
    result = router_report(router, tiny_parakeet, {"other": speaker_csvs["all"]}, tmp_path, held_out=("other",))
    assert result["confusion"]["rows"] == ["other"] and sum(result["confusion"]["counts"][0]) == 10
    assert math.isnan(result["sets"]["other"]["accuracy"])


def test_reuse_loads_and_a_changed_manifest_recomputes(tiny_parakeet, classes, tmp_path, monkeypatch):
    import aode.route

    calls = {"pooled": 0, "fit": 0}
    pooled, fit = aode.route._pooled, aode.route.fit_logistic

    def counting_pooled(*args, **kwargs):
        calls["pooled"] += 1
        return pooled(*args, **kwargs)

    def counting_fit(*args, **kwargs):
        calls["fit"] += 1
        return fit(*args, **kwargs)

    monkeypatch.setattr(aode.route, "_pooled", counting_pooled)
    monkeypatch.setattr(aode.route, "fit_logistic", counting_fit)
    spk1 = tmp_path / "spk1.csv"
    write_manifest(str(spk1), read_manifest(classes["spk1"]))
    manifests = {"spk1": str(spk1), GENERAL: classes[GENERAL]}
    out = tmp_path / "router"
    first = train_router(tiny_parakeet, manifests, out, batch_size=16, progress=False)
    assert calls == {"pooled": 2, "fit": 1}
    stamp_time = os.stat(out / "router.json").st_mtime_ns
    second = train_router(tiny_parakeet, manifests, out, batch_size=16, progress=False)
    assert calls == {"pooled": 2, "fit": 1} and os.stat(out / "router.json").st_mtime_ns == stamp_time
    assert torch.equal(second.weight, first.weight)
    # another threshold: refitted from the cached features, the model not run again
    train_router(tiny_parakeet, manifests, out, batch_size=16, threshold=0.7, progress=False)
    assert calls == {"pooled": 2, "fit": 2}
    # a changed manifest: that class's features and the fit are computed again
    write_manifest(str(spk1), read_manifest(classes["spk1"])[:4])
    with pytest.raises(StaleOutputError, match="manifest spk1: "):
        train_router(tiny_parakeet, manifests, out, threshold=0.7, progress=False, overwrite=False)
    changed = train_router(tiny_parakeet, manifests, out, batch_size=16, threshold=0.7, progress=False)
    assert calls == {"pooled": 3, "fit": 3}
    assert changed.info["training"]["utterances"]["spk1"] == 4


def test_refusals(trained, tiny_parakeet, classes, tmp_path):
    router, _ = trained
    with pytest.raises(ValueError, match=r"classes the router does not have: \['ne'\]"):
        router_report(router, tiny_parakeet, {"ne": classes["spk1"]}, tmp_path / "report")
    empty = tmp_path / "empty.csv"
    write_manifest(str(empty), [])
    with pytest.raises(ValueError, match="class 'spk1': manifest .* has no rows"):
        train_router(tiny_parakeet, {"spk1": str(empty), GENERAL: classes[GENERAL]}, tmp_path / "r1")
    with pytest.raises(ValueError, match="test set 'spk1': manifest .* has no rows"):
        router_report(router, tiny_parakeet, {"spk1": str(empty)}, tmp_path / "report")
    with pytest.raises(ValueError, match="layer 7 is out of range: the model gives 3 encoder states"):
        train_router(tiny_parakeet, classes, tmp_path / "r2", layers=(7,), progress=False)
    bad = Router.load(trained[1])
    bad.layers, bad.num_states = (-4,), None
    asr = load_asr_model(tiny_parakeet)
    _, wavs, lens = batch_of(classes["spk1"])
    with pytest.raises(ValueError, match="layer -4 is out of range"):
        bad.features(asr, wavs, lens)
    with pytest.raises(ValueError, match="at least two classes"):
        train_router(tiny_parakeet, {"spk1": classes["spk1"]}, tmp_path / "r3")
    with pytest.raises(ValueError, match="cannot be a class"):
        train_router(tiny_parakeet, {FALLBACK: classes["spk1"], GENERAL: classes[GENERAL]}, tmp_path / "r4")
