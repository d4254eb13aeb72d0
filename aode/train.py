"""Expert training shared by every recipe: prep -> model -> LLRD fine-tuning -> export.

``recipes/<Corpus>/train.py`` only names its data preparation and calls :func:`main`.
The hparams file holds scalars (see hparams/*.yaml); the objects (checkpointer, epoch
counter, logger, scheduler) are built here so every recipe gets the same policy.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import speechbrain as sb
import torch

from aode.atomic import atomic_folder
from aode.brain import ASRBrain
from aode.cli import RUN_OPTIONS_IN_HPARAMS
from aode.config import ConfigError
from aode.config import TrainingConfig
from aode.config import known_names
from aode.config import parse_command_line
from aode.config import validate
from aode.data import make_dataset
from aode.data import unreadable_allowance_of_test_sets
from aode.lora import add_lora
from aode.lora import has_lora
from aode.lora import merge_lora
from aode.model_card import check_hub_token
from aode.model_card import push_to_hub
from aode.model_card import write_model_card
from aode.models import check_same_architecture
from aode.models import load_asr_model
from aode.models import load_hf_config
from aode.resume import AtomicCheckpointer
from aode.resume import SeededRandomSampler
from aode.reuse import STAMP_KEY
from aode.reuse import claim_training_folder
from aode.reuse import training_stamp
from aode.schedule import STLR

if TYPE_CHECKING:
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.utils.run_opts import RunOptions

    from aode.models import ASRModel

logger = logging.getLogger(__name__)

EXPERT_DIR = "expert"


def load_hparams(
    argv: list[str], defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], RunOptions | dict[str, Any], str, str | dict[str, Any]]:
    """SpeechBrain-style: ``hparams.yaml [--key value ...]``; returns (hparams, run_opts,
    file, overrides). ``defaults`` are overrides the command line can still replace; a mapping
    on the command line replaces the file's (see :mod:`aode.config`)."""
    return parse_command_line(argv, defaults)


def freeze_non_encoder(asr: ASRModel) -> int:
    """Frozen-decoder baseline (Takashima et al.): train the encoder only.

    Every parameter of ``asr.hf_model`` outside the model's :meth:`~aode.models.ASRModel.encoder_parameters`
    is frozen: Whisper's decoder; a CTC model's head (and a wav2vec2 convolutional front end,
    outside its encoder). Returns the number of values frozen.
    """
    encoder = {id(p) for p in asr.encoder_parameters()}
    frozen = 0
    for param in asr.hf_model.parameters():
        if id(param) not in encoder:
            param.requires_grad_(False)
            frozen += param.numel()
    logger.info("frozen decoder: %d parameters frozen", frozen)
    return frozen


def build_model(config: TrainingConfig) -> tuple[ASRModel, str]:
    """The ASR model of the run: ``init_from`` (an earlier expert or merge) or ``model_source``."""
    source = config.init_from or config.model_source
    if config.init_from:
        check_same_architecture(
            load_hf_config(config.init_from),
            load_hf_config(config.model_source),
            f"init_from {config.init_from!r}",
            f"model_source {config.model_source!r}",
        )
    # the model's training and decoding keys, by name: each family takes those it declares (option_names)
    options = config.model_dump(include={"beam_size", "label_smoothing", "max_decode_ratio", "layerdrop"})
    asr = load_asr_model(source, config.family, save_path=config.pretrained_cache, **options)
    if config.freeze_decoder:
        freeze_non_encoder(asr)
    if config.lora_rank:
        add_lora(
            asr.hf_model,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            target_modules=config.lora_targets,
            dropout=config.lora_dropout,
        )
    return asr, source


# SpeechBrain run options that the hparams files set too (aode.cli.RUN_OPTIONS_IN_HPARAMS, which
# --help lists). The command line wins over the YAML, the YAML over SpeechBrain's defaults; the
# value that runs is written back into the config, so the sampler, the schedule's length and the
# exported provenance all see what ran.


def resolve_run_options(
    config: TrainingConfig, run_opts: RunOptions | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The run options given explicitly (command line or a dict); ``config`` gets the values
    that will run.

    ``run_opts`` is SpeechBrain's ``RunOptions`` (only its ``overridden_args`` count as given:
    the others are SpeechBrain's defaults, which must not beat the YAML) or a plain dict. An
    option given explicitly is written into ``config``; the rest stay as the YAML has them, and
    the Brain hands them to SpeechBrain (its own rule: default < hparams < given). With
    ``layerdrop`` above 0, DDP is told that some parameters get no gradient in a step
    (``find_unused_parameters``), whatever was given.
    """
    if run_opts is None:
        given = {}
    elif hasattr(run_opts, "overridden_args"):
        given = {key: run_opts[key] for key in run_opts.overridden_args}
    else:
        given = dict(run_opts)
    for key in RUN_OPTIONS_IN_HPARAMS:  # SpeechBrain's names, which are the config's too
        if key in given:
            setattr(config, key, given[key])
    if config.layerdrop > 0:
        given.pop("find_unused_parameters", None)
        config.find_unused_parameters = True
    return given


def log_training_plan(config: TrainingConfig, batches: int, total_steps: int, world_size: int) -> None:
    """What the user is about to train: effective batch, steps, precision."""
    accumulation = config.grad_accumulation_factor
    logger.info(
        "training plan: %d epochs x %d batches of %d per process = %d optimizer steps; effective batch %d "
        "(batch %d x accumulation %d x %d processes); precision %s; layerdrop %s",
        config.number_of_epochs,
        batches,
        config.batch_size,
        total_steps,
        config.batch_size * accumulation * world_size,
        config.batch_size,
        accumulation,
        world_size,
        config.precision,
        config.layerdrop,
    )


def train_loader_options(config: TrainingConfig, dataset: DynamicItemDataset) -> tuple[dict[str, Any], int]:
    """Batches per epoch and loader kwargs; ``steps_per_epoch`` fixes the step count.

    With ``steps_per_epoch``, a :class:`aode.resume.SeededRandomSampler` (register it with the
    checkpointer); without, SpeechBrain's shuffling (``ReproducibleRandomSampler``, or a
    ``DistributedSampler`` under DDP), whose order is a function of the epoch."""
    batch_size = config.batch_size
    steps = config.steps_per_epoch
    accumulation = config.grad_accumulation_factor
    if steps:
        # checkpointable (aode.resume): a resumed run draws the batches the uninterrupted one drew
        sampler = SeededRandomSampler(dataset, num_samples=steps * batch_size * accumulation, seed=config.seed)
        kwargs = {"batch_size": batch_size, "sampler": sampler}
        batches = steps * accumulation
    else:
        kwargs = {"batch_size": batch_size, "shuffle": True}
        batches = math.ceil(len(dataset) / batch_size)
    kwargs["num_workers"] = config.num_workers
    return kwargs, batches


def export_expert(
    brain: ASRBrain, asr: ASRModel, folder: str | os.PathLike, provenance: dict[str, Any]
) -> str | os.PathLike:
    """Recover the best-dev-WER checkpoint's weights, fold LoRA in, write a model folder.

    Only the model is recovered: the optimizer's state (twice the model's size with AdamW, 8 GiB
    at 1.1B parameters) is dropped first and not read back.
    """
    if brain.optimizer is not None:
        brain.optimizer.state.clear()
    checkpointer = brain.checkpointer
    if checkpointer is not None and checkpointer.find_checkpoint(min_key="WER") is not None:
        model_only = sb.utils.checkpoints.Checkpointer(checkpointer.checkpoints_dir, recoverables={"model": asr})
        model_only.recover_if_possible(min_key="WER")
    if has_lora(asr.hf_model):
        merged = merge_lora(asr.hf_model)
        asr.freeze_fixed_parameters()
        provenance["lora_merged_modules"] = merged
    if sb.utils.distributed.if_main_process():
        with atomic_folder(folder, overwrite=True) as tmp:
            asr.export(tmp, provenance)
            write_model_card(tmp)  # README.md, inside the temporary folder: no half folder on a crash
    return folder


def run(argv: list[str], prepare: Callable[..., Any] | None = None, corpus: str | None = None) -> str:
    """Train one expert; returns the exported folder. ``prepare(**kwargs)`` writes manifests."""
    hparams, run_opts, hparams_file, overrides = load_hparams(argv, {"domain": corpus} if corpus else None)
    config = validate(TrainingConfig, hparams, hparams_file)  # before any work
    check_hub_token(config.push_to_hub)  # --push_to_hub without a token: exit 2 before any work
    if prepare is not None and config.data_folder:
        accepted = sorted(set(inspect.signature(prepare).parameters) - {"data_folder", "save_folder"})
        try:
            known_names(list(config.prep_options), accepted, f"prep_options key of {prepare.__name__}")
        except ValueError as err:
            raise ConfigError(f"{hparams_file}: {err}") from None
    # A folder left by a run with other settings is refused (or cleared with --overwrite) before
    # anything is written into it: its hyperparams.yaml and log still describe its expert.
    planned = config.model_copy()
    resolve_run_options(planned, run_opts)
    if sb.utils.distributed.if_main_process():
        claim_training_folder(config.output_folder, training_stamp(planned), config.overwrite, EXPERT_DIR)
    sb.utils.distributed.ddp_init_group(run_opts)
    if prepare is not None and config.data_folder:  # a prep error leaves no experiment folder files
        kwargs = {"data_folder": config.data_folder, "save_folder": config.prep_folder, **config.prep_options}
        sb.utils.distributed.run_on_main(prepare, kwargs=kwargs)
    sb.create_experiment_directory(config.output_folder, hyperparams_to_save=hparams_file, overrides=overrides)
    folder = train_expert(config, run_opts, corpus=corpus)
    if sb.utils.distributed.if_main_process():
        push_to_hub(folder, config.push_to_hub)  # the finished folder, card and aode.json included
    return folder


def train_expert(
    hparams: TrainingConfig | Mapping[str, Any],
    run_opts: RunOptions | Mapping[str, Any] | None = None,
    corpus: str | None = None,
) -> str:
    """Fine-tune and export. ``hparams``: a validated :class:`aode.config.TrainingConfig`, or a
    training YAML's mapping as loaded (from Python, the experiment's jobs), validated here before
    any work."""
    if isinstance(hparams, Mapping):
        config = validate(TrainingConfig, hparams, "training hparams")
    else:
        config = hparams.model_copy()  # the run options that run are written into it, not the caller's
    run_opts = resolve_run_options(config, run_opts)
    torch.manual_seed(config.seed)
    output = config.output_folder
    os.makedirs(output, exist_ok=True)
    stamp = training_stamp(config)  # what this run is made from: a folder left by another run is not resumed
    if sb.utils.distributed.if_main_process():
        claim_training_folder(output, stamp, config.overwrite, EXPERT_DIR)
    asr, source = build_model(config)
    data = dict(
        check_audio=config.check_audio,
        skip_log=os.path.join(output, "skipped_audio.csv"),
        max_duration=config.max_duration,
        max_unknown_char_fraction=config.max_unknown_char_fraction,
    )
    # above max_unreadable_fraction the run stops: an expert of a fraction of its data
    training = dict(data, stage="train", max_unreadable_fraction=config.max_unreadable_fraction)
    train_set = make_dataset(config.train_csv, asr, **training)
    valid_set = make_dataset(config.valid_csv, asr, **training)
    test_csvs = {"test": config.test_csv} if config.test_csv else {}
    test_csvs.update(config.extra_test_csvs)
    test_unreadable = unreadable_allowance_of_test_sets(config.skip_unreadable_audio)
    test_sets = {
        name: make_dataset(path, asr, **data, max_unreadable_fraction=test_unreadable)
        for name, path in test_csvs.items()
    }
    loader_kwargs, batches = train_loader_options(config, train_set)
    epochs = config.number_of_epochs
    # Under DDP SpeechBrain splits each epoch's batches between the processes.
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    batches = math.ceil(batches / world_size)
    total_steps = max(1, epochs * batches // config.grad_accumulation_factor)
    epoch_counter = sb.utils.epoch_loop.EpochCounter(epochs)
    scheduler = STLR(total_steps, config.peak_fraction, config.stlr_ratio)
    checkpointer = AtomicCheckpointer(
        os.path.join(output, "save"), recoverables={"model": asr, "scheduler": scheduler, "counter": epoch_counter}
    )
    if isinstance(loader_kwargs.get("sampler"), SeededRandomSampler):
        # optional: a checkpoint written before it existed still loads (resumed inexactly)
        checkpointer.add_recoverable("sampler", loader_kwargs["sampler"], optional_load=True)
    log_training_plan(config, batches, total_steps, world_size)
    brain = ASRBrain(
        {"model": asr},
        config,
        run_opts=run_opts,
        checkpointer=checkpointer,
        scheduler=scheduler,
        epoch_counter=epoch_counter,
        train_logger=sb.utils.train_logger.FileTrainLogger(os.path.join(output, "train_log.txt")),
    )
    eval_kwargs = {"batch_size": config.eval_batch_size, "num_workers": config.num_workers}
    brain.fit(
        epoch_counter,
        train_set,
        valid_set,
        train_loader_kwargs=loader_kwargs,
        valid_loader_kwargs=eval_kwargs,
        progressbar=config.progressbar,
    )
    folder = os.path.join(output, EXPERT_DIR)
    best = brain.checkpointer.find_checkpoint(min_key="WER")
    provenance = {
        "kind": "expert",
        "base_model": config.model_source,
        "base_model_fingerprint": stamp["model_source"],
        STAMP_KEY: stamp,
        "init_from": config.init_from,
        "domain": corpus or config.domain,
        "train_csv": config.train_csv,
        "dev_wer": best.meta.get("WER") if best else None,
        "hparams": {k: v for k, v in config.model_dump().items() if isinstance(v, (int, float, str, bool, type(None)))},
        "lora": {"rank": config.lora_rank, "alpha": config.lora_alpha} if config.lora_rank else None,
    }
    export_expert(brain, asr, folder, provenance)
    brain.checkpointer = None  # the model now holds the best weights (LoRA folded in)
    for name, test_set in test_sets.items():
        brain.utterance_output = os.path.join(output, f"test_{name}.csv")
        brain.evaluate(test_set, test_loader_kwargs=eval_kwargs, progressbar=config.progressbar)
    return folder


def main(argv: list[str] | None = None, prepare: Callable[..., Any] | None = None, corpus: str | None = None) -> str:
    """A corpus recipe's command line: ``recipes/<Corpus>/train.py hparams.yaml [--key value ...]``.

    With ``--data_folder`` the corpus is prepared first (``prepare``, on the main process, skipped
    when done, manifests in ``prep_folder``); without it the manifests named by ``train_csv``,
    ``valid_csv`` and ``test_csv`` are used as they are. Then one expert is fine-tuned and
    exported to ``<output_folder>/expert/``. A user error (configuration, model, data layout,
    prep options the corpus cannot meet) ends it with one line ``error: ...`` and exit status 2
    (:func:`aode.cli.run_main`; ``AODE_DEBUG=1`` adds the traceback), as every AoDE command does.
    """
    from aode.cli import run_main

    def command(args: list[str]) -> str:
        folder = run(args, prepare=prepare, corpus=corpus)
        print(f"expert written to {folder}")
        return folder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_main(command, argv)
