"""A plan's multirun on submitit's local launcher (processes): a tiny plan of 2 experiments x 2 seeds with two
jobs finished (skipped), one interrupted (resumed from last.ckpt) and one fresh; and the time budget: the
launcher's timeout signal (SIGUSR2) stops a training with a saved last.ckpt, and the job resumes from there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import REPO_ROOT, compose_train
from test_plan_sweep import tiny_plan
from test_resume import counting, steps_run

from qin_lightning.train import run_training, train
from qin_lightning.training.plan import PlanJob, job_state, plan_jobs

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the sweep extra is not installed")


@pytest.mark.slow  # two submitit processes, each trains and scores (about 2 minutes on 2 cores)
def test_plan_on_submitit_local_skips_the_finished_and_resumes_the_interrupted(tmp_path: Path) -> None:
    plan, runs = tiny_plan(tmp_path, seeds=[1, 2], test_after_fit=False), tmp_path / "runs"
    jobs = plan_jobs(plan, runs)
    finished, interrupted, fresh = jobs[:2], jobs[2], jobs[3]  # qin_seed1-2 (records), ablation_no_qnn_seed1-2
    for job in finished:
        job.record.parent.mkdir(parents=True, exist_ok=True)
        job.record.write_text(json.dumps({"status": "completed", "experiment": "qin", "seed": job.seed}))
    # an interrupted run: last.ckpt after epoch 1 of 2, results.json not completed
    overrides = [f"+experiment={interrupted.experiment}", f"seed={interrupted.seed}", *interrupted.overrides]
    train(compose_train([*overrides, "trainer.max_epochs=1"], interrupted.run_dir))
    (interrupted.run_dir / "results.json").write_text(json.dumps({"status": "interrupted"}))
    assert [j.state() for j in jobs] == ["completed", "completed", "resume", "fresh"]

    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", "-m", "hydra/sweeper=plan",
                           f"hydra.sweeper.plan={plan}", f"hydra.sweeper.runs_dir={runs}",
                           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 of 4 jobs completed; 2 to run" in out and "4 of 4 jobs completed" in out
    assert "resume ablation_no_qnn_seed1" in out and "fresh  ablation_no_qnn_seed2" in out
    assert len(list((runs / ".submitit").glob("*/*_result.pkl"))) == 2, "two local submitit jobs"
    assert not any(job.run_dir.exists() for job in finished), "a finished job was trained again"
    assert "resuming from" in (interrupted.run_dir / "train.log").read_text()
    assert "resuming from" not in (fresh.run_dir / "train.log").read_text()
    resumed = json.loads(interrupted.record.read_text())
    assert resumed["status"] == "completed" and resumed["epochs_trained"] == 2
    for job in (interrupted, fresh):
        record = json.loads(job.record.read_text())
        assert 0.0 <= record["test_eval"]["gauc"] <= 1.0
        kept = job.record.with_suffix(".preds.parquet")
        assert kept.read_bytes() == (job.run_dir / "eval_test.preds.parquet").read_bytes()


class SignalAt(pl.Callback):
    """Sends `signum` to this process after training batch (epoch, batch), as submitit's timer does."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGUSR2) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGUSR2])
def test_time_budget_signal_saves_and_the_job_resumes(tmp_path: Path, signum: int) -> None:
    """The launcher's timeout signal (SIGUSR2, passed on as SIGTERM) or a SIGTERM (scancel) in epoch 1: the job
    saves last.ckpt after the batch, ends as interrupted without a record; run again, it resumes from that step
    (the steps it runs are counted) and its record is collected."""
    plan, runs = tiny_plan(tmp_path, test_after_fit=False), tmp_path / "runs"
    job = plan_jobs(plan, runs, ["qin"])[0]
    overrides = [f"+experiment={job.experiment}", f"seed={job.seed}", *job.overrides]
    stop = ["+callbacks.signal_at._target_=test_converged_submitit.SignalAt", "+callbacks.signal_at.epoch=1",
            "+callbacks.signal_at.batch=1", f"+callbacks.signal_at.signum={int(signum)}"]
    task = PlanJob(run_training, job.record.parent, REPO_ROOT)
    handler = signal.getsignal(signal.SIGUSR2)
    assert task(compose_train([*overrides, *stop], job.run_dir)) is None
    assert signal.getsignal(signal.SIGUSR2) is handler  # put back after the job
    stopped = torch.load(job.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (stopped["epoch"], stopped["global_step"]) == (1, 6)  # 4 batches per epoch; stopped after (1, 1)
    assert json.loads((job.run_dir / "results.json").read_text())["status"] == "interrupted"
    assert job_state(job.run_dir, job.record) == "resume" and not job.record.exists()

    value = task(compose_train([*overrides, *counting(tmp_path / "steps.json")], job.run_dir))
    assert isinstance(value, float)
    steps = steps_run(tmp_path / "steps.json")
    assert steps[0] == (1, 2) and len(steps) == 2, steps  # resumed after the saved step, not from scratch
    record = json.loads(job.record.read_text())
    assert record["status"] == "completed" and record["epochs_trained"] == 2
    assert 0.0 <= record["test_eval"]["gauc"] <= 1.0
    assert job_state(job.run_dir, job.record) == "completed"
