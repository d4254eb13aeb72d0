import pytest
import torch
from torch import nn

from aode.lora import LoRAWrapper
from aode.lora import add_lora
from aode.lora import has_lora
from aode.lora import lora_delta
from aode.lora import lora_state_dict
from aode.lora import merge_lora
from aode.models import load_asr_model


def _randomise_lora(model):
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRAWrapper):
            nn.init.normal_(module.lora_B, std=0.1)


def test_lora_merge_reproduces_adapted_parakeet(tiny_parakeet):
    asr = load_asr_model(tiny_parakeet)
    model = asr.hf_model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = add_lora(model, rank=4, target_modules=["q_proj", "v_proj", "linear1", "depthwise_conv"])
    assert any("depthwise_conv" in n for n in wrapped)
    conv = model.get_submodule([n for n in wrapped if "depthwise_conv" in n][0])
    assert conv.base.groups == conv.base.in_channels  # really depthwise
    assert conv.scaling == 2.0  # alpha defaults to 2 x rank
    _randomise_lora(model)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    x = torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.7])
    with torch.no_grad():
        adapted = asr(x, lens)["logits"]
    merge_lora(model)
    assert not has_lora(model)
    after = model.state_dict()
    assert set(after) == set(before)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any("depthwise_conv.weight" in k for k in changed) and any("q_proj.weight" in k for k in changed)
    with torch.no_grad():
        merged = asr(x, lens)["logits"]
    assert torch.allclose(adapted, merged, atol=1e-5)


def test_lora_delta_matches_peft_conventions():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 5, groups=6)
    wrapper = LoRAWrapper(conv, rank=2, alpha=4)
    nn.init.normal_(wrapper.lora_B)
    state = lora_state_dict(nn.ModuleDict({"c": wrapper}))
    a, b = state["base_model.model.c.lora_A.weight"], state["base_model.model.c.lora_B.weight"]
    assert a.shape == (2, 1, 5) and b.shape == (6, 2, 1)
    expected = 2.0 * (b.squeeze(-1) @ a.flatten(1)).reshape(6, 1, 5)
    assert torch.allclose(lora_delta(a, b, 2.0, conv.weight.shape), expected)
    assert torch.allclose(wrapper.delta(), expected)


def test_no_matching_target_is_an_error(tiny_parakeet):
    model = load_asr_model(tiny_parakeet).hf_model
    with pytest.raises(ValueError, match="no Linear/Conv1d module matches"):
        add_lora(model, target_modules=["nope"])


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Linear(256, 192),
        lambda: nn.Conv1d(64, 48, 3, padding=1),
        lambda: nn.Conv1d(32, 32, 5, groups=32, padding=2),
    ],
)
def test_adapted_forward_equals_merged_module(make):
    torch.manual_seed(0)
    base = make()
    wrapper = LoRAWrapper(base, rank=3, alpha=6)
    nn.init.normal_(wrapper.lora_B)
    x = torch.randn(2, 256, 7) if isinstance(base, nn.Linear) else torch.randn(2, base.in_channels, 11)
    x = x.transpose(1, 2) if isinstance(base, nn.Linear) else x
    with torch.no_grad():
        adapted = wrapper(x)
        merged = wrapper.merged()(x)
    assert torch.allclose(adapted, merged, atol=1e-4)


def test_linear_lora_never_builds_the_full_weight():
    """Autograd keeps only low-rank tensors for the backward pass: no out x in delta (the
    42-layer Parakeet LoRA run peaked at 12 GiB when every forward rebuilt each weight)."""
    torch.manual_seed(0)
    wrapper = LoRAWrapper(nn.Linear(1024, 1024), rank=4, alpha=8)
    x = torch.randn(3, 1024, requires_grad=True)  # as inside a network, below another adapter
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        wrapper(x).sum().backward()
    assert wrapper.lora_A.grad is not None and x.grad is not None
    full_size = [t for t in saved if t.numel() >= 1024 * 1024]
    # the frozen base weight itself may be referenced; no new full-size tensor may be made
    assert all(t.data_ptr() == wrapper.base.weight.data_ptr() for t in full_size), [t.shape for t in full_size]
