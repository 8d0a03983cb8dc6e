"""The dropout-draw rule applied to its records: sfc64 - torch test AUC with its 95% interval per data set, against
that data set's torch-draw seed spread; writes experiments/dropout_draw/table.md and prints it.

    python experiments/dropout_draw/decide.py

The rule (experiments/dropout_draw/README.md, committed before the runs): on each data set, the difference
sfc64 - torch of the seed-mean test AUC, with its 95% interval, from the package's one comparison
(qin_lightning.report.compare: the paired bootstrap over users and seeds where every run kept its test
predictions, else the seed-paired t-test); the spread is the sample standard deviation of the 5 torch-draw runs'
test AUC. sfc64 passes on a data set when its whole interval lies within plus or minus that spread, and becomes
the CPU default only if it passes on both. Validation AUC is shown, never tested.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from qin_lightning.files import atomic_write_text
from qin_lightning.report.collect import Run, find_runs
from qin_lightning.report.compare import compare
from qin_lightning.report.converged import mean_std

HERE = Path(__file__).resolve().parent
# (data set, torch-draw records, sfc64-draw records): the runs/ folders the plans fill
DATA_SETS = [
    ("synthetic", HERE / "synthetic_torch", HERE / "synthetic_sfc64"),
    ("ml-100k, rating protocol", HERE / "rating_100k_torch", HERE / "rating_100k_sfc64"),
]


def qin_runs(folder: Path) -> list[Run]:
    """The completed qin runs of a plan's records."""
    return [r for r in find_runs(folder) if r.problem is None and r.experiment == "qin" and r.seed is not None]


def decision(torch_runs: list[Run], sfc64_runs: list[Run]) -> tuple[str, str, float, bool]:
    """(interval cell, method, torch spread, passes) of one data set, by the rule."""
    tests = compare([("sfc64", sfc64_runs, torch_runs)])
    result = tests.comparisons.get("sfc64") or tests.seed_tests["sfc64"]
    spread = statistics.stdev([float(r.test_auc) for r in torch_runs if r.test_auc is not None])
    passes = -spread <= result.low and result.high <= spread
    cell = f"{result.difference:+.4f} [{result.low:+.4f}, {result.high:+.4f}]"
    return cell, result.method, spread, passes


def table() -> str:
    header = ["data", "torch draw: val AUC", "sfc64 draw: val AUC", "torch draw: test AUC", "sfc64 draw: test AUC",
              "test AUC sfc64 − torch [95% interval]", "torch spread (sd)", "interval within ± spread", "test"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    verdicts = []
    for data, torch_folder, sfc64_folder in DATA_SETS:
        torch_runs, sfc64_runs = qin_runs(torch_folder), qin_runs(sfc64_folder)
        if len(torch_runs) < 2 or not sfc64_runs:
            lines.append(f"| {data} | not run yet | | | | | | | |")
            verdicts.append(False)
            continue
        cell, method, spread, passes = decision(torch_runs, sfc64_runs)
        verdicts.append(passes)

        def auc(runs: list[Run], key: str) -> str:
            return f"{mean_std([float(r.record[key]) for r in runs])} ({len(runs)})"

        lines.append(f"| {data} | {auc(torch_runs, 'best_val_auc')} | {auc(sfc64_runs, 'best_val_auc')} | "
                     f"{auc(torch_runs, 'test_auc')} | {auc(sfc64_runs, 'test_auc')} | {cell} | {spread:.4f} | "
                     f"{'yes' if passes else 'no'} | {method} |")
    outcome = ("**sfc64 passes on both data sets**: it becomes the CPU default" if all(verdicts) else
               "**sfc64 does not pass on both data sets**: the draw stays opt-in")
    return "\n".join([*lines, "", f"Outcome by the rule: {outcome}."]) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    text = table()
    atomic_write_text(HERE / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
