"""The committed scripts under experiments/ still run: they compile, every `qin_lightning` name they import exists
(code moves break these first), `--help` works, and the cheap ones run end to end on a tiny trained run."""

from __future__ import annotations

import ast
import importlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides

from qin_lightning.train import train

EXPERIMENTS = REPO_ROOT / "experiments"
SCRIPTS = sorted(EXPERIMENTS.rglob("*.py"))
SHELL_SCRIPTS = sorted(EXPERIMENTS.rglob("*.sh"))
# scripts with an argparse `main()` behind `if __name__ == "__main__"` (the others run at import: compile only)
WITH_HELP = ["bench/int8_accuracy.py", "bench/memory_reuse.py", "bench/onnx_latency_repeats.py", "bench/step_profile.py",
             "bench/fp32_levers.py",
             "bench/whole_run.py", "bench/converged_profile.py", "bench/converged_epochs.py", "bench/compile_check.py",
             "peer/side_by_side.py",
             "peer/their_run.py", "peer/trajectory.py", "dropout_draw/decide.py",
             "converged/stats_speed.py", "converged/table.py", "movielens/plan_cost.py",
             "precision/table.py", "migrate_predictions.py",
             "scale/measure_load.py"]


def run_script(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def qin_imports(script: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every `from qin_lightning... import name` / `import qin_lightning...` of a script."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qin_lightning":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "qin_lightning"]
    return found


def test_every_script_is_listed_here() -> None:
    """A new script gets a check: --help (WITH_HELP) or a note why not (compile + imports only)."""
    assert SCRIPTS, "no scripts found under experiments/"
    relative = {str(p.relative_to(EXPERIMENTS)) for p in SCRIPTS}
    assert set(WITH_HELP) <= relative
    # scripts that run at import with positional arguments only (a record's command line says how)
    assert relative - set(WITH_HELP) == {"bench/bf16_ops.py", "bench/onnx_latency_options.py", "movielens/test_table.py",
                                         "movielens/calendar_time.py", "movielens/history_check.py", "run_facts.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_script_compiles_and_its_qin_imports_exist(script: Path) -> None:
    compile(script.read_text(), str(script), "exec")
    imports = qin_imports(script)
    for module_name, name in imports:
        module = importlib.import_module(module_name)
        if name is not None and not hasattr(module, name):
            importlib.import_module(f"{module_name}.{name}")  # a submodule; else ModuleNotFoundError names it


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_shell_script_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("relative", WITH_HELP)
def test_script_help(relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture) -> None:
    """`python SCRIPT --help`, run in this process (runpy) to spare a torch import per script."""
    script = EXPERIMENTS / relative
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert not list(tmp_path.iterdir()), "--help writes nothing"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("scripts")
    return train(compose_train(tiny_overrides(tmp) + tiny_model_overrides() + ["test_after_fit=true"], tmp / "run"))


def test_test_table_tabulates_a_sweep_folder(trained: dict, tmp_path: Path) -> None:
    """movielens/test_table.py on a sweep folder of results.json files as train writes them (one failed run)."""
    runs = [("qin", 0.70, 0.71), ("qin", 0.72, 0.75), ("din", 0.80, 0.81)]
    for i, (experiment, val_auc, test_auc) in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        record = {**trained, "experiment": experiment, "best_val_auc": val_auc, "test_auc": test_auc}
        (tmp_path / str(i) / "results.json").write_text(json.dumps(record))
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "results.json").write_text(json.dumps({"status": "failed", "experiment": "qin"}))
    proc = run_script(EXPERIMENTS / "movielens" / "test_table.py", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| experiment | seeds | val AUC | test AUC |") and len(lines) == 4
    assert lines[2].startswith("| din | 1 | 0.8000 ± 0.0000 | 0.8100 ± 0.0000 |")
    assert lines[3].startswith("| qin | 2 | 0.7100 ± 0.0141 | 0.7300 ± 0.0283 |")  # the failed run is left out
    assert f"| {trained['n_params']:,} |" in lines[3]


def test_int8_accuracy_on_a_tiny_checkpoint(trained: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "int8.json"
    proc = run_script(EXPERIMENTS / "bench" / "int8_accuracy.py", "--block-size", "32", "--out", str(out),
                      trained["best_checkpoint"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["command"].startswith("python experiments/bench/int8_accuracy.py --block-size 32")
    (row,) = record["rows"]
    assert row["eager"]["rows"] == 256 and row["eager"]["auc"] == pytest.approx(trained["best_val_auc"], abs=1e-6)
    assert row["fp32"]["auc"] == pytest.approx(row["eager"]["auc"], abs=1e-6)
    assert 0 < row["int8"]["max_abs_prob_diff"] < 5e-3  # recorded, int8 scored (precision: test_onnx_int8.py)
    assert proc.stdout.strip().splitlines()[-1].startswith(f"| {trained['best_checkpoint']} | 256 |")
