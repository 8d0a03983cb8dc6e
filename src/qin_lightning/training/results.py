"""What a training run records: its ``results.json`` (completed, failed or interrupted) and how to resume it.

Also the facts of the Hydra job the record names (overrides, the sweep it belongs to, the data config chosen),
and the kept predictions of every test-split evaluation: ``<name>.preds.parquet`` beside its JSON (a training
run's ``test.preds.parquet``, ``qin-eval``'s ``<output stem>.preds.parquet``), one float32 column ``prob`` in the
split's row order, exactly the probabilities its metrics were computed from. The users and labels are the data's
own; the report pairs runs over them (qin_lightning.report.stats).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import pyarrow as pa
import pyarrow.parquet as pq
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from qin_lightning.data import layout
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.errors import QinError
from qin_lightning.files import FileWriteError, atomic_write_json, atomic_writer
from qin_lightning.serving.scorer import predict_batches
from qin_lightning.training.machine import machine
from qin_lightning.training.metrics import split_metrics
from qin_lightning.training.module import CTRModule
from qin_lightning.training.resume import TrainingInterrupted
from qin_lightning.training.timing import epoch_timing

log = logging.getLogger("qin_lightning.train")

PREDICTIONS_SUFFIX = ".preds.parquet"
TEST_PREDICTIONS = "test" + PREDICTIONS_SUFFIX  # a training run's, beside its results.json
PROB = "prob"


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
                     seconds: float) -> dict[str, Any]:
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
        "machine": machine(module.device),  # what the seconds were measured on (training.machine)
        "precision": str(trainer.precision),  # as trained: trainer.precision=auto resolved (training.build)
        "fast_dev_run": bool(trainer.fast_dev_run),
        "overrides": overrides(),
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


def predictions_path(json_path: str | Path) -> Path:
    """Where the predictions of an evaluation written to ``json_path`` are kept: eval_test.json ->
    eval_test.preds.parquet."""
    path = Path(json_path)
    return path.with_name(path.stem + PREDICTIONS_SUFFIX)


def write_predictions(path: str | Path, probs: np.ndarray) -> None:
    """Keep a split's probabilities (row order, float32) in ``path``, atomically."""
    table = pa.table({PROB: pa.array(np.asarray(probs, dtype=np.float32))})
    with atomic_writer(path) as f:
        pq.write_table(table, f)


def read_predictions(path: str | Path, rows: int) -> np.ndarray:
    """The kept probabilities of ``path``: exactly one float32 column ``prob`` of ``rows`` rows (the row count
    is checked in the footer before anything is read), all in [0, 1]."""
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise QinError(f"{path}: not a readable parquet file ({str(err).splitlines()[0][:200]})") from None
    names = parquet.schema_arrow.names
    if names != [PROB] or parquet.schema_arrow.field(PROB).type != pa.float32():
        found = ", ".join(f"{f.name}: {f.type}" for f in parquet.schema_arrow)
        raise QinError(f"{path}: expected exactly one column '{PROB}' (float32), got {found or 'no columns'}")
    if parquet.metadata.num_rows != rows:
        raise QinError(f"{path}: column '{PROB}': expected {rows} rows (the test split's), got "
                       f"{parquet.metadata.num_rows}")
    probs = np.array(parquet.read().column(PROB).to_numpy(zero_copy_only=False), dtype=np.float32)
    if len(probs) != rows:
        raise QinError(f"{path}: column '{PROB}': expected {rows} rows, got {len(probs)} (the footer claims {rows})")
    bad = np.flatnonzero(~((probs >= 0.0) & (probs <= 1.0)))
    if bad.size:
        raise QinError(f"{path}: column '{PROB}', row {int(bad[0])}: expected a probability in [0, 1], got "
                       f"{probs[bad[0]]}")
    return probs


def score_test_split(net: torch.nn.Module, dm: MMCTRDataModule, out_dir: Path) -> dict[str, float]:
    """Score the test split with the best weights (the scorer qin-eval uses, in row order), keep the
    probabilities in ``out_dir / test.preds.parquet`` and return ``test_auc``, ``test_logloss``, ``test_gauc``
    and ``test_gauc_users`` computed from exactly those probabilities."""
    data = dm.dataset(layout.TEST)
    device = next(net.parameters()).device
    probs = np.concatenate([p for _, p in predict_batches(net, data, dm.eval_batch_size, device)])
    write_predictions(out_dir / TEST_PREDICTIONS, probs)
    metrics = split_metrics(probs, data.label.numpy(), data.user_id.numpy())
    return {f"test_{key}": value for key, value in metrics.items()}
