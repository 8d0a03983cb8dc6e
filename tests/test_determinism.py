"""Two CPU runs with the same seed give identical metrics; another seed gives different ones."""

from __future__ import annotations

from pathlib import Path

from conftest import compose_train, tiny_model_overrides, tiny_overrides

from qin_lightning.train import train


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    args = tiny_overrides(tmp_path) + tiny_model_overrides() + ["trainer.max_epochs=2", "data.batch_size=64"]
    first = train(compose_train(args, tmp_path / "a"))
    second = train(compose_train(args, tmp_path / "b"))
    assert first["val_history"] == second["val_history"]  # exact: auc, logloss, lr of every epoch
    other = train(compose_train(args + ["seed=7", "data.synthetic.seed=20242025"], tmp_path / "c"))
    assert other["val_history"] != first["val_history"]
