"""Where an epoch's time goes: a callback that splits every training epoch into seconds (results.json `timing`).

Per epoch (lists, one entry per epoch of the run, in order; a resumed run continues the lists of its
checkpoint, and an epoch interrupted mid-way gets the seconds it ran before the interrupt added):
  train_s       first training batch requested .. validation starts: the training steps, loader included
  val_s         validation start .. validation end (all validation batches and the metrics' compute)
  checkpoint_s  validation end .. epoch end: the checkpoint writes (with one validation per epoch
                ModelCheckpoint saves in the epoch-end hooks, after every other callback), the early-stopping
                check, the lr schedule step and the epoch's logging
  epoch_s       epoch start .. epoch end = the sum of the three; an epoch ends where the next one starts (or
                where training ends)
Wall-clock seconds from `time.perf_counter`; on CUDA every mark synchronises the device first, so a phase is
not charged for kernels queued by the previous one (one sync per phase, not per step).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

PHASES = ("epoch_s", "train_s", "val_s", "checkpoint_s")


class EpochTiming(Callback):
    """Records `epoch_s`, `train_s`, `val_s` and `checkpoint_s` for every training epoch (module doc)."""

    def __init__(self) -> None:
        self.timing: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self._marks: dict[str, float] = {}
        self._carried: dict[str, float] = {}  # seconds the open epoch ran before a resume (from the checkpoint)
        self._carried_epoch = -1  # ... and which epoch that was
        self._epoch = -1  # the epoch being timed

    # ---- what a checkpoint holds: the finished epochs, and how long the open one has run ---------------------
    def state_dict(self) -> dict[str, Any]:
        return {"timing": {k: list(v) for k, v in self.timing.items()}, "open_epoch": self._open_epoch(),
                "open_epoch_index": self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.timing = {phase: [float(x) for x in state_dict.get("timing", {}).get(phase, [])] for phase in PHASES}
        self._carried = {k: float(v) for k, v in (state_dict.get("open_epoch") or {}).items()}
        self._carried_epoch = int(state_dict.get("open_epoch_index", -1))

    def _open_epoch(self) -> dict[str, float]:
        """Seconds the open epoch has run so far, per phase ({} between epochs)."""
        return self._phases(time.perf_counter()) if "epoch_start" in self._marks else {}

    def _phases(self, end: float) -> dict[str, float]:
        """The open epoch's seconds per phase from its start to `end`, plus those it ran before a resume."""
        m = self._marks
        train_end = m.get("val_start", end)  # no validation yet: all of it was training
        val_end = m.get("val_end", end)
        seconds = {"epoch_s": end - m["epoch_start"], "train_s": train_end - m["epoch_start"],
                   "val_s": val_end - train_end, "checkpoint_s": end - val_end}
        return {phase: value + self._carried.get(phase, 0.0) for phase, value in seconds.items()}

    def _append(self, seconds: dict[str, float]) -> None:
        """One finished epoch's seconds onto every phase's list."""
        for phase in PHASES:
            self.timing[phase].append(round(seconds.get(phase, 0.0), 3))

    def _mark(self, name: str, module: LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        self._marks[name] = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._carried and "epoch_start" not in self._marks and trainer.current_epoch != self._carried_epoch:
            # resumed from a checkpoint of an epoch's end: that epoch is over, with the seconds it ran
            self._append(self._carried)
            self._carried = {}
        self._close_epoch(pl_module)
        self._epoch = trainer.current_epoch
        self._mark("epoch_start", pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and "epoch_start" in self._marks:
            self._mark("val_start", pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and "val_start" in self._marks:
            self._mark("val_end", pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch(pl_module)

    def _close_epoch(self, module: LightningModule) -> None:
        """End the open epoch (at the next epoch's start or the end of training) and append its phases."""
        if "epoch_start" not in self._marks:
            return
        self._mark("epoch_end", module)
        self._append(self._phases(self._marks["epoch_end"]))
        self._marks, self._carried = {}, {}

    def summary(self) -> dict[str, Any]:
        """The per-epoch lists plus their totals and the share of an epoch spent outside the training steps."""
        totals = {f"total_{phase}": round(sum(values), 3) for phase, values in self.timing.items()}
        epoch_total = totals["total_epoch_s"]
        overhead = (epoch_total - totals["total_train_s"]) / epoch_total if epoch_total > 0 else 0.0
        return {**{k: list(v) for k, v in self.timing.items()}, **totals,
                "non_training_share": round(overhead, 4)}


def epoch_timing(trainer: Trainer) -> dict[str, Any] | None:
    """The `EpochTiming.summary()` of the trainer's timing callback (None when it has none)."""
    found = next((c for c in trainer.callbacks if isinstance(c, EpochTiming)), None)
    return found.summary() if found is not None else None
