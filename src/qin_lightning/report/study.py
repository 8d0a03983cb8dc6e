"""An Optuna study shared by several workers, read whole (docs/sweeps.md).

- ``qin-report --storage URL --study NAME [FOLDER]``: every trial of the study from its database, ranked by the
  objective (best first), then the trials that failed or are still running -> ``FOLDER/study.md``;
- ``qin-report logs/train/multiruns/<study>``: the sweep folders of all the study's workers (one folder per worker
  below the study's folder): all their runs in one trials table, as for one worker's folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qin_lightning.errors import QinError
from qin_lightning.files import atomic_write_text
from qin_lightning.report.collect import sweep_config


def workers_sweep_config(study_dir: Path) -> dict[str, Any]:
    """The sweep configuration of the first worker folder below ``study_dir`` that ran the Optuna sweeper
    (``{}`` when there is none): with it, the study's folder is reported as one Optuna sweep."""
    for worker in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        config = sweep_config(worker)
        sweeper = config.get("hydra", {}).get("sweeper")
        if isinstance(sweeper, dict) and "optuna" in str(sweeper.get("_target_", "")).lower():
            return config
    return {}


@dataclass(frozen=True)
class StudyTrial:
    """One trial as the study's database holds it."""

    number: int
    state: str  # COMPLETE | FAIL | RUNNING | PRUNED | WAITING
    value: float | None
    params: dict[str, Any]
    seconds: float | None  # from its start to its end; None while it runs


def shown_url(storage: str) -> str:
    """The storage URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def read_study(storage: str, study_name: str) -> tuple[list[StudyTrial], str]:
    """The study's trials (in trial order) and its direction (``maximize`` | ``minimize``)."""
    try:
        import optuna
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    except ImportError as err:
        raise QinError(f"--storage needs the sweep extra (pip install -e '.[sweep]'): {err}") from None
    try:
        url = make_url(storage)
    except ArgumentError:
        raise QinError(f"--storage '{storage}': not a database URL (expected e.g. sqlite:///optuna.db or "
                       "postgresql+psycopg2://user@host/db)") from None
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise QinError(f"--storage '{storage}': the SQLite file '{url.database}' does not exist")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise QinError(f"--study '{study_name}': no such study in {shown_url(storage)} (its studies: "
                       f"{', '.join(names) or 'none'})") from None
    except SQLAlchemyError as err:
        first_line = str(err.orig if getattr(err, "orig", None) else err).strip().splitlines()[0]
        raise QinError(f"--storage '{shown_url(storage)}': cannot read the database ({first_line})") from None
    trials = [StudyTrial(t.number, t.state.name, t.value, dict(t.params),
                         (t.datetime_complete - t.datetime_start).total_seconds()
                         if t.datetime_complete and t.datetime_start else None)
              for t in study.get_trials(deepcopy=False)]
    return trials, study.direction.name.lower()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def render_study(trials: list[StudyTrial], study_name: str, direction: str, storage: str) -> str:
    """The study as Markdown: completed trials ranked by their value, then every other trial."""
    maximize = direction == "maximize"
    completed = sorted((t for t in trials if t.state == "COMPLETE" and t.value is not None
                        and not math.isnan(t.value)), key=lambda t: t.value or 0.0, reverse=maximize)
    others = [t for t in trials if t not in completed]
    params = sorted({k for t in trials for k in t.params})
    states = ", ".join(f"{sum(t.state == s for t in trials)} {s.lower()}"
                       for s in sorted({t.state for t in trials}))
    lines = [f"# Study: {study_name}", "",
             f"Optuna study `{study_name}` in `{shown_url(storage)}`: {len(trials)} trials ({states or 'none'}), "
             f"ranked by their value ({'maximised' if maximize else 'minimised'}), best first.", "",
             "| rank | trial | value | " + " | ".join([*params, "seconds"]) + " |",
             "| " + " | ".join(["---"] * (len(params) + 4)) + " |"]
    for rank, trial in enumerate(completed, 1):
        cells = [str(rank), str(trial.number), f"{trial.value:.6f}", *(_cell(trial.params.get(k)) for k in params),
                 _cell(None if trial.seconds is None else round(trial.seconds))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Trials not ranked", ""]
    if others:
        lines += ["| trial | state | " + " | ".join(params) + " |", "| " + " | ".join(["---"] * (len(params) + 2)) + " |"]
        lines += ["| " + " | ".join([str(t.number), t.state.lower(), *(_cell(t.params.get(k)) for k in params)]) + " |"
                  for t in others]
    else:
        lines.append("None: every trial completed.")
    return "\n".join(lines) + "\n"


def write_study_report(storage: str, study_name: str, out_dir: Path) -> str:
    """Write ``out_dir/study.md`` (the study read from its database) and return its text."""
    trials, direction = read_study(storage, study_name)
    text = render_study(trials, study_name, direction, storage)
    atomic_write_text(out_dir / "study.md", text)
    return text
