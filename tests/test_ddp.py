"""DDP with 2 CPU processes (gloo) through the real entry point: `python -m qin_lightning.train trainer=ddp`.

Lightning's subprocess launcher starts rank 1 itself (re-running the command with Hydra's run folder). A
test-only callback (`RecordRows`, below, added with `+callbacks.record._target_=test_ddp.RecordRows`) records
on every rank the row indices the datasets actually served, so the checks are about the real run:
(a) every training row is used exactly once per epoch across the ranks, with equal step counts and a new
    permutation every epoch; every validation row is evaluated exactly once across the ranks;
(b) the validation AUC logged by DDP (identical on both ranks) equals a single-process evaluation of the
    saved best weights; both ranks hold the same parameters and buffers (BatchNorm running statistics)
    when they validate.
Sizes are chosen so nothing divides evenly (uneven tails on both splits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.data.datamodule import Batch, ShardedBatchSampler, SplitDataset
from qin_lightning.training.build import build_datamodule, build_module

TRAIN_ROWS, VALID_ROWS, BATCH = 501, 251, 64  # 501 rows / (2 ranks x 64) -> 4 steps of 62-63 rows per rank


class _RecordingSplit(SplitDataset):
    """A SplitDataset that remembers every index tensor it serves (installed by RecordRows)."""

    served: list[torch.Tensor]

    def __getitem__(self, index: torch.Tensor) -> Batch:  # type: ignore[override]
        self.served.append(index.clone())
        return super().__getitem__(index)


class RecordRows(Callback):
    """Test-only: writes `<out_dir>/rank<r>_epoch<e>.pt` with the rows each rank trained and validated on."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps = 0
        self.trained_rows = 0
        self.val_rows: list[torch.Tensor] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for split in ("train", "valid"):
            data = trainer.datamodule.dataset(split)
            data.__class__ = _RecordingSplit
            data.served = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Batch,
                           batch_idx: int) -> None:
        self.steps += 1
        self.trained_rows += batch.label.numel()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        valid = trainer.datamodule.dataset("valid")
        self.val_rows, valid.served = valid.served, []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        train = trainer.datamodule.dataset("train")
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "epoch": trainer.current_epoch,
            "train_rows": torch.cat(train.served),
            "train_batches": len(train.served),
            "steps": self.steps,
            "trained_rows": self.trained_rows,
            "val_rows": torch.cat(self.val_rows) if self.val_rows else torch.empty(0, dtype=torch.long),
            "val_auc": float(trainer.callback_metrics["val/auc"]),
            "param_sums": [float(q.double().sum()) for q in pl_module.parameters()],
            "buffer_sums": [float(q.double().sum()) for q in pl_module.buffers()],
            # what the DDP wrapper broadcasts from rank 0 before every training forward
            "broadcast_buffers": [tuple(b.shape) for b in trainer.strategy.model.modules_buffers],
            "ignored": sorted(trainer.strategy.model.parameters_to_ignore),
        }
        train.served, self.steps, self.trained_rows = [], 0, 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")


def _overrides(tmp: Path) -> list[str]:
    return tiny_overrides(tmp) + tiny_model_overrides() + [
        f"data.synthetic.train_rows={TRAIN_ROWS}",
        f"data.synthetic.valid_rows={VALID_ROWS}",
        f"data.batch_size={BATCH}",
        "data.eval_batch_size=50",
        "trainer.max_epochs=2",
    ]


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    run_dir, record_dir = tmp_path / "run", tmp_path / "record"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    args = _overrides(tmp_path) + [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={run_dir}",
        "+callbacks.record._target_=test_ddp.RecordRows",
        f"+callbacks.record.out_dir={record_dir}",
    ]
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    print(f"DDP run: {time.time() - started:.1f} s")

    # ---- (a) sharding of the real run -------------------------------------------------------------------------
    records = {(r["rank"], r["epoch"]): r for r in map(torch.load, sorted(record_dir.glob("*.pt")))}
    assert sorted(records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["world_size"] == 2 for r in records.values())
    orders = []
    for epoch in (0, 1):
        r0, r1 = records[(0, epoch)], records[(1, epoch)]
        both = torch.cat([r0["train_rows"], r1["train_rows"]])
        assert torch.equal(both.sort().values, torch.arange(TRAIN_ROWS)), "a training row was dropped or repeated"
        assert r0["steps"] == r1["steps"] == r0["train_batches"] == r1["train_batches"] == 4  # equal step counts
        assert r0["trained_rows"] == r0["train_rows"].numel() and r1["trained_rows"] == r1["train_rows"].numel()
        val = torch.cat([r0["val_rows"], r1["val_rows"]])
        assert r0["val_rows"].numel() > 0 and r1["val_rows"].numel() > 0, "validation must be sharded"
        assert torch.equal(val.sort().values, torch.arange(VALID_ROWS)), "a validation row was dropped or repeated"
        assert r0["val_auc"] == r1["val_auc"], "val/auc must be the synchronised value on every rank"
        # same model on both ranks after validation (BatchNorm running stats included: DDP broadcasts buffers)
        assert r0["param_sums"] == r1["param_sums"] and r0["buffer_sums"] == r1["buffer_sums"]
        # the constant item tables are not re-broadcast every step; the BatchNorm statistics are
        assert r0["ignored"] == ["net.items.item_mm", "net.items.item_tags"]
        assert r0["broadcast_buffers"] and all(len(shape) <= 1 for shape in r0["broadcast_buffers"])
        orders.append(both)
    assert not torch.equal(orders[0], orders[1]), "each epoch must draw a new permutation"

    # ---- written once, by rank 0 -------------------------------------------------------------------------------
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs_trained"] == 2
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    assert [h["auc"] for h in results["val_history"]] == [records[(0, e)]["val_auc"] for e in (0, 1)]

    # ---- (b) the DDP val/auc equals a single-process evaluation of the best weights ---------------------------
    cfg = compose_train(_overrides(tmp_path), tmp_path / "eval")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    state = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    module.eval()
    probs, labels = [], []
    with torch.inference_mode():
        for batch in dm.val_dataloader():  # one process: the whole split
            probs.append(torch.sigmoid(module(batch)))
            labels.append(batch.label.long())
    p, y = torch.cat(probs), torch.cat(labels)
    assert p.numel() == VALID_ROWS
    single = float(binary_auroc(p, y))
    assert abs(single - results["best_val_auc"]) < 1e-6, (single, results["best_val_auc"])
    assert abs(single - float(state["callbacks"][next(k for k in state["callbacks"] if "ModelCheckpoint" in k)]
                              ["best_model_score"])) < 1e-6


def test_eval_shards_cover_split_once() -> None:
    """The eval policy without DDP processes: disjoint shards, every row once, equal step counts, row order."""
    for n, batch_size, world in [(251, 50, 2), (10, 4, 3), (7, 100, 7), (1000, 64, 8)]:
        shards = [list(ShardedBatchSampler(n, batch_size, False, rank=r, world_size=world)) for r in range(world)]
        assert len({len(s) for s in shards}) == 1, "every rank must run the same number of eval steps"
        rows = torch.cat([torch.cat(s) for s in shards])
        assert torch.equal(rows.sort().values, torch.arange(n))
        assert all(b.numel() <= batch_size and bool((b.diff() == 1).all()) for s in shards for b in s)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["transformer_dcn", "qnn_alpha"])
def test_ddp_new_networks(tmp_path: Path, experiment: str) -> None:
    """The winner and QNN-alpha + self-ensemble (two passes inside one DDP step) train under 2-process DDP."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("MASTER_PORT", None)
    args = [f"+experiment={experiment}", *tiny_overrides(tmp_path), *tiny_model_overrides(experiment),
            f"data.synthetic.train_rows={TRAIN_ROWS}", f"data.synthetic.valid_rows={VALID_ROWS}",
            f"data.batch_size={BATCH}", "trainer.max_epochs=1", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["experiment"] == experiment
