"""What a training run records: its ``results.json`` (completed, failed or interrupted) and how to resume it.

Also the facts of the Hydra job the record names (overrides, the sweep it belongs to, the data config chosen),
and the test-split scoring after fit, whose probabilities are kept beside the record
(``qin_lightning.predictions``).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from qin_lightning.files import FileWriteError, atomic_write_json
from qin_lightning.machine import machine
from qin_lightning.training.module import CTRModule
from qin_lightning.training.resume import TrainingInterrupted
from qin_lightning.training.timing import epoch_timing

log = logging.getLogger("qin_lightning.train")



def sweep_name() -> str | None:
    """The multirun folder's name (groups a sweep's runs in wandb), None for single runs."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


# a job folder's name: at most this many characters after ``<job number>_``
RUN_FOLDER_CHARS = 100
_OVERRIDE_START = re.compile(r",(?=[+~]*[\w./@-]+=)")  # the commas that start another key=value
_SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "tag(")


def _is_sweep(value: str) -> bool:
    """Whether an override value sweeps (``a,b``, ``range(...)``, ``choice(...)``...), not one value."""
    if value.startswith(_SWEEP_FUNCTIONS):
        return True
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def swept_keys(argv: list[str], sweeper_params: Any = None) -> set[str]:
    """The keys a multirun sweeps: command-line overrides with a sweep value, and ``hydra.sweeper.params``."""
    keys = {arg.split("=", 1)[0].lstrip("+~") for arg in argv
            if "=" in arg and not arg.startswith("-") and _is_sweep(arg.split("=", 1)[1])}
    return keys | {str(k).lstrip("+~") for k in (sweeper_params or {})}


def run_folder_name(override_dirname: str, fallback: str, sweeper_params: Any = None) -> str:
    """A multirun job folder's name from Hydra's ``hydra.job.override_dirname`` (``key=value`` items joined by
    commas): only the swept keys where they are known (``swept_keys``: the command line of this process and
    ``hydra.sweeper.params``), each shortened to its last part (``model/attention=softmax`` -> ``attention=softmax``,
    ``model.net.interaction.dropout=0.1`` -> ``dropout=0.1``), long floats to 4 significant digits, characters that
    do not belong in a folder name replaced, at most ``RUN_FOLDER_CHARS`` characters; ``fallback`` when empty."""
    items = [item.partition("=") for item in _OVERRIDE_START.split(str(override_dirname or "")) if item]
    swept = swept_keys(sys.argv[1:], sweeper_params)
    if any(key.lstrip("+~") in swept for key, _, _ in items):
        items = [(key, sep, value) for key, sep, value in items if key.lstrip("+~") in swept]
    named = []
    for key, sep, value in items:
        short_key = re.split(r"[./]", key.lstrip("+~"))[-1]
        try:
            value = f"{float(value):.4g}" if len(value) > 7 and "." in value else value
        except ValueError:
            pass
        named.append(f"{short_key}{sep}{value}")
    name = re.sub(r"[^\w.,=+-]+", "-", ",".join(named)).strip("-")
    return name[:RUN_FOLDER_CHARS] or str(fallback)


def output_dir(cfg: DictConfig) -> Path:
    """The run folder (``paths.output_dir``: Hydra's run/sweep job folder unless overridden)."""
    return Path(cfg.paths.output_dir)


def data_choice() -> str | None:
    """The name of the data config Hydra composed (``data=...``), None outside a Hydra job."""
    try:
        return HydraConfig.get().runtime.choices.get("data")
    except ValueError:
        return None


def overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside one)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def completed_record(cfg: DictConfig, dm: pl.LightningDataModule, module: CTRModule, trainer: pl.Trainer,
                     stop_outcome: dict[str, Any], best_checkpoint: str, test_metrics: dict[str, float],
                     seconds: float, wandb_run_id: str | None = None) -> dict[str, Any]:
    """The ``results.json`` of a finished run: the best validated epoch, its history and how training ended."""
    history = module.val_history
    best = max(history, key=lambda h: h["auc"]) if history else None
    return {
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
        **stop_outcome,
        "n_params": sum(p.numel() for p in module.net.parameters()),
        "best_checkpoint": best_checkpoint or None,
        "val_history": history,
        **test_metrics,
        "train_seconds": round(seconds, 2),
        "timing": epoch_timing(trainer),  # per-epoch train / val / checkpoint seconds (training.timing)
        "machine": machine(module.device),  # what the seconds were measured on (qin_lightning.machine)
        "precision": str(trainer.precision),  # as trained: trainer.precision=auto resolved (training.build)
        "fast_dev_run": bool(trainer.fast_dev_run),
        "overrides": overrides(),
        "tags": list(cfg.get("tags") or []),
        "wandb_run_id": wandb_run_id,  # logger=wandb: the run under <run folder>/wandb/ (offline-run-*-<id>)
    }


def record_failure(cfg: DictConfig, err: BaseException, status: str = "failed") -> None:
    """A failed run leaves a results.json saying so (the report lists it instead of silently dropping it)."""
    record: dict[str, Any] = {
        "status": status,
        "experiment": cfg.get("experiment_name"),
        "seed": cfg.get("seed"),
        "error": f"{type(err).__name__}: {err}",
        "stop_reason": status,
        "stopped_epoch": getattr(err, "epoch", None),
        "overrides": overrides(),
        "tags": list(cfg.get("tags") or []),
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
    kept = [o for o in overrides() if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    args = " ".join([*kept, f"hydra.run.dir={output_dir(cfg)}", "ckpt_path=last"])
    return f"python -m qin_lightning.train {args}"
