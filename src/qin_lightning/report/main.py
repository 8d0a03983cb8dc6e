"""Paper-style report of a sweep: ``python -m qin_lightning.report <sweep folder> [--baseline qin]``.

Reads every run below the folder (``<run>/results.json``, or ``runs/<run>.json`` records copied out of a sweep)
and writes, into that folder:
- ``table.md`` too where the folder is a converged plan's (``<folder>.yaml`` beside it, report/plan.py): the
  converged layout (report/converged.py), with the same comparisons as report.md;
- ``report.md``: the Table 3 layout, one row per experiment *and* per value of every other override that varies
  in the sweep (seeds are what a row averages): mean +- std of the best validation AUC, seeds, delta to the
  baseline experiment (shown, never tested), the test AUC and the row's test-split comparison with the
  baseline (difference, 95% interval, p, Holm-adjusted p, verdict: report.compare), the paper's AUC beside
  ours, and how many runs stopped early, hit the epoch cap or failed; an Optuna sweep gets a trials table
  ranked by its objective instead; then every run that failed, never finished or has an unreadable record;
- ``report.png``: the mean best AUC per row with std error bars and the paper's values;
- ``report_curves.png``: validation AUC by epoch per row (mean over seeds, band = +- std).
A shared Optuna study's folder (one sweep folder per worker) gets one trials table for all its workers;
``--storage URL --study NAME`` reads the study from its database instead (``study.md``, ``report/study.py``).
"""


from __future__ import annotations

import argparse
from pathlib import Path

from qin_lightning.errors import QinError, run_reporting_errors
from qin_lightning.files import atomic_write_bytes, atomic_write_text
from qin_lightning.report.collect import Collected, PAPER_AUC, collect
from qin_lightning.report.plots import render_chart, render_curves
from qin_lightning.report.study import workers_sweep_config, write_study_report
from qin_lightning.report.converged import render_converged
from qin_lightning.report.paper import annotate, default_value
from qin_lightning.report.plan import Plan, baseline_runs, find_plan
from qin_lightning.report.tables import Baseline, render_markdown, table_tests

DEFAULT_BASELINE = "qin"


def write_report(sweep_dir: str | Path, baseline: str | None = None) -> Collected:
    """Write report.md, report.png and report_curves.png into ``sweep_dir`` (and table.md where a converged plan
    names the folder); returns what was collected."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise QinError(f"sweep folder '{sweep_dir}' does not exist or is not a folder")
    plan = find_plan(sweep_dir)
    collected = collect(sweep_dir, by_experiment=plan is not None)
    if not collected.sweep:  # a shared Optuna study's folder: one sweep folder per worker below it
        collected.sweep = workers_sweep_config(sweep_dir)
    if not collected.rows:
        raise QinError(f"no runs found below '{sweep_dir}': expected run folders with results.json")
    unreadable = [what for _, what in collected.problems if what.startswith("unreadable: ")]
    if len(unreadable) == sum(len(row.runs) for row in collected.rows):  # nothing to report: say why, once
        raise QinError(unreadable[0].removeprefix("unreadable: ")
                       + (f" (and {len(unreadable) - 1} more unreadable runs)" if len(unreadable) > 1 else ""))
    annotate(collected)
    chosen = choose_baseline(collected, plan, baseline)
    tests = table_tests(collected, chosen) if not collected.is_optuna else None
    report = render_markdown(collected, sweep_dir, chosen, tests)
    if plan is not None and tests is not None:
        atomic_write_text(sweep_dir / "table.md", render_converged(plan, collected, tests, chosen))
    atomic_write_text(sweep_dir / "report.md", report)
    rows = [(row.label, PAPER_AUC.get(row.paper or ""), row.aucs, row.histories()) for row in collected.rows]
    if any(aucs for _, _, aucs, _ in rows):
        atomic_write_bytes(sweep_dir / "report.png", render_chart(rows, sweep_dir.name))
    if any(histories for _, _, _, histories in rows):
        atomic_write_bytes(sweep_dir / "report_curves.png", render_curves(rows, sweep_dir.name))
    return collected


def _same(value: str, default: str) -> bool:
    """An override value equals a composed default (``0.1`` and ``0.10``, ``null`` and ``None`` alike)."""
    if value == default or {value.lower(), default.lower()} <= {"null", "none"}:
        return True
    try:
        return float(value) == float(default)
    except ValueError:
        return False


def choose_baseline(collected: Collected, plan: Plan | None, baseline: str | None) -> Baseline:
    """What the rows are compared with: ``--baseline`` (an experiment where experiments differ, else a row's
    name); a converged plan's baseline; in a sweep over experiments each setting's ``qin`` row; otherwise the row
    whose swept keys all have their default value (report.paper.default_value)."""
    experiments = {row.experiment for row in collected.rows}
    by_experiment = bool(collected.rows) and collected.rows[0].show_experiment
    if baseline is not None:
        if by_experiment and baseline in experiments:
            return Baseline(baseline, baseline)
        if collected.named(baseline) is None:
            names = ", ".join(f"'{row.label}'" for row in collected.rows)
            raise QinError(f"--baseline {baseline}: no such row (rows: {names})")
        return Baseline(collected.named(baseline).experiment, baseline, row=baseline)  # type: ignore[union-attr]
    other = baseline_runs(plan) if plan is not None else None
    if other is not None:
        return Baseline(other[1], other[0], tuple(other[2]))
    if by_experiment:
        return Baseline(DEFAULT_BASELINE, DEFAULT_BASELINE)
    shared = collected.shared_overrides()
    defaults = {key: default_value(key, shared) for key in collected.varying}
    for row in collected.rows:
        if all(value == "–" or (defaults[key] is not None and _same(value, str(defaults[key])))
               for key, value in row.setting):
            return Baseline(row.experiment, row.label, row=row.label)
    keys = ", ".join(f"`{k}`" for k in collected.varying)
    return Baseline(DEFAULT_BASELINE, "the default", why=f"no row has the default value of {keys}; name one with"
                    " --baseline ROW")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qin_lightning.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", nargs="?", help="a multirun folder (logs/train/multiruns/<date>), a shared "
                        "Optuna study's folder of worker folders, or any folder of runs (with --storage: where "
                        "study.md goes, default the current folder)")
    parser.add_argument("--baseline", metavar="ROW", help="the row the deltas and tests are taken against, by"
                        " its name in the table (default: the row with the default value of the swept keys; in a"
                        " sweep over experiments, or a converged plan, qin or what the plan names)")
    parser.add_argument("--storage", help="an Optuna study's database URL: report that study's trials (with --study)")
    parser.add_argument("--study", help="the study's name (hydra.sweeper.study_name)")
    args = parser.parse_args(argv)
    if args.storage or args.study:
        if not (args.storage and args.study):
            parser.error("--storage and --study go together")
        out_dir = Path(args.sweep_dir or ".")
        print(run_reporting_errors(lambda: write_study_report(args.storage, args.study, out_dir)))
        return
    if args.sweep_dir is None:
        parser.error("give a sweep folder, or --storage URL --study NAME")
    collected = run_reporting_errors(lambda: write_report(args.sweep_dir, args.baseline))
    print((Path(args.sweep_dir) / "report.md").read_text())
    if collected.problems:
        print(f"{len(collected.problems)} run(s) not in the table (listed in report.md)")
