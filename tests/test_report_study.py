"""report/study.py: a shared Optuna study read from its database (a SQLite file made here, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qin_lightning.errors import QinError
from qin_lightning.report import main as report_main
from qin_lightning.report.study import read_study, render_study

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")


def make_study(path: Path) -> str:
    """A study with 3 completed trials (values 0.70, 0.72, 0.71), one failed and one still running."""
    storage = f"sqlite:///{path}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value in (0.70, 0.72, 0.71):
        trial = study.ask()
        trial.suggest_float("model.lr", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("model/attention", ["relu", "softmax"])
        study.tell(trial, value)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # a worker that is still training it
    return storage


def test_the_study_is_ranked_by_its_value_and_the_rest_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = make_study(tmp_path / "optuna.db")
    report_main(["--storage", storage, "--study", "s", str(tmp_path)])
    text = (tmp_path / "study.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    ranked_part, rest = text.split("## Trials not ranked")
    ranked = [line.split(" | ")[:3] for line in ranked_part.splitlines() if line.startswith(("| 1 ", "| 2 ", "| 3 "))]
    assert ranked == [["| 1", "1", "0.720000"], ["| 2", "2", "0.710000"], ["| 3", "0", "0.700000"]]
    assert "5 trials (3 complete, 1 fail, 1 running)" in text
    assert "| 3 | fail |" in rest and "| 4 | running |" in rest


def test_a_minimised_study_ranks_the_smallest_first(tmp_path: Path) -> None:
    trials, _ = read_study(make_study(tmp_path / "optuna.db"), "s")
    text = render_study(trials, "s", "minimize", "sqlite:///x.db")
    assert text.index("| 1 | 0 | 0.700000 |") < text.index("| 2 | 2 | 0.710000 |") and "(minimised)" in text


def test_wrong_study_or_storage_is_one_line_naming_it(tmp_path: Path) -> None:
    storage = make_study(tmp_path / "optuna.db")
    with pytest.raises(QinError, match=r"--study 'other': no such study in sqlite:///.*optuna.db \(its studies: s\)"):
        read_study(storage, "other")
    with pytest.raises(QinError, match="the SQLite file '.*missing.db' does not exist"):
        read_study(f"sqlite:///{tmp_path / 'missing.db'}", "s")
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(QinError, match="not a database URL"):
        read_study("optuna.db", "s")
    with pytest.raises(SystemExit):
        report_main(["--storage", storage])  # --study missing: argparse's usage error
