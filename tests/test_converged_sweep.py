"""experiments/converged: the resumable sweep driver skips finished jobs, resumes interrupted ones, and the table
script reads its records (tiny plan, seconds per job)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml
from conftest import REPO_ROOT, tiny_model_overrides, tiny_overrides

from qin_lightning.report.collect import Run

SWEEP = REPO_ROOT / "experiments" / "converged" / "sweep.py"
TABLE = REPO_ROOT / "experiments" / "converged" / "table.py"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_plan(tmp_path: Path) -> Path:
    plan = {"name": "tiny", "experiments": ["qin", "ablation_no_qnn"], "seeds": [1],
            "overrides": [*tiny_overrides(tmp_path), *tiny_model_overrides(), "test_after_fit=true"],
            "per_experiment": {"ablation_no_qnn": ["model.net.interaction.hidden_units=[16,8]"]}}
    path = tmp_path / "plans" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(plan))
    return path


def sweep(plan: Path, runs: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(SWEEP), str(plan), "--runs-dir", str(runs), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_job_states_and_commands(tmp_path: Path) -> None:
    driver = load(SWEEP)
    _, jobs, records = driver.load_plan(tiny_plan(tmp_path), tmp_path / "runs")
    assert [j.name for j in jobs] == ["qin_seed1", "ablation_no_qnn_seed1"]
    assert records == tmp_path / "plans" / "tiny" / "runs"
    job = jobs[1]
    assert job.state() == "fresh" and "ckpt_path=last" not in job.train_command()
    assert "model.net.interaction.hidden_units=[16,8]" in job.train_command()
    (job.run_dir / "checkpoints").mkdir(parents=True)
    (job.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert job.state() == "resume" and job.train_command()[-1] == "ckpt_path=last"
    (job.run_dir / "results.json").write_text(json.dumps({"status": "completed"}))
    assert job.state() == "completed"
    first = jobs[0]  # its run folder is gone (another machine): the committed record alone marks it done
    first.record.parent.mkdir(parents=True)
    first.record.write_text(json.dumps({"status": "completed"}))
    assert not first.run_dir.exists() and first.state() == "completed"
    two_seeds = [*jobs, driver.Job("qin", 2, tmp_path / "q2", (), tmp_path / "q2.json")]
    assert [j.name for j in driver.select(two_seeds, "qin", None)] == ["qin_seed1", "qin_seed2"]
    assert [j.name for j in driver.select(two_seeds, None, "2")] == ["qin_seed2"]
    assert [j.name for j in driver.select(two_seeds, "ablation_no_qnn", "1,2")] == ["ablation_no_qnn_seed1"]


def test_sweep_runs_in_chunks_and_tabulates(tmp_path: Path) -> None:
    plan, runs = tiny_plan(tmp_path), tmp_path / "runs"
    out = sweep(plan, runs, "--only", "qin")
    assert "start qin_seed1 (fresh)" in out and "1 of 1 jobs completed" in out
    record = json.loads((plan.parent / "tiny" / "runs" / "qin_seed1.json").read_text())
    assert record["status"] == "completed" and 0.0 <= record["test_eval"]["gauc"] <= 1.0
    out = sweep(plan, runs)
    assert "1 of 2 jobs completed; 1 to run" in out
    assert "start qin_seed1" not in out and "start ablation_no_qnn_seed1 (fresh)" in out
    assert "2 of 2 jobs completed" in out
    proc = subprocess.run([sys.executable, str(TABLE), str(plan)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = (plan.parent / "tiny" / "table.md").read_text()
    assert "| qin | 1 |" in table and "| ablation_no_qnn | 1 |" in table
    assert "Runs completed: 2 of 2" in table and f"python experiments/converged/sweep.py {plan.as_posix()}" in table


def test_table_names_the_machines_when_runs_come_from_several() -> None:
    table = load(TABLE)
    run = {"train_seconds": 20.0, "epochs_trained": 2, "timing": {"epoch_s": [9.0, 11.0]},
           "machine": {"cpu_capability": "AVX512"}}
    older = {"train_seconds": 30.0, "epochs_trained": 1}  # a record from before `machine` existed
    assert table.seconds_cell([run, run], mixed=False) == "10.0"
    assert table.seconds_cell([run, older], mixed=True) == "20.0 (1x AVX512, 1x machine not recorded)"


def test_table_hours_count_every_epoch_of_a_resumed_run() -> None:
    """A resumed run's train_seconds and timing cover its last invocation only (here 1 of its 3 epochs)."""
    table = load(TABLE)
    resumed = {"train_seconds": 1800.0, "epochs_trained": 3, "timing": {"epoch_s": [1800.0]}}
    fresh = {"train_seconds": 3600.0, "epochs_trained": 2}
    assert table.training_hours([resumed, fresh]) == 1.5 + 1.0


def test_table_marks_machines_only_when_its_runs_are_mixed() -> None:
    table = load(TABLE)

    def record(seed: int, machine: dict[str, str] | None) -> dict[str, object]:
        run = {"experiment": "qin", "seed": seed, "best_val_auc": 0.7, "best_val_logloss": 0.5, "best_epoch": 1,
               "n_params": 10, "epochs_trained": 2, "train_seconds": 20.0, "stop_reason": "early_stopping"}
        return {**run, "machine": machine} if machine else run

    avx512 = {"cpu_capability": "AVX512"}
    same = table.table([Run("1", record(1, avx512), {}), Run("2", record(2, avx512), {})], ["qin"], None)[0]
    mixed = table.table([Run("1", record(1, avx512), {}), Run("2", record(2, None), {})], ["qin"], None)[0]
    assert "| 10.0 |" in same and "AVX512" not in same
    assert "| 10.0 (1x AVX512, 1x machine not recorded) |" in mixed


def test_table_compares_with_a_row_of_another_plan(tmp_path: Path) -> None:
    """A plan's `baseline: {plan, experiment}` pairs its rows with that row of another plan's records."""
    def record(experiment: str, seed: int, auc: float, test_shift: float) -> dict[str, object]:
        return {"status": "completed", "experiment": experiment, "seed": seed, "best_val_auc": auc,
                "best_val_logloss": 0.5, "test_auc": auc - test_shift, "best_epoch": 1, "n_params": 10,
                "epochs_trained": 2, "train_seconds": 20.0, "stop_reason": "early_stopping"}

    def write_plan(name: str, extra: dict[str, object], runs: list[dict[str, object]]) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "experiments": ["qnn_alpha"], "seeds": [1, 2, 3], **extra}))
        (tmp_path / name / "runs").mkdir(parents=True)
        for run in runs:
            (tmp_path / name / "runs" / f"{run['experiment']}_seed{run['seed']}.json").write_text(json.dumps(run))
        return path

    write_plan("published", {}, [record("qnn_alpha", s, a, 0.0) for s, a in [(1, 0.60), (2, 0.62), (3, 0.61)]])
    plan = write_plan("bce", {"baseline": {"plan": "published.yaml", "experiment": "qnn_alpha"}},
                      [record("qnn_alpha", s, a, 0.02) for s, a in [(1, 0.70), (2, 0.73), (3, 0.71)]])
    assert load(TABLE).main([str(plan)]) == 0
    text = (tmp_path / "bce" / "table.md").read_text()
    assert "| Δ val AUC vs published/qnn_alpha | Δ test AUC vs published/qnn_alpha | 95% CI | p | p (Holm) |" in text
    assert "against published/qnn_alpha on the test split: seed-paired t-test" in text  # no kept predictions
    row = next(line for line in text.splitlines() if line.startswith("| qnn_alpha |"))
    # validation d = 0.10, 0.11, 0.10 (shown only); test d = 0.08, 0.09, 0.08: t = 25.0 with 2 degrees of
    # freedom, p = 0.0016 (one comparison: Holm = p)
    assert "| +0.1033 | +0.0833 | [+0.0690, +0.0977] | 0.002 | 0.002 | significant |" in row


def test_table_without_a_baseline_row_leaves_the_comparison_empty() -> None:
    run = {"experiment": "din", "seed": 1, "best_val_auc": 0.7, "best_val_logloss": 0.5, "best_epoch": 1,
           "n_params": 10, "epochs_trained": 2, "train_seconds": 20.0, "stop_reason": "early_stopping"}
    row = load(TABLE).table([Run("din_seed1", run, {})], ["din"], None)[0].splitlines()[-1]
    assert row.endswith("| – | – | – | – | – | – |") and "nan" not in row
