"""GPU-only checks (skipped without CUDA): bf16 mixed-precision training, torch.compile, fast paths on the
device, and the benchmark in its GPU configuration. Run by experiments/gpu/run.sh on a GPU machine."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from qin_lightning.bench import BenchArgs, run
from qin_lightning.data.datamodule import Batch, MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.models.switches import set_fast_paths
from qin_lightning.training.build import build_module
from qin_lightning.training.module import CTRModule

from conftest import compose_train, tiny_model_overrides, tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> MMCTRDataModule:
    dm = MMCTRDataModule(str(tmp_path_factory.mktemp("gpu") / "data"), max_len=12, batch_size=64,
                         eval_batch_size=128, synthetic=SyntheticConfig.tiny())
    dm.prepare_data()
    dm.setup("fit")
    return dm


def tiny_module(dm: MMCTRDataModule, tmp: Path, compile: bool = False) -> CTRModule:
    cfg = compose_train(tiny_overrides(tmp) + tiny_model_overrides() + ["data.max_len=12"], tmp / "run")
    module = build_module(cfg, dm)
    module.compile = compile
    return module


def first_batch(dm: MMCTRDataModule) -> Batch:
    return Batch(*(t.to(CUDA, non_blocking=True) for t in next(iter(dm.train_dataloader()))))


def test_bf16_training_step_updates_weights_on_device(tiny_data: MMCTRDataModule, tmp_path: Path):
    module = tiny_module(tiny_data, tmp_path).to(CUDA).train()
    assert module.net.items.item_tags.is_cuda and module.net.items.item_mm.is_cuda  # tables on the device
    optimizer = module.configure_optimizers()["optimizer"]
    before = module.net.head.weight.detach().clone()
    batch = first_batch(tiny_data)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module.training_step(batch, 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
    optimizer.step()
    assert not torch.equal(before, module.net.head.weight)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed precision keeps fp32 weights


def test_lightning_fit_bf16_mixed(tiny_data: MMCTRDataModule, tmp_path: Path):
    module = tiny_module(tiny_data, tmp_path)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=1,
                         gradient_clip_val=10.0)
    trainer.fit(module, datamodule=tiny_data)
    assert trainer.global_step == 3 and module.val_history and module.val_history[-1]["auc"] == module.val_history[-1]["auc"]


def test_compile_matches_eager(tiny_data: MMCTRDataModule, tmp_path: Path):
    eager = tiny_module(tiny_data, tmp_path).to(CUDA)
    compiled = copy.deepcopy(eager)
    compiled.compile = True
    compiled.setup("fit")
    batch = first_batch(tiny_data)
    for module in (eager, compiled):
        module.train(False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch), eager(batch), rtol=1e-4, atol=1e-5)
    compiled.train()
    loss = compiled.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and compiled.net.head.weight.grad is not None


def test_fast_paths_match_plain_on_cuda(tiny_data: MMCTRDataModule, tmp_path: Path):
    net = tiny_module(tiny_data, tmp_path).net.to(CUDA).eval()
    batch = first_batch(tiny_data)
    args = (batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)
    with torch.no_grad():
        set_fast_paths(net, True)
        fast = net(*args)
        set_fast_paths(net, False)
        plain = net(*args)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_bench_gpu_configuration(tmp_path: Path):
    args = BenchArgs(data_scale="tiny", train_rows=512, eval_rows=256, batch_size=128, rounds=2, train_steps=2,
                     infer_batches=1, requests=20, threads=1, device="cuda", precision="bf16", compile=True,
                     epoch=True, onnx=False, data_root=str(tmp_path / "data"), overrides=tiny_model_overrides())
    record = run(args, tmp_path / "bench.json")
    assert record["device"] == "cuda" and record["epoch_steps"] == 4 and record["train_samples_per_s"] > 0
    assert record["auc_abs_diff"] < 1e-2  # bf16 autocast: both paths round differently
    assert (tmp_path / "bench.json").is_file()
