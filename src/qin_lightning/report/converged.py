"""A converged plan's ``table.md``: per experiment the validation AUC / logloss (mean ± std over seeds), the test
AUC / logloss / gAUC of the best-validation weights, the epoch of the best validation AUC, seconds per epoch,
parameters, how each run ended, the paper's MicroLens value, and each row vs the baseline on the test split.

Written by ``qin-report <folder>`` beside ``report.md`` from the same comparisons (one bootstrap, computed once,
so both files show the same numbers); experiments/converged/table.py only calls it.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from qin_lightning.report.collect import PAPER_AUC, Collected, Run
from qin_lightning.report.compare import TableTests
from qin_lightning.report.plan import Plan
from qin_lightning.report.tables import Baseline, comparison_cells, comparison_header


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def seconds_per_epoch(run: dict[str, Any]) -> float:
    timing = run.get("timing") or {}
    if timing.get("epoch_s"):
        return statistics.fmean(timing["epoch_s"])
    return run["train_seconds"] / max(1, run["epochs_trained"])


def training_hours(runs: list[dict[str, Any]]) -> float:
    """CPU-hours of training of the runs: each run's mean epoch time x its epochs x its threads (a resumed run's
    `train_seconds` and `timing` cover only its last invocation). Wall time on the run's threads, so an upper
    bound on its CPU time where other work shared the cores."""
    return sum(seconds_per_epoch(r) * r["epochs_trained"] * int((r.get("machine") or {}).get("threads") or 1)
               for r in runs) / 3600


def simd(run: dict[str, Any]) -> str:
    """The SIMD level torch used for the run (results.json `machine`; older records lack it)."""
    return str((run.get("machine") or {}).get("cpu_capability") or "machine not recorded")


def seconds_cell(runs: list[dict[str, Any]], mixed: bool) -> str:
    """Mean seconds per epoch; where the table's runs come from more than one machine, which ones these are."""
    cell = f"{statistics.fmean(seconds_per_epoch(r) for r in runs):.1f}"
    if not mixed:
        return cell
    levels = [simd(r) for r in runs]
    return cell + " (" + ", ".join(f"{levels.count(k)}x {k}" for k in dict.fromkeys(levels)) + ")"


def ending(runs: list[dict[str, Any]], max_epochs: int | None) -> str:
    reasons = [r.get("stop_reason") or ("max_epochs" if max_epochs and r["epochs_trained"] >= max_epochs
                                         else "early_stopping") for r in runs]
    counts = {k: reasons.count(k) for k in dict.fromkeys(reasons)}
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())


def table(runs: list[Run], order: list[str], max_epochs: int | None, tests: TableTests,
          baseline: Baseline, papers: dict[str, str | None] | None = None) -> str:
    """The rows (one per experiment, in the plan's order) with the comparisons ``tests`` already computed;
    ``papers``: the paper experiment each row's composed model is (report.paper), for the paper AUC column."""
    by_exp: dict[str, list[Run]] = {}
    for run in runs:
        by_exp.setdefault(run.experiment, []).append(run)
    base_runs = list(baseline.runs) if baseline.runs is not None else by_exp.get(baseline.experiment, [])
    names = [e for e in order if e in by_exp] + sorted(set(by_exp) - set(order))
    header = comparison_header(baseline.label, tests)
    lines = [
        "| experiment | seeds | val AUC | val logloss | test AUC | test logloss | test gAUC | best epoch | s / epoch"
        f" | params | ended by | paper AUC | Δ val AUC vs {baseline.label} | " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * (13 + len(header))) + " |",
    ]
    base_mean = statistics.fmean(r.record["best_val_auc"] for r in base_runs if r.record) if base_runs else math.nan
    records = [r.record for r in runs if r.record]
    mixed = len({simd(r) for r in records}) > 1  # seconds from two machines are not comparable: say which
    for name in names:
        rs = sorted((r.record for r in by_exp[name] if r.record), key=lambda r: r["seed"])
        tests_of = [r["test_eval"] for r in rs if r.get("test_eval")]
        test_aucs = [r.test_auc for r in by_exp[name] if r.test_auc is not None]
        aucs = [r["best_val_auc"] for r in rs]
        paper = PAPER_AUC.get((papers or {}).get(name) or "")
        is_base = baseline.runs is None and name == baseline.experiment
        lines.append(
            f"| {name} | {len(rs)} | {mean_std(aucs)} | {mean_std([r['best_val_logloss'] for r in rs])}"
            f" | {mean_std(test_aucs)} | {mean_std([t['logloss'] for t in tests_of])}"
            f" | {mean_std([t['gauc'] for t in tests_of])} | {', '.join(str(r['best_epoch'] + 1) for r in rs)}"
            f" | {seconds_cell(rs, mixed)} | {rs[0]['n_params']:,}"
            f" | {ending(rs, max_epochs)} | {paper if paper is not None else '–'}"
            f" | {'–' if not base_runs else f'{statistics.fmean(aucs) - base_mean:+.4f}'}"
            f" | {' | '.join(comparison_cells(tests, name, is_base))} |"
        )
    return "\n".join(lines) + "\n"


def shown(path: Path) -> str:
    """A path as the table shows it: relative to the current folder when below it (the repository root), so the
    same folder gives the same text however it was named on the command line."""
    here = Path.cwd().resolve()
    resolved = path.resolve()
    if resolved.is_relative_to(here):
        return Path(os.path.relpath(resolved, here)).as_posix()
    return path.as_posix()


def header(plan: Plan, runs: list[Run], tests: TableTests, baseline: Baseline) -> str:
    """What the table is: the one configuration of every row, the commands, how many runs, their compute, and
    how its rows were compared."""
    expected = len(plan.experiments) * len(plan.seeds)
    hours = training_hours([r.record for r in runs if r.record])
    lines = [
        f"# Converged sweep `{plan.name}` ({shown(plan.path)})",
        "",
        f"Every row: {', '.join(f'`{o}`' for o in plan.overrides)}; each experiment's own protocol otherwise.",
    ]
    if plan.per_experiment:
        lines.append("Shrink options (the row stays in the comparison): " + "; ".join(
            f"`{e}`: {', '.join(f'`{o}`' for o in opts)}" for e, opts in plan.per_experiment.items()) + ".")
    lines += [
        f"Seeds {', '.join(str(s) for s in plan.seeds)}. Runs completed: {len(runs)} of {expected}; "
        f"about {hours:.1f} CPU-hours of training (each run's mean epoch time x its epochs x its threads, an upper "
        "bound on its CPU time where the cores were shared), two runs at a time on 2 cores.",
        "",
        f"The runs: the command in the plan's `Run:` line. This table, `report.md` and the figures: `python -m"
        f" qin_lightning.report {shown(plan.folder)}` (from the repository root; it reads only the records in the"
        " folder and the plan beside it).",
        "",
        "Validation columns: the best epoch of each run (mean ± std over seeds), shown but never tested (they chose"
        " the epoch); test columns: that epoch's weights on the test split; best epoch 1-based; paper AUC:"
        " MicroLens validation (paper Tables 2 and 3) of the paper experiment whose composed model is the row's (with"
        " the plan's overrides), for orientation only. Where the runs come from more than one"
        " machine, s / epoch says which (torch's SIMD level, from each record's `machine`).",
        f"Each row against {baseline.label} on the test split: {tests.note}. p-values are Holm-adjusted across the"
        " table's comparisons; a row is significant only where its adjusted p < 0.05.",
    ]
    from_fit = [r.name for r in runs if r.record and not r.record.get("test_eval") and r.test_auc is not None]
    if from_fit:
        lines.append(f"Test AUC of {', '.join(f'`{n}`' for n in from_fit)}: its training run's `test_auc`"
                     " (test_after_fit on the same best weights; its qin-eval failed, see `test_eval_error`), so it"
                     " has no test logloss or gAUC.")
    return "\n".join(lines) + "\n\n"


def render_converged(plan: Plan, collected: Collected, tests: TableTests, baseline: Baseline) -> str:
    """The whole table.md of a plan's folder."""
    runs = [r for row in collected.rows for r in row.completed]
    papers = {row.experiment: row.paper for row in collected.rows}
    return header(plan, runs, tests, baseline) + table(runs, plan.experiments, plan.max_epochs(), tests, baseline,
                                                       papers)
