"""The winner (Transformer+DCN) and QIN + QNN-alpha + self-ensemble through the whole pipeline at tiny size:
train, exact resume, eval, predict, ONNX export (fp32 exact; int8) and eval of the exported model."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_train, tiny_model_overrides, tiny_overrides
from omegaconf import OmegaConf

from qin_lightning.eval import evaluate
from qin_lightning.predict import predict
from qin_lightning.serving.export import export_checkpoint
from qin_lightning.train import train

EXPERIMENTS = ["transformer_dcn", "qnn_alpha"]
MORE_STEPS = ["data.batch_size=64", "trainer.max_epochs=3", "callbacks.early_stopping.patience=8"]


def _cfg(tmp: Path, experiment: str, run: str, extra: list[str] = ()):  # type: ignore[assignment]
    overrides = [f"+experiment={experiment}", *tiny_overrides(tmp), *tiny_model_overrides(experiment), *MORE_STEPS]
    return compose_train(overrides + list(extra), tmp / run)


def _eval_cfg(ckpt: str, **kw: object):
    base = {"ckpt_path": ckpt, "split": "valid", "output": None, "data": {"root": None, "batch_size": None},
            "device": "cpu", "threads": 1, "debug": False}
    base.update(kw)
    return OmegaConf.create(base)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_train_resume_eval_predict_export(tmp_path: Path, experiment: str) -> None:
    reference = train(_cfg(tmp_path, experiment, "reference"))
    assert reference["epochs_trained"] == 3 and reference["experiment"] == experiment

    train(_cfg(tmp_path, experiment, "short", ["trainer.max_epochs=2"]))  # then continue from last.ckpt
    resumed = train(_cfg(tmp_path, experiment, "short", ["ckpt_path=last"]))
    assert resumed["val_history"] == reference["val_history"]  # exact, self-ensemble's second pass included

    ckpt = reference["best_checkpoint"]
    metrics = evaluate(_eval_cfg(ckpt))
    assert metrics["auc"] == pytest.approx(reference["best_val_auc"], abs=1e-6)
    assert predict(OmegaConf.create({"ckpt_path": ckpt, "output": str(tmp_path / "prediction.csv"), "zip": False,
                                     "overwrite": False, "data": {"root": None, "batch_size": None},
                                     "device": "cpu", "threads": 1, "debug": False}))["rows"] == 128

    pytest.importorskip("onnxruntime")
    exact = export_checkpoint(ckpt, tmp_path / "model.onnx")
    onnx_metrics = evaluate(_eval_cfg(ckpt, onnx=str(exact), output=str(tmp_path / "onnx.json")))
    assert onnx_metrics["auc"] == pytest.approx(metrics["auc"], abs=1e-5)
    assert onnx_metrics["logloss"] == pytest.approx(metrics["logloss"], abs=1e-5)
    pytest.importorskip("onnx")
    int8 = export_checkpoint(ckpt, tmp_path / "model.int8.onnx", weights="int8", block_size=16)
    int8_metrics = evaluate(_eval_cfg(ckpt, onnx=str(int8), output=str(tmp_path / "int8.json")))
    assert int8_metrics["auc"] == pytest.approx(metrics["auc"], abs=0.02)
