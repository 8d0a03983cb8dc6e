"""results.json `timing`: one entry per epoch for every phase, each phase charged to the right list; `machine`."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from conftest import compose_train, tiny_model_overrides, tiny_overrides

import qin_lightning.training.timing as timing_module
from qin_lightning.training.timing import PHASES
from qin_lightning.train import train


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


def test_timing_with_real_clock_is_consistent(tmp_path: Path) -> None:
    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides(), tmp_path / "run")
    timing = train(cfg)["timing"]
    assert len(timing["epoch_s"]) == 2 and all(v >= 0 for phase in PHASES for v in timing[phase])
    assert 0.0 <= timing["non_training_share"] < 1.0


def test_results_name_the_machine_the_seconds_come_from(tmp_path: Path) -> None:
    """results.json `machine`: seconds per epoch of two runs are comparable only on the same CPU / SIMD level."""
    import torch

    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + ["trainer.max_epochs=1"], tmp_path / "run")
    facts = train(cfg)["machine"]
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(facts["cpu_bf16_kernels"], bool) and facts["torch"] == torch.__version__
    assert facts["threads"] >= 1 and facts["cpu"]
