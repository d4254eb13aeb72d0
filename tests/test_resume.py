"""A run killed (``kill -9``) and rerun with the same command exports the same bytes as a run
that was never interrupted: at the end of an epoch, and mid-epoch with ``--ckpt_interval_steps``.

Each run is the command line a user types (a corpus recipe with a shipped YAML and overrides),
on one thread, with a tiny Parakeet CTC model whose dropout draws from torch's global RNG. The
uninterrupted runs run once per module; the interrupted runs are killed with SIGKILL as soon as
the checkpoint they are meant to resume from is on disk, and the test checks afterwards that the
kill landed where intended (so a slow poll can never make it pass by not testing anything) and
that the rerun loaded that checkpoint (a rerun from scratch would give the same bytes too).
Before aode.resume, both reruns differed from the uninterrupted run, and a kill just after a
checkpoint's CKPT.yaml appeared left a checkpoint the rerun could not load.
"""

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import recipe_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
# Two epochs of 3 optimizer steps over 2 accumulated batches of 2 utterances: 6 batches per epoch,
# enough time for the poll to kill inside one; mid-epoch checkpoints fall on even batches only.
STEPS, ACCUMULATION = 3, 2
BATCHES = STEPS * ACCUMULATION


@pytest.fixture(scope="module")
def command(tiny_parakeet, sample_manifest):
    """The command line of one run writing to ``out`` (extra options appended)."""

    def make(out, *extra):
        return [
            sys.executable,
            os.path.join(ROOT, "recipes", "JLCorpus", "train.py"),
            os.path.join(ROOT, "hparams", "parakeet_llrd.yaml"),
            *recipe_paths(tiny_parakeet, str(out), sample_manifest, sample_manifest, "null"),
            "--number_of_epochs",
            "2",
            "--steps_per_epoch",
            str(STEPS),
            "--grad_accumulation_factor",
            str(ACCUMULATION),
            "--batch_size",
            "2",
            "--num_workers",
            "0",
            "--lr",
            "0.003",
            "--progressbar",
            "False",
            *extra,
        ]

    return make


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run(*cmds):
    """Run the commands side by side to their ends; returns the output (stdout and stderr) of
    the last."""
    logs, procs = [], []
    for cmd in cmds:
        logs.append(tempfile.TemporaryFile(mode="w+"))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=logs[-1], stderr=subprocess.STDOUT))
    outputs = []
    try:
        for proc, log in zip(procs, logs):
            proc.wait(timeout=TIMEOUT_S)
            log.seek(0)
            outputs.append(log.read())
            assert proc.returncode == 0, outputs[-1][-3000:]
    finally:
        for proc, log in zip(procs, logs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return outputs[-1]


def weights_sha(out):
    with open(os.path.join(out, "expert", "model.safetensors"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def checkpoints(out):
    """The complete checkpoints in ``out/save`` (SpeechBrain lists a folder once its CKPT.yaml
    exists), oldest first: (epoch, batches the train loader had yielded, end of epoch, folder)."""
    import yaml

    save = os.path.join(out, "save")
    found = []
    for name in sorted(os.listdir(save)) if os.path.isdir(save) else []:
        folder = os.path.join(save, name)
        try:
            with open(os.path.join(folder, "CKPT.yaml")) as f:
                meta = yaml.safe_load(f)
            with open(os.path.join(folder, "counter.ckpt")) as f:
                epoch = int(f.read())
            with open(os.path.join(folder, "dataloader-TRAIN.ckpt")) as f:
                position = f.read()
        except (OSError, ValueError, yaml.YAMLError):
            continue  # not (or no longer, or not yet) a complete checkpoint
        found.append(
            (meta["unixtime"], epoch, None if position == "None" else int(position), meta["end-of-epoch"], folder)
        )
    return [entry[1:] for entry in sorted(found)]


def run_and_kill(cmd, out, when):
    """Start ``cmd``, SIGKILL it as soon as ``when(checkpoints(out))`` holds; returns the
    checkpoints left on disk."""
    log_path = os.path.join(os.path.dirname(str(out)), os.path.basename(str(out)) + ".killed.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not when(checkpoints(out)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the run ended before the kill:\n{open(log_path).read()[-3000:]}")
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "expert"))
    return checkpoints(out)


@pytest.fixture(scope="module")
def uninterrupted(command, tmp_path_factory):
    """Two uninterrupted runs of the same command, side by side: their exported weights' sha256."""
    folder = tmp_path_factory.mktemp("resume")
    run(command(folder / "first"), command(folder / "second"))
    return weights_sha(folder / "first"), weights_sha(folder / "second")


@pytest.fixture(scope="module")
def reference(uninterrupted):
    return uninterrupted[0]


def test_uninterrupted_runs_are_identical_and_the_seed_matters(command, uninterrupted, tmp_path):
    """The control: the same command twice gives the same bytes, another seed other bytes."""
    first, second = uninterrupted
    assert first == second
    run(command(tmp_path / "seed", "--seed", "7"))
    assert weights_sha(tmp_path / "seed") != first


def test_kill_at_end_of_epoch_then_rerun_gives_the_same_weights(command, reference, tmp_path):
    out = tmp_path / "run"
    left = run_and_kill(command(out), out, lambda ckpts: any(end for _, _, end, _ in ckpts))
    assert [(epoch, end) for epoch, _, end, _ in left] == [(1, True)], f"killed elsewhere than after epoch 1: {left}"
    log = run(command(out))
    assert f"Loading a checkpoint from {left[-1][-1]}" in log
    epochs = [line.split(",")[0] for line in open(out / "train_log.txt")]
    assert epochs.count("epoch: 1") == 1 and epochs[-1] == "epoch: 2"  # epoch 1 ran once, before the kill
    assert weights_sha(out) == reference


def test_kill_mid_epoch_then_rerun_gives_the_same_weights(command, reference, tmp_path):
    out = tmp_path / "run"
    cmd = command(out, "--ckpt_interval_steps", "1")
    left = run_and_kill(cmd, out, lambda ckpts: any(epoch == 2 and not end for epoch, _, end, _ in ckpts))
    epoch, position, end, folder = left[-1]
    assert epoch == 2 and not end and 1 <= position <= BATCHES, f"killed elsewhere than in epoch 2: {left}"
    assert position % ACCUMULATION == 0  # never inside an accumulation window (its gradients are not saved)
    log = run(cmd)
    assert f"Loading a checkpoint from {folder}" in log
    epochs = [line.split(",")[0] for line in open(out / "train_log.txt")]
    assert epochs.count("epoch: 1") == 1 and epochs[-1] == "epoch: 2"
    assert weights_sha(out) == reference
    # the intra-epoch checkpoints are deleted by the next end-of-epoch one; the best and the last remain
    assert len(checkpoints(out)) <= 2 and all(end for _, _, end, _ in checkpoints(out))


# ---------------------------------------------------------------- the pieces, in-process (fast)


def test_a_checkpoint_is_listed_only_once_its_files_are_written(tmp_path):
    from speechbrain.utils.checkpoints import mark_as_loader
    from speechbrain.utils.checkpoints import mark_as_saver
    from speechbrain.utils.checkpoints import register_checkpoint_hooks

    from aode.resume import AtomicCheckpointer

    meta_seen = []

    @register_checkpoint_hooks
    class Probe:
        @mark_as_saver
        def save(self, path):
            meta_seen.append(os.path.exists(os.path.join(os.path.dirname(path), "CKPT.yaml")))
            with open(path, "w") as f:
                f.write("1")

        @mark_as_loader
        def load(self, path, end_of_epoch):
            pass

    checkpointer = AtomicCheckpointer(tmp_path, {"probe": Probe()})
    killed = tmp_path / "CKPT+killed-while-saving"  # a save a kill interrupted: no CKPT.yaml
    killed.mkdir()
    (killed / "probe.ckpt").write_text("")
    assert checkpointer.list_checkpoints() == []
    checkpointer.save_checkpoint(meta={"WER": 1.0})
    assert meta_seen == [False]  # the meta file comes after the parameter files
    assert not killed.exists()
    [checkpoint] = checkpointer.list_checkpoints()
    assert checkpoint.meta["WER"] == 1.0 and checkpoint.meta["end-of-epoch"] is True


def test_loader_order_and_random_state_resume_mid_epoch(tmp_path):
    """A mid-epoch checkpoint in the second epoch: a new loader, sampler and random state recovered
    from it give the remaining batches of that epoch, the next epoch's, and the random numbers
    the uninterrupted run drew (after the new loader's iterator has taken its base seed)."""
    import torch
    from speechbrain.dataio.dataloader import SaveableDataLoader

    from aode.resume import AtomicCheckpointer
    from aode.resume import GlobalRNG
    from aode.resume import SeededRandomSampler

    data = list(range(10))

    def setup(folder):
        sampler = SeededRandomSampler(data, num_samples=14, seed=3)  # more than one pass per epoch
        loader = SaveableDataLoader(data, batch_size=2, sampler=sampler)
        rng = GlobalRNG()
        checkpointer = AtomicCheckpointer(folder, {"loader": loader, "sampler": sampler, "rng": rng})
        return loader, rng, checkpointer

    torch.manual_seed(0)
    loader, _, checkpointer = setup(tmp_path / "a")
    after = None  # what the uninterrupted run does after the checkpoint
    for epoch in (1, 2, 3):
        for i, batch in enumerate(loader):
            draw = torch.rand(1).item()  # as dropout draws
            if after is not None:
                after.append((epoch, batch.tolist(), draw))
            if epoch == 2 and i == 2:
                checkpointer.save_checkpoint(end_of_epoch=False)
                after = []

    torch.manual_seed(1)  # the rerun starts from another state
    loader, rng, checkpointer = setup(tmp_path / "a")
    checkpointer.recover_if_possible()
    resumed = []
    for epoch in (2, 3):
        for batch in loader:
            rng.restore_pending()  # what the Brain does at each batch start
            resumed.append((epoch, batch.tolist(), torch.rand(1).item()))
    assert len(after) == 4 + 7
    assert resumed == after
