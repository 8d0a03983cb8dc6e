"""The report's Markdown: the Table 3 layout of a grid sweep, or an Optuna sweep's trials ranked."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from qin_lightning.config import OBJECTIVES
from qin_lightning.report.collect import Collected, PAPER_AUC, PAPER_ROW, Row, Run, read_yaml
from qin_lightning.report.compare import TableTests, compare
from qin_lightning.report.stats import ALPHA


def _fmt(value: float | None, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "–"


@dataclass(frozen=True)
class Baseline:
    """What a table's rows are compared with, shown as ``label``: the row named ``row`` (a sweep's default
    setting, or ``--baseline ROW``); else the runs of another plan's row (``runs``); else the row of
    ``experiment`` with the same setting (a sweep over experiments). ``why`` says why there is none."""

    experiment: str
    label: str
    runs: tuple[Run, ...] | None = None
    row: str | None = None
    why: str = ""


SEED_TEST_HEADER = "seed t-test p (Holm)"


def comparison_header(baseline: str, tests: TableTests) -> list[str]:
    """The column names of a row's test comparison with `baseline` (comparison_cells)."""
    header = [f"Δ test AUC vs {baseline}", "95% CI", "p", "p (Holm)", f"verdict (Holm p < {ALPHA})"]
    return [*header, SEED_TEST_HEADER] if tests.seed_tests else header


def comparison_cells(tests: TableTests, row: str, is_baseline: bool = False) -> list[str]:
    """Difference, interval, p, Holm-adjusted p and the verdict ("significant" only when the paired bootstrap's
    Holm p < ALPHA); a row without a paired bootstrap gets its seed-mean difference, "not computed" as its verdict
    and the seed t-test's p (Holm) in that test's own last column."""
    c = tests.comparisons.get(row)
    seed = tests.seed_tests.get(row) if c is None else None
    if c is not None:
        verdict = "–" if c.p_holm != c.p_holm else "significant" if c.significant else "not significant"
        cells = [f"{c.difference:+.4f}", f"[{c.low:+.4f}, {c.high:+.4f}]" if c.low == c.low else "–",
                 _p(c.p), _p(c.p_holm), verdict]
    elif seed is not None:
        cells = [f"{seed.difference:+.4f}", "–", "–", "–", "not computed"]
    else:
        cells = ["baseline" if is_baseline else "–"] + ["–"] * 4
    if tests.seed_tests:
        cells.append(f"{_p(seed.p)} ({_p(seed.p_holm)})" if seed is not None else "–")
    return cells


def _p(value: float) -> str:
    if value != value:
        return "–"
    return f"{value:.3f}" if value >= 0.001 else "< 0.001"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def _base_runs(collected: Collected, baseline: Baseline, row: Row) -> tuple[Row | None, list[Run]]:
    """The baseline row of ``row`` (None for another plan's runs) and the runs it is compared with."""
    if baseline.runs is not None:
        return None, list(baseline.runs)
    if baseline.why:
        return None, []
    base = collected.named(baseline.row) if baseline.row is not None else collected.row(baseline.experiment,
                                                                                         row.setting)
    return base, (base.completed if base is not None else [])


def table_tests(collected: Collected, baseline: Baseline) -> TableTests:
    """Every row against its baseline (the baseline row with the same setting, or another plan's runs), on the
    test split (report.compare)."""
    pairs = []
    for row in collected.rows:
        base, base_runs = _base_runs(collected, baseline, row)
        if base_runs and base is not row:
            pairs.append((row.label, row.completed, base_runs))
    return compare(pairs)


def render_table(collected: Collected, baseline: Baseline, tests: TableTests) -> list[str]:
    """The Table 3 layout: one line per row (experiment x varying overrides); validation columns, then the test
    columns and the row's paired test against the baseline (the only column significance is read from)."""
    header = ["row", "paper row", "val AUC (mean ± std)", "val logloss", "seeds",
              f"Δ val AUC vs {baseline.label}", "test AUC (mean ± std)", *comparison_header(baseline.label, tests),
              "paper AUC", "paper Δ", "early stop / epoch cap / failed"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for row in collected.rows:
        base, base_runs = _base_runs(collected, baseline, row)
        paper_base = PAPER_AUC.get(base.paper) if base is not None and base.paper else None
        base_aucs = [float(r.record["best_val_auc"]) for r in base_runs if r.record]
        done = row.completed
        if done:
            auc = f"{row.mean:.4f} ± {row.std:.4f}"
            loglosses = [float(r.record.get("best_val_logloss") or math.nan) for r in done if r.record]
            logloss = _fmt(statistics.fmean(loglosses))
            seeds = f"{len(done)} ({', '.join(str(r.record.get('seed')) for r in sorted(done, key=_seed) if r.record)})"
            delta = f"{row.mean - statistics.fmean(base_aucs):+.4f}" if base_aucs else "n/a"
        else:
            auc, logloss, seeds, delta = "–", "–", "0", "–"
        test = _mean_std([r.test_auc for r in done if r.test_auc is not None])
        paper = PAPER_AUC.get(row.paper) if row.paper else None
        paper_delta = f"{paper - paper_base:+.4f}" if paper is not None and paper_base is not None else "–"
        counts = f"{row.count('early_stopping')} / {row.count('max_epochs')} / {row.count('failed')}"
        cells = [row.label, PAPER_ROW.get(row.paper, "–") if row.paper else "–", auc, logloss,
                 seeds, delta, test, *comparison_cells(tests, row.label, row is base),
                 _fmt(paper), paper_delta, counts]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _seed(run: Run) -> int:
    return int((run.record or {}).get("seed") or -1)


def objective(run: Run, metric: str) -> float:
    """The value a sweeper optimised (``optimized_metric``) for one run, as ``qin_lightning.train`` returns it
    (NaN where the run or the metric has none)."""
    record = run.record or {}
    value = record.get(OBJECTIVES.get(metric, ""))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def render_trials(collected: Collected, sweep_dir: Path) -> list[str]:
    """An Optuna sweep: every trial ranked by the objective (best first), its parameters beside it."""
    metric = str(collected.sweep.get("optimized_metric", "val/auc"))
    maximize = str(collected.sweeper.get("direction", "maximize")) != "minimize"
    runs = [r for row in collected.rows for r in row.runs]
    finished = sorted((r for r in runs if r.problem is None), key=lambda r: objective(r, metric), reverse=maximize)
    params = collected.varying
    lines = [
        f"Optuna trials ranked by the objective `{metric}` ({'max' if maximize else 'min'}imised), best first.",
        "",
        "| rank | run | " + " | ".join([metric, *params, "best epoch", "epochs", "stop reason"]) + " |",
        "| " + " | ".join(["---"] * (len(params) + 6)) + " |",
    ]
    for rank, run in enumerate(finished, 1):
        record = run.record or {}
        cells = [str(rank), f"`{run.name}`", _fmt(objective(run, metric), 6),
                 *(run.overrides.get(k, "–") for k in params),
                 str(record.get("best_epoch")), str(record.get("epochs_trained")), run.stop_reason]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    best = read_yaml(sweep_dir / "optimization_results.yaml")
    if isinstance(best, dict) and isinstance(best.get("best_params"), dict) and best["best_params"]:
        shown = ", ".join(f"`{k}={v}`" for k, v in best["best_params"].items())
        value = _fmt(best["best_value"] if isinstance(best.get("best_value"), (int, float)) else None, 6)
        lines += ["", f"Best parameters (`optimization_results.yaml`, value {value}): {shown}"]
    return lines


def render_markdown(collected: Collected, sweep_dir: Path, baseline: Baseline, tests: TableTests | None) -> str:
    """The report as Markdown: the table (or the Optuna trials), the figures, the runs not in the table."""
    lines = [f"# Report: {sweep_dir.name}", ""]
    if collected.is_optuna:
        lines += render_trials(collected, sweep_dir)
    else:
        assert tests is not None
        split = ", ".join(f"`{k}`" for k in collected.varying)
        if baseline.why:
            against = f"no row ({baseline.why})"
        elif baseline.runs is not None:
            against = f"the runs of `{baseline.label}`"
        elif baseline.row is not None:
            against = f"`{baseline.label}`"
        else:
            against = f"`{baseline.label}` with the same settings"
        by_experiment = not collected.rows or collected.rows[0].show_experiment
        rows_are = "one row per experiment" + (" and value of " if split else "") if by_experiment else (
            "one row per value of " if split else "one row")
        lines += [
            f"Best validation AUC per run (mean ± std over seeds); {rows_are}"
            + (f"{split} (the overrides that differ between this sweep's runs: the row's name)" if split else "")
            + f"; Δ is to {against}. Validation numbers are shown, never tested: they"
            " chose each run's best epoch.",
            f"Test columns: the best-validation weights on the test split. Significance: {tests.note}; p-values"
            f" Holm-adjusted across the table's comparisons, significant only where the adjusted p < {ALPHA}.",
            "Paper row and AUC: where the row's composed model equals a paper experiment's (conf/experiment, composed"
            " with the overrides every run shares), that experiment's MicroLens_1M_MMCTR validation AUC (QIN paper"
            " Tables 2 and 3), for reference only: other data gives other absolute numbers, compare the ordering and"
            " the deltas.",
            "The last column counts the row's runs that stopped early, ran to `trainer.max_epochs`, or failed"
            " (records without `stop_reason` are classified by their number of epochs).",
            "",
            *render_table(collected, baseline, tests),
        ]
    if any(row.completed for row in collected.rows):
        lines += ["", "![best validation AUC per row](report.png)"]
    if any(row.histories() for row in collected.rows):
        lines += ["", "![validation AUC by epoch, mean over seeds, band = ± std](report_curves.png)"]
    lines += ["", "## Runs not in the table", ""]
    if collected.problems:
        lines += [f"- `{run}`: {what}" for run, what in collected.problems]
    else:
        lines.append("None: every run completed.")
    return "\n".join(lines) + "\n"
