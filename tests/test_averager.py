"""Registered merge methods as SpeechBrain averagers, through SpeechBrain's own function."""

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.checkpoints import average_checkpoints
from speechbrain.utils.checkpoints import average_state_dicts

from aode.merge import as_averager
from aode.merge import get_method


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.BatchNorm1d(3)


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = Checkpointer(str(tmp_path), {"model": model})
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
            model.norm.running_var.mul_(1.5)
            model.norm.num_batches_tracked += 1
        checkpointer.save_checkpoint(meta={"step": step})
    return checkpointer.find_checkpoints(max_num_checkpoints=3), base


def test_average_equals_speechbrains_own(checkpoints):
    ckpts, _ = checkpoints
    ours = average_checkpoints(ckpts, "model", averager=as_averager("average"))
    theirs = average_checkpoints(ckpts, "model", averager=average_state_dicts)
    for name, value in ours.items():
        if value.is_floating_point():
            assert torch.allclose(value, theirs[name], atol=1e-6), name
    # SpeechBrain's own averager turns the integer step counter into a float mean; ours keeps
    # the first checkpoint's, as the streaming driver does
    assert ours["norm.num_batches_tracked"].dtype == torch.long


def test_ties_in_one_line(checkpoints):
    ckpts, base = checkpoints
    state = average_checkpoints(ckpts, "model", averager=as_averager("ties", base=base, density=0.5))
    loaded = [torch.load(c.paramfiles["model"]) for c in ckpts]
    # each tensor is the registered TIES function of the checkpoints' tensors (seeded per name)
    expected = get_method("ties")(
        [s["linear.weight"] for s in loaded], torch.ones(3), base["linear.weight"], None, density=0.5
    )
    assert torch.allclose(state["linear.weight"], expected)
    # BatchNorm statistics are averaged whatever the method (a trimmed variance could go negative)
    assert torch.allclose(state["norm.running_var"], sum(s["norm.running_var"] for s in loaded) / 3)
    Tiny().load_state_dict(state)  # a loadable state dict


def test_bad_input_before_any_checkpoint_is_read():
    with pytest.raises(ValueError, match="needs base"):
        as_averager("ties")
    with pytest.raises(ValueError, match="model folders"):
        as_averager("fisher")
    with pytest.raises(ValueError, match="unknown merge method"):
        as_averager("tie")
