"""The one Brain every recipe uses: forward, loss, decoding, metrics, checkpoint policy.

* compute_forward / compute_objectives for both families (:mod:`aode.models`).
* LLRD parameter groups in one optimizer (:mod:`aode.llrd`; the model places its parameters
  in layers), STLR applied to each group's own rate before every step (:mod:`aode.schedule`).
* Gradient clipping over every group (SpeechBrain's ``optimizers_step`` clips only
  ``param_groups[0]``).
* WER and CER after one scoring normaliser (:mod:`aode.text`), checkpoints kept by best
  dev WER (plus the most recent, for resuming), per-utterance outputs at evaluation.
* Exact resumption (:mod:`aode.resume`): the global random states are a recoverable (a
  mid-epoch one restored once the train loader's iterator exists), and intra-epoch checkpoints
  (``ckpt_interval_steps`` / ``ckpt_interval_minutes``) fall on gradient-accumulation boundaries.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import speechbrain as sb
import torch

from aode.atomic import atomic_open
from aode.config import BrainConfig
from aode.llrd import model_param_groups
from aode.resume import GlobalRNG
from aode.text import get_normalizer

if TYPE_CHECKING:
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.utils.checkpoints import Checkpointer
    from speechbrain.utils.epoch_loop import EpochCounter
    from speechbrain.utils.run_opts import RunOptions
    from speechbrain.utils.train_logger import TrainLogger
    from torch import nn

    from aode.models import ASRModel
    from aode.schedule import STLR

logger = logging.getLogger(__name__)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def log_llrd_table(groups: Sequence[Mapping[str, Any]]) -> None:
    """Log the LLRD groups (name, parameters, learning rate) at the start of a run."""
    lines = [f"{'group':<20} {'parameters':>14} {'lr':>11} {'x lr':>8}"]
    for group in groups:
        count = sum(p.numel() for p in group["params"])
        lines.append(f"{group['name']:<20} {count:>14,d} {group['lr']:>11.3e} {group['lr_scale']:>8.4f}")
    total = sum(p.numel() for g in groups for p in g["params"])
    lines.append(f"{'total trainable':<20} {total:>14,d}")
    logger.info("LLRD parameter groups:\n%s", "\n".join(lines))


class ASRBrain(sb.Brain):
    """Brain for any :class:`aode.models.ASRModel` (``modules={"model": ...}``).

    ``config``: the settings it reads, typed (:class:`aode.config.BrainConfig`: ``lr``,
    ``llrd_alpha``, ``llrd_mode``, ``weight_decay``, ``adam_betas``, ``normalizer``; a
    :class:`aode.config.TrainingConfig` is one, and evaluation builds one with its normaliser).
    SpeechBrain reads its run options the YAML sets (``precision``, ``grad_accumulation_factor``,
    ``max_grad_norm``, ...) from the config too, by its own rule: its default < the config <
    ``run_opts``. Training also gives the ``scheduler`` (an :class:`aode.schedule.STLR`, applied
    before and stepped after every optimizer step), the ``epoch_counter`` and the
    ``train_logger``; ``utterance_output`` is the CSV path written at TEST (None: none).
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        config: BrainConfig,
        *,
        run_opts: RunOptions | Mapping[str, Any] | None = None,
        checkpointer: Checkpointer | None = None,
        scheduler: STLR | None = None,
        epoch_counter: EpochCounter | None = None,
        train_logger: TrainLogger | None = None,
    ) -> None:
        # SpeechBrain takes its hparams as a dict (its run options among them, and a namespace
        # of them as self.hparams): the config's values, converted here and only here. The
        # optimizer is this class's own (init_optimizers), so no opt_class is passed on.
        super().__init__(modules=modules, hparams=config.model_dump(), run_opts=run_opts, checkpointer=checkpointer)
        self.config = config
        self.scheduler = scheduler
        self.epoch_counter = epoch_counter
        self.train_logger = train_logger
        self.utterance_output: str | None = None
        self.global_rng = GlobalRNG()
        if self.checkpointer is not None:
            # optional: a checkpoint written before it existed still loads (resumed inexactly)
            self.checkpointer.add_recoverable("rng", self.global_rng, optional_load=True)

    @property
    def asr(self) -> ASRModel:
        return unwrap(self.modules.model)

    # ------------------------------------------------------------------ forward / loss
    def compute_forward(self, batch: PaddedBatch, stage: sb.Stage) -> dict[str, torch.Tensor]:
        batch = batch.to(self.device)
        return self.modules.model(*self.asr.batch_inputs(batch))

    def compute_objectives(
        self, predictions: dict[str, torch.Tensor], batch: PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        loss = self.asr.loss(predictions, *self.asr.batch_targets(batch))
        if stage != sb.Stage.TRAIN:
            self._score(batch.id, self.asr.transcribe_outputs(predictions, batch), batch.text)
        return loss

    def _score(self, ids, hyps, refs):
        norm = self._normalize
        hyp_words = [norm(h).split() for h in hyps]
        ref_words = [norm(r).split() for r in refs]
        self.wer_metric.append(ids, hyp_words, ref_words)
        self.cer_metric.append(ids, [" ".join(w) for w in hyp_words], [" ".join(w) for w in ref_words])
        for utt, hyp, ref in zip(ids, hyps, refs):
            self.utterances.append({"ID": utt, "ref": ref, "hyp": hyp})

    # ------------------------------------------------------------------ stages
    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        if stage != sb.Stage.TRAIN:
            self._normalize = get_normalizer(self.config.normalizer)
            self.wer_metric = sb.utils.metric_stats.ErrorRateStats()
            self.cer_metric = sb.utils.metric_stats.ErrorRateStats(split_tokens=True)
            self.utterances = []

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.global_rng.restore_pending()  # a mid-epoch checkpoint taken after the last batch
            self.train_stats = stats
            return
        stats["WER"] = self.wer_metric.summarize("error_rate")
        stats["CER"] = self.cer_metric.summarize("error_rate")
        self.last_stats = stats
        train_logger = self.train_logger
        if stage == sb.Stage.VALID:
            lrs = {"lr_top": max(g["lr"] for g in self.optimizer.param_groups)} if self.optimizer else {}
            if train_logger is not None:
                train_logger.log_stats(
                    {"epoch": epoch, **lrs}, train_stats=getattr(self, "train_stats", None), valid_stats=stats
                )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(meta={"WER": stats["WER"]}, min_keys=["WER"])
        elif stage == sb.Stage.TEST:
            if train_logger is not None:
                train_logger.log_stats(
                    {"Epoch loaded": self.epoch_counter.current} if self.epoch_counter is not None else {},
                    test_stats=stats,
                )
            if self.utterance_output and sb.utils.distributed.if_main_process():
                self.write_utterances(self.utterance_output)

    def write_utterances(self, path: str) -> None:
        """Per-utterance reference, hypothesis and word errors, plus SpeechBrain's alignment file."""
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        per_utt = {s["key"]: s for s in self.wer_metric.scores}
        with atomic_open(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["ID", "errors", "words", "ref", "hyp"])
            writer.writeheader()
            for row in self.utterances:
                score = per_utt.get(row["ID"], {})
                writer.writerow(
                    {
                        "ID": row["ID"],
                        "errors": score.get("num_edits", ""),
                        "words": score.get("num_ref_tokens", ""),
                        "ref": row["ref"],
                        "hyp": row["hyp"],
                    }
                )
        with atomic_open(os.path.splitext(path)[0] + "_alignments.txt") as f:
            self.wer_metric.write_stats(f)

    def _wrap_distributed(self):
        """SpeechBrain converts BatchNorm (Parakeet's convolution module) to SyncBatchNorm,
        which only runs on GPUs; on CPU (gloo) wrap in DDP as is, buffers broadcast from rank 0."""
        if self.distributed_launch and self.distributed_backend == "gloo":
            from torch.nn.parallel import DistributedDataParallel

            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = DistributedDataParallel(
                        module, device_ids=None, find_unused_parameters=self.find_unused_parameters
                    )
            return
        super()._wrap_distributed()

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self) -> None:
        """One AdamW over LLRD parameter groups (paper III-A), the model's layers by its
        own :meth:`~aode.models.ASRModel.layer_of`."""
        config = self.config
        groups = model_param_groups(
            self.asr, lr=config.lr, alpha=config.llrd_alpha, mode=config.llrd_mode, weight_decay=config.weight_decay
        )
        log_llrd_table(groups)
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(config.adam_betas))
        self.optimizers_dict = {"optimizer": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_fit_batch_start(self, batch: PaddedBatch, should_step: bool) -> None:
        self.global_rng.restore_pending()  # first batch after a mid-epoch recovery
        if self.scheduler is not None:
            self.scheduler.apply(self.optimizer)

    def on_fit_batch_end(
        self, batch: PaddedBatch, outputs: dict[str, torch.Tensor], loss: torch.Tensor, should_step: bool
    ) -> None:
        if should_step and self.scheduler is not None:
            self.scheduler.step(self.optimizer)

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time: float, steps_since_ckpt: int) -> bool:
        """SpeechBrain's rule (every ``ckpt_interval_steps`` batches or ``ckpt_interval_minutes``),
        held back to the next optimizer step: gradients accumulated over part of an
        accumulation window are not saved, so a checkpoint inside one would not resume exactly."""
        if self.step % self.grad_accumulation_factor:
            return False
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def optimizers_step(self) -> None:
        """SpeechBrain's step, but clipping the gradient norm over EVERY parameter group."""
        optimizers = list(self.freeze_optimizers(self.optimizers_dict).values())
        for opt in optimizers:
            self.scaler.unscale_(opt)
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if self.max_grad_norm and params:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1
