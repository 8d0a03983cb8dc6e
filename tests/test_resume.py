"""Resume: exact continuation mid-epoch and from an epoch boundary, `ckpt_path=last` lookup, real SIGTERM."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides

from qin_lightning.errors import ConfigError
from qin_lightning.train import train
from qin_lightning.training.csv_logger import ResumableCSVLogger
from qin_lightning.training.resume import GracefulInterrupt, TrainingInterrupted, resolve_ckpt_path

# 16 batches per epoch, lr high enough that the plateau schedule halves it at some epoch, dropout on (QNN)
RESUME = ["data.batch_size=32", "trainer.max_epochs=4", "model.lr=3e-2", "callbacks.early_stopping.patience=8"]


class StopAt(pl.Callback):
    """Asks the GracefulInterrupt callback to stop at (epoch, batch) as if a signal had arrived then."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            next(c for c in trainer.callbacks if isinstance(c, GracefulInterrupt)).request_stop(signal.SIGTERM)


class CountSteps(pl.Callback):
    """Writes the (epoch, batch) of every training step this process ran to `path` when training ends: a resumed
    run starts after the checkpoint's step; one that silently restarted from scratch runs every step again."""

    def __init__(self, path: str) -> None:
        self.path, self.steps = Path(path), []  # type: list[tuple[int, int]]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        self.steps.append((trainer.current_epoch, batch_idx))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.write_text(json.dumps(self.steps))


def counting(path: Path) -> list[str]:
    """Overrides that add CountSteps writing to `path`."""
    return ["+callbacks.count_steps._target_=test_resume.CountSteps", f"+callbacks.count_steps.path={path}"]


def steps_run(path: Path) -> list[tuple[int, int]]:
    return [tuple(step) for step in json.loads(path.read_text())]


def _cfg(tmp_path: Path, run: str, extra: list[str] = ()):  # type: ignore[assignment]
    return compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + RESUME + list(extra), tmp_path / run)


def _history(results: dict) -> list[dict]:
    return results["val_history"]


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted run (shared by the tests of this module: same data cache, same seed)."""
    tmp = tmp_path_factory.mktemp("resume")
    return tmp, train(_cfg(tmp, "reference"))


def test_reference_run_uses_the_plateau_schedule(reference: tuple[Path, dict]) -> None:
    lrs = [h["lr"] for h in _history(reference[1])]
    assert len(lrs) == 4 and len(set(lrs)) > 1, "the test should cover an lr reduction"


@pytest.mark.parametrize("stop", [(1, 5), (2, 0)])
def test_resume_mid_epoch_is_exact(reference: tuple[Path, dict], stop: tuple[int, int]) -> None:
    tmp, ref = reference
    run = f"stopped_{stop[0]}_{stop[1]}"
    cfg = _cfg(tmp, run, ["+callbacks.stop_at._target_=test_resume.StopAt", f"+callbacks.stop_at.epoch={stop[0]}",
                          f"+callbacks.stop_at.batch={stop[1]}"])
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM received: saved the training state at epoch"):
        train(cfg)
    ckpt = torch.load(tmp / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == stop[0] and ckpt["global_step"] == stop[0] * 16 + stop[1] + 1
    resumed = train(_cfg(tmp, run, ["ckpt_path=last", *counting(tmp / f"{run}_steps.json")]))
    assert _history(resumed) == _history(ref)
    # resumed, not rerun from scratch (which would reproduce the history too): only the steps after the checkpoint
    steps = steps_run(tmp / f"{run}_steps.json")
    assert len(steps) == 4 * 16 - ckpt["global_step"] and steps[0] == (stop[0], stop[1] + 1), steps[:3]
    assert resumed["best_val_auc"] == ref["best_val_auc"]
    # metrics.csv holds the rows from before the interrupt too (Lightning's CSVLogger would start afresh). Only
    # the train epoch means of the interrupted epoch differ: Lightning does not checkpoint its running means.
    def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        epoch_means = ("train/loss_epoch", "train/data_loss")
        return [{k: ("" if k in epoch_means and row["epoch"] == str(stop[0]) else v) for k, v in row.items()}
                for row in rows]

    # timing continues the checkpoint's epochs; the interrupted epoch adds the seconds it ran before the stop
    assert len(resumed["timing"]["epoch_s"]) == len(ref["timing"]["epoch_s"]) == 4
    assert all(s > 0 for s in resumed["timing"]["epoch_s"])
    resumed_rows, reference_rows = _metrics_rows(tmp / run), _metrics_rows(tmp / "reference")
    assert len(resumed_rows) == len(reference_rows) > 10
    assert comparable(resumed_rows) == comparable(reference_rows)


def test_resume_from_epoch_boundary_is_exact(reference: tuple[Path, dict]) -> None:
    tmp, ref = reference
    train(_cfg(tmp, "short", ["trainer.max_epochs=2"]))  # last.ckpt = end of epoch 1 (after validation)
    resumed = train(_cfg(tmp, "short", ["ckpt_path=last", *counting(tmp / "short_steps.json")]))
    assert _history(resumed) == _history(ref)
    steps = steps_run(tmp / "short_steps.json")  # resumed: epochs 2 and 3 only
    assert len(steps) == 2 * 16 and steps[0] == (2, 0), steps[:3]
    assert _metrics_rows(tmp / "short") == _metrics_rows(tmp / "reference")  # every row, epoch means included
    assert len(resumed["timing"]["epoch_s"]) == 4  # the 2 epochs before the resume are kept


def test_csv_logger_restores_rows_up_to_the_checkpoint_step(tmp_path: Path) -> None:
    """Rows after the checkpoint's step are dropped (logged again); rows the resumed run wrote come after."""
    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=3)
    first.log_metrics({"val/auc": 0.6}, step=7)
    first.log_metrics({"train/loss": 0.5}, step=9)  # after the checkpoint below
    first.save()
    fresh = ResumableCSVLogger(tmp_path, name="csv", version="")
    fresh.log_hyperparams({"seed": 1})  # the writer starts: Lightning removes the old file
    assert not fresh.metrics_path.exists()
    fresh.log_metrics({"val/logloss": 0.4}, step=8)
    assert fresh.restore_rows(until_step=7) == 2
    fresh.log_metrics({"train/loss": 0.25}, step=9)
    fresh.save()
    rows = _metrics_rows(tmp_path)
    assert [(r["step"], r["train/loss"], r["val/auc"], r["val/logloss"]) for r in rows] == [
        ("3", "1.0", "", ""), ("7", "", "0.6", ""), ("8", "", "", "0.4"), ("9", "0.25", "", "")]
    assert not list(tmp_path.glob("csv/.*.tmp"))


def test_resume_after_a_non_improving_epoch_is_exact(tmp_path: Path) -> None:
    """last.ckpt is written after every epoch (not only improving ones), and the plateau step of the epoch the
    checkpoint closes (lr x 0.5 after a worse epoch) is taken on resume."""
    extra = ["model.fused_adam=true"]  # with this seed: epoch 1 is worse than epoch 0
    ref = train(_cfg(tmp_path, "reference", extra))
    aucs = [h["auc"] for h in _history(ref)]
    assert aucs[1] < aucs[0], "the test needs a non-improving epoch 1"
    train(_cfg(tmp_path, "short", ["trainer.max_epochs=2", *extra]))
    ckpt = torch.load(tmp_path / "short" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1, "last.ckpt must be the latest epoch even when it did not improve"
    resumed = train(_cfg(tmp_path, "short", ["ckpt_path=last", *extra]))
    assert _history(resumed) == _history(ref)


def test_last_lookup(tmp_path: Path) -> None:
    runs = tmp_path / "logs" / "train" / "runs" / "qin"
    old, new = runs / "2024-01-01_00-00-00", runs / "2024-01-02_00-00-00"
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no checkpoint to resume from .*hydra.run.dir="):
        resolve_ckpt_path("last", new, new / "checkpoints", multirun=False)
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", new, new / "checkpoints", multirun=False) == str(old / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="no checkpoint"):  # a sweep job only resumes its own folder
        resolve_ckpt_path("last", new, new / "checkpoints", multirun=True)
    (new / "checkpoints").mkdir(parents=True)
    (new / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", new, new / "checkpoints", multirun=False) == str(new / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="ckpt_path=nope.ckpt: file not found"):
        resolve_ckpt_path("nope.ckpt", new, new / "checkpoints", multirun=False)
    assert resolve_ckpt_path(None, new, new / "checkpoints", multirun=False) is None


MARKER_CALLBACK = '''
import json, time
from pathlib import Path
import lightning.pytorch as pl

class Marker(pl.Callback):
    """Writes (epoch, batch) after every training batch and slows training down (no effect on numbers)."""
    def __init__(self, path: str, sleep: float) -> None:
        self.path, self.sleep = Path(path), sleep
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.path.write_text(json.dumps({"epoch": trainer.current_epoch, "batch": batch_idx}))
        time.sleep(self.sleep)
'''


def test_sigterm_mid_epoch_then_resume_matches(reference: tuple[Path, dict], tmp_path: Path) -> None:
    """A real SIGTERM to a training subprocess in epoch >= 1, mid-epoch; `ckpt_path=last` finishes it exactly."""
    tmp, ref = reference
    (tmp_path / "marker_cb.py").write_text(MARKER_CALLBACK)
    marker = tmp_path / "progress.json"
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT / "src")])}
    env.pop("HYDRA_FULL_ERROR", None)
    args = [*tiny_overrides(tmp), *tiny_model_overrides(), *RESUME, f"hydra.run.dir={run_dir}"]
    slow = ["+callbacks.marker._target_=marker_cb.Marker", f"+callbacks.marker.path={marker}",
            "+callbacks.marker.sleep=0.15"]
    proc = subprocess.Popen([sys.executable, "-m", "qin_lightning.train", *args, *slow], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads(marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {"epoch": -1, "batch": -1}
        if state["epoch"] >= 1 and 2 <= state["batch"] <= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted: " + proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "resume with: python -m qin_lightning.train" in err and "ckpt_path=last" in err
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert stopped["epoch"] >= 1 and stopped["global_step"] % 16 != 0, "expected a mid-epoch checkpoint"
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == record["stop_reason"] == "interrupted" and record["stopped_epoch"] == stopped["epoch"]

    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args, "ckpt_path=last"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["val_history"] == _history(ref)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork: a child process without a new interpreter")
def test_sigkill_inside_a_training_step_then_resume_matches(reference: tuple[Path, dict], tmp_path: Path) -> None:
    """SIGKILL (no handler runs) in epoch 1's 3rd step, between its backward pass and the optimizer step: last.ckpt
    is still epoch 0's complete checkpoint, and `ckpt_path=last` finishes the run exactly. The fast default-suite
    variant of tests/test_untrusted.py's slow SIGKILL tests: the training runs in a forked child (its imports
    already done) instead of a new interpreter."""
    tmp, ref = reference
    run_dir = tmp_path / "killed"
    overrides = tiny_overrides(tmp) + tiny_model_overrides() + RESUME
    kill = ["+callbacks.kill._target_=sigkill_helpers.KillAt", "+callbacks.kill.epoch=1",
            "+callbacks.kill.batch=2", "+callbacks.kill.stage=step"]
    cfg = compose_train(overrides + kill, run_dir)
    pid = os.fork()
    if pid == 0:  # the child trains until the callback kills it; it never returns into pytest
        try:
            train(cfg)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child status {status}"
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (stopped["epoch"], stopped["global_step"]) == (0, 16), "expected epoch 0's end-of-epoch checkpoint"
    assert not (run_dir / "results.json").exists()  # killed: nothing ran after the signal
    train(compose_train(overrides + ["ckpt_path=last", *counting(tmp_path / "steps.json")], run_dir))
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "completed" and _history(resumed) == _history(ref)
    # resumed, not rerun from scratch (which would also reproduce the history): the resumed process ran epochs 1-3
    # only (48 steps from (1, 0)), and epoch 0's seconds are the child's
    steps = steps_run(tmp_path / "steps.json")
    assert len(steps) == 3 * 16 and steps[0] == (1, 0), steps[:3]
    carried = stopped["callbacks"]["EpochTiming"]["open_epoch"]["epoch_s"]  # epoch 0, closed after the save
    assert resumed["timing"]["epoch_s"][0] == round(carried, 3)


def test_checkpoint_from_before_exact_resume_callback_resumes_exactly(reference: tuple[Path, dict]) -> None:
    """A checkpoint written before `ExactResume` existed (no callback state; the plateau metric only in the
    module's qin_val_history, the RNG states in qin_rng) still resumes exactly."""
    tmp, ref = reference
    run = "stopped_old_format"
    cfg = _cfg(tmp, run, ["+callbacks.stop_at._target_=test_resume.StopAt", "+callbacks.stop_at.epoch=1",
                          "+callbacks.stop_at.batch=5"])
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    last = tmp / run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["callbacks"].pop("ExactResume")["monitored"][0]["value"] == ckpt["qin_val_history"][0]["auc"]
    torch.save(ckpt, last)
    resumed = train(_cfg(tmp, run, ["ckpt_path=last"]))
    assert _history(resumed) == _history(ref)
