"""Hydra multiruns: experiments x seeds into one folder + the report from it; a 2-trial Optuna search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides


def _run_train(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", "-m", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _sweep_dir(tmp_path: Path) -> Path:
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    return sweep


def test_multirun_two_experiments_two_seeds_and_report(tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("trainer.max_epochs")]
    _run_train(tmp_path, ["+experiment=qin,ablation_no_asta", "seed=1,2", *overrides, *tiny_model_overrides(),
                          "trainer.max_epochs=1"])
    sweep = _sweep_dir(tmp_path)
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert sorted((r["experiment"], r["seed"]) for r in results) == [
        ("ablation_no_asta", 1), ("ablation_no_asta", 2), ("qin", 1), ("qin", 2)]

    from qin_lightning.report import write_report

    collected = write_report(sweep)
    assert {r.experiment: len(r.aucs) for r in collected.rows} == {"qin": 2, "ablation_no_asta": 2}
    assert collected.varying == []  # only the experiment and the seed vary: one row per experiment
    md = (sweep / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    for name in ("qin", "ablation_no_asta"):
        mean = sum(r["best_val_auc"] for r in results if r["experiment"] == name) / 2
        assert f"{mean:.4f} ±" in rows[name]
        assert "2 (1, 2)" in rows[name]
    assert "0.9321" in rows["ablation_no_asta"]  # the paper's number beside ours
    assert (sweep / "report.png").exists() and (sweep / "report_curves.png").exists()
    assert all(r["stop_reason"] == "max_epochs" and r["stopped_epoch"] == 0 for r in results)


def test_optuna_two_trials(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("trainer.max_epochs")]
    proc = _run_train(tmp_path, ["hparams_search=qin_optuna", "hydra.sweeper.n_trials=2",
                                 "hydra.sweeper.sampler.n_startup_trials=2", *overrides, *tiny_model_overrides(),
                                 "trainer.max_epochs=1"])
    (sweep,) = list((_sweep_dir(tmp_path)).iterdir())  # the study's folder holds one folder per worker
    assert _sweep_dir(tmp_path).name == "qin_optuna"
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert len(results) == 2 and all(r["status"] == "completed" for r in results)
    best = json.loads(json.dumps(__import__("yaml").safe_load((sweep / "optimization_results.yaml").read_text())))
    assert best["best_value"] == pytest.approx(max(r["best_val_auc"] for r in results))
    assert "best_params" in best, proc.stdout[-500:]

    from qin_lightning.report import write_report

    collected = write_report(sweep)
    assert collected.is_optuna
    md = (sweep / "report.md").read_text()
    ranked = [line for line in md.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(ranked) == 2 and f"{best['best_value']:.6f}" in ranked[0]
    assert "Best parameters" in md


def test_wandb_multirun_groups_runs_and_finishes_each(tmp_path: Path) -> None:
    """logger=wandb in a multirun: one offline wandb run per job, grouped by the sweep name, job type = experiment."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO_ROOT / "src")}
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("trainer.max_epochs")]
    args = ["-m", "+experiment=qin", "seed=1,2", "logger=wandb", *overrides, *tiny_model_overrides(),
            "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/logs/train/multiruns/my_sweep"]
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    runs = sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2, "every job of the multirun logs its own (finished) wandb run"
    assert len({r.parent.name for r in runs}) == 2


def test_wandb_group_is_the_sweep_name_in_a_multirun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qin_lightning import train as train_module

    cfg = compose_train(["logger=wandb", "+experiment=ablation_softmax", *tiny_overrides(tmp_path),
                         *tiny_model_overrides(), "trainer.fast_dev_run=true", "hydra.mode=MULTIRUN",
                         f"hydra.sweep.dir={tmp_path}/multiruns/my_sweep"], tmp_path / "run")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train_module.train(cfg)
    assert cfg.logger.wandb.group == "my_sweep" and cfg.logger.wandb.job_type == "ablation_softmax"
