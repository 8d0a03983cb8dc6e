"""One Optuna study shared by several workers on a real database: SQLite (one host) and a PostgreSQL server that
the test starts (pgserver). Each worker is `python -m qin_lightning.train -m hparams_search=qin_optuna` with the
same storage URL and study name, as docs/sweeps.md shows; every trial is a seconds-long tiny run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from conftest import REPO_ROOT, tiny_model_overrides, tiny_overrides

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")

STUDY = "shared"


def start_worker(tmp_path: Path, storage: str, n_trials: int, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """One worker of the shared study, as a separate process (the docs' recipe on a tiny configuration)."""
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("trainer.max_epochs")]
    # quoted: a URL's `?key=value` is not a plain Hydra override value
    args = ["hparams_search=qin_optuna", f"hydra.sweeper.storage='{storage}'", f"hydra.sweeper.study_name={STUDY}",
            f"hydra.sweeper.n_trials={n_trials}", *overrides, *tiny_model_overrides(), "trainer.max_epochs=1",
            *extra]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "qin_lightning.train", "-m", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def create_study(storage: str) -> None:
    """The study and its tables, created once before the workers start (docs/sweeps.md): optuna 2.10's
    schema set-up is not safe against workers that start together on an empty database."""
    optuna_cli = Path(sys.executable).parent / "optuna"
    proc = subprocess.run([str(optuna_cli), "create-study", "--storage", storage, "--study-name", STUDY,
                           "--direction", "maximize", "--skip-if-exists"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_workers(tmp_path: Path, storage: str, workers: int, n_trials: int, extra: tuple[str, ...] = ()) -> None:
    """Start `workers` workers at once and wait for all of them; each must exit 0."""
    procs = [start_worker(tmp_path, storage, n_trials, extra) for _ in range(workers)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]


def run_results(tmp_path: Path) -> list[dict[str, object]]:
    """Every trial's results.json, from all workers' sweep folders of the study."""
    study_dir = tmp_path / "logs" / "train" / "multiruns" / STUDY
    return [json.loads(p.read_text()) for p in sorted(study_dir.glob("*/*/results.json"))]


def check_shared_study(tmp_path: Path, storage: str, workers: int, n_trials: int) -> None:
    """K workers x n trials: K x n completed trials, distinct parameters, one folder per worker and per trial,
    and the study's best value is the best run's results.json."""
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * workers * n_trials
    params = {tuple(sorted(t.params.items())) for t in trials}
    assert len(params) == workers * n_trials, "a worker repeated another worker's parameters"
    worker_dirs = list((tmp_path / "logs" / "train" / "multiruns" / STUDY).iterdir())
    assert len(worker_dirs) == workers, "two workers wrote into one sweep folder"
    results = run_results(tmp_path)
    assert len(results) == workers * n_trials and all(r["status"] == "completed" for r in results)
    assert study.best_value == pytest.approx(max(float(r["best_val_auc"]) for r in results))  # type: ignore[arg-type]
    check_reports(tmp_path, storage, study.best_value, workers * n_trials)


def ranked_rows(markdown: str) -> list[str]:
    """The ranked rows of a trials table: those whose first cell is a rank (study.md lists the others below)."""
    ranked = markdown.split("## Trials not ranked")[0]
    return [line for line in ranked.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]


def check_reports(tmp_path: Path, storage: str, best_value: float, n_trials: int) -> None:
    """qin-report gives one trials table for the whole study, best first: from all workers' sweep folders and
    from the storage URL."""
    from qin_lightning.report import main as report_main
    from qin_lightning.report import write_report

    study_dir = tmp_path / "logs" / "train" / "multiruns" / STUDY
    assert write_report(study_dir).is_optuna
    from_folders = ranked_rows((study_dir / "report.md").read_text())
    assert len(from_folders) == n_trials and f"{best_value:.6f}" in from_folders[0]
    report_main(["--storage", storage, "--study", STUDY, str(tmp_path)])
    from_storage = ranked_rows((tmp_path / "study.md").read_text())
    assert len(from_storage) == n_trials and f"| {best_value:.6f} |" in from_storage[0]


def test_sqlite_study_shared_by_two_workers_at_once(tmp_path: Path) -> None:
    """Two workers start together on one SQLite file (a busy timeout in the URL: a worker waits for the lock)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?timeout=60"
    create_study(storage)
    run_workers(tmp_path, storage, workers=2, n_trials=2)
    check_shared_study(tmp_path, storage, workers=2, n_trials=2)


def test_a_later_worker_continues_the_study_and_its_failed_trials_are_told_fail(tmp_path: Path) -> None:
    """A worker started later adds its trials to the same study (numbered after the earlier ones) instead of
    starting a new one; a trial that fails is told FAIL and the worker goes on to its next trial."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?timeout=60"
    run_workers(tmp_path, storage, workers=1, n_trials=1)
    run_workers(tmp_path, storage, workers=1, n_trials=2, extra=("model.lr=-1.0",))  # Adam refuses lr < 0
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "FAIL")]
    # a trial that fails on its config (Adam refuses the learning rate before any step) leaves no run folder
    assert sorted(str(r["status"]) for r in run_results(tmp_path)) == ["completed"]
    from qin_lightning.report import main as report_main

    report_main(["--storage", storage, "--study", STUDY, str(tmp_path)])
    study_md = (tmp_path / "study.md").read_text()
    assert len(ranked_rows(study_md)) == 1 and "3 trials (1 complete, 2 fail)" in study_md
    assert study_md.split("## Trials not ranked")[1].count("| fail |") == 2
    assert len(list((tmp_path / "logs" / "train" / "multiruns" / STUDY).iterdir())) == 2


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own (pgserver's binaries, a Unix socket, trust auth), deleted afterwards.

    Its data folder is not under pytest's tmp_path: run as root, pgserver serves it as an unprivileged user that
    must traverse the folders above it, and every pytest session makes its base folder private again."""
    pgserver = pytest.importorskip("pgserver", reason="the postgres-server extra is not installed")
    pytest.importorskip("psycopg2", reason="the sweep extra's PostgreSQL driver is not installed")
    folder = Path(tempfile.mkdtemp(prefix="qin-postgres-"))
    try:
        try:
            server = pgserver.get_server(folder / "pgdata", cleanup_mode="delete")
        except Exception as err:  # e.g. a platform where its binaries cannot run
            pytest.skip(f"the PostgreSQL server (pgserver) cannot start here: {type(err).__name__}: {err}")
        try:
            yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_study_shared_by_two_workers_at_once(tmp_path: Path, postgres_url: str) -> None:
    """Two workers start together on one PostgreSQL server: the several-hosts recipe on one host."""
    create_study(postgres_url)
    run_workers(tmp_path, postgres_url, workers=2, n_trials=2)
    check_shared_study(tmp_path, postgres_url, workers=2, n_trials=2)
