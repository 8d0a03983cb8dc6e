"""The converged table of a sweep: `python experiments/converged/table.py experiments/converged/synthetic.yaml`.

Reads `<plan dir>/<name>/runs/*.json` (written by sweep.py) and writes `<plan dir>/<name>/table.md`: per
experiment the validation AUC / logloss (mean ± std over seeds), the test AUC / logloss / gAUC of the
best-validation weights, the epoch of the best validation AUC, seconds per epoch, parameters, how each run
ended, the paper's MicroLens value, and each row vs the baseline on the test split.

Significance comes from the package (qin_lightning.report.compare, the one implementation `qin-report` uses): a
paired bootstrap over the test split's users of the seed-mean test AUC difference where every run kept its test
predictions (`runs/<E>_seed<S>.preds.parquet`), else a seed-paired t-test on the recorded test AUCs; Holm-adjusted
across the table; significant only where the adjusted p < 0.05. Validation numbers are shown, never tested.

The baseline is the plan's own `qin` row unless the plan names another: `baseline: {plan: other.yaml, experiment:
E}` compares every row with row E of another plan's records (a path relative to this plan), as a targeted check
that changes one option of one row does.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from qin_lightning.files import atomic_write_text
from qin_lightning.report.collect import PAPER_AUC, Run, find_runs
from qin_lightning.report.compare import TableTests, compare
from qin_lightning.report.tables import comparison_cells, comparison_header


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


def table(runs: list[Run], order: list[str], max_epochs: int | None,
          baseline: tuple[str, list[Run]] | None = None) -> tuple[str, TableTests]:
    """The rows and their tests; `baseline` (label, its runs) when it is not this table's own `qin` row."""
    by_exp: dict[str, list[Run]] = {}
    for run in runs:
        by_exp.setdefault(run.experiment, []).append(run)
    label, base_runs = baseline or ("qin", by_exp.get("qin", []))
    names = [e for e in order if e in by_exp] + sorted(set(by_exp) - set(order))
    tests = compare([(name, by_exp[name], base_runs) for name in names if baseline is not None or name != "qin"])
    lines = [
        "| experiment | seeds | val AUC | val logloss | test AUC | test logloss | test gAUC | best epoch | s / epoch"
        f" | params | ended by | paper AUC | Δ val AUC vs {label} | " + " | ".join(comparison_header(label)) + " |",
        "| " + " | ".join(["---"] * 18) + " |",
    ]
    base_mean = statistics.fmean(r.record["best_val_auc"] for r in base_runs) if base_runs else math.nan
    records = [r.record for r in runs]
    mixed = len({simd(r) for r in records}) > 1  # seconds from two machines are not comparable: say which
    for name in names:
        rs = sorted((r.record for r in by_exp[name]), key=lambda r: r["seed"])
        tests_of = [r["test_eval"] for r in rs if r.get("test_eval")]
        test_aucs = [r.test_auc for r in by_exp[name] if r.test_auc is not None]
        aucs = [r["best_val_auc"] for r in rs]
        paper = PAPER_AUC.get(name)
        lines.append(
            f"| {name} | {len(rs)} | {mean_std(aucs)} | {mean_std([r['best_val_logloss'] for r in rs])}"
            f" | {mean_std(test_aucs)} | {mean_std([t['logloss'] for t in tests_of])}"
            f" | {mean_std([t['gauc'] for t in tests_of])} | {', '.join(str(r['best_epoch'] + 1) for r in rs)}"
            f" | {seconds_cell(rs, mixed)} | {rs[0]['n_params']:,}"
            f" | {ending(rs, max_epochs)} | {paper if paper is not None else '–'}"
            f" | {'–' if not base_runs else f'{statistics.fmean(aucs) - base_mean:+.4f}'}"
            f" | {' | '.join(comparison_cells(tests.comparisons.get(name), baseline is None and name == 'qin'))} |"
        )
    return "\n".join(lines) + "\n", tests


def load_baseline(plan_path: Path, plan: dict[str, Any]) -> tuple[str, list[Run]] | None:
    """(label, runs) of the plan's `baseline: {plan, experiment}`; None: the table's own qin row."""
    spec = plan.get("baseline")
    if not spec:
        return None
    other_path = plan_path.parent / str(spec["plan"])
    other = OmegaConf.to_container(OmegaConf.load(other_path), resolve=True)
    assert isinstance(other, dict)
    experiment = str(spec["experiment"])
    runs = [r for r in find_runs(other_path.parent / str(other["name"])) if r.record and r.experiment == experiment]
    if not runs:
        raise SystemExit(f"{other_path}: no records of {experiment!r} under {other['name']}/runs (run its sweep first)")
    return f"{other['name']}/{experiment}", runs


def header(plan_path: Path, plan: dict[str, Any], runs: list[Run], folder: Path, tests: TableTests,
           baseline_label: str = "qin") -> str:
    """What the table is: the one configuration of every row, the commands, how many runs, their compute, and
    how its rows were compared."""
    overrides = [str(o) for o in plan.get("overrides") or []]
    shrink = plan.get("per_experiment") or {}
    expected = len(plan["experiments"]) * len(plan["seeds"])
    hours = training_hours([r.record for r in runs])
    lines = [
        f"# Converged sweep `{plan['name']}` ({plan_path.as_posix()})",
        "",
        f"Every row: {', '.join(f'`{o}`' for o in overrides)}; each experiment's own protocol otherwise.",
    ]
    if shrink:
        lines.append("Shrink options: " + "; ".join(f"`{e}`: {', '.join(f'`{o}`' for o in opts)}"
                                                     for e, opts in shrink.items()) + ".")
    lines += [
        f"Seeds {', '.join(str(s) for s in plan['seeds'])}. Runs completed: {len(runs)} of {expected}; "
        f"about {hours:.1f} CPU-hours of training (each run's mean epoch time x its epochs x its threads, an upper "
        "bound on its CPU time where the cores were shared), two runs at a time on 2 cores.",
        "",
        "```bash",
        f"python experiments/converged/sweep.py {plan_path.as_posix()} --jobs 2   # resumable",
        f"python experiments/converged/table.py {plan_path.as_posix()}",
        f"python -m qin_lightning.report {folder.as_posix()}   # report.md, report_curves.png",
        "```",
        "",
        "Validation columns: the best epoch of each run (mean ± std over seeds), shown but never tested (they chose"
        " the epoch); test columns: that epoch's weights on the test split; best epoch 1-based; paper AUC:"
        " MicroLens validation (paper Tables 2 and 3), for orientation only. Where the runs come from more than one"
        " machine, s / epoch says which (torch's SIMD level, from each record's `machine`).",
        f"Each row against {baseline_label} on the test split: {tests.note}. p-values are Holm-adjusted across the"
        " table's comparisons; a row is significant only where its adjusted p < 0.05.",
    ]
    from_fit = [r.name for r in runs if r.record and not r.record.get("test_eval") and r.test_auc is not None]
    if from_fit:
        lines.append(f"Test AUC of {', '.join(f'`{n}`' for n in from_fit)}: its training run's `test_auc`"
                     " (test_after_fit on the same best weights; its qin-eval failed, see `test_eval_error`), so it"
                     " has no test logloss or gAUC.")
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    plan = OmegaConf.to_container(OmegaConf.load(args.plan), resolve=True)
    assert isinstance(plan, dict)
    folder = args.plan.parent / str(plan["name"])
    runs = find_runs(folder)
    for run in runs:
        if run.problem is not None:
            print(f"not in the table: {run.name}: {run.problem}")
    runs = [r for r in runs if r.problem is None]
    max_epochs = next((int(o.split("=", 1)[1]) for o in plan.get("overrides") or []
                       if str(o).startswith("trainer.max_epochs=")), None)
    baseline = load_baseline(args.plan, plan)
    text, tests = table(runs, [str(e) for e in plan["experiments"]], max_epochs, baseline)
    atomic_write_text(folder / "table.md",
                      header(args.plan, plan, runs, folder, tests, baseline[0] if baseline else "qin") + text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
