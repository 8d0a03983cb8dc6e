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
    kept = read_predictions(run / TEST_PREDICTIONS)
    assert pq.read_schema(run / TEST_PREDICTIONS).names == ["prob", "user_id", "label"]
    assert kept.probs.dtype == np.float32 and np.array_equal(kept.users, users)
    assert np.array_equal(kept.labels, labels.astype(bool))
    assert kept.split == f"{Path(results['data_dir']).name}/test"  # the generator's fingerprint and the split
    recomputed = split_metrics(kept.probs, labels, users)
    assert recomputed["auc"] == results["test_auc"]  # exactly: the metrics came from these probabilities
    assert recomputed["logloss"] == results["test_logloss"] and recomputed["gauc"] == results["test_gauc"]


def test_eval_on_the_test_split_keeps_its_predictions(trained: tuple[Path, dict], tmp_path: Path) -> None:
    _, results = trained
    cfg = OmegaConf.create({"ckpt_path": results["best_checkpoint"], "split": "test",
                            "output": str(tmp_path / "eval_test.json"), "data": {"root": None, "eval_batch_size": None},
                            "device": "cpu", "threads": 1, "debug": False})
    evaluated = evaluate(cfg)
    kept = tmp_path / "eval_test.preds.parquet"
    assert evaluated["predictions"] == str(kept)
    users, labels = _split(evaluated["data_dir"])
    predictions = read_predictions(kept)
    assert np.array_equal(predictions.users, users) and np.array_equal(predictions.labels, labels.astype(bool))
    assert split_metrics(predictions.probs, labels, users)["auc"] == evaluated["auc"]
    assert evaluated["auc"] == results["test_auc"]  # training's test scoring is the same scorer


def test_predictions_path_and_strict_reading(tmp_path: Path) -> None:
    assert predictions_path(tmp_path / "eval_test.json") == tmp_path / "eval_test.preds.parquet"
    assert predictions_path("x/ckpt.eval_test.json") == Path("x/ckpt.eval_test.preds.parquet")
    path = tmp_path / "p.preds.parquet"
    users, labels = np.array([7, 9]), np.array([0, 1])
    write_predictions(path, np.array([0.1, 0.9], dtype=np.float64), users, labels, "data-x/test")
    kept = read_predictions(path)
    assert kept.probs.tolist() == pytest.approx([0.1, 0.9]) and kept.users.tolist() == [7, 9]
    assert kept.labels.tolist() == [False, True] and kept.split == "data-x/test"
    pq.write_table(pa.table({"prob": pa.array([0.5], pa.float32())}), path)  # the format before migration
    with pytest.raises(QinError, match=r"expected the columns prob: float, user_id: int64, label: int8, got prob: "
                                       r"float \(a record from before .* experiments/migrate_predictions.py\)"):
        read_predictions(path)
    write_predictions(path, np.array([0.5, 1.5]), users, labels, "data-x/test")
    with pytest.raises(QinError, match=r"column 'prob', row 1: expected a probability in \[0, 1\], got 1.5"):
        read_predictions(path)
    table = pq.read_table(path)
    edited = table.set_column(1, "user_id", pa.array([7, 8], pa.int64())).replace_schema_metadata(
        table.schema.metadata)
    pq.write_table(edited.set_column(0, "prob", pa.array([0.5, 0.5], pa.float32())), path)
    with pytest.raises(QinError, match=r"do not match their digest"):
        read_predictions(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(QinError, match=r"schema metadata: expected 'qin.split' and 'qin.rows'"):
        read_predictions(path)


def test_qin_report_pairs_two_trained_runs_over_users(trained: tuple[Path, dict]) -> None:
    """End to end: a second run (softmax attention, same seed and data) beside the first; qin-report finds both
    kept prediction files and computes the paired bootstrap over users and seeds from them alone: the data
    folder is moved away first."""
    run, results = trained
    sweep = run.parent
    overrides = tiny_overrides(sweep) + tiny_model_overrides() + ["+experiment=ablation_softmax", "test_after_fit=true"]
    train(compose_train(overrides, sweep / "softmax"))
    data_dir = Path(results["data_dir"])
    away = data_dir.with_name(data_dir.name + ".away")
    data_dir.rename(away)
    try:
        write_report(sweep)
    finally:
        away.rename(data_dir)
    md = (sweep / "report.md").read_text()
    assert "Significance: paired bootstrap over the test split's users" in md
    row = next(line for line in md.splitlines() if line.startswith("| ablation_softmax |"))
    assert "[" in row and row.split(" | ")[-4] in ("significant", "not significant")
