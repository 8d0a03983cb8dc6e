"""metrics.csv that survives a resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its writer starts, so a run resumed with
``ckpt_path=last`` used to keep only the epochs after the resume. ``ResumableCSVLogger`` reads the old rows
before that happens; when training resumes (``ExactResume.on_train_start``), the rows up to the checkpoint's
global step are put back in front of the new ones (temp file, fsync, rename). A fresh run into an existing
folder still starts a fresh file, as with Lightning's logger.

One thing stays inexact: the train epoch means (``train/loss_epoch``, ``train/data_loss``) of an epoch interrupted
mid-way cover only its batches after the resume, because Lightning does not checkpoint its running means. The
per-step values, validation metrics and ``results.json``'s ``val_history`` are exact.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from qin_lightning.files import atomic_writer


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a metrics.csv; ([], []) when there is none."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def _step(row: dict[str, str]) -> int:
    """The global step a row was logged at (-1 if the cell is not an integer)."""
    try:
        return int(float(row.get("step") or "-1"))
    except ValueError:
        return -1


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps the rows logged before it was interrupted."""

    def __init__(self, save_dir: str, name: str | None = "lightning_logs", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self._previous: tuple[list[str], list[dict[str, str]]] = ([], [])

    @property
    def metrics_path(self) -> Path:
        """This run's metrics.csv."""
        return Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (Lightning's); the rows of an earlier metrics.csv are read before it deletes the file."""
        if self._experiment is None:
            self._previous = _read_rows(self.metrics_path)
        return super().experiment

    def restore_rows(self, until_step: int) -> int:
        """Put back the earlier rows logged at global steps <= `until_step`; returns how many were kept.

        Rows after `until_step` (logged after the checkpoint, e.g. before a crash) are dropped: the resumed run
        logs them again. Rows the resumed run has already written stay after the restored ones.
        """
        header, rows = self._previous
        kept = [row for row in rows if _step(row) <= until_step]
        self._previous = ([], [])
        if not kept:
            return 0
        writer = self.experiment
        writer.save()  # anything buffered goes to the new file first, then the new file goes after the old rows
        _, new_rows = _read_rows(self.metrics_path)
        fields = sorted(set(header) | set(writer.metrics_keys))  # the writer's keys: those of the new file
        with atomic_writer(self.metrics_path, "w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=fields)
            out.writeheader()
            out.writerows(kept + new_rows)
        writer.metrics_keys = fields  # later saves append under this header
        return len(kept)
