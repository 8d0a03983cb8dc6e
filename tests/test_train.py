"""End-to-end training: results.json, best-weights reload, the printed last line, sweeps and wandb grouping."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides

from qin_lightning.train import train

RESULT_KEYS = {"best_val_auc", "best_val_logloss", "best_epoch", "n_params", "model", "experiment", "seed", "data"}


def test_train_writes_results_and_learns(tmp_path: Path) -> None:
    learnable = ["data.synthetic.num_items=200", "data.synthetic.num_tags=40", "data.synthetic.num_users=300",
                 "data.synthetic.train_rows=3000", "data.synthetic.valid_rows=1000", "data.max_len=16",
                 "data.synthetic.max_len=16", "model.net.embedding_dim=16", "trainer.max_epochs=3"]
    cfg = compose_train(tiny_overrides(tmp_path) + learnable, tmp_path / "run")
    results = train(cfg)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert RESULT_KEYS <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["model"] == "qin" and on_disk["experiment"] == "qin"
    assert on_disk["epochs_trained"] == 3 and len(on_disk["val_history"]) == 3
    assert on_disk["best_val_auc"] == max(h["auc"] for h in on_disk["val_history"])
    assert 0.6 < results["best_val_auc"] <= 1.0  # the planted signal is being learned and math.isfinite(results["best_val_logloss"])
    ckpt = Path(on_disk["best_checkpoint"])
    assert ckpt.exists() and (ckpt.parent / "last.ckpt").exists()
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()


def test_plateau_halves_lr_and_checkpoint_has_config(tmp_path: Path) -> None:
    import torch

    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + ["trainer.max_epochs=4", "model.lr=5e-2"],
                        tmp_path / "run")
    results = train(cfg)
    lrs = [h["lr"] for h in results["val_history"]]
    aucs = [h["auc"] for h in results["val_history"]]
    best = -1.0
    expected = 5e-2
    for lr, auc in zip(lrs, aucs):
        assert lr == pytest.approx(expected)
        if auc > best + 1e-6:
            best = auc
        else:  # no improvement: lr x 0.5 for the next epoch
            expected = max(expected * 0.5, 1e-6)
    ckpt = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["qin_config"]["model"]["net"]["_target_"] == "qin_lightning.models.qin.QIN"
    assert ckpt["hyper_parameters"]["lr"] == 5e-2


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_cli_end_to_end(tmp_path: Path, logger: str) -> None:
    """`python -m qin_lightning.train` prints `best val/auc=` last and writes results.json (wandb offline)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT / "src")}
    args = tiny_overrides(tmp_path) + tiny_model_overrides() + [f"logger={logger}", "trainer.max_epochs=1"]
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("best val/auc=") and 0.0 < float(last.split("=")[1]) <= 1.0
    results = list((tmp_path / "logs" / "train" / "runs").rglob("results.json"))
    assert len(results) == 1
    if logger == "wandb":
        assert list(results[0].parent.rglob("wandb/offline-run-*")), "wandb must run offline into the run folder"


def test_logged_val_auc_matches_fresh_evaluation_of_last_weights(tmp_path: Path) -> None:
    """Inference caches never go stale across epochs (fused Adam does not bump version counters)."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    from qin_lightning.train import build_datamodule, build_module

    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + ["trainer.max_epochs=3"], tmp_path / "run")
    results = train(cfg)
    fresh = build_module(cfg, dm := build_datamodule(cfg))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    fresh.load_state_dict(state["state_dict"])
    fresh.eval()
    with torch.inference_mode():
        probs = torch.cat([torch.sigmoid(fresh(b)) for b in dm.val_dataloader()])
        labels = torch.cat([b.label.long() for b in dm.val_dataloader()])
    assert float(binary_auroc(probs, labels)) == pytest.approx(results["val_history"][-1]["auc"], abs=1e-6)
