"""results.json `timing`: one entry per epoch for every phase, each phase charged to the right list; `machine`."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any
from pathlib import Path

import lightning.pytorch as pl
import pytest
from conftest import compose_train, tiny_model_overrides, tiny_overrides

import qin_lightning.training.timing as timing_module
from qin_lightning.train import train
from qin_lightning.training.timing import PHASES


class FakeClock:
    """perf_counter stand-in: +1 per reading; `advance` simulates work of a known length."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_results_split_every_epoch_into_phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(timing_module.time, "perf_counter", clock)
    save = pl.Trainer.save_checkpoint

    def slow_save(self: pl.Trainer, *args, **kwargs) -> None:  # every checkpoint write "takes" 1000 s
        clock.advance(1000.0)
        save(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", slow_save)
    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + ["trainer.max_epochs=3"], tmp_path / "run")
    train(cfg)
    timing = json.loads((tmp_path / "run" / "results.json").read_text())["timing"]
    for phase in PHASES:
        assert len(timing[phase]) == 3, phase
    for epoch in range(3):
        # last.ckpt is written after every validation (plus the best one when it improves): checkpoint time only
        assert timing["checkpoint_s"][epoch] >= 1000.0
        assert timing["train_s"][epoch] < 1000.0 and timing["val_s"][epoch] < 1000.0
        parts = timing["train_s"][epoch] + timing["val_s"][epoch] + timing["checkpoint_s"][epoch]
        assert timing["epoch_s"][epoch] == pytest.approx(parts)
    assert timing["total_epoch_s"] == pytest.approx(sum(timing["epoch_s"]))
    assert timing["non_training_share"] > 0.9  # the fake checkpoint writes dominate


class Pause(pl.Callback):
    """Real work of a known length: `seconds` of sleep in epoch 0's first training batch and in every epoch's
    first validation batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == 0:
            time.sleep(self.seconds)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            time.sleep(self.seconds)


def test_timing_with_real_clock_is_consistent(tmp_path: Path) -> None:
    """With the real clock: known pauses land in their phases, the phases add up to the epoch, and the epochs fit
    in the wall time of the call."""
    pause = 0.25
    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + [
        "+callbacks.pause._target_=test_timing.Pause", f"+callbacks.pause.seconds={pause}"], tmp_path / "run")
    start = time.perf_counter()
    timing = train(cfg)["timing"]
    wall = time.perf_counter() - start
    assert all(len(timing[phase]) == 2 for phase in PHASES), timing
    assert timing["train_s"][0] >= pause and all(v >= pause for v in timing["val_s"]), timing
    assert all(v > 0 for phase in PHASES for v in timing[phase]), timing  # every phase takes some time
    for epoch in range(2):
        parts = timing["train_s"][epoch] + timing["val_s"][epoch] + timing["checkpoint_s"][epoch]
        assert timing["epoch_s"][epoch] == pytest.approx(parts, abs=2e-3)  # 3 roundings of 5e-4
    assert timing["total_epoch_s"] == pytest.approx(sum(timing["epoch_s"]), abs=2e-3) and sum(timing["epoch_s"]) < wall
    share = (timing["total_epoch_s"] - timing["total_train_s"]) / timing["total_epoch_s"]
    assert timing["non_training_share"] == pytest.approx(share, abs=1e-3) and 0.0 < share < 1.0


def test_results_name_the_machine_the_seconds_come_from(tmp_path: Path) -> None:
    """results.json `machine`: seconds per epoch of two runs are comparable only on the same CPU / SIMD level;
    `precision`: what the default trainer.precision=auto trained in on this machine."""
    import torch

    from qin_lightning.machine import auto_precision

    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + ["trainer.max_epochs=1",
                                                                             "trainer.precision=auto"], tmp_path / "run")
    results = train(cfg)
    assert results["precision"] == auto_precision(on_gpu=False)
    facts = results["machine"]
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(facts["cpu_bf16_kernels"], bool) and facts["torch"] == torch.__version__
    assert facts["threads"] >= 1 and facts["cpu"]


def _stub(epoch: int) -> tuple[Any, Any]:
    """(trainer, module) with just what EpochTiming reads."""
    return (SimpleNamespace(current_epoch=epoch, sanity_checking=False),
            SimpleNamespace(device=SimpleNamespace(type="cpu")))


def test_an_epoch_interrupted_mid_way_keeps_its_seconds_across_a_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(timing_module.time, "perf_counter", clock)
    before = timing_module.EpochTiming()
    trainer, module = _stub(0)
    before.on_train_epoch_start(trainer, module)  # epoch 0 starts at t = 1
    clock.advance(9.0)
    state = before.state_dict()  # the interrupt's checkpoint, mid-epoch at t = 11: 10 s of training so far
    assert state["open_epoch"]["train_s"] == 10.0 and state["timing"]["epoch_s"] == []

    after = timing_module.EpochTiming()
    after.load_state_dict(state)
    after.on_train_epoch_start(trainer, module)  # the resumed process continues epoch 0 (t = 12)
    clock.advance(4.0)
    after.on_validation_start(trainer, module)  # t = 17
    after.on_validation_end(trainer, module)  # t = 18
    after.on_train_end(trainer, module)  # t = 19
    assert after.timing == {"epoch_s": [10.0 + 7.0], "train_s": [10.0 + 5.0], "val_s": [1.0], "checkpoint_s": [1.0]}


def test_a_resume_at_an_epoch_end_appends_that_epoch_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(timing_module.time, "perf_counter", clock)
    before = timing_module.EpochTiming()
    before.on_train_epoch_start(*_stub(0))  # t = 1
    before.on_validation_start(*_stub(0))  # t = 2
    before.on_validation_end(*_stub(0))  # t = 3
    state = before.state_dict()  # ModelCheckpoint at the validation end, t = 4

    after = timing_module.EpochTiming()
    after.load_state_dict(state)
    after.on_train_epoch_start(*_stub(1))  # the resumed process starts epoch 1: epoch 0 is over
    after.on_train_end(*_stub(1))
    assert after.timing["epoch_s"] == [3.0, 1.0] and after.timing["train_s"] == [1.0, 1.0]
    assert after.timing["val_s"] == [1.0, 0.0] and after.timing["checkpoint_s"] == [1.0, 0.0]
