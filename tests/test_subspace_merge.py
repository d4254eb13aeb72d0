"""The subspace merge methods ``tsv`` (aode.merge.tsv) and ``iso_c`` / ``iso_cts``
(aode.merge.iso): closed forms worked out by hand, and the papers' reference code as oracle."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save_file

import aode.merge.iso  # noqa: F401  (registers iso_c, iso_cts)
import aode.merge.tsv  # noqa: F401  (registers tsv)
from aode.merge import get_method
from aode.merge import get_spec
from aode.merge import merge_models
from aode.merge.iso import iso_cts_sizes

T = torch.tensor
METHODS = ["tsv", "iso_c", "iso_cts"]
C8, S8 = math.cos(math.pi / 8), math.sin(math.pi / 8)


def w(*values):
    return torch.tensor(values, dtype=torch.float32)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def merge(name, tensors, base, weights=None, **options):
    weights = torch.ones(len(tensors)) if weights is None else weights
    return get_method(name)(tensors, weights, base, torch.Generator(), **options)


def close(a, b, atol=1e-5):
    return torch.allclose(a.double(), torch.as_tensor(b, dtype=torch.float64), atol=atol, rtol=0)


# --- the papers' reference code (oracle) --------------------------------------------------
# Copied from the authors' repositories (Apache License 2.0, copyright the authors), prints
# removed, otherwise unchanged:
#   _ref_tsv:     compute_and_sum_svd_mem_reduction, src/utils/TSVM_utils.py,
#                 github.com/AntoAndGar/task_singular_vectors (commit a6c9718)
#   _ref_iso_c, _ref_iso_cts: iso_c, iso_cts, src/utils/iso.py,
#                 github.com/danielm1405/iso-merging (commit d34010a)
# Their task vectors are objects with a ``.vector`` dict; the merged task vector is then
# added to the pretrained weights times alpha.


def _ref_tsv(task_vectors, config):
    sv_reduction = 1 / len(config.DATASETS)
    device = config.device
    with torch.no_grad():
        new_vector = {}
        for key in task_vectors[0].vector:
            new_vector[key] = {}
            for i, (task_vector, dataset) in enumerate(zip(task_vectors, config.DATASETS)):  # noqa: B007
                vec = task_vector.vector[key].to(device)
                if len(task_vector.vector[key].shape) == 2 and "text_projection" not in key:
                    u, s, v = torch.linalg.svd(vec, full_matrices=False)
                    if i == 0:
                        sum_u = torch.zeros_like(u, device=device)
                        sum_s = torch.zeros_like(s, device=device)
                        sum_v = torch.zeros_like(v, device=device)
                    reduced_index_s = int(s.shape[0] * sv_reduction)
                    sum_u[:, i * reduced_index_s : (i + 1) * reduced_index_s] = u[:, :reduced_index_s]
                    sum_s[i * reduced_index_s : (i + 1) * reduced_index_s] = s[:reduced_index_s]
                    sum_v[i * reduced_index_s : (i + 1) * reduced_index_s, :] = v[:reduced_index_s, :]
                else:
                    if i == 0:
                        new_vector[key] = vec.clone()
                    else:
                        new_vector[key] += (vec - new_vector[key]) / (i + 1)
            if len(task_vector.vector[key].shape) == 2 and "text_projection" not in key:
                u_u, s_u, v_u = torch.linalg.svd(sum_u, full_matrices=False)
                u_v, s_v, v_v = torch.linalg.svd(sum_v, full_matrices=False)
                new_vector[key] = torch.linalg.multi_dot((u_u, v_u, torch.diag(sum_s), u_v, v_v))
    return new_vector


def _ref_iso_c(task_vectors, config):
    device = config.device
    with torch.no_grad():
        new_vector = {}
        for key in task_vectors[0].vector:
            tvs = [task_vector.vector[key].to(device) for task_vector in task_vectors]
            new_vector[key] = sum(tvs) / len(tvs)
            if len(task_vectors[0].vector[key].shape) == 2 and "text_projection" not in key:
                new_vector[key] *= len(tvs)
                U, S, V = torch.linalg.svd(new_vector[key], full_matrices=False)
                S_mean = torch.ones_like(S) * S.mean()
                new_vector[key] = torch.linalg.multi_dot((U, torch.diag(S_mean), V))
    return new_vector


@torch.no_grad()
def _ref_iso_cts(task_vectors, config):
    device = config.device
    new_vector = {}
    for key in task_vectors[0].vector:
        shape_ = task_vectors[0].vector[key].shape
        is_2d_matrix = (len(shape_) == 2) and ("text_projection" not in key)
        if not is_2d_matrix:
            for i, (task_vector, dataset) in enumerate(zip(task_vectors, config.DATASETS)):  # noqa: B007
                vec = task_vector.vector[key].to(device)
                if i == 0:
                    new_vector[key] = vec.clone()
                else:
                    new_vector[key] += (vec - new_vector[key]) / (i + 1)
            continue
        combined_w = sum([task_vector.vector[key].to(device) for task_vector in task_vectors])
        common_space_index_s = int(min(shape_) * config.method.common_space_fraction)
        _task_specific_total_space_index_s = round((min(shape_) - common_space_index_s) / len(config.DATASETS)) * len(
            config.DATASETS
        )
        common_space_index_s = min(shape_) - _task_specific_total_space_index_s
        u, s, v = torch.linalg.svd(combined_w, full_matrices=False)
        common_space_u = u[:, :common_space_index_s]
        common_space_s = s[:common_space_index_s]
        common_space_v = v[:common_space_index_s, :]
        n_dims_per_task = int((min(shape_) - common_space_index_s) / len(config.DATASETS))
        for i, task_vector in enumerate(task_vectors):
            w = task_vector.vector[key].to(device)
            w_ts = w - common_space_u @ common_space_u.T @ w
            u_ts, s_ts, v_ts = torch.linalg.svd(w_ts, full_matrices=False)
            if i == 0:
                combined_space_u = torch.zeros_like(u_ts, device=device)
                combined_space_s = torch.zeros_like(s_ts, device=device)
                combined_space_v = torch.zeros_like(v_ts, device=device)
            combined_space_u[:, i * n_dims_per_task : (i + 1) * n_dims_per_task] = u_ts[:, :n_dims_per_task]
            combined_space_s[i * n_dims_per_task : (i + 1) * n_dims_per_task] = s_ts[:n_dims_per_task]
            combined_space_v[i * n_dims_per_task : (i + 1) * n_dims_per_task, :] = v_ts[:n_dims_per_task, :]
        n = len(config.DATASETS) * n_dims_per_task
        combined_space_u[:, n : n + common_space_index_s] = common_space_u
        combined_space_s[n : n + common_space_index_s] = common_space_s
        combined_space_v[n : n + common_space_index_s, :] = common_space_v
        u_combined_space_u, s_combined_space_u, v_combined_space_u = torch.linalg.svd(
            combined_space_u, full_matrices=False
        )
        u_combined_space_v, s_combined_space_v, v_combined_space_v = torch.linalg.svd(
            combined_space_v, full_matrices=False
        )
        combined_space_u = u_combined_space_u @ v_combined_space_u
        combined_space_v = u_combined_space_v @ v_combined_space_v
        combined_space_s = torch.ones_like(combined_space_s) * combined_space_s.mean()
        new_vector[key] = torch.linalg.multi_dot((combined_space_u, torch.diag(combined_space_s), combined_space_v))
    return new_vector


REFERENCES = {"tsv": _ref_tsv, "iso_c": _ref_iso_c, "iso_cts": _ref_iso_cts}


def reference_merge(name, states, base, alpha, common_space_fraction=0.8):
    """theta_0 + alpha * (reference merged task vector), per key, in float64."""
    task_vectors = [SimpleNamespace(vector={k: s[k].double() - base[k].double() for k in base}) for s in states]
    config = SimpleNamespace(
        device="cpu",
        DATASETS=[f"task{i}" for i in range(len(states))],
        num_tasks=len(states),
        method=SimpleNamespace(common_space_fraction=common_space_fraction),
    )
    merged = REFERENCES[name](task_vectors, config)
    return {k: base[k].double() + alpha * merged[k] for k in base}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape,tasks", [((8, 6), 3), ((5, 12), 2), ((16, 16), 4)])
def test_matches_reference_code_on_random_matrices(name, shape, tasks):
    base = {"w": rand(*shape, seed=100), "b": rand(shape[0], seed=101)}
    states = [
        {k: v + rand(*v.shape, seed=10 * i + j) * 0.1 for j, (k, v) in enumerate(base.items())} for i in range(tasks)
    ]
    alpha = 1.3
    expected = reference_merge(name, states, base, alpha)
    for key in base:
        out = merge(name, [s[key] for s in states], base[key], alpha=alpha)
        assert out.dtype == torch.float32 and out.shape == base[key].shape
        assert close(out, expected[key], atol=1e-5), (name, shape, key)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_iso_cts_matches_reference_code_for_common_space_fractions(fraction):
    base = {"w": rand(10, 7, seed=5)}
    states = [{"w": base["w"] + rand(10, 7, seed=20 + i)} for i in range(3)]
    expected = reference_merge("iso_cts", states, base, 1.0, common_space_fraction=fraction)
    out = merge("iso_cts", [s["w"] for s in states], base["w"], common_space_fraction=fraction)
    assert close(out, expected["w"], atol=1e-5)


# --- closed forms worked out by hand --------------------------------------------------------
# Two rank-1 task matrices on a 2x2 weight, base B:
#   orthogonal:  D1 = 3 u1 v1^T, u1 = (0.6, 0.8), v1 = e1;  D2 = 1 u2 v2^T, u2 = (-0.8, 0.6), v2 = e2
#                D1 = [[1.8, 0], [2.4, 0]], D2 = [[0, -0.8], [0, 0.6]]
#   correlated:  D1 = 3 e1 e1^T;  D2 = 1 u v2^T with u = (1, 1)/sqrt(2) (45 degrees from e1)

B = T([[0.5, -1.0], [2.0, 0.25]])
D1_ORTH, D2_ORTH = T([[1.8, 0.0], [2.4, 0.0]]), T([[0.0, -0.8], [0.0, 0.6]])
R2 = 1 / math.sqrt(2)
D1_CORR, D2_CORR = T([[3.0, 0.0], [0.0, 0.0]]), T([[0.0, R2], [0.0, R2]])


def test_orthogonal_rank_one_tasks_by_hand():
    tensors = [B + D1_ORTH, B + D2_ORTH]
    # TSV: k = floor(2/2) = 1 triplet each; U = [u1, u2] is already orthogonal (its own polar
    # factor), so the result is D1 + D2.
    assert close(merge("tsv", tensors, B), B + T([[1.8, -0.8], [2.4, 0.6]]))
    # Iso-C: D1 + D2 = U diag(3, 1) V^T with U = [u1, u2], V = I; flat spectrum (3 + 1)/2 = 2:
    # 2 U V^T = 2 [[0.6, -0.8], [0.8, 0.6]]; alpha = 0.5 halves it.
    iso = T([[1.2, -1.6], [1.6, 1.2]])
    assert close(merge("iso_c", tensors, B), B + iso)
    assert close(merge("iso_c", tensors, B, alpha=0.5), B + iso / 2)
    # Iso-CTS, r = 2, T = 2: fraction 0.8 -> c = int(1.6) = 1, p = round(0.5) = 0 (half to
    # even), c = 2: Iso-C. Fraction 0 -> c = 0, p = 1: each task's own triplet, s = (3, 1),
    # sigma = 2, U = [u1, u2]: again 2 U V^T.
    assert close(merge("iso_cts", tensors, B), B + iso)
    assert close(merge("iso_cts", tensors, B, common_space_fraction=0.0), B + iso)


def test_correlated_rank_one_tasks_by_hand():
    tensors = [B + D1_CORR, B + D2_CORR]
    # TSV: U = [e1, u] (columns at 0 and 45 degrees), V = [e1, e2] = I, S = diag(3, 1).
    # The closest orthogonal matrix to U turns both columns by 22.5 degrees apart from each
    # other, symmetrically: columns at -22.5 and 67.5 degrees, Q = [[c, s], [-s, c]] with
    # c = cos(pi/8), s = sin(pi/8). Result Q diag(3, 1) = [[3c, s], [-3s, c]].
    q = T([[C8, S8], [-S8, C8]])
    tsv = merge("tsv", tensors, B)
    assert close(tsv, B + T([[3 * C8, S8], [-3 * S8, C8]]))
    delta = (tsv - B).double()
    # its factors: delta = Q diag(3, 1) I, so delta^T delta = diag(9, 1) (orthonormal U)
    assert close(delta.T @ delta, torch.diag(T([9.0, 1.0])), atol=1e-5)
    # Iso-CTS with fraction 0: the same two triplets, sigma = (3 + 1)/2 = 2: 2 Q.
    assert close(merge("iso_cts", tensors, B, common_space_fraction=0.0), B + 2 * q)
    # Iso-C: M = D1 + D2 = [[3, r], [0, r]], r = 1/sqrt(2); for a 2x2 matrix with det > 0
    # the polar factor is (M + cof M)/(s1 + s2), cof M = [[d, -c], [-b, a]], so
    # sigma * polar = (s1 + s2)/2 * (M + cof M)/(s1 + s2) = (M + cof M)/2.
    expected = T([[3 + R2, R2], [-R2, 3 + R2]]) / 2
    assert close(merge("iso_c", tensors, B), B + expected)


def test_iso_cts_common_and_task_specific_by_hand():
    # 4x4, T = 2, fraction 0.5: c = 2, p = round(2/2) = 1, c = 4 - 2 = 2.
    # D1 = diag(5, 2, 1, 0), D2 = diag(5, 3, 0, 1.5); sum diag(10, 5, 1, 1.5):
    # common e1 (10), e2 (5); residuals diag(0, 0, 1, 0) and diag(0, 0, 0, 1.5).
    # Combined S = (1, 1.5, 10, 5), sigma = 17.5 / 4, directions e3, e4, e1, e2: sigma * I.
    base = torch.zeros(4, 4)
    d1, d2 = torch.diag(T([5.0, 2.0, 1.0, 0.0])), torch.diag(T([5.0, 3.0, 0.0, 1.5]))
    assert iso_cts_sizes(4, 2, 0.5) == (2, 1)
    assert close(merge("iso_cts", [d1, d2], base, common_space_fraction=0.5), 17.5 / 4 * torch.eye(4))
    # TSV: k = 2 each: D1 keeps e1 (5), e2 (2); D2 keeps e1 (5), e2 (3): U = [e1, e2, e1, e2]
    # (4 x 4, rank 2); its polar factor maps the pairs to (e1, e2)/sqrt(2) each, so
    # delta = (5 + 5)/2 e1 e1^T + (2 + 3)/2 e2 e2^T = diag(5, 2.5, 0, 0).
    assert close(merge("tsv", [d1, d2], base), torch.diag(T([5.0, 2.5, 0.0, 0.0])))


def test_rank_deficient_sum_gets_no_null_space_directions():
    # D1 = 3 e1 e1^T, D2 = e2 e2^T on 3x3: the sum has rank 2; sigma = (3 + 1 + 0)/3 over the
    # full spectrum (as the reference), but e3 (an arbitrary null direction, which the
    # reference would raise to sigma) gets nothing.
    base = torch.zeros(3, 3)
    d1, d2 = torch.diag(T([3.0, 0.0, 0.0])), torch.diag(T([0.0, 1.0, 0.0]))
    expected = 4 / 3 * torch.diag(T([1.0, 1.0, 0.0]))
    assert close(merge("iso_c", [d1, d2], base), expected)
    # Iso-CTS, fraction 1/3: c = 1 (e1, 3), p = 1: residuals 0 (dropped) and e2 (1): the same
    assert close(merge("iso_cts", [d1, d2], base, common_space_fraction=1 / 3), expected)


def test_iso_cts_sizes_follow_the_reference_and_stay_within_the_rank():
    assert iso_cts_sizes(10, 3, 0.8) == (7, 1)  # c = 8, round(2/3) = 1, c = 10 - 3
    assert iso_cts_sizes(768, 8, 0.8) == (616, 19)  # int(614.4) = 614, round(154/8) = 19
    assert iso_cts_sizes(6, 4, 1.0) == (6, 0)
    assert iso_cts_sizes(2, 3, 0.0) == (2, 0)  # reference: round(2/3) = 1 -> c = -1


# --- zero task vectors, weights, non-matrix tensors -----------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_member_equal_to_base_contributes_nothing_to_matrices(name):
    base = rand(6, 5, seed=1)
    experts = [base + rand(6, 5, seed=2 + i) for i in range(3)]
    without = merge(name, experts, base)
    with_base = merge(name, experts + [base.clone()], base)
    assert torch.isfinite(with_base).all()
    assert close(with_base, without, atol=1e-6)
    # only zero task vectors: the base itself
    assert torch.equal(merge(name, [base.clone(), base.clone()], base), base)
    # a single expert plus the base: TSV keeps all of it (k = rank), alpha scales it
    if name == "tsv":
        assert close(merge(name, [experts[0], base.clone()], base, alpha=0.5), base + (experts[0] - base) / 2)


@pytest.mark.parametrize("name", METHODS)
def test_non_matrix_tensors_get_the_weighted_task_arithmetic_average(name):
    base = T([1.0, 2.0, 3.0])
    a, b, c = T([2.0, 2.0, 1.0]), T([1.0, 5.0, 3.0]), base.clone()
    # deltas (1, 0, -2), (0, 3, 0), (0, 0, 0); mean (1/3, 1, -2/3); the base member counts
    assert close(merge(name, [a, b, c], base), T([4 / 3, 3.0, 7 / 3]))
    # weights (2, 1, 1): (2 (1, 0, -2) + (0, 3, 0)) / 4 = (0.5, 0.75, -1); alpha 2 doubles it
    assert close(merge(name, [a, b, c], base, w(2, 1, 1), alpha=2.0), T([2.0, 3.5, 1.0]))
    # scalars and (by default) convolution kernels likewise
    assert close(merge(name, [T(2.0), T(4.0)], T(1.0)), T(3.0))
    ka, kb, kbase = rand(4, 3, 2, seed=1), rand(4, 3, 2, seed=2), rand(4, 3, 2, seed=3)
    assert close(merge(name, [ka, kb], kbase), (ka + kb) / 2)


@pytest.mark.parametrize("name", METHODS)
def test_reshape_conv_merges_kernels_as_out_by_rest_matrices(name):
    ka, kb, kbase = rand(4, 3, 2, seed=1), rand(4, 3, 2, seed=2), rand(4, 3, 2, seed=3)
    out = merge(name, [ka, kb], kbase, reshape_conv=True)
    flat = merge(name, [ka.reshape(4, 6), kb.reshape(4, 6)], kbase.reshape(4, 6))
    assert out.shape == (4, 3, 2) and torch.equal(out, flat.reshape(4, 3, 2))
    assert not close(out, (ka + kb) / 2, atol=1e-3)


@pytest.mark.parametrize("name", METHODS)
def test_weights_scale_task_vectors_by_w_over_mean_w(name):
    base = rand(5, 4, seed=7)
    d1, d2 = rand(5, 4, seed=8), rand(5, 4, seed=9)
    weighted = merge(name, [base + d1, base + d2], base, w(3, 1))
    # w / mean(w) = (1.5, 0.5)
    assert close(weighted, merge(name, [base + 1.5 * d1, base + 0.5 * d2], base), atol=1e-5)
    # uniform weights of any size change nothing; a weight of 0 removes the member
    assert close(merge(name, [base + d1, base + d2], base, w(7, 7)), merge(name, [base + d1, base + d2], base))
    # (the mean over the positive weights: (2, 0, 1) -> (4/3, 0, 2/3))
    assert close(merge(name, [base + d1, base + d2], base, w(1, 0)), merge(name, [base + d1], base), atol=1e-5)
    three = merge(name, [base + d1, base + d2, base + d1], base, w(2, 0, 1))
    assert close(three, merge(name, [base + 4 / 3 * d1, base + 2 / 3 * d1], base), atol=1e-5)
    b1 = T([1.0, 1.0])
    assert close(merge(name, [b1 + T([3.0, 0.0]), b1 + T([0.0, 9.0])], b1, w(1, 0)), T([4.0, 1.0]))


@pytest.mark.parametrize("name", METHODS)
def test_options_and_inputs_checked(name):
    base, a = rand(3, 3), rand(3, 3, seed=1)
    assert get_spec(name).needs_base and not get_spec(name).elementwise
    with pytest.raises(ValueError, match="base"):
        merge(name, [a, a], None)
    with pytest.raises(ValueError, match="non-negative"):
        merge(name, [a, a], base, w(1, -1))
    with pytest.raises(ValueError, match="positive sum"):
        merge(name, [a, a], base, w(0, 0))
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        merge(name, [a, a], base, alpha=float("nan"))
    with pytest.raises(ValueError, match="reshape_conv"):
        merge(name, [a, a], base, reshape_conv="yes")
    with pytest.raises(ValueError, match="option device"):
        merge(name, [a, a], base, device="gpu0")
    assert torch.equal(merge(name, [a, base], base, device="cpu"), merge(name, [a, base], base))
    assert torch.equal(merge(name, [torch.zeros(0, 4)] * 2, torch.zeros(0, 4)), torch.zeros(0, 4))


def test_method_specific_options_checked():
    base, a = rand(3, 3), rand(3, 3, seed=1)
    for bad in [0, -0.1, 1.5, float("inf")]:
        with pytest.raises(ValueError, match=r"fraction must be None or in \(0, 1\]"):
            merge("tsv", [a, a], base, fraction=bad)
        if bad != 0:
            with pytest.raises(ValueError, match=r"common_space_fraction must be in \[0, 1\]"):
                merge("iso_cts", [a, a], base, common_space_fraction=bad)


def test_tsv_fraction_option_and_rank_below_task_count():
    base = torch.zeros(6, 6)
    d = [torch.diag(rand(6, seed=i).abs() + 1) for i in range(2)]
    # fraction 1: every task keeps all its triplets; diagonal tasks share U = V = I twice, and
    # the polar factor of [I, I] is [I, I]/sqrt(2): delta = (D1 + D2)/2
    assert close(merge("tsv", d, base, fraction=1.0), (d[0] + d[1]) / 2)
    # a 1 x n weight with 3 tasks: k = max(1, int(1/3)) = 1 (the reference keeps 0: the base);
    # the 1 x 3 concatenated U = (1, 1, 1) has polar factor (1, 1, 1)/sqrt(3); rows v_i with
    # s_i = |delta_i|; here v_i orthogonal: delta = sum_i s_i v_i / sqrt(3)
    rows = [T([[2.0, 0, 0]]), T([[0, 3.0, 0]]), T([[0, 0, 4.0]])]
    assert close(merge("tsv", rows, torch.zeros(1, 3)), T([[2.0, 3.0, 4.0]]) / math.sqrt(3))


# --- through the driver ---------------------------------------------------------------------


def _save(folder, state):
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "toy"}, f)
    return str(folder)


def _toy(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "enc.weight": torch.randn(6, 4, generator=g),
        "enc.bias": torch.randn(6, generator=g),
        "conv.weight": torch.randn(3, 2, 2, generator=g),
        "scale": torch.randn((), generator=g),
        "steps": torch.tensor([3, 1, 4], dtype=torch.int64),
    }


@pytest.mark.parametrize("name", METHODS)
def test_merge_models_end_to_end(name, tmp_path):
    states = [_toy(s) for s in (1, 2, 3)]
    base, *experts = [_save(tmp_path / f"m{i}", st) for i, st in enumerate(states)]
    out = merge_models(experts, tmp_path / "out", method=name, base=base, options={"alpha": 0.7}, progress=False)
    merged = load_file(os.path.join(out, "model.safetensors"))
    prov = json.load(open(os.path.join(out, "aode.json")))
    assert prov["method"] == name and prov["options"] == {"alpha": 0.7}
    assert set(merged) == set(states[0])
    direct = merge(name, [states[1]["enc.weight"], states[2]["enc.weight"]], states[0]["enc.weight"], alpha=0.7)
    assert torch.equal(merged["enc.weight"], direct)
    for key in ("enc.bias", "conv.weight", "scale"):
        expected = states[0][key] + 0.7 * ((states[1][key] + states[2][key]) / 2 - states[0][key])
        assert close(merged[key], expected), key
    assert torch.equal(merged["steps"], states[0]["steps"])
    # include_base: the original joins as a zero task vector; the matrix is unchanged
    out2 = merge_models(experts, tmp_path / "out2", method=name, base=base, include_base=True, progress=False)
    merged2 = load_file(os.path.join(out2, "model.safetensors"))
    plain = merge(name, [states[1]["enc.weight"], states[2]["enc.weight"]], states[0]["enc.weight"])
    assert close(merged2["enc.weight"], plain, atol=1e-6)
