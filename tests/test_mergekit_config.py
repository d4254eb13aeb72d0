"""Merging with a mergekit YAML config (aode.merge.mergekit_config; issue 13 item 1).

Oracles: mergekit 0.1.5's own outputs for its own configs (tests/data/mergekit/: one case per
method; tests/data/mergekit_config/: filter rules, top-level parameters, base_model listed or
implicit, mergekit's defaults). Each config is run through our reader and merge_models on
model folders holding the same tensors; outputs must be bit-identical, or within one float32
ulp where the summation order differs (named below with the reason). The recipe's
``--mergekit_config`` and the standalone command line are run in-process through their
``__main__`` blocks (exit code 2 and no output folder on a bad config).
"""

import copy
import json
import os
import runpy
import sys

import pytest
import torch
import yaml
from conftest import perturbed_copy
from safetensors.torch import load_file
from safetensors.torch import save_file
from test_mergekit_parity import load_oracle

from aode.merge import merge_models
from aode.merge.mergekit_config import MergekitConfigError
from aode.merge.mergekit_config import main as mergekit_main
from aode.merge.mergekit_config import prepare_merge
from aode.merge.mergekit_config import read_mergekit_config
from aode.merge.mergekit_config import weight_rules_for

DATA = os.path.join(os.path.dirname(__file__), "data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "average", "merge.py")
ORACLES = {"mergekit": os.path.join(DATA, "mergekit"), "mergekit_config": os.path.join(DATA, "mergekit_config")}

# Cases allowed rtol = atol = 1e-6 (as tests/test_mergekit_parity.py; values are O(1), so a
# few float32 ulps of the summands), with the reason; all others must be torch.equal.
# Measured: 1 ulp of the result, except where a weighted sum cancels to near zero
# (linear_unnormalized, linear_base_implicit_global_weight: |diff| <= 4.8e-7) and slerp (<= 6e-8).
CLOSE = {
    # mergekit's linear accumulates w_i * theta_i with addcmul_ (fused multiply-add) from zeros;
    # ours rounds each product first (see tests/test_mergekit_parity.py).
    "mergekit/linear_weighted",
    "mergekit/linear_unnormalized",
    "mergekit_config/linear_base_listed",  # also: ours weighs the base last, mergekit in its place
    "mergekit_config/linear_base_implicit_global_weight",
    "mergekit_config/linear_weight_filters",
    "mergekit_config/linear_weight_filters_exact",
    # slerp: mergekit's cosine in float32 with chunked norms, ours in float64; with t from
    # filter rules ours takes t = w_2 / (w_1 + w_2) from float32 weights [1 - t, t].
    "mergekit/slerp_t03",
    "mergekit_config/slerp_t_filters_base_second",
    "mergekit_config/slerp_base_implicit",
}


def _load(name):
    return load_oracle(ORACLES[name])


META = {name: _load(name) for name in ORACLES}
ALL_CASES = sorted(f"{o}/{c}" for o, (meta, _, _) in META.items() for c in meta["cases"])


def _config(oracle, case):
    """The case's mergekit config as mergekit ran it, model placeholders unresolved."""
    meta = META[oracle][0]["cases"][case]
    config = meta["mergekit_pytorch_yaml"] if oracle == "mergekit" else meta
    config = copy.deepcopy(config)
    strip = lambda ref: ref[: -len(".safetensors")] if ref.endswith(".safetensors") else ref  # noqa: E731
    for entry in config["models"]:
        entry["model"] = strip(entry["model"])
    if config.get("base_model"):
        config["base_model"] = strip(config["base_model"])
    return config


def _with_folders(config, folders):
    config = copy.deepcopy(config)
    for entry in config["models"]:
        entry["model"] = folders[entry["model"]]
    if config.get("base_model"):
        config["base_model"] = folders[config["base_model"]]
    return config


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One model folder (model.safetensors + config.json) per oracle model."""
    out = {}
    for oracle, (_, inputs, _) in META.items():
        root = tmp_path_factory.mktemp(oracle)
        out[oracle] = {}
        for model in sorted({k.split("/", 1)[0] for k in inputs}):
            folder = root / model
            folder.mkdir()
            state = {k.split("/", 1)[1]: t for k, t in inputs.items() if k.startswith(model + "/")}
            save_file(state, str(folder / "model.safetensors"))
            (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
            out[oracle][model] = str(folder)
    return out


def _assert_matches(ours, want, close, what):
    assert ours.dtype == want.dtype == torch.float32 and ours.shape == want.shape, what
    if close:
        assert torch.allclose(ours, want, rtol=1e-6, atol=1e-6), (what, (ours - want).abs().max())
    else:
        assert torch.equal(ours, want), (what, (ours - want).abs().max())


# --- (1) parity with mergekit's outputs -------------------------------------------------


@pytest.mark.parametrize("key", ALL_CASES)
def test_config_matches_mergekit(key, folders, tmp_path):
    oracle, case = key.split("/")
    outputs = META[oracle][2]
    plan = read_mergekit_config(_with_folders(_config(oracle, case), folders[oracle]))
    out = merge_models(output=str(tmp_path / "out"), progress=False, **prepare_merge(plan))
    merged = load_file(os.path.join(out, "model.safetensors"))
    names = sorted(k.split("/", 1)[1] for k in outputs if k.startswith(case + "/"))
    assert sorted(merged) == names
    for name in names:
        _assert_matches(merged[name], outputs[f"{case}/{name}"], key in CLOSE, (key, name))


def test_every_supported_method_is_covered():
    from aode.merge.mergekit_config import SUPPORTED_METHODS

    methods = {_config(*k.split("/"))["merge_method"] for k in ALL_CASES}
    assert methods == set(SUPPORTED_METHODS)


def test_weight_rules_compact_and_exact(folders):
    """Filter rules become ``*filter*`` patterns when one ordered list reproduces every
    tensor's weights; otherwise one exact-name rule per tensor that differs."""
    f = folders["mergekit_config"]
    kw = prepare_merge(read_mergekit_config(_with_folders(_config("mergekit_config", "linear_weight_filters"), f)))
    assert kw["weights"] == [1.0, 3.0, 1.0] and kw["weight_rules"] == [["*self_attn*", [2.0, 0.5, 1.0]]]
    kw = prepare_merge(
        read_mergekit_config(_with_folders(_config("mergekit_config", "linear_weight_filters_exact"), f))
    )
    # attn+linear_q: m0 2 (attn first), m1 5 (linear_q first); attn only: 2, 7; linear_q only: 3, 5
    rules = dict((p, w) for p, w in kw["weight_rules"])
    assert rules["encoder.layers.0.self_attn.linear_q.weight"] == [2.0, 5.0]
    assert rules["encoder.layers.0.self_attn.linear_out.weight"] == [2.0, 7.0]
    assert rules["decoder.linear_q.weight"] == [3.0, 5.0]
    assert kw["weights"] == [1.0, 1.0]  # feed_forward: the defaults
    # slerp's t by filter: weights [1 - t, t], the base (t = 0 end) first
    kw = prepare_merge(
        read_mergekit_config(_with_folders(_config("mergekit_config", "slerp_t_filters_base_second"), f))
    )
    assert kw["members"] == [f["m1"], f["m0"]] and kw["options"] == {}
    assert kw["weight_rules"] == [["*self_attn*", [0.8, 0.2]]]
    assert kw["weights"] == pytest.approx([0.3, 0.7])
    # a name with fnmatch's special characters is escaped
    plan = read_mergekit_config({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}]})
    plan.weight_chains = [[type(plan.weight_chains[0][0])("x[1]", 2.0), type(plan.weight_chains[0][0])(None, 1.0)]]
    weights, rules = weight_rules_for(plan, ["a.x[1].w", "a.x1.w", "b"])
    assert weights == [1.0] and rules == [["*x[[]1]*", [2.0]]]


# --- (2) mergekit's defaults, not ours ------------------------------------------------


def _plan(method, base=True, parameters=None, per_model=None, n=2):
    weight = {} if method == "model_stock" else {"weight": 1.0}  # mergekit's model_stock has no weight
    models = [{"model": f"m{i}", "parameters": {**weight, **(per_model or {})}} for i in range(n)]
    config = {"merge_method": method, "models": models}
    if base:
        config["base_model"] = "base"
    if parameters:
        config["parameters"] = parameters
    return read_mergekit_config(config)


def test_defaults_are_mergekits():
    assert _plan("linear", base=False).options == {"normalize": True}
    assert _plan("task_arithmetic").options == {"lam": 1.0, "normalize": False}
    assert _plan("ties").options == {"density": 1.0, "lam": 1.0, "normalize": True}
    assert _plan("dare_linear").options == {"density": 1.0, "lam": 1.0, "rescale": True}
    assert _plan("dare_ties").options == {"density": 1.0, "lam": 1.0, "rescale": True, "normalize": False}
    want = {"density": 1.0, "gamma": 0.01, "lam": 1.0, "normalize": False, "rescale": False}
    assert _plan("breadcrumbs").options == want and _plan("breadcrumbs_ties").options == want
    assert _plan("model_stock", n=3).options == {}
    # given values win; lambda is our lam; per-model density equal everywhere is one option
    plan = _plan("ties", parameters={"lambda": 0.5, "normalize": False}, per_model={"density": 0.3})
    assert plan.options == {"density": 0.3, "lam": 0.5, "normalize": False}
    # the same config without normalize: mergekit's linear normalises, task_arithmetic does not
    for method, normalize in (("linear", True), ("task_arithmetic", False)):
        assert _plan(method, base=method != "linear").options["normalize"] is normalize


def test_base_model_mapping():
    with pytest.raises(MergekitConfigError, match="'weight' of model 'base' is missing"):
        _plan("linear", base=True)  # mergekit adds the base to linear's models: it needs a weight
    plan = _plan("linear", base=True, parameters={"weight": 0.5})
    assert plan.include_base and plan.base == "base" and plan.members == ["m0", "m1"]
    plan = _plan("ties")
    assert not plan.include_base and plan.base == "base"
    config = {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "m0", "parameters": {"weight": 2}}],
    }
    plan = read_mergekit_config(config)
    assert plan.members == ["m0"] and plan.base == "base" and not plan.include_base


# --- (3) refused, with the key named ---------------------------------------------------


BASIC = {
    "merge_method": "ties",
    "base_model": "base",
    "models": [{"model": "m0", "parameters": {"weight": 1.0}}, {"model": "m1", "parameters": {"weight": 1.0}}],
}


def _with(**changes):
    config = copy.deepcopy(BASIC)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def _models(*params):
    return [{"model": f"m{i}", "parameters": p} for i, p in enumerate(params)]


@pytest.mark.parametrize(
    "config, message",
    [
        (_with(merge_method="della"), "'della' is a mergekit method that is not available here; supported"),
        (_with(merge_method="nuslerp"), "ties \\(ours: ties\\)"),
        (_with(merge_method="tise"), "merge_method 'tise' is unknown"),
        (_with(slices=[{"sources": []}]), "slices .* we merge whole models"),
        (_with(modules={"text": {}}), "modules"),
        (_with(paramters={"lambda": 1}), "unknown mergekit config key 'paramters' \\(did you mean 'parameters'"),
        (
            _with(models=_models({"weight": 1, "density": 0.5}, {"weight": 1, "density": 0.3})),
            "parameter 'density' takes the values \\[0.3, 0.5\\]",
        ),
        (
            _with(models=_models({"weight": 1, "density": 0.5}, {"weight": 1})),
            "parameter 'density' takes the values \\[0.5, 1.0\\]",  # m1 gets mergekit's default 1.0
        ),
        (
            _with(parameters={"density": [{"filter": "attn", "value": 0.3}, {"value": 0.5}]}),
            "'density' takes the values",
        ),
        (_with(models=_models({"weight": [0.2, 1.0]}, {"weight": 1})), "models\\[0\\].parameters.weight: the gradient"),
        (_with(models=_models({"weight": 1, "epsilon": 0.1}, {"weight": 1})), "unknown parameter 'epsilon'"),
        (_with(parameters={"t": 0.5}), "unknown parameter 't' for mergekit's ties"),
        (_with(models=_models({"weight": 1, "lambda": 2}, {"weight": 1})), "'lambda' is a global parameter"),
        (_with(models=_models({"weight": 1}, {"density": 0.5})), "parameter 'weight' of model 'm1' is missing"),
        (_with(base_model=None), "base_model is missing"),
        (_with(parameters={"rescale": True}), "rescale: true is not supported for ties"),
        (_with(merge_method="dare_linear", parameters={"normalize": True}), "normalize: true is not supported"),
        (_with(merge_method="model_stock", parameters={"filter_wise": True}), "filter_wise"),
        (_with(merge_method="slerp", parameters={"t": 0.5}, models=_models({}, {}, {})), "exactly one other"),
        (_with(merge_method="slerp", models=_models({})), "parameters.t is missing"),
        (_with(dtype="float64"), "computes in float32"),
        (_with(dtype="int4"), "dtype: unknown dtype"),
        (_with(tokenizer_source="union"), "tokenizer_source: union"),
        (_with(tokenizer={"source": "union"}), "tokenizer"),
        (_with(models=[{"model": "m0+lora"}, {"model": "m1"}]), "model\\+lora"),
        (_with(models=[{"model": "m0", "parameters": {"weight": 1}}] * 2), "listed twice"),
        (_with(models=[{"model": "m0", "weights": 1}]), "unknown key\\(s\\) \\['weights'\\]"),
        (_with(parameters={"lambda": "much"}), "parameters.lambda: expected a float"),
    ],
)
def test_refused_with_the_key_named(config, message):
    with pytest.raises(MergekitConfigError, match=message):
        read_mergekit_config(config)


def test_refused_on_the_members(folders, tmp_path):
    f = folders["mergekit_config"]
    config = _with_folders(_config("mergekit_config", "ties_defaults"), f)
    with pytest.raises(MergekitConfigError, match="out_dtype: bfloat16 but the members' tensors are float32"):
        prepare_merge(read_mergekit_config({**config, "out_dtype": "bfloat16"}))
    # a weight rule leaving a tensor without weight (no catch-all, no global weight)
    config["models"][0]["parameters"]["weight"] = [{"filter": "self_attn", "value": 2.0}]
    with pytest.raises(MergekitConfigError, match="'weight' of model .* is not given for tensor 'decoder.linear_q"):
        prepare_merge(read_mergekit_config(config))
    # a member of another architecture: the driver's config check, before any work
    other = tmp_path / "other"
    other.mkdir()
    save_file(load_file(os.path.join(f["m0"], "model.safetensors")), str(other / "model.safetensors"))
    (other / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    config = _with_folders(_config("mergekit_config", "ties_defaults"), {**f, "m2": str(other)})
    with pytest.raises(MergekitConfigError, match="config field 'model_type' differs: 'toy' .* 'whisper'"):
        prepare_merge(read_mergekit_config(config))


def test_standalone_command_line(folders, tmp_path, capsys):
    f = folders["mergekit"]
    config = _with_folders(_config("mergekit", "ties_d05"), f)
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "merged"
    assert mergekit_main([str(path), str(out), "--quiet"]) == 0
    merged = load_file(str(out / "model.safetensors"))
    assert torch.equal(merged["w"], META["mergekit"][2]["ties_d05/w"])
    assert json.load(open(out / "aode.json"))["options"] == {"density": 0.5, "lam": 1.0, "normalize": True}
    assert mergekit_main([str(path), str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({**config, "slices": [{"sources": []}]}))
    assert mergekit_main([str(bad), str(tmp_path / "never")]) == 2
    assert "slices" in capsys.readouterr().err and not (tmp_path / "never").exists()
    # python -m runs the same main
    sys_argv, module = sys.argv, sys.modules.pop("aode.merge.mergekit_config")
    sys.argv = ["mergekit_config", str(path), str(out), "--overwrite", "--quiet"]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_module("aode.merge.mergekit_config", run_name="__main__")
    finally:
        sys.argv, sys.modules["aode.merge.mergekit_config"] = sys_argv, module
    assert done.value.code == 0


# --- (4) the recipe's command line -------------------------------------------------------


def _recipe(*argv):
    """recipes/average/merge.py run as a script: its exit code (0 when it returns)."""
    sys_argv = sys.argv
    sys.argv = [RECIPE, *argv]
    try:
        runpy.run_path(RECIPE, run_name="__main__")
    except SystemExit as done:
        return done.code
    finally:
        sys.argv = sys_argv
    return 0


@pytest.fixture(scope="module")
def parakeets(tiny_parakeet, tmp_path_factory):
    root = tmp_path_factory.mktemp("mk_recipe")
    experts = {n: perturbed_copy(tiny_parakeet, str(root / n), seed=i, scale=0.1) for i, n in enumerate("ab")}
    return root, experts


def _hparams(root, name, original, experts):
    # the shipped hparams/aode.yaml's style; its merge keys are replaced by the mergekit config
    path = root / f"{name}.yaml"
    path.write_text(
        f"""
title: AoDE
seed: 0
output_folder: {root / name}
original: {original}
original_name: Pretrained
experts:
    A: {experts["a"]}
    B: {experts["b"]}
    C: /nonexistent/expert_c
weights: null
include_original: False
method: average
method_options: {{}}
weight_rules: null
test_sets: {{}}
forgetting_sets: null
expert_of_test_set: {{}}
evaluate_experts: True
merged_name: AoDE
device: cpu
progressbar: False
"""
    )
    return str(path)


def test_recipe_with_mergekit_config(parakeets, tiny_parakeet, capsys):
    root, experts = parakeets
    config = {
        "merge_method": "task_arithmetic",
        "base_model": tiny_parakeet,
        "models": [
            {
                "model": experts["a"],
                "parameters": {"weight": [{"filter": "feed_forward", "value": 0.3}, {"value": 0.6}]},
            },
            {"model": experts["b"]},
        ],
        "parameters": {"weight": 0.4, "lambda": 0.5},
        "dtype": "float32",
    }
    mk = root / "merge.yml"
    mk.write_text(yaml.safe_dump(config))
    code = _recipe(_hparams(root, "ta", "/nonexistent/original", experts), "--mergekit_config", str(mk))
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "no test sets named" in capsys.readouterr().out
    folder = root / "ta" / "merged"
    merged = load_file(str(folder / "model.safetensors"))
    a, b, base = (load_file(os.path.join(p, "model.safetensors")) for p in (experts["a"], experts["b"], tiny_parakeet))
    for name, wa in (
        ("encoder.layers.1.feed_forward1.linear1.weight", 0.3),
        ("encoder.layers.0.self_attn.q_proj.weight", 0.6),
    ):
        want = base[name] + 0.5 * (wa * (a[name] - base[name]) + 0.4 * (b[name] - base[name]))
        torch.testing.assert_close(merged[name], want, rtol=1e-6, atol=1e-6)
    record = json.load(open(folder / "aode.json"))
    assert record["method"] == "task_arithmetic" and record["options"] == {"lam": 0.5, "normalize": False}
    assert record["base"] == os.path.abspath(tiny_parakeet) and record["weights"] == pytest.approx([0.6, 0.4])
    assert record["weight_rules"][0][0] == "*feed_forward*"
    assert record["weight_rules"][0][1] == pytest.approx([0.3, 0.4])


@pytest.mark.parametrize(
    "config, extra, message",
    [
        ({"merge_method": "della"}, [], "merge_method 'della'"),
        ({"slices": [{"sources": []}]}, [], "slices"),
        ({"paramters": {}}, [], "unknown mergekit config key 'paramters'"),
        ({"parameters": {"density": 0.5}, "_densities": (0.5, 0.3)}, [], "parameter 'density' takes the values"),
        ({}, ["--method", "ties"], "--method cannot be given with it"),
        ({"out_dtype": "bfloat16"}, [], "out_dtype"),
        ({"base_model": "/nonexistent/base"}, [], "relative to the working directory"),
    ],
)
def test_recipe_refuses_before_any_work(parakeets, tiny_parakeet, capsys, config, extra, message):
    root, experts = parakeets
    densities = config.pop("_densities", (None, None))
    models = []
    for key, d in zip("ab", densities):
        params = {"weight": 1.0} if d is None else {"weight": 1.0, "density": d}
        models.append({"model": experts[key], "parameters": params})
    mk = root / "bad.yml"
    mk.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": tiny_parakeet, "models": models, **config}))
    name = "bad_" + message[:8].replace(" ", "_").replace("'", "").replace("-", "")
    code = _recipe(_hparams(root, name, tiny_parakeet, experts), "--mergekit_config", str(mk), *extra)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (root / name).exists()
