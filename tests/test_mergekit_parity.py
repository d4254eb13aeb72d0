"""Our merge methods against mergekit's own outputs (issue 12 item 5), and Model Breadcrumbs.

The oracle files in tests/data/mergekit/ were made by mergekit itself (``mergekit-pytorch``,
version in cases.json; see NOTE.md and make_oracle.py): three members and a base, tensors of
shapes [6, 4], [4], [3, 5, 2]. Each case is translated to our method and options below; where
mergekit's default differs from ours, the option is passed explicitly (MERGEKIT_DEFAULTS).
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save_file

from aode.merge import merge_models
from aode.merge.breadcrumbs import magnitude_outliers
from aode.merge.mergekit_config import SUPPORTED_METHODS
from aode.merge.registry import get_method
from aode.merge.registry import get_spec

DATA = os.path.join(os.path.dirname(__file__), "data", "mergekit")
TENSORS = ["w", "b", "c"]

# Our method for each mergekit method: the config reader's table (the outputs below check it).
OURS = SUPPORTED_METHODS

# mergekit's defaults where ours differ (an option a case leaves out must get mergekit's value).
MERGEKIT_DEFAULTS = {
    "ties": {"density": 1.0},  # ours: density 0.2 (mergekit: 1.0, no trimming)
    "dare_linear": {"density": 1.0},  # ours: density 0.5
    # ours: density 0.5 and normalize True (the disjoint mean); mergekit: 1.0 and False (the sum)
    "dare_ties": {"density": 1.0, "normalize": False},
}

# Cases that are not bit-exact, with the reason; all others must be torch.equal.
TOLERANCE = {
    # mergekit accumulates w_i * theta_i with addcmul_ (a fused multiply-add on CPU) from
    # zeros; ours rounds w_i * theta_i first: the last bit can differ (1 ulp in
    # linear_unnormalized; linear_weighted happens to be exact with this data).
    "linear_weighted": 1e-6,
    "linear_unnormalized": 1e-6,
    # mergekit computes the cosine in float32 with chunked norms; ours in float64 (1 ulp).
    "slerp_t03": 1e-6,
}


def load_oracle(folder=DATA):
    """(cases.json, inputs, outputs) of the mergekit oracle in ``folder`` (make_oracle.py's)."""
    with open(os.path.join(folder, "cases.json")) as f:
        meta = json.load(f)
    return (
        meta,
        load_file(os.path.join(folder, "inputs.safetensors")),
        load_file(os.path.join(folder, "outputs.safetensors")),
    )


META, INPUTS, OUTPUTS = load_oracle()


def translate(case):
    """(our method name, our options, members, weights, base id) for a mergekit case."""
    method = case["method"]
    per_model = case["per_model_parameters"]
    params = dict(MERGEKIT_DEFAULTS.get(method, {}))
    for key, value in per_model.items():
        if key == "weight":
            continue
        assert len(set(value)) == 1, "our options are one value for all members"
        params[key] = value[0]
    params.update(case["parameters"])
    if "lambda" in params:
        params["lam"] = params.pop("lambda")  # house name
    models = case["models"]
    base = case["base"]
    if method == "slerp":
        # mergekit's slerp goes from its base_model (t = 0) to the other model (t = 1); ours
        # from the first member to the second.
        assert models[0] == base
        base = None
    weights = torch.tensor(per_model.get("weight", [1.0] * len(models)), dtype=torch.float32)
    return OURS[method], params, models, weights, base


def run_ours(name, tensor):
    method, options, models, weights, base = translate(META["cases"][name])
    members = [INPUTS[f"{m}/{tensor}"] for m in models]
    base_t = INPUTS[f"{base}/{tensor}"] if base else None
    gen = torch.Generator().manual_seed(0)
    return get_method(method)(members, weights, base_t, gen, **options)


def test_oracle_covers_every_method():
    assert {c["method"] for c in META["cases"].values()} == set(OURS)
    assert META["mergekit_version"]


@pytest.mark.parametrize("name", sorted(META["cases"]))
def test_matches_mergekit(name):
    for tensor in TENSORS:
        ours = run_ours(name, tensor)
        want = OUTPUTS[f"{name}/{tensor}"]
        assert ours.dtype == torch.float32 and ours.shape == want.shape
        if name in TOLERANCE:
            tol = TOLERANCE[name]
            assert torch.allclose(ours, want, rtol=tol, atol=tol), (name, tensor, (ours - want).abs().max())
        else:
            assert torch.equal(ours, want), (name, tensor, (ours - want).abs().max())


def test_oracle_cases_are_not_trivial():
    # Breadcrumbs cases must differ from plain task arithmetic (something was dropped), except
    # the density-1 one, where mergekit ignores gamma.
    ta = OUTPUTS["dare_linear_d1/w"]  # = task arithmetic with the same weights W
    assert torch.equal(ta, OUTPUTS["task_arithmetic/w"])
    assert torch.equal(OUTPUTS["breadcrumbs_d1_gamma_ignored/w"], ta)
    for name in [
        "breadcrumbs_d05_default_gamma",
        "breadcrumbs_d08_g03_overlap",
        "breadcrumbs_rescale_normalize_lambda",
    ]:
        assert not torch.allclose(OUTPUTS[f"{name}/w"], ta)
    assert torch.equal(OUTPUTS["breadcrumbs_d0/w"], INPUTS["base/w"])


def test_breadcrumbs_driver_on_folders(tmp_path):
    """The registered method through merge_models (folders, per-tensor calls) = mergekit."""
    folders = {}
    for m in ["base", "m0", "m1", "m2"]:
        folder = tmp_path / m
        folder.mkdir()
        save_file({t: INPUTS[f"{m}/{t}"] for t in TENSORS}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
        folders[m] = str(folder)
    for name in ["breadcrumbs_rescale_normalize_lambda", "breadcrumbs_ties_normalize_lambda"]:
        method, options, models, weights, base = translate(META["cases"][name])
        out = tmp_path / f"out_{name}"
        merge_models(
            [folders[m] for m in models],
            str(out),
            method=method,
            weights=weights.tolist(),
            base=folders[base],
            options=options,
            progress=False,
        )
        merged = load_file(str(out / "model.safetensors"))
        for t in TENSORS:
            assert torch.equal(merged[t], OUTPUTS[f"{name}/{t}"]), (name, t)


# --- breadcrumbs: hand computations ----------------------------------------------------


def test_magnitude_outliers_hand_computed():
    d = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 1.0, 0.05, -0.4, 3.0, 0.6])
    # n = 10, keep int(0.5 * 10) = 5, drop top int(0.1 * 10) = 1 (-5) and the 4 smallest.
    want = torch.tensor([0, 0, 0, 2.0, 0, 1.0, 0, -0.4, 3.0, 0.6])
    assert torch.equal(magnitude_outliers(d, 0.5, 0.1), want)
    # density 0.8 + gamma 0.3 > 1: keep 8, so only 2 outliers (-5, 3) can go, none at the bottom.
    want = torch.tensor([0.1, 0, 0.3, 2.0, -0.2, 1.0, 0.05, -0.4, 0, 0.6])
    assert torch.equal(magnitude_outliers(d, 0.8, 0.3), want)
    # gamma 0: plain magnitude pruning to 3 entries.
    assert torch.equal(magnitude_outliers(d, 0.3, 0.0), torch.tensor([0, -5.0, 0, 2.0, 0, 0, 0, 0, 3.0, 0]))
    # density 1 returns the delta itself, whatever gamma; int(0.05 * 10) = 0 entries kept.
    assert magnitude_outliers(d, 1.0, 0.5) is d
    assert torch.equal(magnitude_outliers(d, 0.05, 0.1), torch.zeros(10))
    # rescale: L1 norm of the kept (3 + 2 + 1 + 0.6 + 0.4 = 7) scaled to that of d (12.65).
    r = magnitude_outliers(d, 0.5, 0.1, rescale=True)
    assert torch.allclose(r, torch.tensor([0, 0, 0, 2.0, 0, 1.0, 0, -0.4, 3.0, 0.6]) * (12.65 / 7.0))
    assert torch.allclose(r.abs().sum(), d.abs().sum())


def test_magnitude_outliers_ties_broken_by_position_and_shape_kept():
    d = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    # keep 2, drop 1 outlier: equal magnitudes rank by position (earlier = larger), so the
    # first is the outlier and the next two are kept.
    assert torch.equal(magnitude_outliers(d, 0.5, 0.25), torch.tensor([[0.0, -1.0], [1.0, 0.0]]))


def test_breadcrumbs_hand_computed():
    base = torch.zeros(5)
    a = torch.tensor([10.0, 1.0, -2.0, 0.1, 3.0])  # keep 3 of 5, drop 1 outlier: [0, 1, -2, 0, 3]
    b = torch.tensor([-1.0, 4.0, 0.2, -3.0, -2.0])  # outlier 4 dropped, keep 3, 2, 1: [-1, 0, 0, -3, -2]
    w = torch.tensor([1.0, 2.0])
    ta = torch.tensor([0.0, 1.0, -2.0, 0.0, 3.0]) + 2 * torch.tensor([-1.0, 0.0, 0.0, -3.0, -2.0])
    out = get_method("breadcrumbs")([a, b], w, base, None, density=0.6, gamma=0.2)
    assert torch.equal(out, ta)
    out = get_method("breadcrumbs")([a, b], w, base, None, density=0.6, gamma=0.2, lam=0.5, normalize=True)
    assert torch.allclose(out, 0.5 * ta / 3)
    # TIES on the masked deltas (weighted: [-2, 1, -2, -6, -1] elects -, +, -, -, -):
    # element 0: only b (-2) agrees; 1: a (1); 2: a (-2); 3: b (-6); 4: b (-4), a (+3) disagrees.
    out = get_method("breadcrumbs_ties")([a, b], w, base, None, density=0.6, gamma=0.2)
    assert torch.equal(out, torch.tensor([-2.0, 1.0, -2.0, -6.0, -4.0]))
    out = get_method("breadcrumbs_ties")([a, b], w, base, None, density=0.6, gamma=0.2, normalize=True)
    assert torch.equal(out, torch.tensor([-1.0, 1.0, -2.0, -3.0, -2.0]))


def test_breadcrumbs_registry_and_options():
    for name in ["breadcrumbs", "breadcrumbs_ties"]:
        spec = get_spec(name)
        assert spec.needs_base and not spec.elementwise
        x = torch.ones(3)
        with pytest.raises(ValueError, match="base"):
            get_method(name)([x], torch.ones(1), None, None)
        with pytest.raises(ValueError, match="density"):
            get_method(name)([x], torch.ones(1), x, None, density=1.5)
        with pytest.raises(ValueError, match="gamma"):
            get_method(name)([x], torch.ones(1), x, None, density=0.5, gamma=-0.1)


# --- normalize options of average and task_arithmetic -----------------------------------


def test_average_normalize_false_is_weighted_sum():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    out = get_method("average")([a, b], torch.tensor([1.0, 3.0]), None, None, normalize=False)
    assert torch.equal(out, torch.tensor([10.0, -1.0]))
    # a zero weight sum is fine unnormalised, an error normalised
    assert torch.equal(get_method("average")([a, b], torch.tensor([1.0, -1.0]), None, None, normalize=False), a - b)
    with pytest.raises(ValueError, match="sum to zero"):
        get_method("average")([a, b], torch.tensor([1.0, -1.0]), None, None)


def test_task_arithmetic_normalize():
    base = torch.tensor([1.0, 1.0])
    a, b = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 4.0])  # deltas [1, 0], [0, 3]
    ta = get_method("task_arithmetic")
    assert torch.equal(ta([a, b], torch.tensor([1.0, 3.0]), base, None, normalize=True), torch.tensor([1.25, 3.25]))
    assert torch.equal(ta([a, b], torch.tensor([1.0, 3.0]), base, None), torch.tensor([2.0, 10.0]))
    # mergekit's guard: a weight sum below 1e-8 leaves the sum undivided
    assert torch.equal(ta([a, b], torch.tensor([1.0, -1.0]), base, None, normalize=True), torch.tensor([2.0, -2.0]))
