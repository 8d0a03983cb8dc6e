"""Report of a sweep (Hydra multirun, converged grid): `python -m qin_lightning.report <sweep folder>` (`qin-report`).

Layout: `collect` (runs and records -> rows), `plan` (a converged plan beside its folder: which rows compare),
`compare` and `stats` (the paired bootstrap from the kept predictions alone), `tables` (the Markdown), `converged`
(a plan's table.md), `plots` (the figures), `study` (a shared Optuna study, read from its database), `main` (write
the report into the sweep folder; the command line).
"""

from qin_lightning.report.main import main, write_report

__all__ = ["main", "write_report"]
