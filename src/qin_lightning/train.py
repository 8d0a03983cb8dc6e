"""Train a CTR model: ``python -m qin_lightning.train [+experiment=NAME] [key=value ...]`` (Hydra).

Composes ``conf/train.yaml``, builds the datamodule and the model, fits with Lightning, reloads the best
weights, writes ``results.json`` into the run folder and prints ``best val/auc=<value>`` as its last line.
Returns the optimised metric so Hydra sweepers (Optuna) can use it.

Resume: ``ckpt_path=last`` (see ``qin_lightning.training.resume`` for where it is looked up) or
``ckpt_path=<file>``. SIGINT/SIGTERM during training save ``checkpoints/last.ckpt`` after the current batch and
exit with status 128 + signal number, printing the command that resumes. User errors (bad data/config,
non-finite loss) end with ``error: <one line>`` and exit status 2 (``debug=true`` shows the traceback).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from qin_lightning.cli import CONFIG_DIR, exit_with_error, set_threads
from qin_lightning.data import layout
from qin_lightning.errors import ConfigError, QinError
from qin_lightning.files import atomic_write_json
from qin_lightning.memory_reuse import reuse_freed_memory
from qin_lightning.report.tables import objective_key
from qin_lightning.serving.load import read_checkpoint
from qin_lightning.training.build import build_datamodule, build_module, build_trainer, instantiate_list
from qin_lightning.training.callbacks import StopReason
from qin_lightning.training.module import NonFiniteLossError
from qin_lightning.training.resume import (
    ExactResume, GracefulInterrupt, TrainingInterrupted, resolve_ckpt_path, resume_failures_reported,
)
from qin_lightning.training.results import (
    completed_record, output_dir, record_failure, resume_command, score_test_split, sweep_name,
)
from qin_lightning.training.timing import EpochTiming
from qin_lightning.training.tracking import finish_wandb, start_wandb

log = logging.getLogger("qin_lightning.train")
# Lightning 2.6 on torch 2.13: an internal deprecation notice printed on every run, nothing for the user to do
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# bf16-mixed keeps fp32 master weights, so the summary's 32-bit size estimate is the right one
warnings.filterwarnings("ignore", message=r"Precision bf16-mixed is not supported by the model summary")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; returns the results written to ``results.json``."""
    started = time.time()
    objective_key(str(cfg.get("optimized_metric", "val/auc")))  # a metric no run records fails here, not after fit
    set_threads(cfg.get("threads"))
    if reuse_freed_memory(bool(cfg.get("reuse_freed_memory", True))):
        log.info("reuse_freed_memory: freed tensor memory stays in the process for the next step (glibc mallopt)")
    pl.seed_everything(cfg.seed, workers=True)
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
    module.run_config = resolved  # type: ignore[assignment]  # stored in checkpoints: eval/predict rebuild the run

    if "wandb" in (cfg.get("logger") or {}) and cfg.logger.wandb is not None and cfg.logger.wandb.group is None:
        with open_dict(cfg):
            cfg.logger.wandb.group = sweep_name()
    stop = StopReason()
    exact = ExactResume()
    callbacks: list[Callback] = [*instantiate_list(cfg.get("callbacks")), exact, GracefulInterrupt(), stop,
                                   EpochTiming()]
    loggers: list[Logger] = instantiate_list(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    for lg in loggers:
        lg.log_hyperparams(resolved)  # type: ignore[arg-type]
    start_wandb(loggers)

    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    ckpt_dir = Path(ckpt_cb.dirpath) if ckpt_cb is not None and ckpt_cb.dirpath else out_dir / "checkpoints"
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir, ckpt_dir, multirun=sweep_name() is not None)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    try:
        with resume_failures_reported(resume_from, exact):
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    except NonFiniteLossError as err:
        last = ckpt_dir / "last.ckpt"
        kept = f"; last good checkpoint: {last}" if last.is_file() else "; no checkpoint was written before it"
        raise NonFiniteLossError(f"{err}{kept}") from err

    # keep and finally reload the best weights (FuxiCTR protocol)
    best_path = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best_path:
        state = read_checkpoint(best_path, trust=bool(cfg.get("trust_checkpoint", False)))
        module.load_state_dict(state["state_dict"])
        log.info("reloaded the best weights (epoch %s, %s): %s", state.get("epoch"), ckpt_cb.monitor, best_path)

    test_metrics: dict[str, float] = {}
    if cfg.get("test_after_fit") and trainer.is_global_zero:  # keeps test.preds.parquet beside results.json
        test_metrics = score_test_split(module.net, dm, out_dir)

    results = completed_record(cfg, dm, module, trainer, stop.outcome(), best_path, test_metrics,
                               time.time() - started)
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "results.json", results)
    finish_wandb(loggers, results)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` (best validation AUC) for sweepers, None for a failed
    job of a sweep."""
    debug = bool(cfg.get("debug"))
    try:
        results = train(cfg)
    except TrainingInterrupted as err:
        record_failure(cfg, err, status="interrupted")
        print(f"interrupted: {err}\nresume with: {resume_command(cfg)}", file=sys.stderr, flush=True)
        raise SystemExit(128 + err.signum) from None
    except BaseException as err:
        record_failure(cfg, err)
        if sweep_name() is not None and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            # one failed job must not kill a sweep: it is recorded and reported as failed, and the sweeper gets
            # no value (the Optuna sweeper tells the trial FAIL; a NaN made it raise and stop the worker)
            log.error("run failed: %s", "".join(traceback.format_exception_only(type(err), err)).strip())
            return None
        if isinstance(err, QinError) and not debug:
            exit_with_error(err)
        raise
    value = results[objective_key(str(cfg.get("optimized_metric", "val/auc")))]
    print(
        f"run folder: {output_dir(cfg)} (results.json, checkpoints/, csv/); best epoch {results['best_epoch']} of"
        f" {results['epochs_trained']}, {results['n_params']:,} parameters, {results['train_seconds']:.0f} s",
        flush=True,
    )
    print(f"best val/auc={results['best_val_auc']:.6f}", flush=True)
    return float(value)


if __name__ == "__main__":
    main()
