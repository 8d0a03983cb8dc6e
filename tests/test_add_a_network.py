"""Adding a model is a network file plus a config: a copy of the package gains `models/mean_history.py` and
`conf/model/mean_history.yaml`, nothing else, and train, eval (checkpoint and ONNX), predict and export all run
on it. Stored checkpoints accept the new network because the networks they may name are the ones the package's
model configs name (qin_lightning.config.model_targets)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import tiny_overrides

import qin_lightning

NETWORK = '''"""A small network of the layout: items, the mean of the history, the two levels -> linear head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qin_lightning.models.items import ItemEncoder, level_embeddings


class MeanHistory(nn.Module):
    """Logit of [target item, mean of the history's items, likes and views levels]; returns logits (B,)."""

    def __init__(self, item_tags: Tensor, item_mm: Tensor, num_tags: int, embedding_dim: int = 8,
                 mm_projection_dim: int = 8, num_levels: int = 11) -> None:
        super().__init__()
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim, mm_projection_dim, fast=False)
        self.likes_embedding, self.views_embedding = level_embeddings(num_levels, embedding_dim)
        self.head = nn.Linear(2 * self.items.out_dim + 2 * embedding_dim, 1)

    def forward(self, item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> Tensor:
        mask = (item_seq > 0).unsqueeze(-1).float()  # (B, S, 1)
        history = (self.items(item_seq) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, I)
        levels = [self.likes_embedding(likes_level), self.views_embedding(views_level)]  # 2 x (B, E)
        return self.head(torch.cat([self.items(item_id), history, *levels], dim=-1)).squeeze(-1)  # (B,)
'''

CONFIG = """defaults:
  - module: default
  - _self_

lr: 1.0e-3
embedding_l2: 0.0
lr_factor: 0.5

net:
  _target_: qin_lightning.models.mean_history.MeanHistory
  embedding_dim: 8
  mm_projection_dim: 8
"""


# eval (checkpoint and its ONNX export), predict and export in one process of the copy
SERVE = """
import json, sys
from omegaconf import OmegaConf
import qin_lightning
from qin_lightning.eval import evaluate
from qin_lightning.predict import predict
from qin_lightning.serving.onnx_export import export_checkpoint
from qin_lightning.serving.stored_config import NETWORKS

ckpt, out = sys.argv[1], sys.argv[2]
common = {"ckpt_path": ckpt, "data": {"root": None, "eval_batch_size": None}, "device": "cpu", "threads": 1,
          "traceback": False}
metrics = evaluate(OmegaConf.create({**common, "split": "valid", "output": out + "/eval.json"}))
predict(OmegaConf.create({**common, "output": out + "/prediction.csv", "zip": False, "overwrite": True,
                          "onnx": None}))
onnx = export_checkpoint(ckpt, out + "/model.onnx")
onnx_metrics = evaluate(OmegaConf.create({**common, "split": "valid", "output": out + "/eval_onnx.json",
                                          "onnx": str(onnx)}))
print(json.dumps({"package": qin_lightning.__file__, "networks": sorted(NETWORKS), "auc": metrics["auc"],
                  "onnx_auc": onnx_metrics["auc"]}))
"""


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_network_file_and_a_config_are_a_new_model(tmp_path: Path) -> None:
    package = Path(qin_lightning.__file__).parent
    copy = tmp_path / "pkg" / "qin_lightning"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "models" / "mean_history.py").write_text(NETWORK)
    (copy / "conf" / "model" / "mean_history.yaml").write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(copy.parent), "WANDB_MODE": "disabled"}

    run = tmp_path / "run"
    _run(["-m", "qin_lightning.train", "model=mean_history", *tiny_overrides(tmp_path), "trainer.max_epochs=1",
          f"hydra.run.dir={run}"], env, tmp_path)
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "completed" and record["model"] == "meanhistory" and record["n_params"] > 0

    served = json.loads(_run(["-c", SERVE, str(run / "checkpoints" / "last.ckpt"), str(tmp_path)], env,
                             tmp_path).stdout.strip().splitlines()[-1])
    assert Path(served["package"]).parent == copy  # the copy, not the installed package, is what ran
    assert "qin_lightning.models.mean_history.MeanHistory" in served["networks"]
    assert 0.0 <= served["auc"] <= 1.0 and abs(served["onnx_auc"] - served["auc"]) < 1e-6
    assert (tmp_path / "prediction.csv").read_text().startswith("ID,Task2")
