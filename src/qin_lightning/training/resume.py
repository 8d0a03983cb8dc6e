"""Surviving interruptions: where `ckpt_path=last` is found, exact mid-epoch resume, SIGINT/SIGTERM handling.

What a checkpoint written by our training holds (so a resumed run continues exactly where it stopped):
- weights, Adam state, the plateau scheduler, EarlyStopping / ModelCheckpoint state and loop progress (Lightning);
- the datamodule's sampler epoch (``MMCTRDataModule.state_dict``) and, via its train loader
  (``data.resumable_loader.ResumableLoader``), how many batches of the current epoch were already trained: the
  resumed epoch skips exactly those (the permutation depends only on ``seed + epoch``, so the remaining batches
  are the same ones in the same order);
- what ``ExactResume`` adds: the global RNG states (torch CPU/CUDA, numpy, python), put back right before the
  first resumed training batch, so dropout draws continue the same stream; the plateau metric of every
  validated epoch, so the lr schedule steps Lightning leaves out on resume are taken.

`ckpt_path=last` is looked up (``resolve_ckpt_path``):
1. ``<run folder>/checkpoints/last.ckpt`` of the current run folder (resume in place with
   ``hydra.run.dir=<old run folder>``);
2. single runs only: else the newest ``last.ckpt`` of a sibling run folder, i.e. with the default
   ``hydra.run.dir`` the most recent earlier run of the same ``experiment_name`` under
   ``logs/train/runs/<experiment_name>/``; the resumed run then writes into its own, new folder.
Nothing found: a ConfigError saying where it looked.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from qin_lightning.errors import ConfigError, QinError
from qin_lightning.training.csv_logger import ResumableCSVLogger

log = logging.getLogger("qin_lightning.training.resume")
LAST_NAME = "last.ckpt"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# ---- where to resume from -----------------------------------------------------------------------------------
def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path, checkpoint_dir: Path, multirun: bool) -> str | None:
    """The checkpoint file that `ckpt_path` (None | "last" | a path) designates; ConfigError if there is none."""
    if ckpt_path is None or str(ckpt_path).strip() == "":
        return None
    if str(ckpt_path) != "last":
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path}: file not found, expected a .ckpt written by qin_lightning.train")
        return str(path)
    own = checkpoint_dir / LAST_NAME
    if own.is_file():
        return str(own)
    looked = [str(own)]
    if not multirun:
        pattern = f"*/{checkpoint_dir.relative_to(run_dir)}/{LAST_NAME}" if checkpoint_dir.is_relative_to(run_dir) \
            else f"*/checkpoints/{LAST_NAME}"
        siblings = [p for p in run_dir.parent.glob(pattern) if p.is_file() and run_dir not in p.parents]
        if siblings:
            newest = max(siblings, key=lambda p: p.stat().st_mtime)
            log.info("ckpt_path=last: resuming the most recent run of this experiment, %s", newest)
            return str(newest)
        looked.append(str(run_dir.parent / pattern))
    raise ConfigError(
        f"ckpt_path=last: no checkpoint to resume from (looked for {' and '.join(looked)}); "
        "pass hydra.run.dir=<the interrupted run's folder> or ckpt_path=<a .ckpt file>"
    )


# ---- RNG state ----------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every global RNG that training may draw from (dropout: torch; numpy/python saved anyway), as tensors and
    plain Python values only, so checkpoints stay loadable with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [int(version), list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- exact resume: one callback ----------------------------------------------------------------------------
class ExactResume(Callback):
    """What Lightning does not restore by itself, so that a resumed run continues exactly where it stopped.

    - RNG: the global RNG states are saved in every checkpoint (``qin_rng``) and put back right before the first
      resumed training batch, so dropout draws continue the same stream.
    - Plateau schedule: the monitored value of every validated epoch is kept (the callback's state). Lightning
      neither steps an epoch-interval ReduceLROnPlateau at the end of an epoch it resumed (mid-epoch, or from a
      checkpoint written at an epoch's validation end, before that epoch's step) nor stores the metric; with
      these values the missing steps are taken exactly as an uninterrupted run takes them.
    - metrics.csv: Lightning's CSV logger starts a fresh file; a ``ResumableCSVLogger`` gets its rows up to the
      checkpoint's global step back.
    The training data's position is the datamodule's (its train loader is a ``ResumableLoader``).
    """

    def __init__(self) -> None:
        self.monitored: list[dict[str, float]] = []  # {"epoch", "value"} per validated epoch
        self._pending_rng: dict[str, Any] | None = None
        self._resumed = False
        self.restored = False  # Lightning has restored the checkpoint's training state (loops, optimiser, ...)
        self._ckpt_name = "checkpoint"

    # ---- what a checkpoint holds ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"monitored": [dict(entry) for entry in self.monitored]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        monitored = state_dict.get("monitored", []) if isinstance(state_dict, dict) else None
        self.monitored = _checked_entries(monitored, {"epoch": int, "value": float}, "ExactResume.monitored",
                                          self._ckpt_name)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["qin_rng"] = rng_state()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._ckpt_name = str(trainer.ckpt_path)
        check_val_history(checkpoint, self._ckpt_name)
        self._pending_rng = checkpoint.get("qin_rng")
        self._resumed = True
        # checkpoints written before this callback existed: the plateau metric (val/auc) is in qin_val_history
        # (load_state_dict, called after this hook, replaces it when the callback's own state is there)
        self.monitored = [{"epoch": h["epoch"], "value": h["auc"]} for h in checkpoint.get("qin_val_history", [])]

    # ---- hooks ----------------------------------------------------------------------------------------------
    @staticmethod
    def _plateau_schedulers(trainer: pl.Trainer) -> list[Any]:
        return [c for c in trainer.lr_scheduler_configs
                if c.interval == "epoch" and isinstance(c.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the scheduler counts its steps (last_epoch): take those of validated epochs it has not seen
        for config in self._plateau_schedulers(trainer):
            for entry in self.monitored[config.scheduler.last_epoch :]:
                config.scheduler.step(entry["value"])
        if self._resumed and trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, ResumableCSVLogger):
                    logger.restore_rows(until_step=trainer.global_step)
        self.restored = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:  # first batch after a resume: continue the saved RNG streams
            try:
                set_rng_state(self._pending_rng)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
                raise ConfigError(f"{trainer.ckpt_path}: qin_rng: expected the RNG states our training saves, "
                                  f"got a value that cannot be restored ({_first_line(err)})") from None
            self._pending_rng = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before ModelCheckpoint saves (Lightning runs checkpoint callbacks last), so the checkpoint holds it
        if trainer.sanity_checking:
            return
        for config in self._plateau_schedulers(trainer)[:1]:
            value = trainer.callback_metrics.get(config.monitor)
            if value is not None:
                self.monitored.append({"epoch": trainer.current_epoch, "value": float(value)})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the epoch's plateau step that Lightning leaves out when it resumed this epoch (see the class doc)
        progress = trainer.fit_loop.epoch_loop.batch_progress
        epoch_done = progress.current.ready == trainer.num_training_batches or progress.is_last_batch
        if not (trainer.fit_loop.restarting and epoch_done):
            return
        if not self.monitored or self.monitored[-1]["epoch"] != trainer.current_epoch:
            return
        for config in self._plateau_schedulers(trainer):
            config.scheduler.step(self.monitored[-1]["value"])


# ---- what a resumed run carries forward must agree with the checkpoint ------------------------------------------
MAX_HISTORY_ENTRIES = 100_000  # validated epochs a checkpoint may list
HISTORY_FIELDS: dict[str, type] = {"epoch": int, "auc": float, "logloss": float, "lr": float}  # epoch, auc required
AGREEMENT_TOLERANCE = 1e-6  # a float32 metric stored twice (history, ModelCheckpoint) as Python float and tensor


def _checked_entries(entries: Any, fields: dict[str, type], where: str, path: str) -> list[dict[str, Any]]:
    """A list of dicts holding `fields` (int epochs strictly increasing from >= 0, finite numbers); ConfigError."""
    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {problem}; expected the validation history our training writes")

    if not isinstance(entries, list) or len(entries) > MAX_HISTORY_ENTRIES:
        raise refuse(f"got {type(entries).__name__}" + (f" of {len(entries):,} entries" if isinstance(entries, list)
                                                          else ""))
    checked: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        required = list(fields)[:2]
        if not isinstance(entry, dict) or any(key not in entry for key in required):
            raise refuse(f"entry {i} is {str(entry)[:80]!r}, without {' and '.join(required)}")
        for key, kind in fields.items():
            if key not in entry:
                continue
            value = entry[key]
            ok = type(value) is int if kind is int else type(value) in (int, float) and math.isfinite(value)
            if not ok or (kind is int and value < 0):
                raise refuse(f"entry {i} has {key}={str(value)[:40]}, expected "
                             f"{'an epoch >= 0' if kind is int else 'a finite number'}")
        if checked and entry["epoch"] <= checked[-1]["epoch"]:
            raise refuse(f"entry {i} has epoch {entry['epoch']} after epoch {checked[-1]['epoch']}")
        checked.append({key: entry[key] for key in fields if key in entry})
    return checked


def check_val_history(checkpoint: dict[str, Any], path: str) -> None:
    """The validation history a resumed run carries forward (``qin_val_history``: the run's best_val_auc comes
    from it) must be well formed, cover no epoch beyond the checkpoint's, and agree with the best score the
    checkpoint's own ModelCheckpoint state recorded; ConfigError (one line) otherwise."""
    history = _checked_entries(checkpoint.get("qin_val_history", []), HISTORY_FIELDS, "qin_val_history", path)
    if any(not 0.0 <= h["auc"] <= 1.0 for h in history):
        bad = next(h for h in history if not 0.0 <= h["auc"] <= 1.0)
        raise ConfigError(f"{path}: qin_val_history: epoch {bad['epoch']} has auc {bad['auc']}, expected 0..1")
    epoch = checkpoint.get("epoch")
    if history and type(epoch) is int and history[-1]["epoch"] > epoch:
        raise ConfigError(f"{path}: qin_val_history: lists epoch {history[-1]['epoch']}, after the checkpoint's "
                          f"epoch {epoch}; expected only the epochs validated before it was written")
    callbacks = checkpoint.get("callbacks")
    for key, state in (callbacks.items() if isinstance(callbacks, dict) else []):
        if not (str(key).startswith("ModelCheckpoint") and "'monitor': 'val/" in str(key) and isinstance(state, dict)):
            continue
        score = state.get("best_model_score")
        if score is None or not history:
            continue
        metric = "auc" if "'monitor': 'val/auc'" in str(key) else "logloss"
        pick = max if "'mode': 'max'" in str(key) else min
        if any(metric not in h for h in history):
            continue
        best = pick(h[metric] for h in history)
        try:
            recorded = float(score)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"{path}: callbacks {key}: best_model_score is {str(score)[:40]}, expected a number") \
                from None
        if not abs(best - recorded) <= AGREEMENT_TOLERANCE:
            raise ConfigError(
                f"{path}: qin_val_history: its best val/{metric} is {best:.6f}, but the checkpoint's ModelCheckpoint "
                f"recorded {recorded:.6f} (best_model_score); expected the history of the run that wrote this "
                "checkpoint"
            )


@contextmanager
def resume_failures_reported(ckpt_path: str | None, exact: ExactResume) -> Iterator[None]:
    """Around ``trainer.fit``: a checkpoint whose training state (loops, optimiser, scheduler, callback states)
    does not fit this run fails inside Lightning while it is restored; that is one ConfigError naming the file
    instead of Lightning's traceback. Failures after the state is restored pass unchanged."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
        if ckpt_path is None or exact.restored or isinstance(err, QinError):
            raise
        raise ConfigError(
            f"{ckpt_path}: cannot resume from it: expected the training state (loops, optimizer, scheduler, "
            f"callbacks) that qin_lightning.train saves for this config, got one that does not fit "
            f"({_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {(text.splitlines()[0] if text else '')[:200]}"


# ---- signals ------------------------------------------------------------------------------------------------
class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after saving a checkpoint (not a QinError: exit status 128 + signal)."""

    def __init__(self, signum: int, checkpoint: str, epoch: int, step: int) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.epoch = epoch
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: saved the training state at epoch {epoch}, global step {step} to {checkpoint}"
        )


class GracefulInterrupt(Callback):
    """On SIGINT/SIGTERM during training: finish the current batch, save `last.ckpt`, stop (TrainingInterrupted).

    The save happens at the end of a training batch (a state Lightning resumes exactly mid-epoch). A signal
    during the last batch or validation of an epoch is acted on after the next batch, so the epoch's
    validation, checkpoint and lr schedule are complete. A second signal stops immediately (no save).
    With DDP the decision is reduced over ranks (any rank signalled: every rank saves and stops).
    """

    def __init__(self, checkpoint_path: Callable[[pl.Trainer], Path] | None = None) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._checkpoint_path = checkpoint_path

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Act as if `signum` had been received (tests, or a controlling program)."""
        self.signum = signum

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: give up on saving
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after the current training batch"
              " (send it again to stop at once, without saving)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def path(self, trainer: pl.Trainer) -> Path:
        if self._checkpoint_path is not None:
            return self._checkpoint_path(trainer)
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if ckpt is not None and ckpt.dirpath:
            return Path(ckpt.dirpath) / LAST_NAME
        folder = Path(trainer.default_root_dir) / "checkpoints"
        return folder / LAST_NAME

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or batch_idx + 1 >= trainer.num_training_batches:
            return
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state (no 'was not set' log line)
        for logger in trainer.loggers:  # flush buffered metrics (ResumableCSVLogger puts them back on resume)
            logger.save()
        raise TrainingInterrupted(self.signum or signal.SIGTERM, str(path), trainer.current_epoch, trainer.global_step)
