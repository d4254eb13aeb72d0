"""Every merge method against a hand computation on small tensors (aode.merge methods)."""

import math

import pytest
import torch

from aode.merge import available_methods
from aode.merge import get_method
from aode.merge import get_spec
from aode.merge import register
from aode.merge.ties import trim_magnitude

T = torch.tensor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def w(*values):
    return torch.tensor(values, dtype=torch.float32)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed))


# --- registry ---------------------------------------------------------------------------


def test_registry_lists_methods_and_rejects_unknown():
    names = available_methods()
    for name in [
        "average",
        "most_extreme",
        "least_extreme",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "slerp",
        "model_stock",
        "fisher",
    ]:
        assert name in names
        assert callable(get_method(name))
    with pytest.raises(ValueError, match="known methods: .*average"):
        get_method("averge")


def test_register_custom_method_and_duplicate():
    @register("_test_first")
    def first(tensors, weights, base, generator):
        return tensors[0]

    assert get_method("_test_first") is first
    assert "_test_first" in available_methods()
    with pytest.raises(ValueError, match="already registered"):

        @register("_test_first")
        def other(tensors, weights, base, generator):
            return tensors[1]


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock"])
def test_delta_methods_need_base(name):
    assert get_spec(name).needs_base
    with pytest.raises(ValueError, match="base"):
        get_method(name)([rand(3), rand(3, seed=1)], w(1, 1), None, gen())


# --- average ----------------------------------------------------------------------------


def test_average_equal_weights_is_exact_float32_mean():
    a, b, c = rand(5, 7, seed=1), rand(5, 7, seed=2), rand(5, 7, seed=3)
    out = get_method("average")([a, b, c], w(1, 1, 1), None, gen())
    assert out.dtype == torch.float32
    assert torch.equal(out, (a + b + c) / 3)


def test_average_weights_normalised():
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    out = get_method("average")([a, b], w(3, 1), None, gen())
    assert torch.allclose(out, T([1.5, 3.0]))
    # scaling all weights does not change the result
    out2 = get_method("average")([a, b], w(0.75, 0.25), None, gen())
    assert torch.allclose(out, out2)
    with pytest.raises(ValueError, match="sum to zero"):
        get_method("average")([a, b], w(1, -1), None, gen())


# --- extremes ---------------------------------------------------------------------------


def test_most_and_least_extreme_pick_elements():
    a = T([1.0, -5.0, 0.5, 2.0])
    b = T([-3.0, 4.0, 0.1, -2.0])  # last element: |2| tie -> first member
    c = T([2.0, 0.0, -0.7, 1.0])
    most = get_method("most_extreme")([a, b, c], w(1, 1, 1), None, gen())
    least = get_method("least_extreme")([a, b, c], w(1, 1, 1), None, gen())
    assert torch.equal(most, T([-3.0, -5.0, -0.7, 2.0]))
    assert torch.equal(least, T([1.0, 0.0, 0.1, 1.0]))
    tie_least = get_method("least_extreme")([T([-1.0]), T([1.0])], w(1, 1), None, gen())
    assert torch.equal(tie_least, T([-1.0]))


# --- task arithmetic --------------------------------------------------------------------


def test_task_arithmetic_hand_computed():
    base = T([1.0, 1.0, 1.0])
    a, b = T([2.0, 1.0, 0.0]), T([1.0, 3.0, 1.0])
    out = get_method("task_arithmetic")([a, b], w(1, 0.5), base, gen(), lam=2.0)
    # deltas (1,0,-1), (0,2,0); weighted sum (1,1,-1); times 2 -> (2,2,-2)
    assert torch.allclose(out, T([3.0, 3.0, -1.0]))


def test_task_arithmetic_lam_one_over_n_is_mean():
    base = rand(4, 6, seed=9)
    ms = [rand(4, 6, seed=s) for s in range(3)]
    out = get_method("task_arithmetic")(ms, w(1, 1, 1), base, gen(), lam=1 / 3)
    assert torch.allclose(out, (ms[0] + ms[1] + ms[2]) / 3, atol=1e-6)


# --- TIES -------------------------------------------------------------------------------


def test_ties_hand_computed():
    base = torch.zeros(4)
    a = T([3.0, -1.0, 2.0, 0.5])
    b = T([-1.0, -2.0, 2.0, 0.5])
    c = T([-1.0, 4.0, -0.5, 1.0])
    out = get_method("ties")([a, b, c], w(1, 1, 1), base, gen(), density=1.0)
    # elected signs: sum (1, 1, 3.5, 2) -> + + + +
    # elem0: agree a(3) -> 3; elem1: agree c(4) -> 4; elem2: a,b (2,2) -> 2; elem3: all -> 2/3
    assert torch.allclose(out, T([3.0, 4.0, 2.0, 2.0 / 3]))


def test_ties_trim_and_weights():
    base = T([1.0, 1.0, 1.0, 1.0, 1.0])
    a = base + T([5.0, -1.0, 0.2, 0.0, -4.0])
    b = base + T([-2.0, 3.0, 0.1, 0.0, 1.0])
    # density 0.4 -> keep int(0.4*5) = 2 entries per member
    assert torch.equal(trim_magnitude(a - base, 0.4), T([5.0, 0.0, 0.0, 0.0, -4.0]))
    out = get_method("ties")([a, b], w(1, 3), base, gen(), density=0.4, lam=0.5)
    # trimmed: a (5,0,0,0,-4), b (-2,3,0,0,0); weighted sums (5-6, 9, 0, 0, -4)
    # elected: -, +, +, +, -; elem0: b agrees -> (3*-2)/3 = -2; elem1: b -> 3
    # elem2/3: no agreeing non-zero -> 0; elem4: a -> -4
    expected = base + 0.5 * T([-2.0, 3.0, 0.0, 0.0, -4.0])
    assert torch.allclose(out, expected)


def test_ties_sign_tie_elects_positive():
    base = torch.zeros(2)
    a, b = T([1.0, 2.0]), T([-1.0, -2.0])
    out = get_method("ties")([a, b], w(1, 1), base, gen(), density=1.0)
    assert torch.equal(out, T([1.0, 2.0]))  # mergekit: a zero sum elects "+"
    out = get_method("ties")([a, b], w(1, 1), base, gen(), density=1.0, normalize=False)
    assert torch.equal(out, T([1.0, 2.0]))


def test_ties_keeps_at_least_one_entry():
    assert torch.equal(trim_magnitude(T([0.1, -3.0, 2.0]), 0.2), T([0.0, -3.0, 0.0]))
    # equal magnitudes at the cut: first positions win (stable)
    assert torch.equal(trim_magnitude(T([1.0, -1.0, 1.0, 0.5]), 0.5), T([1.0, -1.0, 0.0, 0.0]))


@pytest.mark.parametrize("name", ["ties", "dare_linear", "dare_ties", "model_stock", "task_arithmetic"])
def test_zero_deltas_return_base(name):
    base = rand(3, 4, seed=5)
    out = get_method(name)([base.clone(), base.clone(), base.clone()], w(1, 1, 1), base, gen())
    assert torch.isfinite(out).all()
    assert torch.equal(out, base)


# --- DARE -------------------------------------------------------------------------------


def test_dare_p0_equals_task_arithmetic():
    base = rand(6, 5, seed=1)
    ms = [rand(6, 5, seed=s) for s in (2, 3, 4)]
    ta = get_method("task_arithmetic")(ms, w(1, 2, 0.5), base, gen(), lam=0.7)
    dl = get_method("dare_linear")(ms, w(1, 2, 0.5), base, gen(), density=1.0, lam=0.7)
    assert torch.equal(ta, dl)


def test_dare_ties_p0_equals_ties_without_trim():
    base = rand(6, 5, seed=1)
    ms = [rand(6, 5, seed=s) for s in (2, 3, 4)]
    t = get_method("ties")(ms, w(1, 1, 1), base, gen(), density=1.0)
    d = get_method("dare_ties")(ms, w(1, 1, 1), base, gen(), density=1.0)
    assert torch.equal(t, d)


def test_dare_drop_and_rescale_hand_computed():
    base = torch.zeros(2000)
    m = torch.ones(2000)
    out = get_method("dare_linear")([m], w(1), base, gen(3), density=0.25)
    kept = out != 0
    assert torch.all(out[kept] == 4.0)  # rescaled by 1 / density
    assert 0.2 < kept.float().mean().item() < 0.3
    # the same mask as drawing by hand from the generator
    keep = torch.rand(2000, generator=gen(3)) < 0.25
    assert torch.equal(kept, keep)


def test_dare_deterministic_per_seed():
    base = rand(50, seed=0)
    ms = [rand(50, seed=s) for s in (1, 2)]
    for name in ("dare_linear", "dare_ties"):
        fn = get_method(name)
        a = fn(ms, w(1, 1), base, gen(7), density=0.5)
        b = fn(ms, w(1, 1), base, gen(7), density=0.5)
        c = fn(ms, w(1, 1), base, gen(8), density=0.5)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_dare_ties_hand_computed():
    base = torch.zeros(3)
    a, b = T([2.0, -1.0, 1.0]), T([-4.0, -3.0, 1.0])
    g = gen(11)
    keep_a = torch.rand(3, generator=gen(11)) < 0.5
    g2 = gen(11)
    torch.rand(3, generator=g2)
    keep_b = torch.rand(3, generator=g2) < 0.5
    ta, tb = a * keep_a / 0.5, b * keep_b / 0.5
    out = get_method("dare_ties")([a, b], w(1, 1), base, g, density=0.5)
    total = ta + tb
    elected = torch.where(total >= 0, 1.0, -1.0)
    num = torch.where(ta.sign() == elected, ta, 0.0) + torch.where(tb.sign() == elected, tb, 0.0)
    den = (ta.sign() == elected).float() + (tb.sign() == elected).float()
    expected = num / torch.where(den == 0, 1.0, den)
    assert torch.allclose(out, expected)


# --- SLERP ------------------------------------------------------------------------------


def test_slerp_endpoints_and_midpoint():
    a, b = T([1.0, 0.0]), T([0.0, 2.0])
    fn = get_method("slerp")
    assert torch.allclose(fn([a, b], w(1, 1), None, gen(), t=0.0), a)
    assert torch.allclose(fn([a, b], w(1, 1), None, gen(), t=1.0), b)
    mid = fn([a, b], w(1, 1), None, gen())  # t from uniform weights = 0.5
    s = math.sin(math.pi / 4) / math.sin(math.pi / 2)
    assert torch.allclose(mid, T([s, 2 * s]))
    # t from the weights: w2 / (w1 + w2) = 1 -> second member
    assert torch.allclose(fn([a, b], w(0, 3), None, gen()), b)


def test_slerp_near_parallel_falls_back_to_linear():
    a = T([1.0, 2.0, 3.0])
    b = 2 * a + T([1e-4, 0.0, 0.0])
    out = get_method("slerp")([a, b], w(1, 1), None, gen(), t=0.25)
    assert torch.allclose(out, 0.75 * a + 0.25 * b)
    with pytest.raises(ValueError, match="exactly two"):
        get_method("slerp")([a, b, a], w(1, 1, 1), None, gen())


def test_slerp_matrix_flattened():
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    out = get_method("slerp")([a, b], w(1, 1), None, gen(), t=0.3)
    va, vb = a.reshape(-1).double(), b.reshape(-1).double()
    omega = torch.arccos(va @ vb / (va.norm() * vb.norm()))
    expected = (torch.sin(0.7 * omega) * va + torch.sin(0.3 * omega) * vb) / torch.sin(omega)
    assert out.shape == (3, 4)
    assert torch.allclose(out.reshape(-1).double(), expected, atol=1e-6)


# --- Model Stock ------------------------------------------------------------------------


def test_model_stock_t_formula():
    base = torch.zeros(2)
    a, b = T([1.0, 0.0]), T([1.0, 1.0])  # cos = 1/sqrt(2)
    out = get_method("model_stock")([a, b], w(1, 1), base, gen())
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    assert torch.allclose(out, t * (a + b) / 2)

    base = T([1.0, 1.0, 1.0])
    ms = [base + T([1.0, 0.0, 0.0]), base + T([0.0, 1.0, 0.0]), base + T([1.0, 1.0, 0.0])]
    c = (0.0 + 2 * (1 / math.sqrt(2))) / 3  # pairwise cosines 0, 1/sqrt2, 1/sqrt2
    t = 3 * c / (1 + 2 * c)
    mean = (ms[0] + ms[1] + ms[2]) / 3
    out = get_method("model_stock")(ms, w(1, 1, 1), base, gen())
    assert torch.allclose(out, t * mean + (1 - t) * base, atol=1e-6)


def test_model_stock_identical_deltas_is_mean():
    base = rand(5, seed=1)
    d = rand(5, seed=2)
    out = get_method("model_stock")([base + d, base + d], w(1, 1), base, gen())
    assert torch.allclose(out, base + d, atol=1e-5)  # cos = 1 -> t = 1


# --- Fisher -----------------------------------------------------------------------------


def test_fisher_equal_fishers_is_average():
    ms = [rand(4, 3, seed=s) for s in range(3)]
    f = rand(4, 3, seed=9).abs() + 0.1
    out = get_method("fisher")(ms, w(1, 1, 2), None, gen(), fishers=[f, f, f])
    avg = get_method("average")(ms, w(1, 1, 2), None, gen())
    assert torch.allclose(out, avg, atol=1e-6)


def test_fisher_hand_computed_and_fallbacks():
    a, b = T([1.0, 1.0, 4.0]), T([3.0, 5.0, 0.0])
    fa, fb = T([1.0, 3.0, 0.0]), T([3.0, 1.0, 0.0])
    out = get_method("fisher")([a, b], w(1, 1), None, gen(), fishers=[fa, fb], eps=1e-6)
    # elem0 (1+9)/4; elem1 (3+5)/4; elem2: both floored at eps -> plain mean 2
    assert torch.allclose(out, T([2.5, 2.0, 2.0]))
    # a missing Fisher -> the plain weighted average
    out = get_method("fisher")([a, b], w(1, 3), None, gen(), fishers=[fa, None])
    assert torch.equal(out, get_method("average")([a, b], w(1, 3), None, gen()))
    out = get_method("fisher")([a, b], w(1, 1), None, gen())
    assert torch.equal(out, (a + b) / 2)
