"""Regenerate the mergekit oracle of tests/test_mergekit_config.py (see NOTE.md in this folder).

Run with a SEPARATE environment that has mergekit (never the project's own)::

    python3 -m venv /work/venvs/mergekit && /work/venvs/mergekit/bin/pip install mergekit
    /work/venvs/mergekit/bin/python tests/data/mergekit_config/make_oracle.py

Writes, next to itself: ``inputs.safetensors`` (keys ``<model>/<tensor>``: a base and three
members with tensor names shaped like an encoder's, so that mergekit's ``filter`` rules select
parts of the model), ``outputs.safetensors`` (keys ``<case>/<tensor>``) and ``cases.json``
(per case the mergekit config, models written as the placeholders ``base``, ``m0``, ...).
Each output is what the ``mergekit-pytorch`` command line (mergekit-yaml's raw-tensor
counterpart: same configuration format for ``models:`` merges, same parameter resolution and
merge methods) wrote for that config, one safetensors file per model.
"""

import copy
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
SEED = 20250113
SHAPES = {
    "encoder.layers.0.self_attn.linear_q.weight": (4, 3),
    "encoder.layers.0.self_attn.linear_out.weight": (3, 4),
    "encoder.layers.0.feed_forward.linear1.weight": (5, 3),
    "encoder.layers.0.feed_forward.linear1.bias": (5,),
    "decoder.linear_q.weight": (3, 3),
}
MODELS = ["base", "m0", "m1", "m2"]


def model(name, **parameters):
    entry = {"model": name}
    if parameters:
        entry["parameters"] = parameters
    return entry


def rules(*pairs, default=None):
    out = [{"filter": f, "value": v} for f, v in pairs]
    if default is not None:
        out.append({"value": default})
    return out


# name -> mergekit config (models as placeholders; dtype float32 is added to each)
CASES = {
    # linear: base_model listed in the middle (averaged in with its own weight)
    "linear_base_listed": {
        "merge_method": "linear",
        "base_model": "base",
        "models": [model("m0", weight=1.0), model("base", weight=0.5), model("m1", weight=2.0)],
    },
    # linear: base_model not listed: mergekit adds it, weight from the top-level parameters
    "linear_base_implicit_global_weight": {
        "merge_method": "linear",
        "base_model": "base",
        "models": [model("m0", weight=1.3), model("m1")],
        "parameters": {"weight": 0.7, "normalize": False},
    },
    # linear: weights by tensor-name filters (compact weight_rules)
    "linear_weight_filters": {
        "merge_method": "linear",
        "models": [
            model("m0", weight=rules(("self_attn", 2.0), default=1.0)),
            model("m1", weight=rules(("self_attn", 0.5), default=3.0)),
            model("m2", weight=1.0),
        ],
        "out_dtype": "float32",
    },
    # linear: per-model rule lists in different orders (exact-name weight_rules)
    "linear_weight_filters_exact": {
        "merge_method": "linear",
        "models": [
            model("m0", weight=rules(("attn", 2.0), ("linear_q", 3.0), default=1.0)),
            model("m1", weight=rules(("linear_q", 5.0), ("attn", 7.0), default=1.0)),
        ],
    },
    # task arithmetic: filters per model, falling back to the global weight
    "task_arithmetic_filters_global": {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "models": [
            model("m0", weight=rules(("feed_forward", 0.3), ("self_attn", 0.7), default=1.0)),
            model("m1", weight=rules(("self_attn", 1.5))),
            model("m2"),
        ],
        "parameters": {"weight": 0.5, "lambda": 0.9, "normalize": True},
    },
    # ties: base listed among the models (its parameters ignored), global density, int8_mask
    "ties_global_density_base_listed": {
        "merge_method": "ties",
        "base_model": "base",
        "models": [
            model("base", weight=9.0, density=0.1),
            model("m0", weight=1.0),
            model("m1", weight=0.5),
            model("m2", weight=2.0),
        ],
        "parameters": {"density": 0.4, "lambda": 1.1, "int8_mask": True},
    },
    # mergekit's defaults where ours differ: ties density 1.0 (ours 0.2)
    "ties_defaults": {
        "merge_method": "ties",
        "base_model": "base",
        "models": [model("m0", weight=0.5), model("m1", weight=1.0), model("m2", weight=2.0)],
    },
    # dare_ties: density 1.0 and normalize false by default (ours 0.5 and true)
    "dare_ties_defaults": {
        "merge_method": "dare_ties",
        "base_model": "base",
        "models": [model("m0", weight=0.5), model("m1", weight=1.0), model("m2", weight=2.0)],
    },
    # breadcrumbs: density per model (equal), gamma and lambda global
    "breadcrumbs_model_density_global_gamma": {
        "merge_method": "breadcrumbs",
        "base_model": "base",
        "models": [
            model("m0", weight=0.5, density=0.6),
            model("m1", weight=1.0, density=0.6),
            model("m2", weight=2.0, density=0.6),
        ],
        "parameters": {"gamma": 0.15, "lambda": 0.8},
    },
    # slerp: base_model listed second, t by filter
    "slerp_t_filters_base_second": {
        "merge_method": "slerp",
        "base_model": "m1",
        "models": [model("m0"), model("m1")],
        "parameters": {"t": rules(("self_attn", 0.2), default=0.7)},
    },
    # slerp: base_model not listed
    "slerp_base_implicit": {
        "merge_method": "slerp",
        "base_model": "m0",
        "models": [model("m1")],
        "parameters": {"t": 0.45},
    },
    # model_stock: base listed among the models
    "model_stock_base_listed": {
        "merge_method": "model_stock",
        "base_model": "base",
        "models": [model("base"), model("m0"), model("m1"), model("m2")],
    },
}


def make_inputs():
    g = torch.Generator().manual_seed(SEED)
    base = {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}
    models = {"base": base}
    for m in MODELS[1:]:
        models[m] = {k: base[k] + 0.5 * torch.randn(*s, generator=g) for k, s in SHAPES.items()}
    return models


def with_paths(config, paths):
    config = copy.deepcopy(config)
    for entry in config["models"]:
        entry["model"] = paths[entry["model"]]
    if "base_model" in config:
        config["base_model"] = paths[config["base_model"]]
    config["dtype"] = "float32"
    return config


def run_cli(config, tmp, name):
    cfg_path = os.path.join(tmp, f"{name}.yml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(config, f)
    out = os.path.join(tmp, f"out_{name}")
    exe = os.path.join(os.path.dirname(sys.executable), "mergekit-pytorch")
    done = subprocess.run([exe, cfg_path, out, "--allow-crimes", "--quiet"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name}: mergekit-pytorch failed:\n{done.stderr[-3000:]}")
    result = {}
    for fname in sorted(os.listdir(out)):
        if fname.endswith(".safetensors"):
            result.update(load_file(os.path.join(out, fname)))
    return result


def main():
    models = make_inputs()
    meta = {
        "mergekit_version": version("mergekit"),
        "torch_version": torch.__version__,
        "seed": SEED,
        "note": "outputs of the mergekit-pytorch CLI, one safetensors file per model; each config below has "
        "its models as placeholders (base, m0, m1, m2) and dtype float32",
        "cases": {},
    }
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for m, state in models.items():
            paths[m] = os.path.join(tmp, f"{m}.safetensors")
            save_file(state, paths[m])
        for name, config in CASES.items():
            result = run_cli(with_paths(config, paths), tmp, name)
            assert sorted(result) == sorted(SHAPES), (name, sorted(result))
            for k in SHAPES:
                outputs[f"{name}/{k}"] = result[k].contiguous()
            meta["cases"][name] = with_paths(config, {m: m for m in models})
    save_file({f"{m}/{k}": t for m, st in models.items() for k, t in st.items()}, f"{HERE}/inputs.safetensors")
    save_file(outputs, f"{HERE}/outputs.safetensors")
    with open(f"{HERE}/cases.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"mergekit {meta['mergekit_version']}: {len(CASES)} cases written to {HERE}")


if __name__ == "__main__":
    main()
