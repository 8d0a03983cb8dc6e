"""Evaluate a checkpoint: ``python -m qin_lightning.eval ckpt_path=<ckpt> [split=valid|test] [data.root=...]``.

Prints and writes AUC, logloss and gAUC of one split; on the test split it also keeps the probabilities in
``<output stem>.preds.parquet`` (qin_lightning.predictions: ``prob``, ``user_id``, ``label`` in row order and the
split's key). The network and the data configuration come from the checkpoint (`qin_config`, written by
`qin_lightning.train`); only where the data lives (``data.root``) and the scoring batch size (``data.eval_batch_size``) may be
overridden. The checkpoint's network is run by Lightning (``Trainer.predict``) over the DataModule's batches of the
split (qin_lightning.serving.scorer), as in training. With ``onnx=<model.onnx>`` the probabilities come from that
exported model (qin_lightning.export, e.g. its `--weights int8` form) run in onnxruntime instead, by the scorer's
own loop over the same batches, and the JSON is ``<model.onnx>.eval_<split>.json`` (never the checkpoint's own);
the checkpoint still names the data. The
data's item tables must be the ones the model was trained with (same rows, same values), else the ids would
silently mean other items.
gAUC (group AUC, the MicroLens/FuxiCTR definition): ``qin_lightning.training.metrics.group_auc``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from qin_lightning.config import CONFIG_DIR
from qin_lightning.data import layout
from qin_lightning.errors import (
    ConfigError, DataValidationError, QinError, run_hydra_reporting_errors, run_reporting_errors,
)
from qin_lightning.files import atomic_write_json
from qin_lightning.machine import set_threads
from qin_lightning.predictions import predictions_path, split_key, write_predictions
from qin_lightning.serving.scorer import (
    check_inference_config, exported_session, load_for_inference, split_probabilities,
)
from qin_lightning.training.metrics import split_metrics


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Metrics of `cfg.split` for `cfg.ckpt_path`; writes them to JSON (atomic) and returns them."""
    started = time.time()
    check_inference_config(cfg)
    set_threads(cfg.get("threads"))
    split = str(cfg.split)
    if split not in (layout.VALID, layout.TEST):
        raise ConfigError(f"split={split}: expected valid or test")
    ckpt = Path(str(cfg.ckpt_path))
    exported = exported_session(cfg)  # checked before the data loads
    onnx_model = exported[0]
    stage = "validate" if split == layout.VALID else "test"
    net, run_cfg, dm = load_for_inference(ckpt, cfg.get("data"), stage, bool(cfg.get("trust_checkpoint")))
    data = dm.dataset(split)
    if not data.has_label:
        raise ConfigError(
            f"{dm.data_dir / layout.FILE_NAMES[split]}: has no '{layout.LABEL}' column, so it cannot be evaluated "
            "(use python -m qin_lightning.predict for the submission file)"
        )
    probs = split_probabilities(net, exported, dm, split, str(cfg.device))
    if not np.isfinite(probs).all():
        bad = int(np.flatnonzero(~np.isfinite(probs))[0])
        raise QinError(f"{onnx_model or ckpt}: the model predicts a non-finite probability for {split} row {bad}")
    labels = data.label.numpy()
    if labels.min() == labels.max():  # AUC compares positives with negatives: undefined, never reported as 0
        raise DataValidationError(
            f"{dm.data_dir / layout.FILE_NAMES[split]}: column '{layout.LABEL}' holds only "
            f"{'positives' if labels[0] == 1 else 'negatives'} ({len(labels):,} rows), expected both classes: AUC "
            "is undefined on one class"
        )
    users = data.user_id.numpy()
    metrics = split_metrics(probs, labels, users)
    out = Path(str(cfg.output)) if cfg.get("output") else default_output(ckpt, onnx_model, split)
    results = {
        **metrics,
        "split": split,
        "rows": len(data),
        "positive_rate": float(labels.mean()),
        "users": int(np.unique(users).size),
        "checkpoint": str(ckpt),
        "onnx": str(onnx_model) if onnx_model is not None else None,
        "experiment": run_cfg.get("experiment_name"),
        "data_dir": str(dm.data_dir),
        "seconds": round(time.time() - started, 2),
    }
    if split == layout.TEST:  # kept for the report's paired tests: <output stem>.preds.parquet
        results["predictions"] = str(predictions_path(out))
        write_predictions(predictions_path(out), probs, users, labels, split_key(dm.data_dir, split))
    atomic_write_json(out, results)
    results["output"] = str(out)
    return results


def default_output(ckpt: Path, onnx_model: Path | None, split: str) -> Path:
    """Where an evaluation is written without ``output=``: ``<checkpoint stem>.eval_<split>.json`` beside the
    checkpoint, ``<model>.onnx.eval_<split>.json`` beside an ONNX model (its own name even when the ONNX file is
    named like the checkpoint, so it never replaces the checkpoint's evaluation)."""
    if onnx_model is not None:
        return onnx_model.with_name(f"{onnx_model.name}.eval_{split}.json")
    return ckpt.with_name(f"{ckpt.stem}.eval_{split}.json")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def run_evaluation(cfg: DictConfig) -> None:
    """The Hydra task: evaluate, print where the JSON went and the metrics."""
    r = run_reporting_errors(lambda: evaluate(cfg), show_traceback=bool(cfg.get("traceback")))
    print(f"wrote {r['output']}")
    print(f"{r['split']}: rows={r['rows']} auc={r['auc']:.6f} logloss={r['logloss']:.6f} gauc={r['gauc']:.6f}",
          flush=True)


def main() -> None:
    """``python -m qin_lightning.eval`` / ``qin-eval``: every user error, Hydra's included, is one line, exit 2."""
    run_hydra_reporting_errors(run_evaluation)


if __name__ == "__main__":
    main()
