"""RegMean (aode.merge.regmean) against least squares and hand computations, Gram estimation
(aode.gram) against a direct computation, and the merge recipe with ``--method regmean``."""

import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from conftest import sample_rows
from conftest import train_tiny_expert
from safetensors import safe_open
from safetensors.torch import load_file

from aode.gram import estimate_gram
from aode.gram import load_gram
from aode.manifest import write_manifest
from aode.merge import MergeError
from aode.merge import get_method
from aode.merge import get_spec
from aode.merge import merge_models
from aode.merge.regmean import regmean_linear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def w(*values):
    return torch.tensor(values, dtype=torch.float32)


# --- the closed form ----------------------------------------------------------------------


def test_registered_whole_tensor():
    spec = get_spec("regmean")
    assert not spec.elementwise and spec.setup is not None


def test_alpha_one_no_ridge_is_least_squares():
    """sum_i ||X_i W^T - X_i W_i^T||^2 over stacked X_i (numpy lstsq) is what RegMean solves."""
    n_in, n_out = 6, 4
    xs = [rand(20, n_in, seed=1), rand(35, n_in, seed=2), 3 * rand(12, n_in, seed=3)]
    ws = [rand(n_out, n_in, seed=10 + i).float() for i in range(3)]
    grams = [(x.T @ x).float() for x in xs]
    out = get_method("regmean")(ws, w(1, 1, 1), None, None, grams=grams, alpha=1.0, ridge=0.0)
    x_all = torch.cat(xs).numpy()
    y_all = torch.cat([x @ wi.double().T for x, wi in zip(xs, ws)]).numpy()
    oracle = np.linalg.lstsq(x_all, y_all, rcond=None)[0].T
    assert out.shape == (n_out, n_in) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), oracle, rtol=1e-4, atol=1e-5)
    # per-frame Grams weighted by each member's frame count: the same problem
    normalised = [g / len(x) for g, x in zip(grams, xs)]
    out2 = regmean_linear(ws, w(*[len(x) for x in xs]), normalised, alpha=1.0, ridge=0.0)
    np.testing.assert_allclose(out2.numpy(), oracle, rtol=1e-4, atol=1e-5)


def test_alpha_below_one_hand_computed():
    # G~ = alpha G + (1 - alpha) diag(G): alpha 0.5 halves the off-diagonal entries
    g1 = torch.tensor([[2.0, 1.0], [1.0, 1.0]])  # G~1 = [[2, .5], [.5, 1]]
    g2 = torch.tensor([[1.0, 2.0], [2.0, 3.0]])  # G~2 = [[1, 1], [1, 3]]
    w1, w2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    out = regmean_linear([w1, w2], w(1, 1), [g1, g2], alpha=0.5, ridge=0.0)
    # A = [[3, 1.5], [1.5, 4]], b = G~1 (1, 0) + G~2 (0, 1) = (2, .5) + (1, 3) = (3, 3.5)
    # det A = 12 - 2.25 = 9.75; A^-1 b = (4*3 - 1.5*3.5, -1.5*3 + 3*3.5) / 9.75 = (6.75, 6) / 9.75
    torch.testing.assert_close(out, torch.tensor([[6.75 / 9.75, 6.0 / 9.75]]))
    # weights scale the Grams: w = (2, 1): A = [[5, 2], [2, 5]], b = (4, 1) + (1, 3) = (5, 4)
    # det 21; A^-1 b = (25 - 8, -10 + 20) / 21 = (17, 10) / 21
    out = regmean_linear([w1, w2], w(2, 1), [g1, g2], alpha=0.5, ridge=0.0)
    torch.testing.assert_close(out, torch.tensor([[17 / 21, 10 / 21]]))
    # alpha = 0: per input feature, the average weighted by diag(G_i)
    out = regmean_linear([w1, w2], w(1, 1), [g1, g2], alpha=0.0, ridge=0.0)
    torch.testing.assert_close(out, torch.tensor([[2 / 3, 3 / 4]]))


def test_rank_deficient_is_average_on_null_direction():
    n_in, n_out = 5, 3
    xs = [rand(30, n_in, seed=4), rand(40, n_in, seed=5)]
    for x in xs:
        x[:, 0] = 0  # an input feature that is always zero (Parakeet's subsampling linear has some)
    ws = [rand(n_out, n_in, seed=20 + i).float() for i in range(2)]
    grams = [(x.T @ x / len(x)).float() for x in xs]
    with pytest.raises(ValueError, match="singular.*ridge > 0"):
        regmean_linear(ws, w(1, 3), grams, alpha=1.0, ridge=0.0)
    out = get_method("regmean")(ws, w(1, 3), None, None, grams=grams, alpha=1.0)  # default ridge
    assert torch.isfinite(out).all()
    average = (ws[0] + 3 * ws[1]) / 4
    torch.testing.assert_close(out[:, 0], average[:, 0], rtol=1e-6, atol=1e-6)
    # elsewhere: the least-squares solution on the other features, up to the small ridge
    x_all = torch.cat(xs)[:, 1:]
    y_all = torch.cat([x @ wi.double().T for x, wi in zip(xs, ws)])
    weights = torch.cat([torch.full((30, 1), 1 / 30), torch.full((40, 1), 3 / 40)]).double().sqrt()
    oracle = np.linalg.lstsq((weights * x_all).numpy(), (weights * y_all).numpy(), rcond=None)[0].T
    np.testing.assert_allclose(out[:, 1:].numpy(), oracle, rtol=1e-2, atol=1e-3)
    # all-zero Grams (a layer no input reached): the plain average
    zeros = [torch.zeros(n_in, n_in)] * 2
    torch.testing.assert_close(regmean_linear(ws, w(1, 3), zeros), average)


def test_non_linear_tensors_are_averaged_and_bad_arguments():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    torch.testing.assert_close(get_method("regmean")([a, b], w(3, 1), None, None, grams=[None, None]), w(1.5, 3.0))
    g = [torch.eye(2)] * 2
    with pytest.raises(ValueError, match="alpha"):
        regmean_linear([torch.eye(2)] * 2, w(1, 1), g, alpha=1.5)
    with pytest.raises(ValueError, match="non-negative weights"):
        regmean_linear([torch.eye(2)] * 2, w(1, -1), g)


# --- Gram estimation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_rows(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gram") / "two.csv")
    write_manifest(path, sample_rows()[:2])
    return path


def test_gram_equals_direct_computation(tiny_parakeet, two_rows, tmp_path):
    import speechbrain as sb

    from aode.data import make_dataset
    from aode.models import load_asr_model

    path = estimate_gram(tiny_parakeet, two_rows, out_path=str(tmp_path / "g.safetensors"), batch_size=1)
    grams = load_gram(path)
    with safe_open(os.path.join(tiny_parakeet, "model.safetensors"), "pt") as f:
        stored = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert grams and all(k in stored and k.endswith(".weight") for k in grams)
    assert all(tuple(g.shape) == (stored[k][1], stored[k][1]) for k, g in grams.items())
    assert "encoder.layers.0.feed_forward1.linear2.weight" in grams  # 64-wide input
    # direct: the inputs of one Linear, stored, then X^T X / frames
    asr = load_asr_model(tiny_parakeet).eval()
    module = dict(asr.hf_model.named_modules())["encoder.layers.1.feed_forward2.linear2"]
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, 64)))
    dataset = make_dataset(two_rows, asr)
    with torch.no_grad():
        for i in range(len(dataset)):
            asr(*asr.batch_inputs(sb.dataio.batch.PaddedBatch([dataset[i]])))
    handle.remove()
    x = torch.cat(seen).double()
    want = (x.T @ x / len(x)).float()
    torch.testing.assert_close(grams["encoder.layers.1.feed_forward2.linear2.weight"], want, rtol=1e-5, atol=1e-6)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["content"] == "gram" and meta["normalisation"] == "per frame" and meta["utterances"] == "2"
    assert json.loads(meta["frames"])["encoder.layers.1.feed_forward2.linear2.weight"] == len(x)
    # an existing file is kept (no computation, not even of the manifest)
    mtime = os.path.getmtime(path)
    assert estimate_gram(tiny_parakeet, "/nonexistent.csv", out_path=path) == path
    assert os.path.getmtime(path) == mtime


def test_whisper_gram_keys(tiny_whisper, two_rows, tmp_path):
    """Whisper exports prefix the WhisperModel names with ``model.``; the decoder's Linears
    see the teacher-forced tokens."""
    from aode.gram import main

    out = str(tmp_path / "w.safetensors")
    main([tiny_whisper, two_rows, "--n_utterances", "1", "--out", out, "--no_progress"])
    grams = load_gram(out)
    assert all(k.startswith("model.") and k.endswith(".weight") for k in grams)
    assert "model.decoder.layers.0.encoder_attn.k_proj.weight" in grams and "model.encoder.layers.1.fc2.weight" in grams
    assert all(torch.isfinite(g).all() and g.diagonal().sum() > 0 for g in grams.values())


# --- the merge: recipe, errors ------------------------------------------------------------


@pytest.fixture(scope="module")
def experts(tiny_parakeet, tmp_path_factory):
    """Two tiny experts trained on the two speakers of the samples, each with its manifest."""

    folder = tmp_path_factory.mktemp("regmean_experts")
    rows = sample_rows()
    out = {}
    for spk in ("spk1", "spk2"):
        manifest = str(folder / f"{spk}.csv")
        write_manifest(manifest, [r for r in rows if r["spk_id"] == spk])
        expert = train_tiny_expert(tiny_parakeet, manifest, folder / spk)
        out[spk] = (expert, manifest)
    return out


def test_merge_recipe_regmean(experts, tiny_parakeet, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "recipes", "average"))
    import merge as merge_recipe

    # the original joins as a member with statistics from "general" data: its own folder is
    # shared with other tests, so its Gram file is named through gram_files
    general = str(tmp_path / "general.csv")
    write_manifest(general, sample_rows())
    files = []
    for expert, manifest in experts.values():
        files.append(estimate_gram(expert, manifest, n_utterances=3, batch_size=2, progress=False))
    files.append(
        estimate_gram(tiny_parakeet, general, out_path=str(tmp_path / "orig_gram.safetensors"), progress=False)
    )
    assert files[0] == os.path.join(experts["spk1"][0], "gram.safetensors")
    hp = tmp_path / "aode.yaml"
    hp.write_text(
        f"""
output_folder: {tmp_path / "out"}
original: {tiny_parakeet}
experts:
    spk1: {experts["spk1"][0]}
    spk2: {experts["spk2"][0]}
include_original: True
method_options: {{alpha: 0.9, ridge: 1.0e-4, gram_files: [null, null, {files[2]}]}}
test_sets: {{}}
progressbar: False
"""
    )
    merge_recipe.main([str(hp), "--method", "regmean"])
    merged_dir = tmp_path / "out" / "merged"
    merged = load_file(str(merged_dir / "model.safetensors"))
    members = [
        load_file(os.path.join(f, "model.safetensors")) for f in (*[e for e, _ in experts.values()], tiny_parakeet)
    ]
    grams = [load_gram(f) for f in files]
    name = "encoder.layers.0.self_attn.q_proj.weight"
    want = regmean_linear([m[name] for m in members], w(1, 1, 1), [g[name] for g in grams], alpha=0.9, ridge=1e-4)
    torch.testing.assert_close(merged[name], want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(merged[name], sum(m[name] for m in members) / 3, atol=1e-6)
    # every tensor without a Gram (biases, norms, convolutions): the plain average
    others = [n for n, t in merged.items() if n not in grams[0] and t.is_floating_point()]
    assert any(n.endswith("bias") for n in others) and any("conv" in n for n in others)
    for n in others:
        torch.testing.assert_close(merged[n], sum(m[n] for m in members) / 3)
    # the subsampling linear has always-zero inputs: finite thanks to the ridge
    assert all(torch.isfinite(t).all() for t in merged.values() if t.is_floating_point())
    provenance = json.load(open(merged_dir / "aode.json"))
    assert provenance["method"] == "regmean"
    assert provenance["options"]["alpha"] == 0.9 and provenance["options"]["ridge"] == 1e-4


def test_missing_gram_and_unknown_option(experts, tiny_parakeet, tmp_path):
    members = [e for e, _ in experts.values()]
    for m in members:  # the recipe test may have run first, or not
        if not os.path.isfile(os.path.join(m, "gram.safetensors")):
            estimate_gram(m, experts["spk1"][1], n_utterances=1, progress=False)
    out = tmp_path / "merged"
    # the original joins without a Gram file: named, with the command that makes it
    pattern = rf"member {re.escape(tiny_parakeet)}: no Gram file.*python -m aode.gram {re.escape(tiny_parakeet)}"
    with pytest.raises(MergeError, match=pattern):
        merge_models(members, out, method="regmean", base=tiny_parakeet, include_base=True, progress=False)
    assert not out.exists() and os.listdir(tmp_path) == []
    with pytest.raises(
        ValueError, match=r"unknown regmean option 'alpah' \(did you mean 'alpha'\?\); known: \['alpha', 'ridge'\]"
    ):
        merge_models(members, out, method="regmean", options={"alpah": 0.5}, progress=False)
    with pytest.raises(ValueError, match="alpha must lie in"):
        merge_models(members, out, method="regmean", options={"alpha": 2}, progress=False)
    with pytest.raises(ValueError, match="gram_files has 1 entries for 2 members"):
        merge_models(members, out, method="regmean", options={"gram_files": ["x"]}, progress=False)
    assert not out.exists() and os.listdir(tmp_path) == []
