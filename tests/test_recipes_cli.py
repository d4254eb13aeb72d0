"""Every corpus recipe run as a script, the way a user types it, on a miniature corpus.

Like SpeechBrain's tests/recipes: ``python recipes/<Corpus>/train.py <shipped hparams>
--data_folder <mini corpus> --model_source <tiny model> --output_folder <tmp> ...`` with
only size/time overrides on the command line. Each run must prepare the corpus, train,
export ``<output_folder>/expert/`` (a folder that transformers loads) and write the test
outputs. A run costs ~17 CPU-seconds, nearly all of it importing torch, speechbrain and
transformers, so the eight subprocesses run side by side: the module's wall time is about
its CPU time (~180 s) divided by the free cores.
"""

import csv
import importlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from aode.manifest import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 420  # per run; generous because the runs share two cores with other work
CONCURRENT_RUNS = 4
SPLITS = ("train", "valid", "test")

# Size/time only: one epoch of two batches of two, no loader workers.
SMALL = ["--number_of_epochs", "1", "--steps_per_epoch", "2", "--batch_size", "2", "--num_workers", "0"]

# Split sizes that fit a miniature (the defaults are sized for the full corpora).
PREP_OPTIONS = {
    "SPGISpeech": "{test_size: 3, valid_size: 2}",
    "CORAAL": "{n_valid_speakers: 1, n_test_speakers: 1}",
}
# The SPGISpeech miniature's val.csv names a truncated file that its prep keeps (it checks audio
# only with check_audio): its test set is scored without it on request, and the count is kept.
EXTRA_ARGS = {"SPGISpeech": ["--skip_unreadable_audio", "True"]}

# case: (corpus, hparams file)
CASES = {
    "SPGISpeech-parakeet_llrd": ("SPGISpeech", "parakeet_llrd.yaml"),
    "CORAAL-parakeet_llrd": ("CORAAL", "parakeet_llrd.yaml"),
    "NoisyVCTK-parakeet_llrd": ("NoisyVCTK", "parakeet_llrd.yaml"),
    "GoogleNE-parakeet_llrd": ("GoogleNE", "parakeet_llrd.yaml"),
    "DiPCo-parakeet_llrd": ("DiPCo", "parakeet_llrd.yaml"),
    "JLCorpus-parakeet_llrd": ("JLCorpus", "parakeet_llrd.yaml"),
    "SPGISpeech-whisper_llrd": ("SPGISpeech", "whisper_llrd.yaml"),
    "NoisyVCTK-parakeet_lora": ("NoisyVCTK", "parakeet_lora.yaml"),
}
# A case that fails for a reason in aode/ or data_prep/ gets
# pytest.mark.xfail(strict=True, reason=<the exact error>) here.
XFAIL = {}


def _builder(name, *modules):
    """A fixture builder, from the first module that has it (the builders of the
    tests/prep_fixtures_b.py corpora may still live in their test modules)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"no fixture builder {name} in {modules}")


def _build_corpus(corpus, root):
    """Write the miniature of ``corpus`` under ``root``; returns its --data_folder."""
    if corpus == "SPGISpeech":
        return _builder("make_spgispeech", "prep_fixtures_a")(root)["root"]
    if corpus == "CORAAL":
        _builder("make_coraal", "prep_fixtures_a")(root)
        return root
    if corpus == "DiPCo":
        return _builder("make_dipco", "prep_fixtures_a")(root)["root"]
    builders = {
        "NoisyVCTK": ("build_vctk", "test_prep_noisy_vctk"),
        "GoogleNE": ("build_google_ne", "test_prep_google_ne"),
        "JLCorpus": ("build_jl", "test_prep_jl_corpus"),
    }
    name, module = builders[corpus]
    _builder(name, "prep_fixtures_b", module)(root)
    return root


def _command(corpus, hparams, data_folder, model, output):
    cmd = [
        sys.executable,
        os.path.join("recipes", corpus, "train.py"),
        os.path.join("hparams", hparams),
        "--data_folder",
        data_folder,
        "--model_source",
        model,
        "--output_folder",
        output,
        *SMALL,
    ]
    if corpus in PREP_OPTIONS:
        cmd += ["--prep_options", PREP_OPTIONS[corpus]]
    return cmd + EXTRA_ARGS.get(corpus, [])


def _run(cmd):
    # one thread each: the runs share the machine's cores
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return subprocess.CompletedProcess(cmd, f"timeout ({TIMEOUT_S} s)", "", stderr)


def _selected_cases(session):
    """The cases this session will run (so that ``-k JLCorpus`` starts one run, not eight)."""
    return {
        item.callspec.params["case"]
        for item in session.items
        if item.module.__name__ == __name__ and hasattr(item, "callspec")
    }


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, tiny_whisper):
    """{case: (future of the finished process, output folder, hparams file)}; each corpus is
    built once and its runs start as soon as it is written. The tiny Whisper is conftest's; the
    CTC model has conftest's shape with digits in its vocabulary, as SPGISpeech's and VCTK's
    transcripts have numbers (a vocabulary without digits is refused: tests/test_transcripts.py)."""
    from aode.builders import CHARACTERS
    from aode.builders import build_parakeet_ctc

    base = tmp_path_factory.mktemp("recipes_cli")
    ctc = build_parakeet_ctc(
        str(base / "parakeet_digits"),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        conv_kernel_size=5,
        characters=CHARACTERS + list("0123456789"),
    )
    models = {"ctc": ctc, "whisper": tiny_whisper}
    wanted = _selected_cases(request.session) or set(CASES)
    corpora, runs = {}, {}
    with ThreadPoolExecutor(max_workers=CONCURRENT_RUNS) as pool:
        for case, (corpus, hparams) in CASES.items():
            if case not in wanted:
                continue
            if corpus not in corpora:
                corpora[corpus] = _build_corpus(corpus, str(base / "data" / corpus))
            family = "whisper" if hparams.startswith("whisper") else "ctc"
            output = str(base / "runs" / case)
            cmd = _command(corpus, hparams, corpora[corpus], models[family], output)
            runs[case] = (pool.submit(_run, cmd), output, hparams)
        yield runs


def _finished(launched, case):
    future, output, hparams = launched[case]
    result = future.result()
    assert result.returncode == 0, (
        f"exit {result.returncode}: {' '.join(result.args)}\n--- stderr (tail) ---\n{result.stderr[-3000:]}"
        # SpeechBrain logs the traceback to stdout once the experiment folder is set up
        f"\n--- stdout (tail) ---\n{result.stdout[-3000:]}"
    )
    assert "expert written to" in result.stdout
    return output, hparams


def _check_manifests(prep_folder):
    """The prep's manifests exist and load with our reader and SpeechBrain's."""
    from prep_fixtures_b import load_with_speechbrain

    rows = {}
    for split in SPLITS:
        path = os.path.join(prep_folder, f"{split}.csv")
        rows[split] = read_manifest(path)
        assert rows[split], f"{path} is empty"
        assert len(load_with_speechbrain(path)) == len(rows[split])
    return rows


def _check_expert(folder, family):
    """A model folder that transformers loads on its own, with the AoDE provenance."""
    if family == "whisper":
        from transformers import WhisperForConditionalGeneration as model_class
    else:
        from transformers import AutoModelForCTC as model_class
    model = model_class.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) > 0
    with open(os.path.join(folder, "aode.json"), encoding="utf-8") as f:
        return json.load(f)


def _expected_test_ids(output, test_rows, max_duration=30.0):
    """Test IDs the run should have scored: those of the manifest minus the ones it logged
    as unreadable and the ones over max_duration."""
    test_csv = os.path.join(output, "manifests", "test.csv")
    unreadable = set()
    skip_log = os.path.join(output, "skipped_audio.csv")
    if os.path.isfile(skip_log):
        with open(skip_log, newline="", encoding="utf-8") as f:
            unreadable = {r["ID"] for r in csv.DictReader(f) if os.path.samefile(r["manifest"], test_csv)}
    return {r["ID"] for r in test_rows if r["ID"] not in unreadable and float(r["duration"]) <= max_duration}


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, marks=XFAIL.get(c, ())) for c in CASES])
def test_recipe_runs_from_the_command_line(launched, case):
    corpus, _ = CASES[case]
    output, hparams = _finished(launched, case)
    rows = _check_manifests(os.path.join(output, "manifests"))

    family = "whisper" if hparams.startswith("whisper") else "ctc"
    info = _check_expert(os.path.join(output, "expert"), family)
    assert info["kind"] == "expert"
    assert info["domain"] == corpus  # the recipe names its corpus
    if "lora" in hparams:
        # LoRA is folded into the weights at export: a plain model folder
        from safetensors.torch import load_file

        keys = load_file(os.path.join(output, "expert", "model.safetensors")).keys()
        assert info["lora_merged_modules"] > 0
        assert not any("lora" in k for k in keys)

    with open(os.path.join(output, "test_test.csv"), newline="", encoding="utf-8") as f:
        scored = {r["ID"] for r in csv.DictReader(f)}
    assert scored == _expected_test_ids(output, rows["test"])
