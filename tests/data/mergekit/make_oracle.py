"""Regenerate the mergekit oracle outputs of tests/test_mergekit_parity.py (see NOTE.md).

Run with a SEPARATE environment that has mergekit (never the project's own)::

    python3 -m venv /work/venvs/mergekit && /work/venvs/mergekit/bin/pip install mergekit
    /work/venvs/mergekit/bin/python tests/data/mergekit/make_oracle.py

It writes, next to itself: ``inputs.safetensors`` (keys ``<model>/<tensor>``: the base and
three members), ``outputs.safetensors`` (keys ``<case>/<tensor>``) and ``cases.json`` (per
case: mergekit's method, the mergekit-pytorch YAML config it was run with, and the versions).
Every output is produced by the ``mergekit-pytorch`` command line (the raw-tensor
counterpart of ``mergekit-yaml``) on one safetensors file per model, and checked to be
bit-identical to mergekit's Python API ``mergekit.merge_methods.api.merge_state_dicts``.
"""

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version

import torch
import yaml
from safetensors.torch import load_file
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20240612
SHAPES = {"w": (6, 4), "b": (4,), "c": (3, 5, 2)}
MEMBERS = ["m0", "m1", "m2"]
W = [0.5, 1.0, 2.0]  # unequal weights; "ones" below for 1, 1, 1

# name -> (mergekit method, models in order, base model or None, per-model parameters,
#          global parameters)
CASES = {
    "linear_ones": ("linear", MEMBERS, None, {"weight": [1.0, 1.0, 1.0]}, {}),
    "linear_weighted": ("linear", MEMBERS, None, {"weight": W}, {"normalize": True}),
    "linear_unnormalized": ("linear", MEMBERS, None, {"weight": [0.6, 0.3, 1.1]}, {"normalize": False}),
    "task_arithmetic": ("task_arithmetic", MEMBERS, "base", {"weight": W}, {}),
    "task_arithmetic_normalize_lambda": (
        "task_arithmetic",
        MEMBERS,
        "base",
        {"weight": W},
        {"normalize": True, "lambda": 0.7},
    ),
    "ties_d05": ("ties", MEMBERS, "base", {"weight": [1.0, 1.0, 1.0], "density": [0.5] * 3}, {}),
    "ties_d03_unnormalized_lambda": (
        "ties",
        MEMBERS,
        "base",
        {"weight": W, "density": [0.3] * 3},
        {"normalize": False, "lambda": 1.2},
    ),
    "dare_linear_d1": ("dare_linear", MEMBERS, "base", {"weight": W, "density": [1.0] * 3}, {}),
    "dare_ties_d1": ("dare_ties", MEMBERS, "base", {"weight": W, "density": [1.0] * 3}, {}),
    "breadcrumbs_d06_g01": (
        "breadcrumbs",
        MEMBERS,
        "base",
        {"weight": [1.0, 1.0, 1.0], "density": [0.6] * 3, "gamma": [0.1] * 3},
        {},
    ),
    "breadcrumbs_d05_default_gamma": ("breadcrumbs", MEMBERS, "base", {"weight": W, "density": [0.5] * 3}, {}),
    "breadcrumbs_d08_g03_overlap": (
        "breadcrumbs",
        MEMBERS,
        "base",
        {"weight": W, "density": [0.8] * 3, "gamma": [0.3] * 3},
        {},
    ),
    "breadcrumbs_rescale_normalize_lambda": (
        "breadcrumbs",
        MEMBERS,
        "base",
        {"weight": W, "density": [0.5] * 3, "gamma": [0.2] * 3},
        {"rescale": True, "normalize": True, "lambda": 0.8},
    ),
    "breadcrumbs_d0": ("breadcrumbs", MEMBERS, "base", {"weight": W, "density": [0.0] * 3, "gamma": [0.1] * 3}, {}),
    "breadcrumbs_d1_gamma_ignored": (
        "breadcrumbs",
        MEMBERS,
        "base",
        {"weight": W, "density": [1.0] * 3, "gamma": [0.2] * 3},
        {},
    ),
    "breadcrumbs_ties_d06_g01": (
        "breadcrumbs_ties",
        MEMBERS,
        "base",
        {"weight": [1.0, 1.0, 1.0], "density": [0.6] * 3, "gamma": [0.1] * 3},
        {},
    ),
    "breadcrumbs_ties_normalize_lambda": (
        "breadcrumbs_ties",
        MEMBERS,
        "base",
        {"weight": W, "density": [0.5] * 3, "gamma": [0.1] * 3},
        {"normalize": True, "lambda": 1.3},
    ),
    "breadcrumbs_ties_rescale": (
        "breadcrumbs_ties",
        MEMBERS,
        "base",
        {"weight": W, "density": [0.4] * 3, "gamma": [0.15] * 3},
        {"rescale": True},
    ),
    "slerp_t03": ("slerp", ["m0", "m1"], "m0", {}, {"t": 0.3}),
    "model_stock": ("model_stock", MEMBERS, "base", {}, {}),
}


def make_inputs():
    g = torch.Generator().manual_seed(SEED)
    base = {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}
    models = {"base": base}
    for m in MEMBERS:
        models[m] = {k: base[k] + 0.5 * torch.randn(*s, generator=g) for k, s in SHAPES.items()}
    return models


def yaml_config(method, models, base, per_model, params, paths):
    entries = []
    for i, m in enumerate(models):
        entry = {"model": paths[m]}
        if per_model:
            entry["parameters"] = {k: v[i] for k, v in per_model.items()}
        entries.append(entry)
    config = {"merge_method": method, "models": entries, "dtype": "float32"}
    if base is not None:
        config["base_model"] = paths[base]
    if params:
        config["parameters"] = dict(params)
    return config


def run_cli(config, tmp, name):
    cfg_path = os.path.join(tmp, f"{name}.yml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(config, f)
    out = os.path.join(tmp, f"out_{name}")
    exe = os.path.join(os.path.dirname(sys.executable), "mergekit-pytorch")
    subprocess.run([exe, cfg_path, out, "--allow-crimes", "--quiet"], check=True, capture_output=True)
    result = {}
    for fname in sorted(os.listdir(out)):
        if fname.endswith(".safetensors"):
            result.update(load_file(os.path.join(out, fname)))
    return result


def run_api(method, models_state, models, base, per_model, params):
    from mergekit.merge_methods.api import merge_state_dicts

    ids = list(models) + ([base] if base is not None and base not in models else [])
    parameters = dict(params)
    for k, v in per_model.items():
        parameters[k] = {m: v[i] for i, m in enumerate(models)}
    return merge_state_dicts({m: models_state[m] for m in ids}, method, parameters=parameters, base=base)


def main():
    models_state = make_inputs()
    meta = {
        "mergekit_version": version("mergekit"),
        "torch_version": torch.__version__,
        "seed": SEED,
        "note": "outputs from the mergekit-pytorch CLI on one safetensors file per model (paths "
        "below are placeholders <model>.safetensors); identical to merge_state_dicts",
        "cases": {},
    }
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for m, state in models_state.items():
            paths[m] = os.path.join(tmp, f"{m}.safetensors")
            save_file(state, paths[m])
        for name, (method, models, base, per_model, params) in CASES.items():
            cli = run_cli(yaml_config(method, models, base, per_model, params, paths), tmp, name)
            api = run_api(method, models_state, models, base, per_model, params)
            for k in SHAPES:
                if not torch.equal(cli[k], api[k]):
                    raise SystemExit(f"{name}/{k}: mergekit-pytorch and merge_state_dicts disagree")
                outputs[f"{name}/{k}"] = cli[k].contiguous()
            short = {m: f"{m}.safetensors" for m in models_state}
            meta["cases"][name] = {
                "method": method,
                "models": models,
                "base": base,
                "per_model_parameters": per_model,
                "parameters": params,
                "mergekit_pytorch_yaml": yaml_config(method, models, base, per_model, params, short),
            }
    save_file({f"{m}/{k}": t for m, st in models_state.items() for k, t in st.items()}, f"{HERE}/inputs.safetensors")
    save_file(outputs, f"{HERE}/outputs.safetensors")
    with open(f"{HERE}/cases.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"mergekit {meta['mergekit_version']}: {len(CASES)} cases written to {HERE}")


if __name__ == "__main__":
    main()
