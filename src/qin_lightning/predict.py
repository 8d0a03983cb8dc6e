"""Challenge submission: ``python -m qin_lightning.predict ckpt_path=<ckpt> output=prediction.csv [zip=true]``.

Writes ``ID,Task2`` (ID = 0..N-1 in test.parquet row order, Task2 = click probability, 9 significant digits:
float32 round-trips) batch by batch into a temporary file beside the output, fsync'ed and renamed when
complete: an interrupted run or a full disk never leaves a partial CSV (a failed write is one error line; the
previous file is intact), and a non-finite probability stops the run before anything is written. Memory holds
the split's probabilities (4 bytes a row) on top of its id tensors. ``zip=true`` also writes ``<name>.zip``
containing the CSV. An existing output is only replaced with ``overwrite=true``. Model and data settings come
from the checkpoint (only ``data.root`` and ``data.eval_batch_size`` may be overridden, see
``qin_lightning.serving.scorer``). The checkpoint's network is run by Lightning (``Trainer.predict``) over the
DataModule's batches of the test split; with ``onnx=<model.onnx>`` the probabilities come from that exported model
in onnxruntime (the file that is served), scored by the scorer's own loop over the same batches.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from qin_lightning.config import CONFIG_DIR
from qin_lightning.data import layout
from qin_lightning.errors import ConfigError, QinError, run_hydra_reporting_errors, run_reporting_errors
from qin_lightning.files import atomic_writer
from qin_lightning.machine import set_threads
from qin_lightning.serving.scorer import (
    check_inference_config, exported_session, load_for_inference, split_probabilities,
)

HEADER = "ID,Task2\n"


def zip_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".zip")


def check_outputs(outputs: list[Path], overwrite: bool) -> None:
    for path in outputs:
        if path.exists() and not overwrite:
            raise ConfigError(f"output {path} already exists; pass overwrite=true to replace it")
        if path.is_dir():
            raise ConfigError(f"output {path} is a folder, expected a file path such as prediction.csv")


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the submission CSV (and zip); returns {"output", "zip", "rows"}."""
    check_inference_config(cfg)
    set_threads(cfg.get("threads"))
    out = Path(str(cfg.output)).expanduser()
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"output={out}: expected a .csv file name (the zip is named after it)")
    outputs = [out] + ([zip_path(out)] if cfg.get("zip") else [])
    check_outputs(outputs, bool(cfg.get("overwrite")))  # fail before any work
    exported = exported_session(cfg)
    trust = bool(cfg.get("trust_checkpoint"))
    net, _, dm = load_for_inference(str(cfg.ckpt_path), cfg.get("data"), "predict", trust)
    probs = split_probabilities(net, exported, dm, layout.TEST, str(cfg.device))  # (n,) in test row order
    if not np.isfinite(probs).all():
        bad = int(np.flatnonzero(~np.isfinite(probs))[0])
        raise QinError(f"{exported[0] or cfg.ckpt_path}: the model predicts a non-finite probability for test row {bad}")
    rows = len(probs)
    with atomic_writer(out, "w", newline="\n") as f:  # a failure (disk full...) leaves the previous file intact
        f.write(HEADER)
        for start in range(0, rows, dm.eval_batch_size):  # ID = row number
            chunk = probs[start : start + dm.eval_batch_size].astype(np.float64)
            ids = np.arange(start, start + len(chunk))
            np.savetxt(f, np.column_stack([ids, chunk]), fmt=("%d", "%.9g"), delimiter=",")
    result: dict[str, Any] = {"output": str(out), "zip": None, "rows": rows}
    if cfg.get("zip"):
        zpath = zip_path(out)
        with atomic_writer(zpath, "wb") as zf, zipfile.ZipFile(zf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.write(out, arcname=out.name)
        result["zip"] = str(zpath)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def run_prediction(cfg: DictConfig) -> None:
    """The Hydra task: write the submission and say where."""
    r = run_reporting_errors(lambda: predict(cfg), show_traceback=bool(cfg.get("traceback")))
    print(f"wrote {r['rows']} predictions to {r['output']}" + (f" and {r['zip']}" if r["zip"] else ""), flush=True)


def main() -> None:
    """``python -m qin_lightning.predict`` / ``qin-predict``: every user error, Hydra's included, is one line,
    exit status 2."""
    run_hydra_reporting_errors(run_prediction)


if __name__ == "__main__":
    main()
