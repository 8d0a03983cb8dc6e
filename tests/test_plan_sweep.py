"""The converged grid as a Hydra multirun (`hydra/sweeper=plan`, qin_lightning.training.plan): a plan's jobs,
their states (completed jobs skipped, interrupted ones resumed, the rest fresh), records collected at job end
(tiny plan, seconds per job); tests/test_converged_submitit.py runs one through submitit's local launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, tiny_model_overrides, tiny_overrides

from qin_lightning.errors import ConfigError
from qin_lightning.training.plan import plan_jobs


def tiny_plan(tmp_path: Path, seeds: list[int] = [1], test_after_fit: bool = True) -> Path:  # noqa: B006
    plan = {"name": "tiny", "experiments": ["qin", "ablation_no_qnn"], "seeds": seeds,
            "overrides": [*tiny_overrides(tmp_path), *tiny_model_overrides(),
                          *(["test_after_fit=true"] if test_after_fit else [])],
            "per_experiment": {"ablation_no_qnn": ["model.net.interaction.hidden_units=[16,8]"]}}
    path = tmp_path / "plans" / "tiny.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(plan))
    return path


def run_plan(plan: Path, runs: Path, *args: str) -> str:
    """`python -m qin_lightning.train -m hydra/sweeper=plan hydra.sweeper.plan=PLAN ...`: its stdout."""
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", "-m", "hydra/sweeper=plan",
                           f"hydra.sweeper.plan={plan}", f"hydra.sweeper.runs_dir={runs}", *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_job_states_and_overrides(tmp_path: Path) -> None:
    jobs = plan_jobs(tiny_plan(tmp_path), tmp_path / "runs")
    assert [j.name for j in jobs] == ["qin_seed1", "ablation_no_qnn_seed1"]
    assert jobs[0].record == tmp_path / "plans" / "tiny" / "runs" / "qin_seed1.json"
    job = jobs[1]
    overrides = job.job_overrides(["trainer.max_epochs=3"])
    assert overrides[:2] == ["+experiment=ablation_no_qnn", "seed=1"]
    assert overrides[-3:] == ["trainer.max_epochs=3", f"hydra.sweep.dir={tmp_path / 'runs'}",
                              "hydra.sweep.subdir=ablation_no_qnn_seed1"]
    assert "model.net.interaction.hidden_units=[16,8]" in overrides
    assert "model.net.interaction.hidden_units=[16,8]" not in jobs[0].job_overrides()
    assert job.state() == "fresh"
    (job.run_dir / "checkpoints").mkdir(parents=True)
    (job.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert job.state() == "resume"
    (job.run_dir / "results.json").write_text(json.dumps({"status": "interrupted"}))
    assert job.state() == "resume"
    (job.run_dir / "results.json").write_text(json.dumps({"status": "completed"}))
    assert job.state() == "completed"
    first = jobs[0]  # its run folder is gone (another machine): the committed record alone marks it done
    first.record.parent.mkdir(parents=True)
    first.record.write_text(json.dumps({"status": "completed"}))
    assert not first.run_dir.exists() and first.state() == "completed"
    plan = tiny_plan(tmp_path / "two", seeds=[1, 2])
    assert [j.name for j in plan_jobs(plan, tmp_path, ["qin"])] == ["qin_seed1", "qin_seed2"]
    assert [j.name for j in plan_jobs(plan, tmp_path, None, [2])] == ["qin_seed2", "ablation_no_qnn_seed2"]
    with pytest.raises(ConfigError, match=r"hydra.sweeper.experiments: \['din'\] not in the plan's experiments"):
        plan_jobs(plan, tmp_path, ["din"])
    with pytest.raises(ConfigError, match="hydra.sweeper.plan: .*nope.yaml: file not found"):
        plan_jobs(tmp_path / "nope.yaml", tmp_path)


def test_plan_runs_in_chunks(tmp_path: Path) -> None:
    plan, runs = tiny_plan(tmp_path), tmp_path / "runs"
    out = run_plan(plan, runs, "hydra.sweeper.dry_run=true")
    assert "0 of 2 jobs completed; 2 to run" in out and "fresh  qin_seed1: +experiment=qin seed=1" in out
    assert not runs.exists(), "a dry run trained something"
    out = run_plan(plan, runs, "hydra.sweeper.experiments=[qin]")
    assert "fresh  qin_seed1" in out and "1 of 1 jobs completed" in out
    record = json.loads((plan.parent / "tiny" / "runs" / "qin_seed1.json").read_text())
    assert record["status"] == "completed" and 0.0 <= record["test_gauc"] <= 1.0  # scored in training
    kept = plan.parent / "tiny" / "runs" / "qin_seed1.preds.parquet"
    assert kept.read_bytes() == (runs / "qin_seed1" / "test.preds.parquet").read_bytes()
    assert not list((plan.parent / "tiny" / "runs").glob(".*.tmp"))
    out = run_plan(plan, runs)
    assert "1 of 2 jobs completed; 1 to run" in out and "fresh  ablation_no_qnn_seed1" in out
    assert "+experiment=qin " not in out.split("1 to run")[1], "a completed job was launched again"
    assert "2 of 2 jobs completed" in out


def test_a_record_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """collect replaces a record atomically: a failure while writing leaves the previous record as it was."""
    import qin_lightning.training.plan as plan_module

    run_dir, record = tmp_path / "run", tmp_path / "records" / "qin_seed1.json"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"status": "completed", "best_checkpoint": ""}))
    (run_dir / "eval_test.preds.parquet").write_bytes(b"kept")
    plan_module.collect(run_dir, record, tmp_path)
    assert json.loads(record.read_text())["status"] == "completed"
    assert record.with_suffix(".preds.parquet").read_bytes() == b"kept"
    before = record.read_text()

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(plan_module.json, "dumps", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plan_module.collect(run_dir, record, tmp_path)
    assert record.read_text() == before and not list(record.parent.glob(".*.tmp"))


def test_a_run_that_scored_its_test_split_is_recorded_without_another_eval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """test_after_fit already scored the best weights: its predictions are the record's, and qin-eval (which would
    need to be told where the data is) is not run."""
    import qin_lightning.training.plan as plan_module

    run_dir, record = tmp_path / "run", tmp_path / "records" / "qin_seed1.json"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"status": "completed", "best_checkpoint": str(run_dir / "x"),
                                                      "test_auc": 0.7}))
    (run_dir / "x").write_bytes(b"")
    (run_dir / "test.preds.parquet").write_bytes(b"kept in training")

    def no_eval(*args: object, **kwargs: object) -> None:
        raise AssertionError("qin-eval was run")

    monkeypatch.setattr(plan_module.subprocess, "run", no_eval)
    plan_module.collect(run_dir, record, tmp_path)
    assert record.with_suffix(".preds.parquet").read_bytes() == b"kept in training"
    assert json.loads(record.read_text())["test_auc"] == 0.7


def test_eval_is_told_where_the_runs_data_is(tmp_path: Path) -> None:
    """A converted release's checkpoint names no place: the eval of a plan's run gets the run's own data folder and
    release (a MovieLens run of ml-100k was scored against the user's default release, and failed)."""
    from qin_lightning.training.plan import eval_data_location

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("data:\n  source:\n    src: ../shared/data/ml-100k.zip\n")
    results = {"data_dir": "data/movielens/movielens-ml-100k-rating-per_user-1515f9646d"}
    assert eval_data_location(tmp_path, results) == ["data.root=data/movielens",
                                                     "+data.source.src=../shared/data/ml-100k.zip"]
    (tmp_path / ".hydra" / "config.yaml").write_text("data:\n  root: x\n")
    assert eval_data_location(tmp_path, results) == ["data.root=data/movielens"]


def test_collect_passes_the_runs_data_location_to_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that did not score its test split is scored by qin-eval, given the run's own data folder and release."""
    import qin_lightning.training.plan as plan_module

    run_dir, record = tmp_path / "run", tmp_path / "records" / "qin_seed1.json"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("data:\n  source:\n    src: ../shared/data/ml-100k.zip\n")
    (run_dir / "best.ckpt").write_bytes(b"")
    results = {"status": "completed", "best_checkpoint": str(run_dir / "best.ckpt"), "data_dir": "data/movielens/x"}
    (run_dir / "results.json").write_text(json.dumps(results))
    calls: list[list[str]] = []

    def fake_eval(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 2, "", "error: nothing to score")

    monkeypatch.setattr(plan_module.subprocess, "run", fake_eval)
    plan_module.collect(run_dir, record, tmp_path)
    assert len(calls) == 1 and "data.root=data/movielens" in calls[0]
    assert "+data.source.src=../shared/data/ml-100k.zip" in calls[0]
    assert json.loads(record.read_text())["test_eval_error"] == "error: nothing to score"
