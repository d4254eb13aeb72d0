"""Shared fixtures: tiny offline models saved to temp folders, manifests of real speech."""

import csv
import os
import subprocess

import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")
SAMPLES = os.path.join(DATA, "samples")


def run_training(cmd, cwd, out, timeout=300):
    """Run a training command line (one thread a process) and check that it exported its expert."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "expert", "model.safetensors"))
    return result


def recipe_paths(model_source, output_folder, train_csv, valid_csv, test_csv):
    """A corpus recipe's command-line options for a model and its manifests (``"null"``: no test set)."""
    return [
        "--model_source",
        str(model_source),
        "--output_folder",
        str(output_folder),
        "--train_csv",
        str(train_csv),
        "--valid_csv",
        str(valid_csv),
        "--test_csv",
        str(test_csv),
    ]


def sample_rows():
    """The real recordings (tests/data/samples) as manifest rows."""
    import soundfile as sf

    from aode.text import normalize_words

    rows = []
    with open(os.path.join(SAMPLES, "speech.csv"), newline="") as f:
        for r in csv.DictReader(f):
            path = os.path.join(SAMPLES, r["wav"])
            duration = sf.info(path).duration
            rows.append(
                {
                    "ID": r["ID"],
                    "duration": duration,
                    "wav": path,
                    "start": 0,
                    "stop": duration,
                    "spk_id": r["spk_id"],
                    "wrd": normalize_words(r["wrd"]),
                    "wrd_raw": r["wrd"].capitalize() + ".",
                }
            )
    return rows


@pytest.fixture(scope="session")
def sample_manifest(tmp_path_factory):
    from aode.manifest import write_manifest

    path = tmp_path_factory.mktemp("manifest") / "samples.csv"
    write_manifest(str(path), sample_rows())
    return str(path)


@pytest.fixture(scope="module")
def speaker_csvs(tmp_path_factory):
    """Two 'domains' (the two speakers of the real samples, ``spk1`` and ``spk2``) and a
    forgetting set of every recording (``all``): manifest paths by name."""
    from aode.manifest import write_manifest

    folder = tmp_path_factory.mktemp("domains")
    rows = sample_rows()
    paths = {}
    for spk in ("spk1", "spk2"):
        paths[spk] = str(folder / f"{spk}.csv")
        write_manifest(paths[spk], [r for r in rows if r["spk_id"] == spk])
    paths["all"] = str(folder / "all.csv")
    write_manifest(paths["all"], rows)
    return paths


@pytest.fixture(scope="session")
def tiny_parakeet(tmp_path_factory):
    from aode.builders import build_parakeet_ctc

    folder = tmp_path_factory.mktemp("models") / "parakeet"
    return build_parakeet_ctc(
        str(folder), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, conv_kernel_size=5
    )


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    from aode.builders import build_whisper

    folder = tmp_path_factory.mktemp("models") / "whisper"
    return build_whisper(str(folder), d_model=32, layers=2, heads=2, ffn=64)


def perturbed_copy(src, dst, seed, scale):
    """A copy of model folder ``src`` with Gaussian noise (relative ``scale``) on its float tensors:
    stand-ins for experts fine-tuned from the same generalist."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    state = load_file(path)
    g = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if t.is_floating_point() and "running" not in name:
            state[name] = t + scale * (t.abs().mean() + 1e-3) * torch.randn(t.shape, generator=g)
    save_file(state, path, metadata={"format": "pt"})
    return str(dst)


def train_tiny_expert(model, manifest, out, **overrides):
    """A quick expert of ``model`` on ``manifest`` (train and dev), exported to ``out/expert``:
    one epoch of one step of two utterances at lr 3e-3, no progress bar; ``overrides`` are
    training keys."""
    from aode.train import train_expert

    hparams = dict(
        output_folder=str(out),
        train_csv=manifest,
        valid_csv=manifest,
        model_source=model,
        lr=3e-3,
        number_of_epochs=1,
        steps_per_epoch=1,
        batch_size=2,
        progressbar=False,
    )
    return train_expert({**hparams, **overrides})
