import pytest
import torch

from aode.llrd import llrd_param_groups
from aode.schedule import STLR
from aode.schedule import stlr_factor


def test_stlr_shape():
    total = 100
    factors = [stlr_factor(s, total, peak_fraction=0.2, ratio=32) for s in range(total + 1)]
    peak = max(range(total + 1), key=lambda s: factors[s])
    assert peak == 20 and factors[peak] == pytest.approx(1.0)
    assert factors[0] == pytest.approx(1 / 32) and factors[-1] == pytest.approx(1 / 32)
    assert all(a < b for a, b in zip(factors[:20], factors[1:21]))  # linear warm-up
    assert all(a > b for a, b in zip(factors[20:], factors[21:]))  # linear decay
    diffs = [factors[i + 1] - factors[i] for i in range(25, 99)]
    assert max(diffs) - min(diffs) < 1e-9


def test_stlr_keeps_llrd_ratios_at_every_step():
    names = [f"encoder.layers.{i}.w" for i in range(3)] + ["head.w"]
    params = [(n, torch.nn.Parameter(torch.zeros(2))) for n in names]
    groups = llrd_param_groups(params, lr=1e-3, alpha=0.7)
    opt = torch.optim.AdamW(groups)
    scheduler = STLR(total_steps=50, peak_fraction=0.1)
    expected = [g["lr_scale"] for g in opt.param_groups]
    top = max(range(len(expected)), key=lambda i: expected[i])
    seen = []
    for _ in range(50):
        scheduler.apply(opt)
        lrs = [g["lr"] for g in opt.param_groups]
        assert [lr / lrs[top] for lr in lrs] == pytest.approx(expected)
        seen.append(lrs[top])
        scheduler.current_step += 1
    assert max(seen) == pytest.approx(1e-3)


def test_stlr_checkpoint_roundtrip(tmp_path):
    s = STLR(10)
    s.current_step = 7
    s.save(tmp_path / "s.ckpt")
    t = STLR(10)
    t.load(tmp_path / "s.ckpt")
    assert t.current_step == 7


def test_bad_arguments():
    with pytest.raises(ValueError):
        stlr_factor(0, 0)
    with pytest.raises(ValueError):
        stlr_factor(0, 10, peak_fraction=1.5)
