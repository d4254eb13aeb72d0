"""aode.compact: experts as SVD or LoRA deltas from their base, exact combinations, refusals."""

import json
import os
import shutil

import pytest
import torch
from conftest import perturbed_copy

from aode.compact import CompactError
from aode.compact import Delta
from aode.compact import apply_delta
from aode.compact import combine
from aode.compact import compact_delta
from aode.compact import folder_weight_bytes
from aode.compact import lora_delta_of
from aode.compact import materialise
from aode.compact import svd_delta
from aode.lineage import ForeignOriginalError


def _state(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.fixture(scope="module")
def experts(tiny_parakeet, tmp_path_factory):
    root = tmp_path_factory.mktemp("compact")
    return [perturbed_copy(tiny_parakeet, str(root / f"e{i}"), seed=i, scale=0.05) for i in range(2)]


def make_lora_adapter(base, folder, seed=0, targets=("q_proj", "v_proj", "depthwise_conv", "pointwise_conv1")):
    """A peft adapter folder (rank 4, alpha 8) trained 'from' ``base``: random lora_B."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCTC

    from aode.lora import add_lora
    from aode.lora import lora_state_dict

    model = AutoModelForCTC.from_pretrained(base)
    add_lora(model, rank=4, alpha=8, target_modules=targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    os.makedirs(folder)
    save_file(lora_state_dict(model), os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": os.path.abspath(base)}, f)
    return str(folder)


def test_full_rank_svd_is_the_expert(tiny_parakeet, experts):
    delta = svd_delta(tiny_parakeet, experts[0], rank=None, min_factored=0)
    rebuilt = apply_delta(_state(tiny_parakeet), delta)
    expert = _state(experts[0])
    for name, t in expert.items():
        assert torch.allclose(rebuilt[name], t, atol=1e-5), name
    assert delta.summary()["max_relative_error"] < 1e-5


def test_truncated_svd_rank_sizes_and_errors(tiny_parakeet, experts):
    model_bytes = folder_weight_bytes(tiny_parakeet)
    small = svd_delta(tiny_parakeet, experts[0], rank=2, min_factored=0)
    large = svd_delta(tiny_parakeet, experts[0], rank=8, min_factored=0)
    assert small.factors and all(u.shape[1] <= 2 and v.shape[1] <= 2 for u, v in small.factors.values())
    for name, (u, v) in small.factors.items():
        rows = small.shapes[name][0]
        assert u.shape[0] == rows and u.shape[0] * v.shape[0] == torch.Size(small.shapes[name]).numel()
    assert small.nbytes() < large.nbytes() < model_bytes
    # vectors are dense and exact; truncation errors grow as the rank shrinks
    assert all(d.dim() < 2 or d.numel() < 0 or name not in small.factors for name, d in small.dense.items())
    assert small.summary(model_bytes)["fraction_of_model"] < 1
    assert max(small.errors.values()) > max(large.errors.values()) > 0
    # the stored factors are the best rank-2 approximation (Eckart-Young): error = tail energy
    name = next(iter(small.factors))
    diff = (_state(experts[0])[name] - _state(tiny_parakeet)[name]).reshape(small.shapes[name][0], -1)
    s = torch.linalg.svdvals(diff.double())
    assert small.errors[name] == pytest.approx(float((s[2:] ** 2).sum().sqrt() / (s**2).sum().sqrt()), rel=1e-4)


def test_energy_rule_and_defaults(tiny_parakeet, experts):
    delta = svd_delta(tiny_parakeet, experts[0], rank=None, energy=0.5, min_factored=0)
    capped = svd_delta(tiny_parakeet, experts[0], rank=2, energy=0.5, min_factored=0)
    assert delta.factors and capped.nbytes() <= delta.nbytes()
    for name, (u, _) in delta.factors.items():
        assert delta.errors[name] <= 0.5**0.5 + 1e-6  # half the energy kept: error <= sqrt(1/2)
        assert u.shape[1] < min(delta.shapes[name][0], torch.Size(delta.shapes[name][1:]).numel())
    # the default threshold keeps small matrices dense
    default = svd_delta(tiny_parakeet, experts[0], rank=2)
    assert set(default.factors) < set(svd_delta(tiny_parakeet, experts[0], rank=2, min_factored=0).factors)
    with pytest.raises(CompactError, match="energy"):
        svd_delta(tiny_parakeet, experts[0], energy=1.5)


def test_tensors_equal_to_the_base_are_left_out(tiny_parakeet, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "one"
    shutil.copytree(tiny_parakeet, folder)
    state = _state(tiny_parakeet)
    name = "encoder.layers.0.feed_forward1.linear1.weight"
    state[name] = state[name] + 0.1
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    delta = svd_delta(tiny_parakeet, str(folder), rank=4, min_factored=0)
    assert delta.names() == [name]
    assert delta.errors[name] < 1e-5  # a constant shift has rank one
    assert svd_delta(tiny_parakeet, str(folder), rank=4, energy=0.9999, min_factored=0).rank_of(name) == 1


def test_combination_is_exact_without_a_new_svd(tiny_parakeet, experts):
    d0 = svd_delta(tiny_parakeet, experts[0], rank=3, min_factored=0)
    d1 = svd_delta(tiny_parakeet, experts[1], rank=3, min_factored=0)
    both = combine([(1 / 3, d0), (1 / 3, d1)])
    for name in both.names():
        want = (d0.tensor(name) + d1.tensor(name)) / 3
        assert torch.allclose(both.tensor(name), want, atol=1e-6), name
    name = next(iter(both.factors))
    assert both.factors[name][0].shape[1] == d0.rank_of(name) + d1.rank_of(name)  # concatenated


def test_delta_file_round_trip(tiny_parakeet, experts, tmp_path):
    delta = svd_delta(tiny_parakeet, experts[0], rank=3, min_factored=0)
    delta.save(tmp_path / "d.safetensors")
    back = Delta.load(tmp_path / "d.safetensors")
    assert (
        back.names() == delta.names()
        and back.shapes == delta.shapes
        and back.meta == json.loads(json.dumps(delta.meta))
    )
    for name in delta.names():
        assert torch.equal(back.tensor(name), delta.tensor(name))
    assert back.errors == pytest.approx(delta.errors)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # atomic: no temporary left
    with pytest.raises(CompactError, match="does not exist"):
        Delta.load(tmp_path / "missing.safetensors")


def test_lora_adapter_read_natively(tiny_parakeet, tmp_path):
    from aode.merge.read import open_model

    adapter = make_lora_adapter(tiny_parakeet, tmp_path / "adapter")
    delta = lora_delta_of(tiny_parakeet, adapter)
    assert delta.meta["form"] == "lora" and delta.meta["rank"] == 4
    assert all(u.shape[1] == 4 for u, _ in delta.factors.values())
    assert any("depthwise" in n for n in delta.factors)  # convolutions: factors of their matrix
    assert all(e == 0.0 for e in delta.errors.values())
    # base + delta is what the merge reader sees for the adapter (W + alpha/r B A)
    source = open_model(adapter)
    rebuilt = apply_delta(_state(tiny_parakeet), delta)
    for name in delta.names():
        assert torch.allclose(rebuilt[name], source.read(name).float(), atol=1e-6), name
    source.close()
    assert compact_delta(tiny_parakeet, adapter, form="lora").names() == delta.names()


def test_lora_folded_in_at_export_is_svd_at_its_rank(tiny_parakeet, tmp_path):
    from aode.merge.read import open_model
    from aode.models import write_provenance

    adapter = make_lora_adapter(tiny_parakeet, tmp_path / "adapter", targets=("q_proj", "v_proj"))
    folded = tmp_path / "folded"
    shutil.copytree(tiny_parakeet, folded)
    from safetensors.torch import save_file

    source = open_model(adapter)
    save_file(
        {n: source.read(n).float().contiguous() for n in source.infos},
        str(folded / "model.safetensors"),
        metadata={"format": "pt"},
    )
    source.close()
    write_provenance(folded, {"kind": "expert", "lora_merged_modules": 4, "hparams": {"lora_rank": 4}})
    delta = lora_delta_of(tiny_parakeet, str(folded), min_factored=0)
    assert delta.meta["form"] == "lora" and all(u.shape[1] <= 4 for u, _ in delta.factors.values())
    assert max(delta.errors.values()) < 1e-4  # rank-4 changes: the rank-4 SVD is exact
    with pytest.raises(CompactError, match="neither a peft"):
        lora_delta_of(tiny_parakeet, tiny_parakeet)


def test_materialise_writes_base_plus_delta(tiny_parakeet, experts, tmp_path):
    delta = svd_delta(tiny_parakeet, experts[0], rank=None)
    out = materialise(tiny_parakeet, delta, tmp_path / "dense")
    state, expert = _state(out), _state(experts[0])
    assert set(state) == set(expert)
    assert all(torch.allclose(state[n], expert[n], atol=1e-5) for n in expert)
    assert os.path.isfile(os.path.join(out, "config.json")) and os.path.isfile(os.path.join(out, "tokenizer.json"))


def test_refusals(tiny_parakeet, tiny_whisper, experts, tmp_path):
    from aode.builders import build_parakeet_ctc
    from aode.models import write_provenance
    from aode.reuse import model_fingerprint

    wider = build_parakeet_ctc(
        str(tmp_path / "wider"), hidden_size=48, num_layers=2, num_heads=2, intermediate_size=64, conv_kernel_size=5
    )
    with pytest.raises(CompactError, match="different architectures"):
        svd_delta(tiny_parakeet, wider)
    with pytest.raises(CompactError, match="different architectures"):
        svd_delta(tiny_parakeet, tiny_whisper)
    # an expert that records another base (its aode.json, by fingerprint)
    foreign = tmp_path / "foreign"
    shutil.copytree(experts[0], foreign)
    write_provenance(
        foreign, {"kind": "expert", "base_model": wider, "base_model_fingerprint": model_fingerprint(wider)}
    )
    with pytest.raises(ForeignOriginalError, match="not the model"):
        svd_delta(tiny_parakeet, str(foreign))
    # a LoRA adapter trained on another base
    other = tmp_path / "other_base"
    perturbed_copy(tiny_parakeet, str(other), seed=7, scale=0.1)
    adapter = make_lora_adapter(str(other), tmp_path / "adapter")
    with pytest.raises(CompactError, match="was trained on"):
        lora_delta_of(tiny_parakeet, adapter)
    with pytest.raises(CompactError, match="unknown delta form"):
        compact_delta(tiny_parakeet, experts[0], form="dense")
