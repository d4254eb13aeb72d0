"""RegMean++ (aode.merge.regmean_pp) against Grams recomputed here by hand: the first group's
equal RegMean's (own activations) when the members share their front end, a later group's
come from a model built here with the merged earlier layers and the member's own layer;
the written folder is the progressive merge; identical members give that member; Whisper end
to end; bad input before any output."""

import json
import os

import pytest
import torch
from conftest import perturbed_copy
from conftest import sample_rows
from safetensors.torch import load_file
from safetensors.torch import save_file

import aode.merge.regmean_pp  # noqa: F401  (registers the method)
from aode.gram import estimate_gram
from aode.gram import load_gram
from aode.manifest import write_manifest
from aode.merge import MergePlan
from aode.merge import get_spec
from aode.merge import merge_models
from aode.merge.regmean import regmean_linear
from aode.merge.regmean_pp import check_options
from aode.merge.regmean_pp import linear_groups
from aode.merge.regmean_pp import progressive_merge

W2 = torch.tensor([1.0, 1.0])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: OpenMP's barriers make 2 threads ~10x slower than 1."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_registered_and_groups():
    spec = get_spec("regmean_pp")
    assert spec.whole_model and spec.needs_member_data and not spec.needs_base
    names = ["enc.sub.linear", "enc.layers.0.attn.q", "enc.layers.0.ff.linear2", "dec.layers.11.x.layers.2.fc", "head"]
    assert linear_groups(names) == {
        "enc.sub.linear": "enc.sub.linear",
        "enc.layers.0.attn.q": "enc.layers.0",
        "enc.layers.0.ff.linear2": "enc.layers.0",
        "dec.layers.11.x.layers.2.fc": "dec.layers.11",  # the outermost block
        "head": "head",
    }


def test_recipes_fill_member_manifests(tmp_path):
    from aode.merge.inputs import data_options

    data = {n: str(tmp_path / f"{n}.csv") for n in ("a", "b", "original")}
    for path in data.values():
        open(path, "w").close()
    members = {"a": "/models/a", "b": "/models/b"}
    options = data_options(
        "regmean_pp", {"alpha": 1.0}, members, "/models/orig", include_original=True, member_data=data, device="cuda"
    )
    assert options["member_manifests"] == [data["a"], data["b"], data["original"]]  # the original's last
    assert options["alpha"] == 1.0 and options["device"] == "cuda" and options["n_utterances"] == 200
    with pytest.raises(ValueError, match=r"member_data names no manifest for \['b'\]"):
        data_options("regmean_pp", {}, members, member_data={"a": data["a"]})


@pytest.fixture(scope="module")
def setup(tiny_parakeet, tmp_path_factory):
    """Two perturbed members sharing the original's front end (every tensor outside the
    layers and the subsampling Linear), 2 utterances each, and their regmean_pp merge."""
    root = tmp_path_factory.mktemp("rpp")
    base = weights(tiny_parakeet)
    members, manifests = [], []
    for i in range(2):
        m = perturbed_copy(tiny_parakeet, str(root / f"m{i}"), seed=i, scale=0.3)
        state = weights(m)
        for name in state:
            if not name.startswith(("encoder.layers.", "encoder.subsampling.linear.")):
                state[name] = base[name]
        save_file(state, os.path.join(m, "model.safetensors"), metadata={"format": "pt"})
        members.append(m)
        manifests.append(str(root / f"d{i}.csv"))
        write_manifest(manifests[-1], sample_rows()[2 * i : 2 * i + 2])
    options = {"member_manifests": manifests, "batch_size": 1, "alpha": 0.9, "ridge": 1e-4}
    out = merge_models(members, str(root / "out"), method="regmean_pp", options=options, progress=False)
    return members, manifests, out, root


def _own_grams(folder, module_names, manifest, state=None):
    """X^T X / frames of each named Linear's inputs, utterance by utterance (no padding), in
    the model of ``folder`` with ``state`` loaded over it."""
    import speechbrain as sb

    from aode.data import make_dataset
    from aode.models import load_asr_model

    asr = load_asr_model(folder).eval()
    if state is not None:
        asr.hf_model.load_state_dict(state, strict=True)
    modules = dict(asr.hf_model.named_modules())
    seen = {m: [] for m in module_names}
    handles = [
        modules[m].register_forward_pre_hook(
            lambda mod, args, m=m: seen[m].append(args[0].reshape(-1, mod.in_features))
        )
        for m in module_names
    ]
    dataset = make_dataset(manifest, asr)
    with torch.no_grad():
        for i in range(len(dataset)):
            asr(*asr.batch_inputs(sb.dataio.batch.PaddedBatch([dataset[i]])))
    for h in handles:
        h.remove()
    out = {}
    for m, xs in seen.items():
        x = torch.cat(xs).double()
        out[m] = (x.T @ x / len(x)).float()
    return out


def test_first_group_is_regmean_later_groups_see_the_merged_layers(setup, tmp_path):
    members, manifests, out, _ = setup
    merged = weights(out)
    thetas = [weights(m) for m in members]
    # RegMean's Grams: each member's own activations
    regmean_grams = [
        load_gram(estimate_gram(m, d, out_path=str(tmp_path / f"g{i}.safetensors"), batch_size=1, progress=False))
        for i, (m, d) in enumerate(zip(members, manifests))
    ]

    def regmean_of(name, grams):
        return regmean_linear([t[name] for t in thetas], W2, [g[name] for g in grams], alpha=0.9, ridge=1e-4)

    # group 1 (the subsampling Linear) sees the shared front end: RegMean's result exactly
    first = "encoder.subsampling.linear.weight"
    torch.testing.assert_close(merged[first], regmean_of(first, regmean_grams), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(merged[first], (thetas[0][first] + thetas[1][first]) / 2, atol=1e-4)
    # layer 1: its inputs come from the merged subsampling and layer 0 (the written ones) and the
    # member's own layer 1; recomputed here from a model assembled with load_state_dict
    layer1 = [n[: -len(".weight")] for n in regmean_grams[0] if n.startswith("encoder.layers.1.")]
    assert len(layer1) == 9  # 2 FFNs x 2 Linears; q, k, v, o and the relative-position projection
    oracle = []
    for theta, manifest in zip(thetas, manifests):
        state = {k: (theta[k] if k.startswith("encoder.layers.1.") else v) for k, v in merged.items()}
        oracle.append({f"{m}.weight": g for m, g in _own_grams(members[0], layer1, manifest, state).items()})
    for name in oracle[0]:
        want = regmean_of(name, oracle)
        torch.testing.assert_close(merged[name], want, rtol=1e-4, atol=1e-5, msg=name)
        # ... which is not RegMean's (the earlier layers changed what layer 1 sees), except for the
        # relative-position projection, whose inputs are sinusoids of the positions (no weights)
        if "relative_k_proj" in name:
            torch.testing.assert_close(merged[name], regmean_of(name, regmean_grams), rtol=1e-5, atol=1e-6)
            continue
        assert (merged[name] - regmean_of(name, regmean_grams)).abs().max() > 1e-4, name
    # the tensors without a Gram: the plain average
    for name in ("encoder.layers.1.norm_out.weight", "encoder.layers.0.conv.depthwise_conv.weight", "ctc_head.bias"):
        torch.testing.assert_close(merged[name], (thetas[0][name] + thetas[1][name]) / 2)


def test_written_folder_is_the_progressive_merge_and_provenance(setup, tiny_parakeet, tmp_path):
    members, manifests, out, _ = setup
    opts = check_options({"member_manifests": manifests, "batch_size": 1, "progress": False}, 2)
    files, progressive, record = progressive_merge(MergePlan(members, "regmean_pp"), opts, str(tmp_path / "g"))
    written = weights(out)
    assert set(progressive) == {k for k, t in written.items() if t.is_floating_point()}
    for name, t in progressive.items():
        torch.testing.assert_close(written[name], t, rtol=1e-6, atol=1e-7, msg=name)
    assert record["groups"] == ["encoder.subsampling.linear", "encoder.layers.0", "encoder.layers.1"]
    assert record["early_stop"] and record["utterances"] == [2, 2]
    assert set(load_gram(files[0])) == {n for n in written if n.endswith(".weight") and written[n].dim() == 2}
    provenance = json.load(open(os.path.join(out, "aode.json")))
    assert provenance["method"] == "regmean_pp"
    rpp = provenance["regmean_pp"]
    assert rpp["options"]["alpha"] == 0.9 and rpp["options"]["ridge"] == 1e-4 and rpp["options"]["n_utterances"] == 200
    assert rpp["options"]["member_manifests"] == [os.path.abspath(m) for m in manifests]
    assert rpp["groups"] == record["groups"] and provenance["options"] == rpp["options"]  # no temporary Gram paths
    assert not [n for n in os.listdir(os.path.dirname(out)) if ".grams." in n]  # the temporary Grams are gone


def test_identical_members_give_that_member(setup, tmp_path):
    members, manifests, _, _ = setup
    options = {"member_manifests": manifests, "n_utterances": 1, "progress": False}
    out = merge_models([members[0]] * 2, str(tmp_path / "same"), method="regmean_pp", options=options, progress=False)
    want, got = weights(members[0]), weights(out)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-5, msg=name)


def test_whisper_end_to_end(tiny_whisper, tmp_path):
    manifests = []
    for i in range(3):
        manifests.append(str(tmp_path / f"w{i}.csv"))
        write_manifest(manifests[-1], sample_rows()[i : i + 1])
    ms = [perturbed_copy(tiny_whisper, str(tmp_path / f"m{i}"), seed=i, scale=0.2) for i in range(2)]
    out = merge_models(
        ms,
        str(tmp_path / "merged"),
        method="regmean_pp",
        base=tiny_whisper,
        include_base=True,
        options={"member_manifests": manifests, "n_utterances": 1},
        progress=False,
    )
    merged = weights(out)
    assert all(torch.isfinite(t).all() for t in merged.values() if t.is_floating_point())
    record = json.load(open(os.path.join(out, "aode.json")))["regmean_pp"]
    assert record["groups"] == [f"{p}.layers.{i}" for p in ("encoder", "decoder") for i in range(2)]
    assert record["early_stop"] and record["utterances"] == [1, 1, 1]
    thetas = [weights(m) for m in (*ms, tiny_whisper)]
    name = "model.decoder.layers.1.encoder_attn.k_proj.weight"  # reads the merged encoder's output
    assert not torch.allclose(merged[name], sum(t[name] for t in thetas) / 3, atol=1e-5)
    name = "model.encoder.conv1.weight"
    torch.testing.assert_close(merged[name], sum(t[name] for t in thetas) / 3)


def test_bad_input_before_any_output(setup, tmp_path):
    members, manifests, out, _ = setup
    target = str(tmp_path / "never")

    def merge(options, output=target, **kwargs):
        return merge_models(members, output, method="regmean_pp", options=options, progress=False, **kwargs)

    with pytest.raises(ValueError, match="needs member_manifests"):
        merge({})
    with pytest.raises(ValueError, match="member_manifests has 1 entries for 2 inputs"):
        merge({"member_manifests": manifests[:1]})
    with pytest.raises(ValueError, match="member_manifests has 2 entries for 3 inputs"):
        merge({"member_manifests": manifests}, base=members[0], include_base=True)
    with pytest.raises(ValueError, match="no such manifest"):
        merge({"member_manifests": [manifests[0], str(tmp_path / "nope.csv")]})
    with pytest.raises(ValueError, match=r"unknown regmean_pp option 'alpah'.*did you mean 'alpha'"):
        merge({"member_manifests": manifests, "alpah": 0.5})
    with pytest.raises(ValueError, match=r"regmean_pp option alpha must lie in \[0, 1\]"):
        merge({"member_manifests": manifests, "alpha": 2})
    with pytest.raises(ValueError, match="n_utterances must be a positive integer"):
        merge({"member_manifests": manifests, "n_utterances": 0})
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileExistsError):
        merge({"member_manifests": manifests}, output=out)
