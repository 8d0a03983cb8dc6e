"""The converged table of a sweep: `python experiments/converged/table.py experiments/converged/synthetic.yaml`.

Kept for the plans' commands: it calls the package's report (`python -m qin_lightning.report <plan dir>/<name>`,
qin_lightning.report.converged), which writes `table.md` and `report.md` of the plan's folder from one set of
comparisons. The plan says which rows compare with which (report/plan.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qin_lightning.errors import run_reporting_errors
from qin_lightning.report import write_report
from qin_lightning.report.plan import load_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    folder = run_reporting_errors(lambda: load_plan(args.plan).folder)
    run_reporting_errors(lambda: write_report(folder))
    print((folder / "table.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
