"""Report of a sweep (Hydra multirun, converged grid): `python -m qin_lightning.report <sweep folder>` (`qin-report`).

Layout: `collect` (runs and records -> rows), `tables` (the Markdown), `plots` (the figures), `study` (a shared
Optuna study, read from its database), `main` (write the report into the sweep folder; the command line).
"""

from qin_lightning.report.main import main, write_report

__all__ = ["main", "write_report"]
