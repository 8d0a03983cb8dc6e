"""experiments/converged/sweep.py hands its remaining jobs to submitit (here its local executor: processes): a tiny
plan of 2 experiments x 2 seeds with one job finished (skipped) and one interrupted (resumed from last.ckpt), and
the deadline (`--hours`) that stops a running training through SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, tiny_model_overrides, tiny_overrides
from test_converged_sweep import SWEEP, load

pytest.importorskip("submitit", reason="the sweep extra is not installed")


def write_plan(tmp_path: Path) -> Path:
    plan = {"name": "tiny", "experiments": ["qin", "ablation_no_qnn"], "seeds": [1, 2],
            "overrides": [*tiny_overrides(tmp_path), *tiny_model_overrides()],
            "per_experiment": {"ablation_no_qnn": ["model.net.interaction.hidden_units=[16,8]"]}}
    path = tmp_path / "plans" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(plan))
    return path


def interrupt_after_one_epoch(job: object) -> None:
    """Leave `job`'s run folder as an interrupted run: last.ckpt after epoch 1 of 2, results.json not completed."""
    command = [*job.train_command(), "trainer.max_epochs=1"]  # type: ignore[attr-defined]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job.run_dir / "results.json").write_text(json.dumps({"status": "interrupted"}))  # type: ignore[attr-defined]


def test_plan_on_submitit_local_skips_the_finished_and_resumes_the_interrupted(tmp_path: Path) -> None:
    driver = load(SWEEP)
    plan, runs = write_plan(tmp_path), tmp_path / "runs"
    _, jobs, records = driver.load_plan(plan, runs)
    finished, interrupted = jobs[:2], jobs[2]  # qin_seed1-2 (records), ablation_no_qnn_seed1 (last.ckpt)
    records.mkdir(parents=True)
    for job in finished:
        job.record.write_text(json.dumps({"status": "completed", "experiment": "qin", "seed": job.seed}))
    interrupt_after_one_epoch(interrupted)
    assert [j.state() for j in jobs] == ["completed", "completed", "resume", "fresh"]

    proc = subprocess.run([sys.executable, str(SWEEP), str(plan), "--runs-dir", str(runs), "--jobs", "2",
                           "--cluster", "local"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 of 4 jobs completed; 2 to run" in proc.stdout and "4 of 4 jobs completed" in proc.stdout
    assert "start qin_seed" not in proc.stdout and "start ablation_no_qnn_seed1 (resume)" in proc.stdout
    assert len(list((runs / "submitit").glob("*/*_result.pkl"))) == 2, "two local submitit jobs (--jobs 2)"
    assert not any(job.run_dir.exists() for job in finished), "a finished job was trained again"
    resumed = json.loads(interrupted.record.read_text())
    assert resumed["status"] == "completed" and resumed["epochs_trained"] == 2
    assert "resuming from" in (runs / "logs" / "ablation_no_qnn_seed1.log").read_text()
    for job in jobs[2:]:
        record = json.loads(job.record.read_text())
        assert 0.0 <= record["test_eval"]["gauc"] <= 1.0
        kept = records / f"{job.name}.preds.parquet"
        assert kept.read_bytes() == (job.run_dir / "eval_test.preds.parquet").read_bytes()


def test_the_deadline_stops_a_running_training_with_sigterm(tmp_path: Path) -> None:
    """At `--hours` the lane sends SIGTERM (training saves last.ckpt and exits 143), starts nothing more, and a
    lane whose deadline has passed starts nothing at all."""
    driver = load(SWEEP)
    saves_on_sigterm = ("import pathlib, signal, sys, time\n"
                        "def stop(signum, frame):\n"
                        "    pathlib.Path('checkpoints').mkdir(); pathlib.Path('checkpoints/last.ckpt').write_text('')\n"
                        "    sys.exit(128 + signum)\n"
                        "signal.signal(signal.SIGTERM, stop)\n"
                        "time.sleep(60)\n")

    class SleepingJob(driver.Job):  # type: ignore[name-defined,misc]
        def train_command(self) -> list[str]:
            return [sys.executable, "-c", f"import os; os.chdir({str(self.run_dir)!r})\n{saves_on_sigterm}"]

    jobs = [SleepingJob("qin", s, tmp_path / f"qin_seed{s}", (), tmp_path / f"qin_seed{s}.json") for s in (1, 2)]
    started = time.time()
    exits = driver.run_lane(jobs, tmp_path / "records", started + 2.0, tmp_path / "logs")
    assert exits == {"qin_seed1": 143} and time.time() - started < 30
    assert [j.state() for j in jobs] == ["resume", "fresh"]
    assert driver.run_lane(jobs, tmp_path / "records", time.time() - 1.0, tmp_path / "logs") == {}
