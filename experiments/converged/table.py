"""The converged table of a sweep: `python experiments/converged/table.py experiments/converged/synthetic.yaml`.

Reads `<plan dir>/<name>/runs/*.json` (written by sweep.py) and writes `<plan dir>/<name>/table.md`: per
experiment the validation AUC / logloss (mean ± std over seeds), the test AUC / logloss / gAUC of the
best-validation weights, the epoch of the best validation AUC, seconds per epoch, parameters, how each run
ended, the paper's MicroLens value, and QIN vs that row in a paired t-test over seeds.

Significance: for each seed present in both rows, d = AUC(row) - AUC(qin); t = mean(d) / (sd(d) / sqrt(n)),
two-sided at alpha = 0.05 against Student's t with n - 1 degrees of freedom (3 seeds: |t| > 4.303). Runs with the
same seed share the data order and the initialisation seed, hence the pairing.

The baseline is the plan's own `qin` row unless the plan names another: `baseline: {plan: other.yaml, experiment:
E}` compares every row with row E of another plan's records (a path relative to this plan), as a targeted check
that changes one option of one row does.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from qin_lightning.report.collect import PAPER_AUC

# two-sided 5% critical values of Student's t, by degrees of freedom
T_CRITICAL = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def paired_t(row: dict[int, float], base: dict[int, float]) -> tuple[float, int] | None:
    """(t, n) of row - base over the seeds both have; None with fewer than 2 pairs or identical values."""
    seeds = sorted(set(row) & set(base))
    diffs = [row[s] - base[s] for s in seeds]
    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return None
    return statistics.fmean(diffs) / (sd / math.sqrt(len(diffs))), len(diffs)


def verdict(row: dict[int, float], base: dict[int, float]) -> str:
    result = paired_t(row, base)
    if result is None:
        return "–"
    t, n = result
    critical = T_CRITICAL.get(n - 1, 1.96)
    return f"t = {t:+.2f} ({'significant' if abs(t) > critical else 'within seed spread'})"


def seconds_per_epoch(run: dict[str, Any]) -> float:
    timing = run.get("timing") or {}
    if timing.get("epoch_s"):
        return statistics.fmean(timing["epoch_s"])
    return run["train_seconds"] / max(1, run["epochs_trained"])


def training_hours(runs: list[dict[str, Any]]) -> float:
    """Training time of the runs, each as its mean epoch time x its epochs (a resumed run's `train_seconds`
    and `timing` cover only its last invocation)."""
    return sum(seconds_per_epoch(r) * r["epochs_trained"] for r in runs) / 3600


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


def table(runs: list[dict[str, Any]], order: list[str], max_epochs: int | None,
          baseline: tuple[str, list[dict[str, Any]]] | None = None) -> str:
    """The rows; `baseline` (label, its runs) when it is not this table's own `qin` row."""
    by_exp: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_exp.setdefault(run["experiment"], []).append(run)
    label, base_runs = baseline or ("qin", by_exp.get("qin", []))
    base = {r["seed"]: r["best_val_auc"] for r in base_runs}
    lines = [
        "| experiment | seeds | val AUC | val logloss | test AUC | test logloss | test gAUC | best epoch | s / epoch"
        f" | params | ended by | paper AUC | Δ val AUC vs {label} | paired t vs {label} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base_mean = statistics.fmean(base.values()) if base else math.nan
    mixed = len({simd(r) for r in runs}) > 1  # seconds from two machines are not comparable: say which
    for name in [e for e in order if e in by_exp] + sorted(set(by_exp) - set(order)):
        rs = sorted(by_exp[name], key=lambda r: r["seed"])
        tests = [r["test_eval"] for r in rs if r.get("test_eval")]
        aucs = {r["seed"]: r["best_val_auc"] for r in rs}
        paper = PAPER_AUC.get(name)
        lines.append(
            f"| {name} | {len(rs)} | {mean_std(list(aucs.values()))} | {mean_std([r['best_val_logloss'] for r in rs])}"
            f" | {mean_std([t['auc'] for t in tests])} | {mean_std([t['logloss'] for t in tests])}"
            f" | {mean_std([t['gauc'] for t in tests])} | {', '.join(str(r['best_epoch'] + 1) for r in rs)}"
            f" | {seconds_cell(rs, mixed)} | {rs[0]['n_params']:,}"
            f" | {ending(rs, max_epochs)} | {paper if paper is not None else '–'}"
            f" | {'–' if not base else f'{statistics.fmean(aucs.values()) - base_mean:+.4f}'}"
            f" | {'–' if baseline is None and name == 'qin' else verdict(aucs, base)} |"
        )
    return "\n".join(lines) + "\n"


def load_baseline(plan_path: Path, plan: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """(label, runs) of the plan's `baseline: {plan, experiment}`; None: the table's own qin row."""
    spec = plan.get("baseline")
    if not spec:
        return None
    other_path = plan_path.parent / str(spec["plan"])
    other = OmegaConf.to_container(OmegaConf.load(other_path), resolve=True)
    assert isinstance(other, dict)
    experiment = str(spec["experiment"])
    records = sorted((other_path.parent / str(other["name"]) / "runs").glob(f"{experiment}_seed*.json"))
    if not records:
        raise SystemExit(f"{other_path}: no records of {experiment!r} under {other['name']}/runs (run its sweep first)")
    return f"{other['name']}/{experiment}", [json.loads(p.read_text()) for p in records]


def header(plan_path: Path, plan: dict[str, Any], runs: list[dict[str, Any]], folder: Path,
           baseline_label: str = "qin") -> str:
    """What the table is: the one configuration of every row, the commands, how many runs, their compute."""
    overrides = [str(o) for o in plan.get("overrides") or []]
    shrink = plan.get("per_experiment") or {}
    expected = len(plan["experiments"]) * len(plan["seeds"])
    hours = training_hours(runs)
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
        f"about {hours:.1f} h of training (each run's mean epoch time x its epochs), two runs at a time on 2 cores.",
        "",
        "```bash",
        f"python experiments/converged/sweep.py {plan_path.as_posix()} --jobs 2   # resumable",
        f"python experiments/converged/table.py {plan_path.as_posix()}",
        f"python -m qin_lightning.report {folder.as_posix()}   # report.md, report_curves.png",
        "```",
        "",
        "Validation columns: the best epoch of each run (mean ± std over seeds); test columns: that epoch's weights"
        " on the test split; best epoch 1-based; paper AUC: MicroLens validation (paper Tables 2 and 3), for"
        f" orientation only. Paired t-test over seeds against {baseline_label}, two-sided, 5%. Where the runs come"
        " from more than one machine, s / epoch says which (torch's SIMD level, from each record's `machine`).",
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    plan = OmegaConf.to_container(OmegaConf.load(args.plan), resolve=True)
    assert isinstance(plan, dict)
    folder = args.plan.parent / str(plan["name"])
    runs = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]
    max_epochs = next((int(o.split("=", 1)[1]) for o in plan.get("overrides") or []
                       if str(o).startswith("trainer.max_epochs=")), None)
    baseline = load_baseline(args.plan, plan)
    text = table(runs, [str(e) for e in plan["experiments"]], max_epochs, baseline)
    tmp = folder / ".table.md.tmp"
    tmp.write_text(header(args.plan, plan, runs, folder, baseline[0] if baseline else "qin") + text)
    tmp.replace(folder / "table.md")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
