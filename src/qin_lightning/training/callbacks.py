"""What a training run tells its user: why and when it stopped, lr reductions, and a model summary.

- ``StopReason`` (always added by ``qin_lightning.train``): one log line when the learning rate is reduced, one
  when training ends (early stopping, the epoch cap or ``trainer.max_time``), and ``stop_reason`` /
  ``stopped_epoch`` for ``results.json``.
- ``ParameterSummary``: Lightning's Rich model summary of the model's layers, without the torchmetrics objects
  (0-parameter rows) and without its FLOPs column, which reads 0 for a module whose forward takes a batch object
  (Lightning counts FLOPs only through ``example_input_array``).
- ``progress_bar``: Rich's progress bar on a terminal; ``LineProgressBar`` (one plain line per epoch) when the
  output goes to a file or a pipe, where Rich's live bar would wrap one metric per line.
- ``quiet_lightning_notices``: drops Lightning's notices a user cannot act on (GPU/TPU availability, the litlogger
  tip, "Trainer already configured with model summary callbacks", its own stop line: ``StopReason`` logs why).
- ``with_display_flags``: the Trainer's callbacks plus ``enable_progress_bar`` / ``enable_model_summary``, so
  ``callbacks.progress_bar=null`` and ``callbacks.model_summary=null`` really remove them (Lightning would
  otherwise add its default Rich versions back).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    Callback, EarlyStopping, ModelSummary, ProgressBar, RichModelSummary, RichProgressBar, Timer,
)
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.utilities.model_summary import ModelSummary as LayerSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch import nn
from torchmetrics import Metric

log = logging.getLogger("qin_lightning.train")

# Lightning's info lines that tell a user nothing to act on (logged through its rank_zero logger)
LIGHTNING_NOTICES = ("GPU available:", "TPU available:", "HPU available:", "\U0001f4a1 Tip:",
                     "Trainer already configured with model summary", "`Trainer.fit` stopped:")


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_NOTICES)


def quiet_lightning_notices() -> None:
    """Drop ``LIGHTNING_NOTICES`` from Lightning's log (its warnings and every other line stay)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices())


def progress_bar() -> ProgressBar:
    """Rich's live progress bar when stdout is a terminal, else ``LineProgressBar`` (plain lines in a file)."""
    return RichProgressBar() if sys.stdout.isatty() else LineProgressBar()


class LineProgressBar(ProgressBar):
    """One plain-text line per epoch on stdout (for output redirected to a file or a pipe): the epoch, its steps,
    the epoch's metrics and its seconds, e.g. ``epoch 3/100: 30 steps, train/loss_epoch=0.512, val/auc=0.7312,
    val/logloss=0.4700 (12.3 s)``."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items()
                   if k != "v_num" and not k.endswith("_step")}  # the epoch's values, not its last step's
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
        seconds = time.perf_counter() - self._epoch_started
        last = trainer.max_epochs - 1 if trainer.max_epochs is not None and trainer.max_epochs > 0 else "?"
        print(f"epoch {trainer.current_epoch}/{last}: {trainer.global_step} steps"
              f"{', ' + shown if shown else ''} ({seconds:.1f} s)", flush=True)


class SameBatchesEveryEpoch(Callback):
    """``debug=overfit``: every epoch draws epoch 0's batch order (the training sampler shuffles by seed + epoch),
    so with ``trainer.limit_train_batches=N`` the model sees the same N batches again and again. Lightning's own
    ``overfit_batches`` cannot swap our sampler (it replaces a plain DataLoader's)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _set_sampler_epoch(trainer.train_dataloader, 0)  # after Lightning set this epoch's, before a batch is drawn


class _LayersOnly(LayerSummary):
    """Lightning's layer summary without torchmetrics objects (state, no parameters: not part of the model)."""

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in super().named_modules if not isinstance(m, Metric)]

    @property
    def total_training_modes(self) -> dict[str, int]:
        modes = [m.training for m in self._model.modules() if not isinstance(m, Metric)][1:]  # without the root
        return {"train": modes.count(True), "eval": modes.count(False)}


# the values of results.json's `stop_reason`
STOP_REASONS = ("early_stopping", "max_epochs", "max_time", "interrupted", "failed")


def with_display_flags(callbacks: list[Callback], enable_model_summary: bool = True) -> dict[str, Any]:
    """Trainer arguments ``callbacks``, ``enable_progress_bar``, ``enable_model_summary``: Lightning adds no
    progress bar / model summary the config left out, and ``trainer.enable_model_summary=false`` drops ours."""
    kept = [c for c in callbacks if enable_model_summary or not isinstance(c, ModelSummary)]
    return {
        "callbacks": kept,
        "enable_progress_bar": any(isinstance(c, ProgressBar) for c in kept),
        "enable_model_summary": any(isinstance(c, ModelSummary) for c in kept),
    }


class StopReason(Callback):
    """Logs lr reductions and the end of training; records why and after which epoch training stopped."""

    def __init__(self) -> None:
        self.stop_reason: str | None = None
        self.stopped_epoch: int | None = None
        self._lrs: list[float] | None = None
        self._early_stopper: EarlyStopping | None = None

    @staticmethod
    def _current_lrs(trainer: pl.Trainer) -> list[float]:
        return [float(group["lr"]) for opt in trainer.optimizers for group in opt.param_groups]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = self._current_lrs(trainer)
        if self._lrs is not None and lrs and lrs[0] < self._lrs[0] and trainer.is_global_zero:
            log.info(
                "lr reduced %.3g -> %.3g from epoch %d (val/auc did not improve at epoch %d)",
                self._lrs[0], lrs[0], trainer.current_epoch, trainer.current_epoch - 1,
            )  # fmt: skip
        self._lrs = lrs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # runs after validation, so EarlyStopping (checked at validation end) has already decided
        self.stopped_epoch = trainer.current_epoch
        if trainer.should_stop and self._early_stopper is None:
            stoppers = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
            epoch = trainer.current_epoch
            stopped = [c for c in stoppers if c.stopped_epoch == epoch and c.wait_count >= c.patience]
            self._early_stopper = stopped[0] if stopped else None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if self._early_stopper is not None:
            es = self._early_stopper
            self.stop_reason = "early_stopping"
            # the best checkpoint's score: the best value seen (EarlyStopping's own best counts min_delta steps)
            ckpt = trainer.checkpoint_callback
            score = ckpt.best_model_score if ckpt is not None and ckpt.best_model_score is not None else es.best_score
            best = f"; best {float(score):.6f}" if score is not None else ""
            message = (
                f"early stopping after epoch {self.stopped_epoch}: {es.monitor} did not improve by {es.min_delta:g}"
                f" for {es.patience} epochs{best}"
            )
        elif timer is not None and timer.time_remaining() <= 0:
            self.stop_reason = "max_time"
            message = f"stopped after epoch {self.stopped_epoch}: trainer.max_time reached"
        else:
            self.stop_reason = "max_epochs"
            message = f"stopped after epoch {self.stopped_epoch}: trainer.max_epochs={trainer.max_epochs} reached"
        if trainer.is_global_zero:
            log.info(message)

    def outcome(self) -> dict[str, Any]:
        """``stop_reason`` and ``stopped_epoch`` (0-based, the last epoch trained) for results.json."""
        return {"stop_reason": self.stop_reason, "stopped_epoch": self.stopped_epoch}


class ParameterSummary(RichModelSummary):
    """The Rich model summary (name, type, parameters, mode per layer; totals) of the model's layers (no metric
    objects), without a FLOPs column."""

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> LayerSummary:
        return _LayersOnly(pl_module, max_depth=self._max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if name in ("Params", "In sizes", "Out sizes") else "left")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"[bold]Trainable params[/]: {get_human_readable_count(trainable_parameters)}   "
            f"[bold]Non-trainable[/]: {get_human_readable_count(frozen)}   "
            f"[bold]Total[/]: {get_human_readable_count(total_parameters)} ({model_size:,.1f} MB)"
        )
        console.print(
            f"[bold]Modules[/]: {total_training_modes['train']} train, {total_training_modes['eval']} eval"
        )
