import pytest
import torch

from aode.llrd import llrd_param_groups
from aode.llrd import lr_scales
from aode.models import load_asr_model


def _rates(groups):
    return {id(p): g["lr"] for g in groups for p in g["params"]}


def test_parakeet_rates_match_hand_computation(tiny_parakeet):
    model = load_asr_model(tiny_parakeet).hf_model  # 2 encoder layers
    lr, alpha = 1e-3, 0.8
    groups = llrd_param_groups(model.named_parameters(), lr=lr, alpha=alpha)
    rates = _rates(groups)
    named = dict(model.named_parameters())
    assert rates[id(named["encoder.layers.1.self_attn.q_proj.weight"])] == pytest.approx(lr)
    assert rates[id(named["encoder.layers.0.self_attn.q_proj.weight"])] == pytest.approx(lr * alpha)
    # outside the encoder layers: the lowest encoder layer's rate
    assert rates[id(named["ctc_head.weight"])] == pytest.approx(lr * alpha)
    assert rates[id(named["encoder.subsampling.linear.weight"])] == pytest.approx(lr * alpha)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_whisper_rates_paper_and_separate_modes(tiny_whisper):
    asr = load_asr_model(tiny_whisper)
    named = dict(asr.named_parameters())
    lr, alpha = 1.0, 0.5
    enc0 = next(n for n in named if ".encoder.layers.0." in n)
    enc1 = next(n for n in named if ".encoder.layers.1." in n)
    dec0 = next(n for n in named if ".decoder.layers.0." in n)
    dec1 = next(n for n in named if ".decoder.layers.1." in n)
    emb = next(n for n in named if n.endswith("decoder.embed_tokens.weight"))
    conv = next(n for n in named if n.endswith("encoder.conv1.weight"))
    paper = _rates(llrd_param_groups(asr.named_parameters(), lr=lr, alpha=alpha))
    assert [paper[id(named[n])] for n in (enc1, enc0, dec0, dec1, emb, conv)] == [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    separate = _rates(llrd_param_groups(asr.named_parameters(), lr=lr, alpha=alpha, mode="separate"))
    assert [separate[id(named[n])] for n in (enc1, enc0, dec1, dec0, emb, conv)] == [1.0, 0.5, 1.0, 0.5, 0.5, 0.5]


def test_deeper_chain_and_frozen_parameters_excluded():
    names = [f"encoder.layers.{i}.w" for i in range(4)] + ["encoder.embed.w", "lm_head.w"]
    scales = lr_scales(names, alpha=0.9)
    assert [scales[f"encoder.layers.{i}.w"][1] for i in range(4)] == pytest.approx([0.9**3, 0.9**2, 0.9, 1.0])
    assert scales["lm_head.w"][1] == pytest.approx(0.9**3)
    params = [(n, torch.nn.Parameter(torch.zeros(1), requires_grad=(n != "lm_head.w"))) for n in names]
    groups = llrd_param_groups(params, lr=1.0, alpha=0.9)
    assert sum(len(g["params"]) for g in groups) == 5


def test_errors():
    with pytest.raises(ValueError, match="no encoder layers"):
        lr_scales(["fc.weight"], 0.9)
    with pytest.raises(ValueError, match="unknown LLRD mode"):
        lr_scales(["encoder.layers.0.w"], 0.9, mode="bogus")


def test_no_weight_decay_on_biases_and_norms():
    """timm's rule: 1-D parameters (biases, LayerNorm/BatchNorm weights) are not decayed."""
    import torch
    from torch import nn

    from aode.llrd import llrd_param_groups

    model = nn.ModuleDict(
        {
            "encoder": nn.ModuleDict(
                {"layers": nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(2)])}
            )
        }
    )
    groups = llrd_param_groups(model.named_parameters(), lr=1.0, alpha=0.5, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"encoder.layer0", "encoder.layer0.no_decay", "encoder.layer1", "encoder.layer1.no_decay"}
    assert by_name["encoder.layer1"]["weight_decay"] == 0.01 and by_name["encoder.layer1"]["lr"] == 1.0
    assert by_name["encoder.layer1.no_decay"]["weight_decay"] == 0.0 and by_name["encoder.layer1.no_decay"]["lr"] == 1.0
    assert by_name["encoder.layer0.no_decay"]["lr"] == 0.5
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(model["encoder"]["layers"][i][0].weight) for i in range(2)}
    # without weight decay the groups are one per layer, as before
    assert len(llrd_param_groups(model.named_parameters(), lr=1.0, alpha=0.5)) == 2
    assert torch.is_tensor(groups[0]["params"][0])
