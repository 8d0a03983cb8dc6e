"""Test-only: make a training subprocess die by SIGKILL at a chosen moment (tests/test_untrusted.py,
tests/test_resume.py).

- ``KillAt`` (a callback, added with ``+callbacks.kill._target_=sigkill_helpers.KillAt``): SIGKILL at the start of
  training batch ``batch`` of ``epoch`` (``stage=train``), inside that batch's step after its backward pass and
  before the optimizer updates the weights (``stage=step``), or at the start of validation batch ``batch``
  (``stage=val``).
- ``python tests/sigkill_helpers.py NAME N [train overrides]``: runs ``qin_lightning.train`` and SIGKILLs it in the
  middle of the N-th write of a checkpoint named NAME (half of its bytes are in the temporary file, fsynced).
- ``Progress`` (a callback): writes {"epoch", "batch"} after every training batch and sleeps, so that the test
  can send SIGKILL from outside at a known point.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(pl.Callback):
    """SIGKILL this process at (epoch, batch) of training (its start or mid-step) or of validation."""

    def __init__(self, epoch: int, batch: int, stage: str = "train") -> None:
        self.epoch, self.batch, self.stage = epoch, batch, stage
        self.at_batch = False  # the training batch running now is (epoch, batch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.at_batch = (trainer.current_epoch, batch_idx) == (self.epoch, self.batch)
        if self.stage == "train" and self.at_batch:
            _die()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        if self.stage == "step" and self.at_batch:
            _die()

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.stage == "val" and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            _die()


class Progress(pl.Callback):
    """Record the last finished training batch in `path`, then sleep (time for the test to act)."""

    def __init__(self, path: str, sleep: float) -> None:
        self.path, self.sleep = Path(path), sleep

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.path.write_text(json.dumps({"epoch": trainer.current_epoch, "batch": batch_idx}))
        time.sleep(self.sleep)


def kill_during_checkpoint_write(name: str, nth: int) -> None:
    """Patch torch.save: the `nth` save into a temporary file for `name` writes half its bytes, then SIGKILL."""
    import torch

    real_save = torch.save
    seen = 0

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal seen
        target = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
        if Path(target).name.startswith(f".{name}."):
            seen += 1
            if seen == nth:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()
        real_save(obj, f, *args, **kwargs)

    torch.save = save  # type: ignore[assignment]


if __name__ == "__main__":
    checkpoint_name, nth_write = sys.argv.pop(1), int(sys.argv.pop(1))
    kill_during_checkpoint_write(checkpoint_name, nth_write)
    from qin_lightning.train import main

    main()
