"""experiments/converged/table.py: the table of a plan's records (the plan sweeper that writes them:
tests/test_plan_sweep.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import yaml
from conftest import REPO_ROOT

from qin_lightning.report import converged
from qin_lightning.report.collect import Run
from qin_lightning.report.compare import TableTests
from qin_lightning.report.tables import Baseline

TABLE = REPO_ROOT / "experiments" / "converged" / "table.py"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_table_names_the_machines_when_runs_come_from_several() -> None:
    table = converged
    run = {"train_seconds": 20.0, "epochs_trained": 2, "timing": {"epoch_s": [9.0, 11.0]},
           "machine": {"cpu_capability": "AVX512"}}
    older = {"train_seconds": 30.0, "epochs_trained": 1}  # a record from before `machine` existed
    assert table.seconds_cell([run, run], mixed=False) == "10.0"
    assert table.seconds_cell([run, older], mixed=True) == "20.0 (1x AVX512, 1x machine not recorded)"


def test_table_hours_count_every_epoch_of_a_resumed_run() -> None:
    """A resumed run's train_seconds and timing cover its last invocation only (here 1 of its 3 epochs)."""
    table = converged
    resumed = {"train_seconds": 1800.0, "epochs_trained": 3, "timing": {"epoch_s": [1800.0]}}
    fresh = {"train_seconds": 3600.0, "epochs_trained": 2}
    assert table.training_hours([resumed, fresh]) == 1.5 + 1.0


NO_TESTS, QIN = TableTests({}, ""), Baseline("qin", "qin")


def test_table_marks_machines_only_when_its_runs_are_mixed() -> None:
    table = converged

    def record(seed: int, machine: dict[str, str] | None) -> dict[str, object]:
        run = {"experiment": "qin", "seed": seed, "best_val_auc": 0.7, "best_val_logloss": 0.5, "best_epoch": 1,
               "n_params": 10, "epochs_trained": 2, "train_seconds": 20.0, "stop_reason": "early_stopping"}
        return {**run, "machine": machine} if machine else run

    avx512 = {"cpu_capability": "AVX512"}
    same = table.table([Run("1", record(1, avx512), {}), Run("2", record(2, avx512), {})], ["qin"], None, NO_TESTS, QIN)
    mixed = table.table([Run("1", record(1, avx512), {}), Run("2", record(2, None), {})], ["qin"], None, NO_TESTS, QIN)
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
    assert "against published/qnn_alpha on the test split: **no paired test over users could be computed**" in text
    row = next(line for line in text.splitlines() if line.startswith("| qnn_alpha |"))
    # validation d = 0.10, 0.11, 0.10 (shown only); test d = 0.08, 0.09, 0.08: no kept predictions, so no verdict;
    # the seed t-test (t = 25.0 with 2 degrees of freedom, p = 0.0016, Holm = p) only in its own column
    assert "| +0.1033 | +0.0833 | – | – | – | not computed | 0.002 (0.002) |" in row
    report = (tmp_path / "bce" / "report.md").read_text()  # the same comparison in qin-report's table
    assert "| +0.0833 | – | – | – | not computed | 0.002 (0.002) |" in report


def test_table_without_a_baseline_row_leaves_the_comparison_empty() -> None:
    run = {"experiment": "din", "seed": 1, "best_val_auc": 0.7, "best_val_logloss": 0.5, "best_epoch": 1,
           "n_params": 10, "epochs_trained": 2, "train_seconds": 20.0, "stop_reason": "early_stopping"}
    row = converged.table([Run("din_seed1", run, {})], ["din"], None, NO_TESTS, QIN).splitlines()[-1]
    assert row.endswith("| – | – | – | – | – | – |") and "nan" not in row
