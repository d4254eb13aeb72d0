"""Diagonal Fisher estimation (aode.fisher) and Fisher-weighted merging of its output."""

import os

import pytest
import torch
from conftest import perturbed_copy
from conftest import sample_rows
from safetensors import safe_open
from safetensors.torch import load_file

from aode.fisher import estimate_fisher
from aode.fisher import load_fisher
from aode.manifest import write_manifest


def stored_keys(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return set(f.keys())


def parameter_keys(folder):
    """The saved tensors that are trainable parameters (not BatchNorm buffers)."""
    from aode.models import load_asr_model

    names = {n for n, _ in load_asr_model(folder).hf_model.named_parameters()}
    return {k for k in stored_keys(folder) if k in names}


def _estimate(model, manifest, out, **options):
    """estimate_fisher into the file ``out``, without a progress bar."""
    return estimate_fisher(model, manifest, out_path=str(out), progress=False, **options)


SIX = dict(n_utterances=6, batch_size=3, seed=0)  # fisher_a's estimate


@pytest.fixture(scope="module")
def fisher_a(tiny_parakeet, sample_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("fisher") / "a.safetensors"
    return _estimate(tiny_parakeet, sample_manifest, out, **SIX), str(out)


def test_keys_values(fisher_a, tiny_parakeet):
    fisher, path = fisher_a
    keys = stored_keys(tiny_parakeet)
    assert set(fisher) == parameter_keys(tiny_parakeet)
    assert set(fisher) <= keys
    assert keys - set(fisher) and all("norm.running" in k or "num_batches" in k for k in keys - set(fisher))
    with safe_open(os.path.join(tiny_parakeet, "model.safetensors"), "pt") as f:
        for name, value in fisher.items():
            assert tuple(value.shape) == tuple(f.get_slice(name).get_shape())
            assert value.dtype == torch.float32
            assert torch.isfinite(value).all() and (value >= 0).all()
    assert sum(float(v.sum()) for v in fisher.values()) > 0
    on_disk = load_fisher(path)
    assert set(on_disk) == set(fisher)
    assert all(torch.equal(on_disk[k], fisher[k]) for k in fisher)


def test_deterministic_and_cached(fisher_a, tiny_parakeet, sample_manifest, tmp_path):
    fisher, path = fisher_a
    again = _estimate(tiny_parakeet, sample_manifest, tmp_path / "b.safetensors", **SIX)
    assert all(torch.equal(again[k], fisher[k]) for k in fisher)
    mtime = os.path.getmtime(path)
    cached = estimate_fisher(tiny_parakeet, "/nonexistent.csv", out_path=path)  # no computation
    assert os.path.getmtime(path) == mtime
    assert all(torch.equal(cached[k], fisher[k]) for k in fisher)


def _hand_fisher(folder, rows):
    """Mean over utterances of the squared gradient of each single-utterance loss."""
    from aode.data import read_audio_segment
    from aode.models import load_asr_model

    asr = load_asr_model(folder).eval()
    total = {n: torch.zeros_like(p) for n, p in asr.hf_model.named_parameters()}
    grads = []
    for row in rows:
        asr.zero_grad(set_to_none=True)
        wav = read_audio_segment(row["wav"], row["start"], row["stop"]).unsqueeze(0)
        tokens = asr.encode_text(row["wrd"]).unsqueeze(0)
        out = asr(wav, torch.ones(1))
        asr.loss(out, tokens, torch.ones(1)).backward()
        grads.append({n: p.grad.detach().clone() for n, p in asr.hf_model.named_parameters()})
        for n, p in asr.hf_model.named_parameters():
            total[n] += p.grad.detach() ** 2
    return {n: t / len(rows) for n, t in total.items()}, grads


def test_per_utterance_matches_hand_computation(tiny_parakeet, tmp_path):
    rows = sample_rows()[:2]
    manifest = str(tmp_path / "two.csv")
    write_manifest(manifest, rows)
    fisher = _estimate(tiny_parakeet, manifest, tmp_path / "f1.safetensors", n_utterances=2, per_utterance=True)
    expected, grads = _hand_fisher(tiny_parakeet, rows)
    assert set(fisher) == set(expected)
    for name in fisher:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-10)
    # one batch of both: n * (n * g_b**2) / n with g_b the mean gradient = (g1 + g2)**2 / 2
    batched = _estimate(tiny_parakeet, manifest, tmp_path / "f2.safetensors", n_utterances=2, batch_size=2)
    for name in batched:
        want = (grads[0][name] + grads[1][name]) ** 2 / 2
        torch.testing.assert_close(batched[name], want, rtol=1e-3, atol=1e-8)


def test_fisher_merge(tiny_parakeet, sample_manifest, tmp_path):
    from aode.merge import merge_models
    from aode.models import load_asr_model

    a = perturbed_copy(tiny_parakeet, tmp_path / "a", seed=1, scale=0.01)
    b = perturbed_copy(tiny_parakeet, tmp_path / "b", seed=2, scale=0.01)
    for folder, seed in ((a, 0), (b, 1)):
        estimate_fisher(folder, sample_manifest, n_utterances=4, batch_size=4, seed=seed, progress=False)
        assert os.path.isfile(os.path.join(folder, "fisher.safetensors"))  # the merge's default
    out = merge_models([a, b], str(tmp_path / "merged"), method="fisher", progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    fa, fb = load_fisher(a), load_fisher(b)
    sa, sb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    name = next(n for n in fa if fa[n].sum() > 0 and fb[n].sum() > 0 and fa[n].numel() > 10)
    ca, cb = fa[name].clamp_min(1e-6), fb[name].clamp_min(1e-6)
    torch.testing.assert_close(merged[name], (ca * sa[name] + cb * sb[name]) / (ca + cb), rtol=1e-5, atol=1e-6)
    asr = load_asr_model(out).eval()
    assert sum(p.numel() for p in asr.parameters()) > 0


def test_whisper_keys(tiny_whisper, sample_manifest, tmp_path):
    """Whisper exports are WhisperForConditionalGeneration: keys carry the ``model.`` prefix."""
    fisher = _estimate(tiny_whisper, sample_manifest, tmp_path / "w.safetensors", n_utterances=2, batch_size=2)
    keys = stored_keys(tiny_whisper)
    assert set(fisher) == keys
    assert all(k.startswith("model.") for k in fisher)
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in fisher.values())
    assert sum(float(v.sum()) for v in fisher.values()) > 0


def test_statistics_modules_do_not_import_each_other():
    """aode.fisher and aode.gram share their command line and the parameters' stored names
    through aode.member_statistics (the names themselves are the model's), not each other."""
    import ast

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "aode")
    for module, other in (("fisher", "aode.gram"), ("gram", "aode.fisher")):
        tree = ast.parse(open(os.path.join(root, f"{module}.py"), encoding="utf-8").read())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert other not in imported, f"aode.{module} imports {other}"
