"""A stage's independent trainings as parallel jobs (aode.launcher; the experiment's ``launcher``).

Training is replaced by :func:`fake_train`, defined here at module level so that the spawned
processes of ``launcher: local`` import it by name (the parent's sys.path, tests/ included, is
passed to them); it is steered through environment variables, which they inherit. The Slurm
path runs against a recording stand-in for submitit.AutoExecutor that runs each job inline.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import aode.launcher
from aode.config import ConfigError
from aode.config import ExperimentConfig
from aode.config import LauncherConfig
from aode.config import load_yaml
from aode.config import validate
from aode.experiment import Experiment
from aode.launcher import LaunchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(ROOT, "hparams", "mini.yaml")


def fake_train(hparams, run_opts=None, corpus=None):
    """Stands in for aode.train.train_expert: sleeps AODE_TEST_SLEEP s, fails for the names in
    AODE_TEST_FAIL, appends its name to AODE_TEST_CALLS, writes an 'expert' whose config.json
    holds what it was given (the experiment's folder as <out>, so two experiments compare equal)
    and whose aode.json holds the stamp a rerun checks."""
    import torch

    start = time.time()
    with open(os.environ["AODE_TEST_CALLS"], "a") as f:
        f.write(f"{corpus}\n")
    time.sleep(float(os.environ.get("AODE_TEST_SLEEP", "0")))
    if corpus in os.environ.get("AODE_TEST_FAIL", "").split(","):
        raise RuntimeError(f"boom in {corpus}")
    folder = os.path.join(hparams["output_folder"], "expert")
    os.makedirs(folder, exist_ok=True)
    out = os.path.dirname(os.path.dirname(hparams["output_folder"]))  # the experiment's
    given = {k: v.replace(out, "<out>") if isinstance(v, str) else v for k, v in hparams.items()}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"corpus": corpus, "hparams": given}, f)
    from aode.config import TrainingConfig
    from aode.config import validate
    from aode.reuse import training_stamp

    with open(os.path.join(folder, "aode.json"), "w") as f:  # the stamp the real trainer records
        json.dump({"kind": "expert", "made_from": training_stamp(validate(TrainingConfig, hparams))}, f)
    with open(os.path.join(hparams["output_folder"], "job.json"), "w") as f:
        json.dump(
            {
                "start": start,
                "end": time.time(),
                "pid": os.getpid(),
                "threads": torch.get_num_threads(),
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            },
            f,
        )
    return folder


def _hparams(out, speaker_csvs, domains=("a", "b"), scenarios=("experts",), **extra):
    spk = {name: speaker_csvs["spk1" if i % 2 == 0 else "spk2"] for i, name in enumerate(domains)}
    return {
        "output_folder": str(out),
        "original": str(out / "original"),
        "domains": {d: {"train_csv": spk[d], "valid_csv": spk[d], "test_csv": spk[d]} for d in domains},
        "forgetting_sets": {"clean": speaker_csvs["all"]},
        "scenarios": list(scenarios),
        "train_hparams_file": os.path.join(ROOT, "hparams", "parakeet_llrd.yaml"),
        "normalizer": "basic",
        "progressbar": False,
        **extra,
    }


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """fake_train as aode.train.train_expert; merges and decodes instant, in this process."""
    import aode.evaluate
    import aode.merge
    import aode.train

    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv("AODE_TEST_CALLS", str(calls))
    monkeypatch.setattr(aode.train, "train_expert", fake_train)
    merges = []

    def merge_models(members, output, **kwargs):
        merges.append(os.path.basename(output))
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "config.json"), "w") as f:
            json.dump({"members": members}, f)
        return output

    def evaluate_model(model, test_sets, out_folder, **kwargs):
        return {name: {"wer": 10.0} for name in test_sets}

    monkeypatch.setattr(aode.merge, "merge_models", merge_models)
    monkeypatch.setattr(aode.evaluate, "evaluate_model", evaluate_model)

    def trained():
        names = calls.read_text().split()
        calls.write_text("")
        return names

    return {"trained": trained, "merges": merges}


def _job(out, name):
    return json.load(open(out / "experts" / name / "job.json"))


def _configs(out):
    folder = out / "experts"
    return {name: (folder / name / "expert" / "config.json").read_text() for name in sorted(os.listdir(folder))}


# --------------------------------------------------------------------------------- local jobs
def test_local_jobs_run_concurrently_and_give_what_serial_gives(tmp_path, speaker_csvs, fake, monkeypatch, capsys):
    monkeypatch.setenv("AODE_TEST_SLEEP", "1.5")
    serial = Experiment(_hparams(tmp_path / "serial", speaker_csvs))
    serial.run()
    assert sorted(fake["trained"]()) == ["a", "b"]
    a, b = _job(tmp_path / "serial", "a"), _job(tmp_path / "serial", "b")
    assert a["pid"] == b["pid"] == os.getpid() and b["start"] >= a["end"]  # today's behaviour: here, in turn
    printed = capsys.readouterr().out
    assert printed.index("training expert a") < printed.index("training expert b")

    local = Experiment(_hparams(tmp_path / "local", speaker_csvs, launcher={"kind": "local", "jobs": 2}))
    local.run()
    assert sorted(fake["trained"]()) == ["a", "b"]
    a, b = _job(tmp_path / "local", "a"), _job(tmp_path / "local", "b")
    assert os.getpid() not in (a["pid"], b["pid"]) and a["pid"] != b["pid"]
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), "the two jobs did not overlap"
    if not aode.launcher.visible_gpus():
        assert a["threads"] == b["threads"] == max(1, aode.launcher._cpus() // 2)
    assert _configs(tmp_path / "local") == _configs(tmp_path / "serial")  # same hparams, same corpus name
    assert local.rows["expert_b"].folder == str(tmp_path / "local" / "experts" / "b" / "expert")
    assert "train" in local.timings
    assert (tmp_path / "local" / "jobs" / "a.log").exists()


def test_local_jobs_are_bounded_and_each_gets_its_own_gpu(tmp_path, speaker_csvs, fake, monkeypatch):
    monkeypatch.setenv("AODE_TEST_SLEEP", "1.5")
    monkeypatch.setattr(aode.launcher, "visible_gpus", lambda: ["3", "5"])
    Experiment(_hparams(tmp_path, speaker_csvs, domains=("a", "b", "c"), launcher="local", jobs=2)).run()
    jobs = {d: _job(tmp_path, d) for d in "abc"}
    for t in [j["start"] for j in jobs.values()]:
        running = [d for d, j in jobs.items() if j["start"] <= t < j["end"]]
        assert len(running) <= 2
        assert len({jobs[d]["cuda"] for d in running}) == len(running)  # no two at once on one GPU
    assert {j["cuda"] for j in jobs.values()} == {"3", "5"}


def test_a_failed_job_names_its_log_stops_before_merging_and_a_rerun_trains_only_it(
    tmp_path, speaker_csvs, fake, monkeypatch
):
    hp = _hparams(tmp_path, speaker_csvs, scenarios=["aode"], launcher={"kind": "local", "jobs": 2})
    monkeypatch.setenv("AODE_TEST_FAIL", "b")
    with pytest.raises(LaunchError) as err:
        Experiment(hp).run()
    log = tmp_path / "jobs" / "b.log"
    assert f"b: exit code 1: RuntimeError: boom in b; log: {log}" in str(err.value)
    assert err.value.failed == {"b": str(log)} and "boom in b" in log.read_text()
    assert not fake["merges"] and not (tmp_path / "merges").exists()
    assert sorted(fake["trained"]()) == ["a", "b"]
    assert (tmp_path / "experts" / "a" / "expert" / "config.json").exists()

    monkeypatch.delenv("AODE_TEST_FAIL")
    Experiment(hp).run()
    assert fake["trained"]() == ["b"]
    assert fake["merges"] == ["AoDE"]


# ---------------------------------------------------------------------------------- slurm
class RecordingExecutor:
    """submitit.AutoExecutor's stand-in: records its parameters and runs each job inline."""

    made = []

    def __init__(self, folder, cluster=None, **kwargs):
        self.folder, self.cluster, self.parameters, self.arrays = folder, cluster, {}, []
        RecordingExecutor.made.append(self)

    def update_parameters(self, **kwargs):
        self.parameters.update(kwargs)

    def map_array(self, fn, *iterables):
        calls = list(zip(*iterables))
        self.arrays.append(calls)
        return [RecordedJob(fn, args, self.folder, f"77_{i}") for i, args in enumerate(calls)]


class RecordedJob:
    def __init__(self, fn, args, folder, job_id):
        self.fn, self.args, self.job_id = fn, args, job_id
        self.paths = type("Paths", (), {"stderr": os.path.join(folder, f"{job_id}_0_log.err")})()

    def result(self):
        return self.fn(*self.args)


@pytest.fixture
def recorder(monkeypatch):
    submitit = pytest.importorskip("submitit")
    RecordingExecutor.made = []
    monkeypatch.setattr(submitit, "AutoExecutor", RecordingExecutor)
    return RecordingExecutor.made


SLURM = {
    "kind": "slurm",
    "partition": "gpu",
    "jobs": 4,
    "cpus_per_job": 8,
    "timeout_min": 600,
    "slurm_additional_parameters": {"mem": "64G", "account": "asr"},
}


def test_slurm_submits_one_array_of_the_missing_experts_with_the_launcher_parameters(
    tmp_path, speaker_csvs, fake, recorder
):
    experiment = Experiment(_hparams(tmp_path, speaker_csvs, domains=("a", "b", "c"), launcher=SLURM))
    fake_train(experiment.train_hparams("a", *_csvs(speaker_csvs, 0), None), corpus="a")  # a is done already
    fake["trained"]()
    experiment.run()
    [executor] = recorder
    assert executor.cluster == "slurm" and executor.folder == str(tmp_path / "jobs")
    params = executor.parameters
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1 and params["timeout_min"] == 600
    assert params["slurm_additional_parameters"] == {"mem": "64G", "account": "asr"}
    assert params["cpus_per_task"] == 8 and params["tasks_per_node"] == 1 and params["nodes"] == 1
    assert params["slurm_array_parallelism"] == 2  # jobs 4, but two experts are missing
    [array] = executor.arrays
    assert [(call[1], call[3]) for call in array] == [("b", 8), ("c", 8)]  # one job per missing expert
    assert array[0][0] is fake_train and array[0][2] == experiment.train_hparams("b", *_csvs(speaker_csvs, 1), None)
    assert sorted(fake["trained"]()) == ["b", "c"]


def _csvs(speaker_csvs, i):
    spk = speaker_csvs["spk1" if i % 2 == 0 else "spk2"]
    return spk, spk


def test_a_failed_slurm_job_names_its_log(tmp_path, speaker_csvs, fake, recorder, monkeypatch):
    monkeypatch.setenv("AODE_TEST_FAIL", "a")
    with pytest.raises(LaunchError, match="a: job 77_0: boom in a; log: .*77_0_0_log.err"):
        Experiment(_hparams(tmp_path, speaker_csvs, scenarios=["aode"], launcher=SLURM)).run()
    assert not fake["merges"]


# ------------------------------------------------------------------------------ bad input
def test_slurm_without_a_partition_or_submitit_fails_before_any_work(tmp_path, speaker_csvs, fake, monkeypatch):
    with pytest.raises(ConfigError, match="launcher: .*the slurm launcher needs a partition"):
        Experiment(_hparams(tmp_path / "x", speaker_csvs, launcher="slurm"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(ConfigError, match="the slurm launcher needs submitit: pip install submitit"):
        Experiment(_hparams(tmp_path / "x", speaker_csvs, launcher={"kind": "slurm", "partition": "gpu"}))
    assert not (tmp_path / "x").exists() and not fake["trained"]()


def test_the_command_line_forms(tmp_path):
    def cfg(*argv):
        return validate(ExperimentConfig, load_yaml(MINI, dict(zip(argv[::2], argv[1::2]))))

    assert cfg().launcher == LauncherConfig() and LauncherConfig().kind == "serial"
    local = cfg("launcher", "local", "jobs", 2).launcher
    assert (local.kind, local.jobs) == ("local", 2)
    assert cfg("launcher", {"kind": "local", "jobs": 2}).launcher == local
    with pytest.raises(ConfigError, match="jobs needs a parallel launcher"):
        cfg("jobs", 2)
    with pytest.raises(ConfigError, match="jobs 2 and launcher.jobs 3 differ"):
        cfg("launcher", {"kind": "local", "jobs": 3}, "jobs", 2)
    with pytest.raises(ConfigError, match="launcher.gpus_per_job: .*torchrun"):
        cfg("launcher", {"kind": "local", "gpus_per_job": 2})
    with pytest.raises(ConfigError, match="launcher.kind"):
        cfg("launcher", "kubernetes")
    with pytest.raises(ConfigError, match="launcher.partitio: Extra inputs are not permitted"):
        cfg("launcher", {"kind": "slurm", "partitio": "gpu"})


def test_the_recipe_exits_2_on_a_slurm_launcher_without_a_partition(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "average", "reproduce.py"),
            MINI,
            "--output_folder",
            str(tmp_path / "mini"),
            "--launcher",
            "slurm",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "needs a partition" in result.stderr
    assert not (tmp_path / "mini").exists()
