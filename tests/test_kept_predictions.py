"""Kept test predictions: training with test_after_fit keeps test.preds.parquet, qin-eval on the test split keeps
<output stem>.preds.parquet; with the split's labels they reproduce the recorded test AUC exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compose_train, tiny_model_overrides, tiny_overrides
from omegaconf import OmegaConf

from qin_lightning.data import layout
from qin_lightning.errors import QinError
from qin_lightning.eval import evaluate
from qin_lightning.predictions import TEST_PREDICTIONS, predictions_path, read_predictions, write_predictions
from qin_lightning.report import write_report
from qin_lightning.train import train
from qin_lightning.training.metrics import split_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("kept")
    run = tmp / "run"
    return run, train(compose_train(tiny_overrides(tmp) + tiny_model_overrides() + ["test_after_fit=true"], run))


def _split(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(Path(data_dir) / layout.TEST_FILE, columns=[layout.USER_ID, layout.LABEL])
    return table.column(layout.USER_ID).to_numpy(), table.column(layout.LABEL).to_numpy()


def test_training_keeps_the_test_predictions_it_was_scored_on(trained: tuple[Path, dict]) -> None:
    run, results = trained
    users, labels = _split(results["data_dir"])
    probs = read_predictions(run / TEST_PREDICTIONS, len(labels))
    assert pq.read_schema(run / TEST_PREDICTIONS).names == ["prob"] and probs.dtype == np.float32
    recomputed = split_metrics(probs, labels, users)
    assert recomputed["auc"] == results["test_auc"]  # exactly: the metrics came from these probabilities
    assert recomputed["logloss"] == results["test_logloss"] and recomputed["gauc"] == results["test_gauc"]


def test_eval_on_the_test_split_keeps_its_predictions(trained: tuple[Path, dict], tmp_path: Path) -> None:
    _, results = trained
    cfg = OmegaConf.create({"ckpt_path": results["best_checkpoint"], "split": "test",
                            "output": str(tmp_path / "eval_test.json"), "data": {"root": None, "batch_size": None},
                            "device": "cpu", "threads": 1, "debug": False})
    evaluated = evaluate(cfg)
    kept = tmp_path / "eval_test.preds.parquet"
    assert evaluated["predictions"] == str(kept)
    users, labels = _split(evaluated["data_dir"])
    assert split_metrics(read_predictions(kept, len(labels)), labels, users)["auc"] == evaluated["auc"]
    assert evaluated["auc"] == results["test_auc"]  # training's test scoring is the same scorer


def test_predictions_path_and_strict_reading(tmp_path: Path) -> None:
    assert predictions_path(tmp_path / "eval_test.json") == tmp_path / "eval_test.preds.parquet"
    assert predictions_path("x/ckpt.eval_test.json") == Path("x/ckpt.eval_test.preds.parquet")
    path = tmp_path / "p.preds.parquet"
    write_predictions(path, np.array([0.1, 0.9], dtype=np.float64))
    assert read_predictions(path, 2).tolist() == pytest.approx([0.1, 0.9])
    with pytest.raises(QinError, match=r"p.preds.parquet: column 'prob': expected 3 rows \(the test split's\), got 2"):
        read_predictions(path, 3)
    pq.write_table(pa.table({"prob": pa.array([0.5], pa.float64())}), path)
    with pytest.raises(QinError, match=r"expected exactly one column 'prob' \(float32\), got prob: double"):
        read_predictions(path, 1)
    write_predictions(path, np.array([0.5, 1.5]))
    with pytest.raises(QinError, match=r"column 'prob', row 1: expected a probability in \[0, 1\], got 1.5"):
        read_predictions(path, 2)


def test_qin_report_pairs_two_trained_runs_over_users(trained: tuple[Path, dict]) -> None:
    """End to end: a second run (softmax attention, same seed and data) beside the first; qin-report finds both
    kept prediction files and the data's test split, and computes the paired bootstrap over users and seeds."""
    run, results = trained
    sweep = run.parent
    overrides = tiny_overrides(sweep) + tiny_model_overrides() + ["+experiment=ablation_softmax", "test_after_fit=true"]
    train(compose_train(overrides, sweep / "softmax"))
    write_report(sweep)
    md = (sweep / "report.md").read_text()
    assert "Significance: paired bootstrap over the test split's users" in md
    row = next(line for line in md.splitlines() if line.startswith("| ablation_softmax |"))
    assert "[" in row and row.split(" | ")[-4] in ("significant", "not significant")
