"""Independent trainings of a stage as separate jobs (the experiment's ``launcher``).

:func:`run_jobs` trains ``{name: hparams}`` and returns ``{name: exported folder}``; each job calls
the same function the serial path calls (aode.train.train_expert, with the same hparams and
``corpus=name``), so the exported expert and its aode.json provenance are the same:

* ``serial``: one after the other in this process (what :class:`aode.experiment.Experiment` does
  itself; :func:`run_jobs` does it too, for callers without an experiment).
* ``local``: ``jobs`` fresh processes at a time on this machine (multiprocessing's spawn
  context; submitit's LocalExecutor starts every job at once, so it cannot bound them). With
  GPUs each process sees its own (CUDA_VISIBLE_DEVICES, round robin over the visible ones);
  without, torch's threads are divided: ``max(1, cpus // jobs)`` each. Log: ``<folder>/<name>.log``.
* ``slurm``: one submitit job array (``executor.map_array``), ``jobs`` tasks at a time
  (``--array=...%jobs``); logs: submitit's ``<folder>/<job id>_0_log.{out,err}``.

A failed job does not stop the others of its batch; when they are done :class:`LaunchError` names
every failed job and its log, and the experiment stops there (nothing is merged from a missing
expert). A rerun launches only the experts without an exported folder.
"""

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import traceback
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Optional

from aode.atomic import atomic_write_json
from aode.config import LauncherConfig

logger = logging.getLogger(__name__)

TrainFn = Callable[..., str]  # fn(hparams, corpus=name) -> exported folder

LOCAL_JOBS_WITHOUT_GPUS = 2


class LaunchError(RuntimeError):
    """Some jobs of a batch failed: ``failed`` maps each job's name to its log file."""

    def __init__(self, failed: Mapping[str, str], reasons: Mapping[str, str], total: int) -> None:
        self.failed = dict(failed)
        lines = [f"{name}: {reasons.get(name) or 'failed'}; log: {log}" for name, log in self.failed.items()]
        super().__init__(
            f"{len(self.failed)} of {total} training jobs failed (the experiment stops before merging; "
            "a rerun trains only the missing experts):\n  " + "\n  ".join(lines)
        )


def _run_job(fn: TrainFn, name: str, hparams: Mapping[str, Any], threads: Optional[int]) -> str:
    """One job, in the job's own process: what the serial path calls, with ``threads`` torch threads."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(hparams, corpus=name)


def _slurm_job(fn: TrainFn, name: str, hparams: Mapping[str, Any], threads: Optional[int]) -> str:
    """A Slurm job (on its node): the training's INFO log to the job's log file, then :func:`_run_job`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return _run_job(fn, name, hparams, threads)


def _last_line(path: str) -> str:
    """The last non-empty line of a log (the exception, usually)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-50:] if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _local_child(
    fn: TrainFn,
    name: str,
    hparams: Mapping[str, Any],
    log_path: str,
    result_path: str,
    cuda: Optional[str],
    threads: Optional[int],
) -> None:
    """A local job's process (spawned): output to its log, the folder to ``result_path``."""
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr, force=True
    )
    print(f"[aode] job {name}: pid {os.getpid()}, CUDA_VISIBLE_DEVICES={cuda}, torch threads {threads}", flush=True)
    try:
        folder = _run_job(fn, name, hparams, threads)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    atomic_write_json(result_path, {"folder": folder})
    sys.stdout.flush()


def run_local(
    jobs: Mapping[str, Mapping[str, Any]], fn: TrainFn, folder: str, n_jobs: Optional[int], gpus_per_job: int = 1
) -> dict[str, str]:
    """``jobs`` in at most ``n_jobs`` spawned processes at a time; see the module's docstring."""
    os.makedirs(folder, exist_ok=True)
    gpus = visible_gpus() if gpus_per_job else []
    n_jobs = n_jobs or (len(gpus) or LOCAL_JOBS_WITHOUT_GPUS)
    slots = list(range(min(n_jobs, len(jobs))))
    threads = None if gpus else max(1, _cpus() // len(slots))
    ctx = multiprocessing.get_context("spawn")
    pending = list(jobs.items())
    running = {}  # sentinel -> (name, process, slot, start)
    results, failed, reasons = {}, {}, {}
    print(
        f"[aode] {len(jobs)} training jobs, {len(slots)} at a time on this machine "
        f"({'one GPU each' if gpus else f'{threads} torch threads each'}); logs in {folder}",
        flush=True,
    )
    try:
        while pending or running:
            while pending and slots:
                slot = slots.pop(0)
                name, hparams = pending.pop(0)
                log_path = os.path.join(folder, f"{name}.log")
                result_path = os.path.join(folder, f"{name}.result.json")
                for path in (log_path, result_path):
                    if os.path.exists(path):
                        os.remove(path)
                cuda = gpus[slot % len(gpus)] if gpus else ("" if not gpus_per_job else None)
                process = ctx.Process(
                    target=_local_child,
                    args=(fn, name, dict(hparams), log_path, result_path, cuda, threads),
                    name=f"aode-{name}",
                )
                process.start()
                running[process.sentinel] = (name, process, slot, time.time())
            for sentinel in multiprocessing.connection.wait(list(running)):
                name, process, slot, start = running.pop(sentinel)
                process.join()
                slots.append(slot)
                log_path = os.path.join(folder, f"{name}.log")
                result_path = os.path.join(folder, f"{name}.result.json")
                if process.exitcode == 0 and os.path.isfile(result_path):
                    with open(result_path, encoding="utf-8") as f:
                        results[name] = json.load(f)["folder"]
                    print(f"[aode] job {name} done ({time.time() - start:.0f} s)", flush=True)
                else:
                    failed[name] = log_path
                    reasons[name] = f"exit code {process.exitcode}: {_last_line(log_path)}"
                    print(f"[aode] job {name} FAILED (exit code {process.exitcode}); log: {log_path}", flush=True)
    finally:
        for _, process, _, _ in running.values():  # interrupted: no orphan trainings
            process.terminate()
            process.join()
    if failed:
        raise LaunchError(failed, reasons, len(jobs))
    return results


def slurm_parameters(launcher: LauncherConfig, n: int) -> dict[str, Any]:
    """submitit.AutoExecutor.update_parameters's arguments for ``n`` jobs."""
    params = {
        "name": "aode",
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": launcher.gpus_per_job,
        "timeout_min": launcher.timeout_min,
        "slurm_partition": launcher.partition,
        "slurm_array_parallelism": min(launcher.jobs or n, n),
        "slurm_additional_parameters": dict(launcher.slurm_additional_parameters),
    }
    if launcher.cpus_per_job:
        params["cpus_per_task"] = launcher.cpus_per_job
    return params


def run_slurm(
    jobs: Mapping[str, Mapping[str, Any]], fn: TrainFn, folder: str, launcher: LauncherConfig
) -> dict[str, str]:
    """``jobs`` as one Slurm job array through submitit; waits for all of them."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**slurm_parameters(launcher, len(jobs)))
    names = list(jobs)
    submitted = executor.map_array(
        _slurm_job, [fn] * len(names), names, [dict(jobs[n]) for n in names], [launcher.cpus_per_job] * len(names)
    )
    print(
        f"[aode] {len(names)} training jobs submitted to Slurm partition {launcher.partition}: "
        + ", ".join(f"{n} = {job.job_id}" for n, job in zip(names, submitted))
        + f"; logs in {folder}",
        flush=True,
    )
    results, failed, reasons = {}, {}, {}
    for name, job in zip(names, submitted):
        try:
            results[name] = job.result()
            print(f"[aode] job {name} ({job.job_id}) done", flush=True)
        except Exception as err:  # submitit's FailedJobError / UncompletedJobError, or the job's own
            failed[name] = str(job.paths.stderr)
            message = str(err).strip()  # submitit's FailedJobError holds the job's traceback: its last line
            reasons[name] = f"job {job.job_id}: {message.splitlines()[-1][:300] if message else repr(err)}"
            print(f"[aode] job {name} ({job.job_id}) FAILED; log: {failed[name]}", flush=True)
    if failed:
        raise LaunchError(failed, reasons, len(jobs))
    return results


def run_jobs(
    jobs: Mapping[str, Mapping[str, Any]],
    launcher: LauncherConfig,
    folder: str,
    fn: Optional[TrainFn] = None,
) -> dict[str, str]:
    """Train ``{name: hparams}`` with ``launcher`` (logs and submitit's files in ``folder``);
    returns ``{name: exported folder}``. ``fn``: default aode.train.train_expert (looked up now,
    so a test's replacement is the one the jobs run; for local and slurm jobs it must be importable
    by name from its module, as pickle requires). Raises :class:`LaunchError` listing the failed
    jobs and their logs, after every job of the batch has ended."""
    if fn is None:
        import aode.train

        fn = aode.train.train_expert
    if not jobs:
        return {}
    if launcher.kind == "serial":
        return {name: _run_job(fn, name, hparams, None) for name, hparams in jobs.items()}
    if launcher.kind == "local":
        return run_local(jobs, fn, folder, launcher.jobs, launcher.gpus_per_job)
    if launcher.kind == "slurm":
        return run_slurm(jobs, fn, folder, launcher)
    raise ValueError(f"unknown launcher kind {launcher.kind!r}")
