"""Train a CTR model: ``python -m qin_lightning.train [+experiment=NAME] [key=value ...]`` (Hydra).

Composes ``conf/train.yaml``, builds the datamodule and the model, fits with Lightning, reloads the best
weights, writes ``results.json`` into the run folder and prints ``best val/auc=<value>`` as its last line.
Returns the optimised metric so Hydra sweepers (Optuna) can use it.

Resume: ``ckpt_path=last`` (see ``qin_lightning.training.resume`` for where it is looked up) or
``ckpt_path=<file>``. SIGINT/SIGTERM during training save ``checkpoints/last.ckpt`` after the current batch and
exit with status 128 + signal number, printing the command that resumes. User errors (bad data/config,
non-finite loss) end with ``error: <one line>`` and exit status 2 (``traceback=true`` shows the traceback), Hydra's
composition errors included (``qin_lightning.errors.run_hydra_reporting_errors``). A run that fails on its config
or data, before anything was trained, leaves no run folder; one that fails later leaves a ``results.json`` with
``status: failed`` (reports skip it). ``debug=fdr|limit|overfit|profiler`` (conf/debug/) are short development runs
written under ``<log_dir>/debug/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from qin_lightning.checkpoint import read_checkpoint
from qin_lightning.config import CONFIG_DIR, objective_key
from qin_lightning.data import layout
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.errors import ConfigError, QinError, exit_with_error, run_hydra_reporting_errors
from qin_lightning.files import atomic_write_json
from qin_lightning.machine import reuse_freed_memory, set_threads
from qin_lightning.predictions import TEST_PREDICTIONS, split_key, write_predictions
from qin_lightning.serving.scorer import torch_probabilities
from qin_lightning.training.build import (
    build_datamodule, build_module, build_trainer, check_train_config, instantiate_list,
)
from qin_lightning.training.callbacks import StopReason, quiet_lightning_notices
from qin_lightning.training.metrics import split_metrics
from qin_lightning.training.module import CTRModule, NonFiniteLossError
from qin_lightning.training.resume import (
    ExactResume, GracefulInterrupt, TrainingInterrupted, resolve_ckpt_path, resume_failures_reported,
)
from qin_lightning.training.results import (
    completed_record, output_dir, record_failure, resume_command, run_folder_name, sweep_name,
)
from qin_lightning.training.timing import EpochTiming
from qin_lightning.training.tracking import finish_wandb, start_wandb, wandb_run_id

log = logging.getLogger("qin_lightning.train")
# the lines that end a run (`run folder: ...`, `best val/auc=...`): printed, and written last into train.log
result_log = logging.getLogger("qin_lightning.result")
quiet_lightning_notices()
# a multirun job folder is named by its overrides (conf/hydra/default.yaml: ${qin.run_folder:...})
OmegaConf.register_new_resolver("qin.run_folder", run_folder_name, replace=True)
# Lightning 2.6 on torch 2.13: an internal deprecation notice printed on every run, nothing for the user to do
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# bf16-mixed keeps fp32 master weights, so the summary's 32-bit size estimate is the right one
warnings.filterwarnings("ignore", message=r"Precision bf16-mixed is not supported by the model summary")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; returns the results written to ``results.json``."""
    started = time.time()
    try:
        run = _set_up(cfg)
    except QinError as err:  # nothing ran: main removes the fresh run folder
        err.before_start = True
        raise
    try:
        with resume_failures_reported(run.resume_from, run.exact):
            run.trainer.fit(run.module, datamodule=run.dm, ckpt_path=run.resume_from)
    except NonFiniteLossError as err:
        last = run.ckpt_dir / "last.ckpt"
        kept = f"; last good checkpoint: {last}" if last.is_file() else "; no checkpoint was written before it"
        raise NonFiniteLossError(f"{err}{kept}") from err
    return _finish(cfg, run, started)


@dataclass
class PreparedRun:
    """What ``_set_up`` built: everything ``trainer.fit`` and the run's record need."""

    dm: MMCTRDataModule
    module: CTRModule
    trainer: pl.Trainer
    loggers: list[Logger]
    stop: StopReason
    exact: ExactResume
    ckpt_dir: Path
    resume_from: str | None


def _set_up(cfg: DictConfig) -> PreparedRun:
    """Everything before ``trainer.fit``: the config checked, data, model, callbacks, loggers, trainer, and the
    checkpoint to resume from. A QinError raised here means nothing has run yet."""
    check_train_config(cfg)  # types, ranges, mandatory values, a GPU that exists: before anything is built
    objective_key(str(cfg.get("optimized_metric", "val/auc")))  # a metric no run records fails here, not after fit
    set_threads(cfg.get("threads"))
    reuse_freed_memory(bool(cfg.get("reuse_freed_memory", True)))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    dm = build_datamodule(cfg)
    if cfg.get("test_after_fit") and not dm.has_test_labels:  # checked before training, not after it
        raise ConfigError(
            f"test_after_fit=true: {dm.data_dir / layout.TEST_FILE} has no '{layout.LABEL}' column, so the test split"
            " cannot be evaluated (set test_after_fit=false; python -m qin_lightning.predict writes its predictions)"
        )
    module = build_module(cfg, dm)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)  # a mapping config resolves to a dict
    module.run_config = resolved  # stored in checkpoints: eval/predict rebuild the run

    if "wandb" in (cfg.get("logger") or {}) and cfg.logger.wandb is not None and cfg.logger.wandb.group is None:
        with open_dict(cfg):
            cfg.logger.wandb.group = sweep_name()
    stop = StopReason()
    exact = ExactResume()
    callbacks: list[Callback] = [*instantiate_list(cfg.get("callbacks")), exact, GracefulInterrupt(), stop,
                                   EpochTiming()]
    loggers: list[Logger] = instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    start_wandb(loggers)
    for lg in loggers:
        lg.log_hyperparams(resolved)  # type: ignore[arg-type]

    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    ckpt_dir = Path(ckpt_cb.dirpath) if ckpt_cb is not None and ckpt_cb.dirpath else out_dir / "checkpoints"
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir, ckpt_dir, multirun=sweep_name() is not None)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    return PreparedRun(dm, module, trainer, loggers, stop, exact, ckpt_dir, resume_from)


def _finish(cfg: DictConfig, run: PreparedRun, started: float) -> dict[str, Any]:
    """After fit: reload the best weights, score the test split if asked, write ``results.json``."""
    out_dir = output_dir(cfg)
    dm, module, trainer, loggers = run.dm, run.module, run.trainer, run.loggers
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    # keep and finally reload the best weights (FuxiCTR protocol)
    best_path = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best_path:
        state = read_checkpoint(best_path, trust=bool(cfg.get("trust_checkpoint", False)))
        module.load_state_dict(state["state_dict"])
        log.info("reloaded the best weights (epoch %s, %s): %s", state.get("epoch"), ckpt_cb.monitor, best_path)

    test_metrics: dict[str, float] = {}
    if cfg.get("test_after_fit") and trainer.is_global_zero:  # keeps test.preds.parquet beside results.json
        test_metrics = _score_test_split(module.net, dm, out_dir)

    results = completed_record(cfg, dm, module, trainer, run.stop.outcome(), best_path, test_metrics,
                               time.time() - started, wandb_run_id(loggers))
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "results.json", results)
    finish_wandb(loggers, results)
    return results


def _score_test_split(net: torch.nn.Module, dm: MMCTRDataModule, out_dir: Path) -> dict[str, float]:
    """Score the test split with the best weights (the scorer qin-eval uses, in row order), keep the
    probabilities in ``out_dir / test.preds.parquet`` and return ``test_auc``, ``test_logloss``, ``test_gauc``
    and ``test_gauc_users`` computed from exactly those probabilities."""
    data = dm.dataset(layout.TEST)
    device = next(net.parameters()).device
    probs = torch_probabilities(net, dm, layout.TEST, device)
    write_predictions(out_dir / TEST_PREDICTIONS, probs, data.user_id.numpy(), data.label.numpy(),
                      split_key(dm.data_dir, layout.TEST))
    metrics = split_metrics(probs, data.label.numpy(), data.user_id.numpy())
    return {f"test_{key}": value for key, value in metrics.items()}


def _close_file_logs(out_dir: Path) -> None:
    """Close and detach every logging file handler writing inside `out_dir` (the job's train.log), so a folder
    removed after a failure leaves no handler behind that writes into it for the rest of the process."""
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.Logger.manager.loggerDict))]:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(out_dir):
                logger.removeHandler(handler)
                handler.close()


def _fresh_folder(out_dir: Path) -> bool:
    """Whether the run folder holds only what Hydra put there for this job (its config and log): a folder that
    a resumed run reuses holds checkpoints or a results.json and is never removed."""
    return not out_dir.exists() or all(p.name in (".hydra", "train.log") for p in out_dir.iterdir())


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def run_training(cfg: DictConfig) -> float | None:
    """The Hydra task; returns ``cfg.optimized_metric`` (best validation AUC) for sweepers, None for a failed
    job of a sweep."""
    show_traceback = bool(cfg.get("traceback"))
    out_dir = output_dir(cfg)
    fresh = _fresh_folder(out_dir)
    try:
        results = train(cfg)
    except TrainingInterrupted as err:
        record_failure(cfg, err, status="interrupted")
        print(f"interrupted: {err}\nresume with: {resume_command(cfg)}", file=sys.stderr, flush=True)
        raise SystemExit(128 + err.signum) from None
    except BaseException as err:
        if isinstance(err, QinError) and err.before_start and fresh:
            _close_file_logs(out_dir.absolute())
            shutil.rmtree(out_dir, ignore_errors=True)  # failed on its config or data: nothing to keep or report
        else:
            record_failure(cfg, err)  # results.json with status "failed": reports skip it
        if sweep_name() is not None and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            # one failed job must not kill a sweep: it is recorded and reported as failed, and the sweeper gets
            # no value (the Optuna sweeper tells the trial FAIL; a NaN made it raise and stop the worker)
            log.error("run failed: %s", "".join(traceback.format_exception_only(type(err), err)).strip())
            return None
        if isinstance(err, QinError) and not show_traceback:
            exit_with_error(err)
        raise
    value = results[objective_key(str(cfg.get("optimized_metric", "val/auc")))]
    for line in (
        f"run folder: {out_dir} (results.json, checkpoints/, csv/); best epoch {results['best_epoch']} of"
        f" {results['epochs_trained']}, {results['n_params']:,} parameters, {results['train_seconds']:.0f} s",
        f"best val/auc={results['best_val_auc']:.6f}",
    ):
        print(line, flush=True)
        result_log.info(line)  # train.log ends with the same lines (conf/hydra/default.yaml: file handler only)
    return float(value)


def main() -> float | None:
    """``python -m qin_lightning.train`` / ``qin-train``: Hydra's composition errors and the run's user errors
    end as one ``error:`` line with exit status 2 (``traceback=true``: the traceback)."""
    if not sys.stderr.isatty():  # Optuna's log lines (colorlog) carry no colour codes into a file or a pipe
        os.environ.setdefault("NO_COLOR", "1")
    return run_hydra_reporting_errors(run_training)


if __name__ == "__main__":
    main()
