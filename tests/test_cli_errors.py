"""The error rule of every AoDE command line (aode.cli.run_main), as the user types the commands.

A user error ends a command with ONE line on stderr, ``error: ...``, exit status 2, before any
work and with nothing half written; ``AODE_DEBUG=1`` adds the traceback. Each case below runs
the recipe in a subprocess on tiny models (tests/conftest.py) or a miniature corpus
(tests/prep_fixtures_a.py) and checks the status, the line and the files left behind. The
subprocesses (each mostly importing torch and SpeechBrain) run two at a time.
"""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import perturbed_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
MERGE = [sys.executable, "recipes/average/merge.py", "hparams/aode.yaml"]
REPRODUCE = [sys.executable, "recipes/average/reproduce.py", "hparams/mini.yaml"]
# No test sets: these cases fail before any evaluation.
NO_EVAL = ["--test_sets", "{}", "--forgetting_sets", "null", "--expert_of_test_set", "{}", "--progressbar", "False"]


def _run(cmd, debug=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("AODE_DEBUG", None)
    if debug:
        env["AODE_DEBUG"] = "1"
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return subprocess.CompletedProcess(cmd, f"timeout ({TIMEOUT_S} s)", "", stderr)


def _merge(models, out, *extra, experts=("e1", "e2"), original="orig"):
    names = ", ".join(f"{chr(65 + i)}: {models.get(e, e)}" for i, e in enumerate(experts))
    return [
        *MERGE,
        "--original",
        models.get(original, original),
        "--experts",
        "{" + names + "}",
        "--output_folder",
        out,
        *NO_EVAL,
        *extra,
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_parakeet, tiny_whisper):
    """The original, two experts, and members that cannot be merged with them: another width,
    another model type, a truncated weight file, a NaN."""
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    from aode.builders import build_parakeet_ctc

    base = tmp_path_factory.mktemp("cli_models")
    out = {"orig": tiny_parakeet, "whisper": tiny_whisper}
    out["e1"] = perturbed_copy(tiny_parakeet, base / "e1", 1, 0.01)
    out["e2"] = perturbed_copy(tiny_parakeet, base / "e2", 2, 0.01)
    out["wide"] = build_parakeet_ctc(
        str(base / "wide"), hidden_size=48, num_layers=2, num_heads=2, intermediate_size=64, conv_kernel_size=5
    )
    out["truncated"] = shutil.copytree(out["e2"], base / "truncated")
    weights = os.path.join(out["truncated"], "model.safetensors")
    os.truncate(weights, os.path.getsize(weights) // 2)
    out["nan"] = shutil.copytree(out["e2"], base / "nan")
    weights = os.path.join(out["nan"], "model.safetensors")
    state = load_file(weights)
    name = next(n for n, t in state.items() if t.is_floating_point() and t.numel() > 1)
    state[name].view(-1)[0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    out["nan_tensor"] = name
    out["a_file"] = str(base / "somefile")
    with open(out["a_file"], "w") as f:
        f.write("not a folder\n")
    return {k: str(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    from prep_fixtures_a import make_coraal
    from prep_fixtures_a import make_spgispeech

    base = tmp_path_factory.mktemp("cli_corpora")
    make_coraal(str(base / "coraal"))
    return {"CORAAL": str(base / "coraal"), "SPGISpeech": make_spgispeech(str(base / "spgi"))["root"]}


def _train(corpus, data_folder, model, out, prep_options):
    return [
        sys.executable,
        f"recipes/{corpus}/train.py",
        "hparams/parakeet_llrd.yaml",
        "--data_folder",
        data_folder,
        "--model_source",
        model,
        "--output_folder",
        out,
        "--prep_options",
        prep_options,
        "--number_of_epochs",
        "1",
        "--steps_per_epoch",
        "1",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
    ]


@pytest.fixture(scope="module")
def runs(models, corpora, sample_manifest, tmp_path_factory):
    """{case: (finished process, its output folder)}, every case run once, two at a time."""
    out = tmp_path_factory.mktemp("cli_runs")
    member_data = "{A: " + sample_manifest + ", B: " + sample_manifest + "}"
    regmean_alpha_2 = ("--method", "regmean", "--method_options", "{alpha: 2}", "--member_data", member_data)
    experiment_regmean_alpha_2 = "{RegMean: {method: regmean, options: {alpha: 2}}}"
    cases = {
        "unknown_option": _merge(models, str(out / "a1"), "--method", "ties", "--method_options", "{densty: 0.3}"),
        "option_type": _merge(models, str(out / "a2"), "--method", "ties", "--method_options", "{density: abc}"),
        "option_range": _merge(models, str(out / "a3"), "--method", "dare_ties", "--method_options", "{density: 1.5}"),
        # a data-aware method: its Gram statistics would be computed first (in <output_folder>/statistics)
        "statistics_option": _merge(models, str(out / "a4"), *regmean_alpha_2),
        "experiment_statistics_option": [
            *REPRODUCE,
            *("--output_folder", str(out / "a5"), "--scenarios", "[methods]"),
            *("--merge_methods", experiment_regmean_alpha_2),
        ],
        "absent_model": _merge(models, str(out / "b"), original="openai/whisper-nonexistent"),
        "width": _merge(models, str(out / "c1"), experts=("e1", "wide")),
        "model_type": _merge(models, str(out / "c2"), experts=("e1", "whisper")),
        "truncated": _merge(models, str(out / "d1"), experts=("e1", "truncated")),
        "nan": _merge(models, str(out / "d2"), experts=("e1", "nan")),
        "output_under_a_file": _merge(models, os.path.join(models["a_file"], "out")),
        "coraal_speakers": _train(
            "CORAAL", corpora["CORAAL"], models["orig"], str(out / "f"), "{n_valid_speakers: 5, n_test_speakers: 1}"
        ),
        "spgispeech_valid_size": _train(
            "SPGISpeech", corpora["SPGISpeech"], models["orig"], str(out / "g"), "{valid_size: 50, test_size: 2}"
        ),
    }
    debug = {"debug": (_merge(models, str(out / "debug"), "--method", "ties", "--method_options", "{densty: 1}"))}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(_run, cmd) for case, cmd in cases.items()}
        futures["debug"] = pool.submit(_run, debug["debug"], True)
        results = {case: future.result() for case, future in futures.items()}
    folders = {case: cmd[cmd.index("--output_folder") + 1] for case, cmd in {**cases, **debug}.items()}
    return {case: (results[case], folders[case]) for case in results}


def _error_line(run):
    """The one error line of a run refused by the error rule (status 2, no traceback)."""
    assert run.returncode == 2, f"exit {run.returncode}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), run.stderr[-3000:]
    return line


def _nothing_in(folder):
    return not os.path.exists(folder) or not os.listdir(folder)


def test_unknown_merge_option_is_named_with_the_closest_before_any_folder(runs):
    run, out = runs["unknown_option"]
    line = _error_line(run)
    assert "unknown ties option 'densty' (did you mean 'density'?)" in line
    assert not os.path.exists(out)


def test_merge_option_of_the_wrong_type_or_range(runs):
    run, out = runs["option_type"]
    assert "ties option density must be a number (got 'abc')" in _error_line(run)
    assert not os.path.exists(out)
    run, out = runs["option_range"]
    assert "dare_ties option density must be a fraction from 0 to 1 (got 1.5)" in _error_line(run)
    assert not os.path.exists(out)


def test_options_of_a_statistics_method_are_refused_before_any_statistics(runs):
    """RegMean's Gram statistics (and Fisher's) are computed before the merge: a wrong option
    is refused by the schema first, from the merge recipe's command line and from an
    experiment's merge_methods alike, and no statistics file (no folder) is written."""
    run, out = runs["statistics_option"]
    line = _error_line(run)
    assert "method_options: regmean option alpha must lie in [0, 1] (got 2)" in line
    assert not os.path.exists(out)
    run, out = runs["experiment_statistics_option"]
    line = _error_line(run)
    assert "merge_methods.RegMean.options: regmean option alpha must lie in [0, 1] (got 2)" in line
    assert not os.path.exists(out)


def test_model_neither_folder_nor_cached(runs):
    run, out = runs["absent_model"]
    line = _error_line(run)
    assert "model 'openai/whisper-nonexistent' is neither a folder nor in the Hugging Face cache" in line
    assert "hf download openai/whisper-nonexistent" in line
    assert not os.path.exists(out)


def test_members_of_another_width_or_type_are_named_by_their_config(runs, models):
    run, out = runs["width"]
    line = _error_line(run)
    assert f"config field 'encoder_config.hidden_size' differs: 32 in member 0 '{models['e1']}'" in line
    assert f"but 48 in member 1 '{models['wide']}'" in line
    assert "num_batches_tracked" not in line and not os.path.exists(out)
    run, out = runs["model_type"]
    line = _error_line(run)
    assert "config field 'model_type' differs: 'parakeet_ctc'" in line and "'whisper' in member 1" in line
    assert not os.path.exists(out)


def test_truncated_or_non_finite_member_is_named_and_nothing_is_left(runs, models):
    run, out = runs["truncated"]
    line = _error_line(run)
    assert f"member 1 '{models['truncated']}' cannot be read" in line
    assert not os.path.exists(out)
    run, out = runs["nan"]
    line = _error_line(run)
    assert f"member 1 '{models['nan']}': tensor '{models['nan_tensor']}' has non-finite values" in line
    assert _nothing_in(out)  # found while merging: the half-written folder is removed


def test_output_folder_that_cannot_be_made_is_refused_before_any_work(runs, models):
    run, _ = runs["output_under_a_file"]
    line = _error_line(run)
    assert f"output_folder: cannot be made: '{models['a_file']}' is a file, not a folder" in line
    assert os.path.isfile(models["a_file"])


def test_too_few_speakers_for_the_prep_options(runs):
    run, out = runs["coraal_speakers"]
    line = _error_line(run)
    assert "CORAAL: 5 interviewees with audio" in line and "too few for n_valid_speakers=5 + n_test_speakers=1" in line
    assert not os.path.exists(os.path.join(out, "expert"))
    assert not os.path.exists(os.path.join(out, "manifests", "train.csv"))
    assert not os.path.exists(os.path.join(out, "manifests", "prep_options.json"))


def test_spgispeech_valid_size_larger_than_the_split(runs):
    run, out = runs["spgispeech_valid_size"]
    line = _error_line(run)
    assert "valid_size 50 takes the whole official train split (10 utterances in" in line
    assert "audio is not where" not in line
    assert not os.path.exists(os.path.join(out, "expert"))
    assert not os.path.exists(os.path.join(out, "manifests", "prep_options.json"))


def test_debug_flag_adds_the_traceback(runs):
    run, out = runs["debug"]
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback (most recent call last)" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not os.path.exists(out)


# ---------------------------------------------------------------------------- in process


def test_experiment_merge_methods_options_are_checked_by_the_schema(tmp_path):
    import aode.pipeline  # noqa: F401 (hands the merge registry's checks to the schemas)
    from aode.config import ConfigError
    from aode.config import ExperimentConfig
    from aode.config import validate

    hparams = {
        "output_folder": str(tmp_path / "out"),
        "original": "some/model",
        "domains": {"d": {"train_csv": "t.csv", "valid_csv": "v.csv", "test_csv": "x.csv"}},
        "forgetting_sets": {"clean": "c.csv"},
        "train_hparams_file": "hparams/parakeet_llrd.yaml",
        "scenarios": ["methods"],
        "merge_methods": {"TIES": {"method": "ties", "options": {"densty": 0.5}}},
    }
    with pytest.raises(ConfigError, match=r"merge_methods\.TIES\.options: unknown ties option 'densty' \(did you"):
        validate(ExperimentConfig, hparams)
    hparams["merge_methods"] = {"TIES": {"method": "ties", "options": {"density": 0.5, "lam": 1.0}}}
    assert validate(ExperimentConfig, hparams).merge_methods["TIES"].options == {"density": 0.5, "lam": 1.0}
    assert not os.path.exists(tmp_path / "out")


def test_every_registered_method_declares_its_options():
    """Whole-model and setup-hook methods declare theirs (register(options=...)); the options the
    recipes fill in (aode.merge.inputs) are among them."""
    from aode.merge import available_methods
    from aode.merge import get_spec
    from aode.merge.checks import check_method_options
    from aode.merge.checks import declared_options

    filled = {"adamerging": ("data", "device"), "regmean_pp": ("member_manifests", "n_utterances", "batch_size")}
    filled.update(fisher=("fisher_files",), regmean=("gram_files",))
    for method in available_methods():
        declared = declared_options(get_spec(method))
        assert set(filled.get(method, ())) <= set(declared), method
        assert not {"fishers", "grams"} & set(declared), method
        check_method_options(method, {})
    with pytest.raises(ValueError, match="unknown adamerging option 'step' \\(did you mean 'steps'\\?\\)"):
        check_method_options("adamerging", {"step": 10})
    with pytest.raises(ValueError, match="adamerging option steps must be an integer"):
        check_method_options("adamerging", {"steps": 1.5})


def test_run_main_keeps_the_traceback_of_a_bug(capsys):
    from aode.cli import run_main
    from aode.config import ConfigError

    def bug(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_main(bug, [])

    def refused(argv):
        raise ConfigError("first line\n  second line")

    with pytest.raises(SystemExit) as exit_info:
        run_main(refused, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: first line second line\n"
    assert run_main(lambda argv: argv, ["x"]) == ["x"]
