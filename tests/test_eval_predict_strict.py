"""The challenge case end to end: a test.parquet without labels. predict scores it; eval says it cannot; training
with test_after_fit=true refuses it before training (and, with labels, reports what eval reports)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides
from omegaconf import OmegaConf

from qin_lightning.data import layout
from qin_lightning.errors import ConfigError
from qin_lightning.eval import evaluate
from qin_lightning.predict import predict
from qin_lightning.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("unlabeled")
    results = train(compose_train(tiny_overrides(tmp) + tiny_model_overrides() + ["test_after_fit=true"], tmp / "run"))
    return tmp, results


@pytest.fixture(scope="module")
def unlabeled_root(trained: tuple[Path, dict]) -> Path:
    """A copy of the run's data (root/<fingerprint>, as the datamodule expects) whose test.parquet has no label."""
    tmp, results = trained
    src = Path(results["data_dir"])
    root = tmp / "unlabeled"
    shutil.copytree(src, root / src.name)
    path = root / src.name / layout.TEST_FILE
    pq.write_table(pq.read_table(path).drop_columns([layout.LABEL]), path)
    assert layout.LABEL not in pq.read_schema(path).names
    return root


def _data(root: Path | None) -> dict:
    return {"root": str(root) if root else None, "eval_batch_size": None}


def _eval_cfg(ckpt: str, root: Path | None, split: str, output: Path) -> OmegaConf:
    return OmegaConf.create({"ckpt_path": ckpt, "split": split, "output": str(output), "data": _data(root),
                             "device": "cpu", "threads": 1, "traceback": False})


def _predict_cfg(ckpt: str, root: Path | None, output: Path) -> OmegaConf:
    return OmegaConf.create({"ckpt_path": ckpt, "output": str(output), "zip": False, "overwrite": False,
                             "data": _data(root), "device": "cpu", "threads": 1, "traceback": False})


def test_test_after_fit_reports_what_eval_reports(trained: tuple[Path, dict], tmp_path: Path) -> None:
    tmp, results = trained
    assert {"test_auc", "test_logloss"} <= set(results)
    evaluated = evaluate(_eval_cfg(results["best_checkpoint"], None, "test", tmp_path / "test.json"))
    assert evaluated["rows"] == 128  # tiny_overrides: data.synthetic.test_rows
    assert results["test_auc"] == pytest.approx(evaluated["auc"], abs=1e-6)  # the best weights, reloaded
    assert results["test_logloss"] == pytest.approx(evaluated["logloss"], abs=1e-5)


def test_predict_scores_an_unlabeled_test_split(trained: tuple[Path, dict], unlabeled_root: Path,
                                                tmp_path: Path) -> None:
    ckpt = trained[1]["best_checkpoint"]
    labeled = predict(_predict_cfg(ckpt, None, tmp_path / "labeled" / "prediction.csv"))
    unlabeled = predict(_predict_cfg(ckpt, unlabeled_root, tmp_path / "unlabeled" / "prediction.csv"))
    assert unlabeled["rows"] == labeled["rows"] == 128
    # the labels are not an input: the same rows get the same probabilities, byte for byte
    assert (tmp_path / "unlabeled" / "prediction.csv").read_bytes() == (tmp_path / "labeled" /
                                                                       "prediction.csv").read_bytes()


def test_eval_refuses_an_unlabeled_test_split_but_evaluates_valid(trained: tuple[Path, dict], unlabeled_root: Path,
                                                                  tmp_path: Path) -> None:
    ckpt = trained[1]["best_checkpoint"]
    test_file = next(unlabeled_root.iterdir()) / layout.TEST_FILE
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(test_file))}: has no 'label' column, so it cannot be evaluated "
                                          r"\(use python -m qin_lightning.predict"):
        evaluate(_eval_cfg(ckpt, unlabeled_root, "test", tmp_path / "test.json"))
    assert not (tmp_path / "test.json").exists()
    valid = evaluate(_eval_cfg(ckpt, unlabeled_root, "valid", tmp_path / "valid.json"))
    assert valid["auc"] == pytest.approx(trained[1]["best_val_auc"], abs=1e-6)


def test_eval_cli_on_an_unlabeled_test_split_is_one_error_line(trained: tuple[Path, dict], unlabeled_root: Path,
                                                               tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.eval", f"ckpt_path={trained[1]['best_checkpoint']}",
                           "split=test", f"data.root={unlabeled_root}", "threads=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "test.parquet: has no 'label' column" in last
    assert "qin_lightning.predict" in last


def test_test_after_fit_refuses_an_unlabeled_test_split_before_training(unlabeled_root: Path,
                                                                        tmp_path: Path) -> None:
    folder = next(unlabeled_root.iterdir())
    keep = [o for o in tiny_overrides(tmp_path) if not o.startswith("data.")]
    cfg = compose_train([*keep, *tiny_model_overrides(), "data=mmctr", f"data.root={folder}", "data.max_len=8",
                         "data.batch_size=128", "test_after_fit=true"], tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"^test_after_fit=true: {re.escape(str(folder / layout.TEST_FILE))} has no 'label' column"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists(), "refused before any training"
