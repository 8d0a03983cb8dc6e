"""Train a CTR model: ``python -m qin_lightning.train [+experiment=NAME] [key=value ...]`` (Hydra).

Composes ``conf/train.yaml``, builds the datamodule and the model, fits with Lightning, reloads the best
weights, writes ``results.json`` into the run folder and prints ``best val/auc=<value>`` as its last line.
Returns the optimised metric so Hydra sweepers (Optuna) can use it.

Resume: ``ckpt_path=last`` (see ``qin_lightning.resume`` for where it is looked up) or ``ckpt_path=<file>``.
SIGINT/SIGTERM during training save ``checkpoints/last.ckpt`` after the current batch and exit with status
128 + signal number, printing the command that resumes. User errors (bad data/config, non-finite loss) end
with ``error: <one line>`` and exit status 2 (``debug=true`` shows the traceback).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from qin_lightning.callbacks import StopReason, with_display_flags
from qin_lightning.checkpoint import read_checkpoint
from qin_lightning.checkpoint_io import SafeCheckpointIO
from qin_lightning.cli import CONFIG_DIR, exit_with_error, instantiate_reporting, set_threads
from qin_lightning.data import layout
from qin_lightning.errors import ConfigError, QinError
from qin_lightning.files import FileWriteError, atomic_write_json
from qin_lightning.memory import check_training_memory, estimate_training_memory, trains_on_gpu
from qin_lightning.module import CTRModule, NonFiniteLossError
from qin_lightning.resume import GracefulInterrupt, TrainingInterrupted, make_train_data_resumable, resolve_ckpt_path
from qin_lightning.tracking import finish_wandb, start_wandb

log = logging.getLogger("qin_lightning.train")
# Lightning 2.6 on torch 2.13: an internal deprecation notice printed on every run, nothing for the user to do
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """Instantiate ``cfg.data``, generate/prepare it if needed and load it (stage ``fit``)."""
    dm = instantiate_reporting(cfg.data, _convert_="object")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build_module(cfg: DictConfig, dm: pl.LightningDataModule) -> CTRModule:
    """Instantiate ``cfg.model`` (a CTRModule around ``model.net``) with the data's item tables."""
    if "net" not in cfg.model:
        raise ConfigError("config key 'model.net' is missing: a model config must define the network under 'net'")
    if cfg.get("memory_check", True):  # before anything is allocated (qin_lightning.memory)
        memory = estimate_training_memory(cfg.model.net, dm.item_tags, dm.item_mm, dm.num_tags)
        check_training_memory(memory, trains_on_gpu(cfg.trainer.get("accelerator")))
    net = instantiate_reporting(cfg.model.net, item_tags=dm.item_tags, item_mm=dm.item_mm, num_tags=dm.num_tags)
    model_kwargs = {k: v for k, v in cfg.model.items() if k != "net"}
    return instantiate_reporting(OmegaConf.create(model_kwargs), net=net)


def instantiate_list(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group (entries set to null are skipped)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def sweep_name() -> str | None:
    """The multirun folder's name (groups a sweep's runs in wandb), None for single runs."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def output_dir(cfg: DictConfig) -> Path:
    """The run folder (``paths.output_dir``: Hydra's run/sweep job folder unless overridden)."""
    return Path(cfg.paths.output_dir)


def data_choice() -> str | None:
    try:
        return HydraConfig.get().runtime.choices.get("data")
    except ValueError:
        return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; returns the results written to ``results.json``."""
    started = time.time()
    set_threads(cfg.get("threads"))
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    dm = build_datamodule(cfg)
    if cfg.get("test_after_fit") and not dm.has_test_labels:  # checked before training, not after it
        raise ConfigError(
            f"test_after_fit=true: {dm.data_dir / layout.TEST_FILE} has no '{layout.LABEL}' column, so the test split cannot"
            " be evaluated (set test_after_fit=false; python -m qin_lightning.predict writes its predictions)"
        )
    module = build_module(cfg, dm)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    module.run_config = resolved  # type: ignore[assignment]

    if "wandb" in (cfg.get("logger") or {}) and cfg.logger.wandb is not None and cfg.logger.wandb.group is None:
        with open_dict(cfg):
            cfg.logger.wandb.group = sweep_name()
    callbacks: list[Callback] = instantiate_list(cfg.get("callbacks"))
    stop = StopReason()
    callbacks += [GracefulInterrupt(), stop]
    loggers: list[Logger] = instantiate_list(cfg.get("logger"))
    trust = bool(cfg.get("trust_checkpoint", False))  # strict loading and atomic saving: qin_lightning.checkpoint_io
    shown = with_display_flags(callbacks, enable_model_summary=cfg.trainer.get("enable_model_summary", True))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, plugins=[SafeCheckpointIO(trust=trust)],
                                      **shown)
    for lg in loggers:
        lg.log_hyperparams(resolved)  # type: ignore[arg-type]
    start_wandb(loggers)

    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    ckpt_dir = Path(ckpt_cb.dirpath) if ckpt_cb is not None and ckpt_cb.dirpath else out_dir / "checkpoints"
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir, ckpt_dir, multirun=sweep_name() is not None)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    make_train_data_resumable(dm, trainer)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    except NonFiniteLossError as err:
        last = ckpt_dir / "last.ckpt"
        kept = f"; last good checkpoint: {last}" if last.is_file() else "; no checkpoint was written before it"
        raise NonFiniteLossError(f"{err}{kept}") from err

    # keep and finally reload the best weights (FuxiCTR protocol)
    best_path = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best_path:
        state = read_checkpoint(best_path, trust=trust)
        module.load_state_dict(state["state_dict"])
        log.info("reloaded the best weights (epoch %s, %s): %s", state.get("epoch"), ckpt_cb.monitor, best_path)

    history = module.val_history
    best = max(history, key=lambda h: h["auc"]) if history else None
    test_metrics: dict[str, float] = {}
    if cfg.get("test_after_fit"):
        for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items():
            test_metrics[k.replace("/", "_")] = float(v)

    results: dict[str, Any] = {
        "status": "completed",
        "experiment": cfg.experiment_name,
        "model": type(module.net).__name__.lower(),
        "seed": int(cfg.seed),
        "data": data_choice(),
        "data_dir": str(getattr(dm, "data_dir", "")),
        "best_val_auc": best["auc"] if best else float("nan"),
        "best_val_logloss": best["logloss"] if best else float("nan"),
        "best_epoch": best["epoch"] if best else None,
        "epochs_trained": len(history),
        **stop.outcome(),
        "n_params": sum(p.numel() for p in module.net.parameters()),
        "best_checkpoint": best_path or None,
        "val_history": history,
        **test_metrics,
        "train_seconds": round(time.time() - started, 2),
        "fast_dev_run": bool(trainer.fast_dev_run),
        "overrides": _overrides(),
    }
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "results.json", results)
    finish_wandb(loggers, results)
    return results


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _record_failure(cfg: DictConfig, err: BaseException, status: str = "failed") -> None:
    """A failed run leaves a results.json saying so (the report lists it instead of silently dropping it)."""
    record: dict[str, Any] = {
        "status": status,
        "experiment": cfg.get("experiment_name"),
        "seed": cfg.get("seed"),
        "error": f"{type(err).__name__}: {err}",
        "stop_reason": status,
        "stopped_epoch": getattr(err, "epoch", None),
        "overrides": _overrides(),
    }
    if isinstance(err, TrainingInterrupted):
        record["checkpoint"] = err.checkpoint
    if rank_zero_only.rank == 0:  # under DDP every rank gets here; one writes
        try:
            atomic_write_json(output_dir(cfg) / "results.json", record)
        except FileWriteError as write_err:  # e.g. the disk is full: report the original error, not this one
            log.error("%s", write_err)


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run in its own folder."""
    overrides = [o for o in _overrides() if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    args = " ".join([*overrides, f"hydra.run.dir={output_dir(cfg)}", "ckpt_path=last"])
    return f"python -m qin_lightning.train {args}"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns ``cfg.optimized_metric`` (best validation AUC) for sweepers."""
    debug = bool(cfg.get("debug"))
    try:
        results = train(cfg)
    except TrainingInterrupted as err:
        _record_failure(cfg, err, status="interrupted")
        print(f"interrupted: {err}\nresume with: {resume_command(cfg)}", file=sys.stderr, flush=True)
        raise SystemExit(128 + err.signum) from None
    except BaseException as err:
        _record_failure(cfg, err)
        if sweep_name() is not None and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            # one failed job must not kill a sweep: it is recorded and reported as failed
            log.error("run failed: %s", "".join(traceback.format_exception_only(type(err), err)).strip())
            return float("nan")
        if isinstance(err, QinError) and not debug:
            exit_with_error(err)
        raise
    metric = cfg.get("optimized_metric", "val/auc")
    value = results["best_val_auc"] if metric == "val/auc" else results.get(metric.replace("/", "_"), math.nan)
    print(
        f"run folder: {output_dir(cfg)} (results.json, checkpoints/, csv/); best epoch {results['best_epoch']} of"
        f" {results['epochs_trained']}, {results['n_params']:,} parameters, {results['train_seconds']:.0f} s",
        flush=True,
    )
    print(f"best val/auc={results['best_val_auc']:.6f}", flush=True)
    return float(value)


if __name__ == "__main__":
    main()
