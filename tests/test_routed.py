"""aode.routed: a routed model folder (base + compact deltas + router) against the dense models
it stands for, on both families' tiny models."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import perturbed_copy

from aode.compact import CompactError
from aode.compact import combine
from aode.compact import compact_delta
from aode.compact import materialise
from aode.config import ConfigError
from aode.models import load_asr_model
from aode.routed import RoutedASR
from aode.routed import build_routed_model
from aode.routed import evaluate_routed
from aode.routed import memory_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHISPER_OPTIONS = {"max_decode_ratio": 0.02}  # a random Whisper would decode up to 1500 tokens


def _batch(asr, manifest, n=4):
    from speechbrain.dataio.batch import PaddedBatch

    from aode.data import make_dataset

    dataset = make_dataset(manifest, asr)
    return PaddedBatch([dataset[i] for i in range(n)])


def _routed(base, root, name, **kwargs):
    experts = {
        d: perturbed_copy(base, str(root / f"{name}_{d}"), seed=i + 1, scale=0.05) for i, d in enumerate(("a", "b"))
    }
    kwargs = {"rank": 4, "min_factored": 0, **kwargs}
    return build_routed_model(base, experts, str(root / name), **kwargs), experts


@pytest.fixture(scope="module")
def ctc_routed(tiny_parakeet, tmp_path_factory):
    return _routed(tiny_parakeet, tmp_path_factory.mktemp("routed"), "ctc")


@pytest.fixture(scope="module")
def whisper_routed(tiny_whisper, tmp_path_factory):
    return _routed(tiny_whisper, tmp_path_factory.mktemp("routed"), "whisper")


def _dense(base, routed_folder, terms, folder):
    """The dense model base + sum(w * delta) materialised from the routed folder's deltas."""
    from aode.compact import Delta

    deltas = [(w, Delta.load(os.path.join(routed_folder, "deltas", f"{d}.safetensors"))) for d, w in terms.items()]
    return materialise(base, combine(deltas), folder)


@pytest.mark.parametrize("family", ["ctc", "whisper"])
def test_route_equals_the_materialised_model(
    family, ctc_routed, whisper_routed, tiny_parakeet, tiny_whisper, sample_manifest, tmp_path
):
    """(a) and (e): each route's outputs are those of base + its delta as one dense model,
    the fallback's those of base + sum(delta) / (n + 1)."""
    folder, _ = ctc_routed if family == "ctc" else whisper_routed
    base = tiny_parakeet if family == "ctc" else tiny_whisper
    options = WHISPER_OPTIONS if family == "whisper" else {}
    routed = RoutedASR(folder, **options).eval()
    batch = _batch(routed, sample_manifest, 4 if family == "ctc" else 2)
    hooks = [n for n, m in routed.info["routes"].items()]
    assert set(hooks) == {"a", "b", "base", "fallback"}
    assert "hook" in routed._mechanism.values() and "swap" in routed._mechanism.values()
    for route, terms in (("a", {"a": 1.0}), ("fallback", {"a": 1 / 3, "b": 1 / 3})):
        dense = load_asr_model(_dense(base, folder, terms, tmp_path / route), **options).eval()
        routed.set_route(route)
        with torch.no_grad():
            got = routed(*routed.batch_inputs(batch))["logits"]
            want = dense(*dense.batch_inputs(batch))["logits"]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (route, (got - want).abs().max())
        wavs, lens = batch.sig
        if family == "ctc" or route == "a":
            assert routed.transcribe(wavs, lens, [route] * len(wavs)) == dense.transcribe(wavs, lens)
    # a route really changes the outputs
    routed.set_route("base")
    with torch.no_grad():
        plain = routed(*routed.batch_inputs(batch))["logits"]
        routed.set_route("b")
        other = routed(*routed.batch_inputs(batch))["logits"]
    assert not torch.allclose(plain, other)


def test_mean_fallback(tiny_parakeet, tmp_path, sample_manifest):
    folder, _ = _routed(tiny_parakeet, tmp_path, "mean", fallback="mean", general_route="a")
    info = json.load(open(os.path.join(folder, "routed.json")))
    assert info["routes"]["fallback"] == {"a": 0.5, "b": 0.5} and info["general_route"] == "a"
    routed = RoutedASR(folder).eval()
    dense = load_asr_model(_dense(tiny_parakeet, folder, {"a": 0.5, "b": 0.5}, tmp_path / "d")).eval()
    batch = _batch(routed, sample_manifest, 2)
    routed.set_route("fallback")
    with torch.no_grad():
        got, want = routed(*routed.batch_inputs(batch))["logits"], dense(*dense.batch_inputs(batch))["logits"]
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("family", ["ctc", "whisper"])
def test_base_is_bit_identical_after_many_switches(family, ctc_routed, whisper_routed, sample_manifest):
    """(b)"""
    folder, _ = ctc_routed if family == "ctc" else whisper_routed
    options = WHISPER_OPTIONS if family == "whisper" else {}
    routed = RoutedASR(folder, **options).eval()
    plain = load_asr_model(os.path.join(folder, "base"), **options).eval()
    before = {n: t.clone() for n, t in routed.hf_model.state_dict().items()}
    batch = _batch(routed, sample_manifest, 2)
    decode_every = 6 if family == "ctc" else 24
    wavs, lens = batch.sig
    g = torch.Generator().manual_seed(0)
    names = ["a", "b", "fallback", "base"]
    for step in range(25):
        routed.set_route(names[int(torch.randint(4, (1,), generator=g))])
        if step % decode_every == 0:
            routed.transcribe(wavs, lens, ["a", "fallback"])
    routed.set_route("a")
    hooked = {routed._hf_of[s] for s, m in routed._mechanism.items() if m == "hook"}
    for name in hooked:  # hooked weights are never changed, even with a route active
        assert torch.equal(routed.hf_model.get_parameter(name), before[name]), name
    routed.set_route("base")
    after = routed.hf_model.state_dict()
    for name, t in before.items():
        assert torch.equal(after[name], t), name
    with torch.no_grad():  # and the base route is the plain base model, bit for bit
        assert torch.equal(routed(*routed.batch_inputs(batch))["logits"], plain(*plain.batch_inputs(batch))["logits"])


@pytest.mark.parametrize("family", ["ctc", "whisper"])
def test_mixed_batch_by_groups(family, ctc_routed, whisper_routed, sample_manifest):
    """(c): a mixed batch decodes as each utterance alone with its route, in order."""
    folder, _ = ctc_routed if family == "ctc" else whisper_routed
    options = WHISPER_OPTIONS if family == "whisper" else {}
    routed = RoutedASR(folder, **options).eval()
    routes = ["b", "a", "fallback", "b"] if family == "ctc" else ["b", "a", "b"]
    batch = _batch(routed, sample_manifest, len(routes))
    wavs, lens = batch.sig
    mixed = routed.transcribe(wavs, lens, routes)
    samples = (lens * wavs.shape[1]).round().long()
    alone = [
        routed.transcribe(wavs[i : i + 1, : samples[i]], torch.ones(1), [routes[i]])[0] for i in range(len(routes))
    ]
    assert mixed == alone
    assert routed.route_name == "base"  # the route in use before the call is back


class FakeRouter:
    """aode.route.Router's interface, answering given classes (and recording the route in use)."""

    classes = ("a", "b", "general")
    layers = (1,)
    threshold = 0.5

    def __init__(self, answers, model=None):
        self.answers = answers
        self.model = model
        self.seen_routes = []

    def route(self, asr, wavs, wav_lens):
        self.seen_routes.append(self.model.route_name)
        assert asr is self.model.base
        return self.answers[: len(wavs)]


def test_router_routes_from_the_base(ctc_routed, sample_manifest):
    folder, _ = ctc_routed
    routed = RoutedASR(folder).eval()
    routed.router = FakeRouter(["b", "fallback", "general", "a"], routed)
    routed.route_of_class = {"a": "a", "b": "b", "general": "base"}
    batch = _batch(routed, sample_manifest, 4)
    wavs, lens = batch.sig
    routed.set_route("a")
    hyps, routes = routed.transcribe_routed(wavs, lens)
    assert routes == ["b", "fallback", "base", "a"]
    assert routed.router.seen_routes == ["base"]  # the router reads the base model's own states
    assert hyps == routed.transcribe(wavs, lens, routes)
    routed.router = None
    with pytest.raises(CompactError, match="no router"):
        routed.transcribe(wavs, lens)


def test_folder_round_trip(ctc_routed, tiny_parakeet, sample_manifest):
    """(d)"""
    folder, experts = ctc_routed
    assert sorted(os.listdir(folder)) == ["README.md", "base", "deltas", "routed.json"]
    assert sorted(os.listdir(os.path.join(folder, "deltas"))) == ["a.safetensors", "b.safetensors"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(os.path.join(folder, "base")))
    info = json.load(open(os.path.join(folder, "routed.json")))
    assert info["format_version"] == 1 and info["form"] == "svd" and info["rank"] == 4
    assert info["domains"] == ["a", "b"] and info["routes"]["fallback"] == pytest.approx({"a": 1 / 3, "b": 1 / 3})
    sizes = info["sizes"]
    assert 0 < sizes["deltas"]["a"]["bytes"] < sizes["model_bytes"]
    assert set(info["errors"]["a"]) and max(info["errors"]["a"].values()) > 0
    card = open(os.path.join(folder, "README.md")).read()
    assert card.startswith("---") and "| `fallback` |" in card and "transcribe.py" in card
    routed = RoutedASR(folder)
    fresh = compact_delta(tiny_parakeet, experts["a"], rank=4, min_factored=0)
    assert routed.deltas["a"].names() == fresh.names()
    for name in fresh.names():
        assert torch.allclose(routed.deltas["a"].tensor(name), fresh.tensor(name), atol=1e-6)
    with pytest.raises(FileExistsError):
        build_routed_model(tiny_parakeet, experts, folder, rank=4)
    report = memory_report(routed)
    assert report["one_model_bytes"] < report["total_bytes"] < 2 * report["one_model_bytes"]
    assert report["deltas_bytes"] == sum(d.nbytes() for d in routed.deltas.values())


def test_evaluate_routed_with_the_brain(ctc_routed, tiny_parakeet, sample_manifest, tmp_path):
    """The Brain evaluates a RoutedASR: oracle routes by set give the WER of the dense model."""
    from aode.evaluate import evaluate_model

    folder, _ = ctc_routed
    sets = {"one": sample_manifest, "two": sample_manifest}
    results = evaluate_routed(
        folder, sets, tmp_path / "eval", routes_of_set={"one": "a", "two": "base"}, normalizer="basic", progress=False
    )
    n = results["one"]["utterances"]
    assert results["one"]["route_counts"] == {"a": n} and set(results["one"]["routes"].values()) == {"a"}
    dense = _dense(tiny_parakeet, folder, {"a": 1.0}, tmp_path / "dense")
    want = evaluate_model(dense, {"one": sample_manifest}, tmp_path / "eval_dense", normalizer="basic", progress=False)
    assert results["one"]["wer"] == pytest.approx(want["one"]["wer"])
    assert [h["hyp"] for h in results["one"]["hypotheses"]] == [h["hyp"] for h in want["one"]["hypotheses"]]
    base = evaluate_model(
        os.path.join(folder, "base"),
        {"two": sample_manifest},
        tmp_path / "eval_base",
        normalizer="basic",
        progress=False,
    )
    assert results["two"]["wer"] == pytest.approx(base["two"]["wer"])
    again = evaluate_routed(
        folder, sets, tmp_path / "eval", routes_of_set={"one": "a", "two": "base"}, normalizer="basic", progress=False
    )
    assert again["one"]["seconds"] == results["one"]["seconds"]  # cached
    with pytest.raises(CompactError, match="no route 'c'"):
        evaluate_routed(folder, sets, tmp_path / "e2", routes_of_set={"one": "c", "two": "a"})
    with pytest.raises(CompactError, match="no router"):
        evaluate_routed(folder, sets, tmp_path / "e3", routes_of_set={"one": "a"})


def test_refusals(tiny_parakeet, tiny_whisper, ctc_routed, tmp_path):
    """(g)"""
    import shutil

    from aode.lineage import ForeignOriginalError
    from aode.models import write_provenance
    from aode.reuse import model_fingerprint

    folder, experts = ctc_routed
    with pytest.raises(CompactError, match="different architectures"):
        build_routed_model(tiny_parakeet, {"a": experts["a"], "w": tiny_whisper}, tmp_path / "x")
    foreign = tmp_path / "foreign"
    shutil.copytree(experts["a"], foreign)
    write_provenance(
        foreign,
        {"kind": "expert", "base_model": tiny_whisper, "base_model_fingerprint": model_fingerprint(tiny_whisper)},
    )
    with pytest.raises(ForeignOriginalError):
        build_routed_model(tiny_parakeet, {"a": str(foreign)}, tmp_path / "y")
    with pytest.raises(CompactError, match="cannot name a domain"):
        build_routed_model(tiny_parakeet, {"base": experts["a"]}, tmp_path / "z")
    with pytest.raises(CompactError, match="general_route"):
        build_routed_model(tiny_parakeet, experts, tmp_path / "z", general_route="c")
    with pytest.raises(CompactError, match="has no route"):
        build_routed_model(
            tiny_parakeet, experts, tmp_path / "z", router=type("R", (FakeRouter,), {"classes": ("a", "c")})([])
        )
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "z")  # refused before writing
    routed = RoutedASR(folder)
    with pytest.raises(CompactError, match="no route 'c'"):
        routed.set_route("c")
    with pytest.raises(CompactError, match="no route 'c'"):
        routed.transcribe(torch.zeros(1, 1600), torch.ones(1), ["c"])
    with pytest.raises(CompactError, match="not a routed model folder"):
        RoutedASR(tiny_parakeet)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "recipes/route/transcribe.py", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


def test_transcribe_command(ctc_routed, sample_manifest, tmp_path):
    """(f)"""
    from aode.manifest import read_manifest

    folder, _ = ctc_routed
    rows = read_manifest(sample_manifest)
    out = tmp_path / "routes.csv"
    done = _cli(folder, rows[0]["wav"], sample_manifest, "--route", "a", "--batch_size", "3", "--routes_out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().split("\n")
    assert len(lines) == 1 + len(rows)
    first = lines[0].split("\t")
    assert first[0] == os.path.splitext(os.path.basename(rows[0]["wav"]))[0] and first[1] == "a"
    assert [line.split("\t")[0] for line in lines[1:]] == [r["ID"] for r in rows]
    routed = RoutedASR(folder).eval()
    from aode.data import read_audio_segment

    wav = read_audio_segment(rows[1]["wav"], rows[1]["start"], rows[1]["stop"])
    assert lines[2].split("\t")[2] == routed.transcribe(wav[None], torch.ones(1), ["a"])[0]
    assert open(out).read().splitlines()[:2] == ["ID,route", f"{first[0]},a"]
    for args, message in (  # through the command line: one error line, exit 2
        ((folder, rows[0]["wav"]), "has no router"),
        ((folder, rows[0]["wav"], "--route", "c"), "no route 'c'"),
        ((folder,), "the following arguments are required"),
    ):
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error:") and message in done.stderr
    from aode.routed import transcribe_main

    for args, message in (  # the same errors, in-process (each subprocess costs an import of torch)
        ((folder, str(tmp_path / "missing.wav"), "--route", "a"), "does not exist"),
        ((str(tmp_path), rows[0]["wav"], "--route", "a"), "not a routed model folder"),
        ((folder, rows[0]["wav"], "--route", "a", "--batch_size", "0"), "at least 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            transcribe_main(list(args))


def test_with_a_real_router(tiny_parakeet, ctc_routed, sample_manifest, tmp_path):
    """aode.route.Router saved in the folder, loaded with it, routing from the base's states."""
    from aode.route import Router

    _, experts = ctc_routed
    g = torch.Generator().manual_seed(0)
    dim = 2 * 32  # mean and deviation of one 32-wide encoder state
    router = Router(
        ("a", "b", "general"),
        (1,),
        0.4,
        torch.zeros(dim),
        torch.ones(dim),
        torch.randn(3, dim, generator=g),
        torch.zeros(3),
    )
    folder = build_routed_model(tiny_parakeet, experts, tmp_path / "r", rank=4, router=router)
    info = json.load(open(os.path.join(folder, "routed.json")))
    assert info["route_of_class"] == {"a": "a", "b": "b", "general": "base"} and info["threshold"] == 0.4
    routed = RoutedASR(folder).eval()
    assert isinstance(routed.router, Router)
    batch = _batch(routed, sample_manifest, 4)
    wavs, lens = batch.sig
    hyps, routes = routed.transcribe_routed(wavs, lens)
    classes = router.route(load_asr_model(os.path.join(folder, "base")).eval(), wavs, lens)
    assert routes == [{"general": "base"}.get(c, c) for c in classes]
    assert hyps == routed.transcribe(wavs, lens, routes)
    results = evaluate_routed(folder, {"s": sample_manifest}, tmp_path / "eval", normalizer="basic", progress=False)
    assert results["s"]["routing"] == "router"
    assert sum(results["s"]["route_counts"].values()) == results["s"]["utterances"]
    assert memory_report(routed)["router_bytes"] == 8 * router.num_parameters  # float64 as held


def test_throughput_protocol(ctc_routed, sample_manifest):
    """measure_throughput: an untimed pass, then ``repeats`` timed passes of each model; the
    medians are what the rates are made of, and the route counts are one pass's."""
    import statistics

    from aode.manifest import read_manifest
    from aode.routed import measure_throughput

    folder, _ = ctc_routed
    n = len(read_manifest(sample_manifest))
    result = measure_throughput(folder, {"a": sample_manifest, "b": sample_manifest}, batch_size=3, repeats=3)
    assert result["utterances"] == 2 * n
    assert len(result["base_times"]) == len(result["routed_times"]) == 3
    assert result["base_seconds"] == statistics.median(result["base_times"])
    assert result["routed_utt_per_s"] == pytest.approx(2 * n / statistics.median(result["routed_times"]))
    assert result["route_counts"] == {"a": n, "b": n}
