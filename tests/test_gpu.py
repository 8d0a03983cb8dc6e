"""The GPU's code paths, on every device this machine has: each test runs on the CPU in the default suite (its
CPU twin) and on CUDA where there is one (`-m gpu`, experiments/gpu/run.sh).

What a GPU run takes that a default CPU run does not, each selected here by its named option:
- dense histories (`model.net.fast=false`; on CUDA packing is never used) with training batches indexed
  from device-resident columns (`bench --train-batches device`, `bench.DeviceBatches`);
- bf16 autocast with fp32 master weights (`trainer.precision=bf16-mixed`: `trainer=gpu`, `trainer=cpu_bf16`);
- the non-finite check switched off (`model.nonfinite_check_every_n_steps=0`: no host sync per step);
- the inference form (folded QNN, cached item table) under bf16 autocast;
- torch.compile (`model.compile=true`; slow on the CPU: marked `slow` there);
- the benchmark in its GPU configuration.
Where it makes sense each is compared with the CPU fp32 reference (same weights, same batches).
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from qin_lightning.bench import BenchArgs, DeviceBatches, run
from qin_lightning.data.datamodule import Batch, MMCTRDataModule
from qin_lightning.models.inference import inference_form, set_fast_paths
from qin_lightning.training.build import build_module
from qin_lightning.training.module import CTRModule

from conftest import compose_train, tiny_datamodule, tiny_model_overrides, tiny_overrides

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])
DEVICES = ["cpu", CUDA]
BF16 = dict(rtol=3e-2, atol=3e-2)  # bf16 keeps 8 bits of mantissa: ~4e-3 relative per rounding


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> MMCTRDataModule:
    return tiny_datamodule(tmp_path_factory.mktemp("gpu") / "data", max_len=12)


def tiny_module(dm: MMCTRDataModule, tmp: Path, *overrides: str) -> CTRModule:
    cfg = compose_train(tiny_overrides(tmp) + tiny_model_overrides() + ["data.max_len=12", *overrides], tmp / "run")
    torch.manual_seed(0)
    return build_module(cfg, dm)


def first_batch(dm: MMCTRDataModule, device: str) -> Batch:
    return Batch(*(t.to(device, non_blocking=True) for t in next(iter(dm.train_dataloader()))))


def train_steps(module: CTRModule, batches: list[Batch], precision: str, seed: int = 3) -> list[float]:
    """Lightning's automatic optimisation spelled out (as in the bench): losses of the steps taken."""
    device = batches[0].label.device
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    torch.manual_seed(seed)  # the same dropout masks for every form run on the CPU
    losses = []
    for i, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = module.training_step(batch, i)
        assert loss.dtype == torch.float32  # the loss is computed in fp32 (logits.float(), fp32 L2 term)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_step_keeps_fp32_master_weights(tiny_data: MMCTRDataModule, tmp_path: Path, device: str):
    module = tiny_module(tiny_data, tmp_path)
    reference = copy.deepcopy(module)  # CPU fp32: same weights, same batch
    module.to(device)
    assert module.net.items.item_tags.device.type == device and module.net.items.item_mm.device.type == device
    before = module.net.head.weight.detach().clone()
    bf16_loss = train_steps(module, [first_batch(tiny_data, device)], "bf16")
    fp32_loss = train_steps(reference, [first_batch(tiny_data, "cpu")], "32")
    assert bf16_loss[0] == pytest.approx(fp32_loss[0], rel=2e-2)
    assert not torch.equal(before, module.net.head.weight)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in module.parameters()
               if p.grad is not None)  # mixed precision: fp32 weights and gradients
    optimizer_state = module.configure_optimizers()["optimizer"].state  # a fresh optimizer: no state yet
    assert not optimizer_state


@pytest.mark.parametrize("experiment", ["qin", "din", "transformer_dcn"])
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_keeps_the_logits_fp32(tiny_data: MMCTRDataModule, tmp_path: Path, device: str,
                                             experiment: str):
    """The output Linear runs in fp32 under bf16 autocast (models.interaction.logit_head): bf16 logits would
    carry 8 significant bits, tying rows in the validation AUC that picks the best epoch. In training and eval."""
    module = tiny_module(tiny_data, tmp_path, f"+experiment={experiment}", *tiny_model_overrides(experiment)).to(device)
    batch = first_batch(tiny_data, device)
    for training in (True, False):
        module.train(training)
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            logits = module(batch)
        assert logits.dtype == torch.float32
        assert (logits != logits.bfloat16().float()).any()  # values a bf16 Linear could not have returned


@pytest.mark.parametrize("device", DEVICES)
def test_lightning_fit_bf16_mixed(tiny_data: MMCTRDataModule, tmp_path: Path, device: str):
    module = tiny_module(tiny_data, tmp_path)
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision="bf16-mixed",
                         max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=2, gradient_clip_val=10.0)
    trainer.fit(module, datamodule=tiny_data)
    assert trainer.global_step == 3 and module.val_history
    assert 0.0 <= module.val_history[-1]["auc"] <= 1.0  # fp32 metrics from bf16 logits
    assert all(p.dtype == torch.float32 for p in module.parameters())


def tiny_unpinned(tmp: Path) -> list[str]:
    """tiny_overrides without its fp32 pin, for tests of the precision a trainer config chooses."""
    return [o for o in tiny_overrides(tmp) if not o.startswith("trainer.precision=")]


def test_cpu_bf16_trainer_config_composes_bf16_mixed(tmp_path: Path):
    cfg = compose_train(tiny_unpinned(tmp_path) + ["trainer=cpu_bf16"], tmp_path / "run")
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("cpu", "bf16-mixed")
    assert compose_train(tiny_unpinned(tmp_path) + ["trainer=cpu"], tmp_path / "run").trainer.precision == "32-true"
    assert compose_train([], tmp_path / "run").trainer.precision == "auto"  # resolved when the trainer is built


@pytest.mark.parametrize("has_bf16", [False, True])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    has_bf16: bool):
    """trainer.precision=auto (the default): bf16-mixed on a CPU with bf16 kernels, 32-true on one without;
    a stated precision (trainer=cpu, trainer=cpu_bf16) is kept as stated."""
    from qin_lightning import machine
    from qin_lightning.training import build

    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = {"trainer.precision=auto": "bf16-mixed" if has_bf16 else "32-true", "trainer=cpu": "32-true",
                "trainer=cpu_bf16": "bf16-mixed"}
    for override, precision in expected.items():
        cfg = compose_train([*tiny_unpinned(tmp_path), override], tmp_path / "r")
        assert build.trainer_precision(cfg) == precision, override
        assert build.build_trainer(cfg, [], []).precision == precision, override


@pytest.mark.parametrize("has_bf16", [False, True])
def test_cpu_bf16_warns_only_without_bf16_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture, has_bf16: bool):
    """trainer=cpu_bf16 on a CPU without bf16 kernels: one warning naming the fp32 setting; fp32: none."""
    from qin_lightning import machine
    from qin_lightning.training import build

    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: has_bf16)
    for trainer, warned in (("cpu_bf16", not has_bf16), ("cpu", False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="qin_lightning.train"):
            build.warn_slow_cpu_bf16(compose_train(tiny_unpinned(tmp_path) + [f"trainer={trainer}"], tmp_path / "r"))
        assert ["trainer.precision=32-true" in r.getMessage() for r in caplog.records] == ([True] if warned else [])


@pytest.mark.parametrize("device", DEVICES)
def test_dense_history_training_on_device_batches_matches_cpu_reference(tiny_data: MMCTRDataModule,
                                                                         tmp_path: Path, device: str):
    """The GPU's training form (fast attention on dense histories, batches indexed on the device) against the
    CPU default (packed histories, the datamodule's loader): the same losses on the CPU, where the batches and
    dropout masks are the same; on CUDA (another permutation and RNG) it trains to finite losses."""
    dense = tiny_module(tiny_data, tmp_path, "model.net.fast=false").to(device)
    packed = tiny_module(tiny_data, tmp_path)
    assert dense.net.fast is False and packed.net.fast is True
    source = DeviceBatches(tiny_data, torch.device(device), tiny_data.batch_size, tiny_data.seed)
    device_batches = list(source.epoch(0))[:3]
    assert device_batches[0].item_seq.device.type == device and source.steps_per_epoch() == len(tiny_data.train_sampler())
    dense_losses = train_steps(dense, device_batches, "32")
    assert all(torch.isfinite(torch.tensor(dense_losses)))
    if device == "cpu":
        sampler = tiny_data.train_sampler()
        sampler.set_epoch(0)
        loader_batches = [tiny_data.dataset("train")[index] for index in sampler][:3]
        for a, b in zip(device_batches, loader_batches):
            assert all(torch.equal(x, y) for x, y in zip(a, b))  # exactly the loader's batches
        packed_losses = train_steps(packed, loader_batches, "32")
        assert dense_losses == pytest.approx(packed_losses, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(dense.net.head.weight, packed.net.head.weight, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_check_switched_off(tiny_data: MMCTRDataModule, tmp_path: Path, device: str):
    """`nonfinite_check_every_n_steps=0`: a NaN loss is returned, not checked (no host sync per step)."""
    module = tiny_module(tiny_data, tmp_path, "model.nonfinite_check_every_n_steps=0").to(device).train()
    with torch.no_grad():
        module.net.head.bias.fill_(float("nan"))
    batch = first_batch(tiny_data, device)
    loss = module.training_step(batch, 0)
    assert torch.isnan(loss)
    module.validation_step(batch, 0)  # no check in validation either
    checked = tiny_module(tiny_data, tmp_path).to(device).train()
    with torch.no_grad():
        checked.net.head.bias.fill_(float("nan"))
    with pytest.raises(Exception, match="non-finite training loss"):
        checked.training_step(batch, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [True, False])
def test_inference_form_under_autocast_matches_fp32_reference(tiny_data: MMCTRDataModule, tmp_path: Path,
                                                              device: str, packed: bool):
    """eval: folded QNN + cached item table under bf16 autocast vs the literal fp32 form on the CPU."""
    module = tiny_module(tiny_data, tmp_path)
    train_steps(module, [first_batch(tiny_data, "cpu")] * 2, "32")  # non-trivial BatchNorm statistics
    reference = copy.deepcopy(module.net).eval()
    set_fast_paths(reference, False)
    net = module.net.to(device).eval()
    set_fast_paths(net, True)
    net.fast = packed  # QIN's own switch: packed histories (the parts keep theirs)
    batches = list(tiny_data.val_dataloader())
    with torch.inference_mode(), inference_form(net):
        expected = torch.cat([torch.sigmoid(reference(*b[:4])) for b in batches])
        with torch.autocast(device, dtype=torch.bfloat16):
            probs = torch.cat([torch.sigmoid(net(*(t.to(device) for t in b[:4])).float()) for b in batches])
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.cpu(), expected, **BF16)
    assert (probs.cpu() - expected).abs().mean() < 5e-3


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow), CUDA])
def test_compile_matches_eager(tiny_data: MMCTRDataModule, tmp_path: Path, device: str):
    eager = tiny_module(tiny_data, tmp_path, "model.net.fast=false").to(device)
    compiled = copy.deepcopy(eager)
    compiled.compile_net = True
    compiled.setup("fit")
    batch = first_batch(tiny_data, device)
    for module in (eager, compiled):
        module.train(False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch), eager(batch), rtol=1e-4, atol=1e-5)
    compiled.train()
    loss = compiled.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and compiled.net.head.weight.grad is not None


@pytest.mark.parametrize("device", DEVICES)
def test_fast_paths_match_plain_on_dense_histories(tiny_data: MMCTRDataModule, tmp_path: Path, device: str):
    net = tiny_module(tiny_data, tmp_path).net.to(device).eval()
    batch = first_batch(tiny_data, device)
    args = (batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)
    with torch.no_grad(), inference_form(net):
        set_fast_paths(net, True)  # prepared parts: the item table, attention products, folded QNN
        net.fast = False  # dense histories: what CUDA runs
        fast = net(*args)
        set_fast_paths(net, False)
        plain = net(*args)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_bench_gpu_configuration(tmp_path: Path, device: str):
    """The bench as experiments/gpu/run.sh runs it (bf16, device batches, a whole epoch; compile on CUDA)."""
    args = BenchArgs(data_scale="tiny", train_rows=512, eval_rows=256, batch_size=128, rounds=2, train_steps=2,
                     infer_batches=1, requests=20, threads=1, device=device, precision="32,bf16",
                     compile=device == "cuda", epoch=True, onnx=False, train_batches="device",
                     data_root=str(tmp_path / "data"),
                     overrides=tiny_model_overrides() + ["model.nonfinite_check_every_n_steps=0"])
    record = run(args, tmp_path / "bench.json")
    assert record["device"] == device and record["epoch_steps"] == 4 and record["train_samples_per_s"] > 0
    assert record["train_batches"].startswith("device-resident")
    assert record["bf16_train_samples_per_s"] > 0 and record["bf16_infer_samples_per_s"] > 0
    assert record["bf16_max_abs_prob_diff"] < 5e-2 and abs(record["bf16_auc"] - record["auc_fast"]) < 2e-2
    assert record["auc_abs_diff"] < 1e-5  # fp32 plain vs fast: the same function
    assert (tmp_path / "bench.json").is_file()
