"""Paper-style report of a sweep: ``python -m qin_lightning.report <sweep folder> [--baseline qin]``.

Reads every ``results.json`` below the folder and writes, into that folder:
- ``report.md``: the Table 3 layout (one row per experiment, mean +- std of the best validation AUC over seeds,
  number of seeds, delta to full QIN, the paper's AUC beside ours), plus the runs that failed or never finished;
- ``report.png``: a bar chart of the mean AUC per experiment with std error bars.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from qin_lightning.cli import run_reporting_errors
from qin_lightning.errors import QinError
from qin_lightning.files import atomic_write_bytes, atomic_write_text

# Validation AUC on MicroLens_1M_MMCTR (paper Tables 2 and 3; REFERENCE.md section 4).
PAPER_AUC: dict[str, float] = {
    "din": 0.8655,
    "qin": 0.9701,
    "ablation_no_qnn": 0.7396,
    "ablation_no_asta": 0.9321,
    "ablation_softmax": 0.9490,
    "ablation_relu": 0.9584,
    "ablation_dropout": 0.9681,
}
PAPER_ROW: dict[str, str] = {
    "din": "DIN (official baseline)",
    "qin": "QIN",
    "ablation_no_qnn": "QIN w/o QNN",
    "ablation_no_asta": "QIN w/o ASTA",
    "ablation_softmax": "ASTA w/ SoftMax",
    "ablation_relu": "QNN w/o PReLU",
    "ablation_dropout": "ASTA w/ Dropout",
    "attention_silu": "ASTA w/ SiLU",
    "attention_relu2": "ASTA w/ ReLU^2",
    "qnn_alpha": "QIN + QNN-alpha (self-ensemble)",  # beyond the paper: no paper AUC
    "transformer_dcn": "Transformer+DCNv2 (1st place)",  # beyond the paper: valid 0.9766 in the winners' report
}
ORDER = list(PAPER_ROW)


@dataclass
class ExperimentRuns:
    """The completed runs of one experiment."""

    name: str
    aucs: list[float] = field(default_factory=list)
    loglosses: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.aucs)

    @property
    def std(self) -> float:
        return statistics.stdev(self.aucs) if len(self.aucs) > 1 else 0.0


@dataclass
class Collected:
    experiments: dict[str, ExperimentRuns]
    problems: list[tuple[str, str]]  # (run folder, what is wrong)


def collect(sweep_dir: Path) -> Collected:
    """Group completed runs by experiment; list failed, incomplete and unreadable runs as problems."""
    experiments: dict[str, ExperimentRuns] = {}
    problems: list[tuple[str, str]] = []
    started = {p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")}
    run_dirs = sorted(started | {p.parent for p in sweep_dir.rglob("results.json")})
    for run_dir in run_dirs:
        rel = str(run_dir.relative_to(sweep_dir)) or "."
        path = run_dir / "results.json"
        if not path.exists():
            problems.append((rel, "incomplete: no results.json (still running, killed or crashed)"))
            continue
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            problems.append((rel, f"unreadable results.json: {err}"))
            continue
        if res.get("status") != "completed":
            problems.append((rel, f"{res.get('status', 'unknown')}: {res.get('error', 'no error message')}"))
            continue
        auc = res.get("best_val_auc")
        if auc is None or not math.isfinite(float(auc)):
            problems.append((rel, "completed without a validation AUC (e.g. fast_dev_run)"))
            continue
        runs = experiments.setdefault(res["experiment"], ExperimentRuns(res["experiment"]))
        runs.aucs.append(float(auc))
        runs.loglosses.append(float(res.get("best_val_logloss", math.nan)))
        runs.seeds.append(int(res.get("seed", -1)))
        runs.epochs.append(int(res.get("best_epoch") or 0))
    return Collected(experiments, problems)


def _ordered(experiments: dict[str, ExperimentRuns]) -> list[ExperimentRuns]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(experiments.values(), key=lambda r: (rank.get(r.name, len(ORDER)), r.name))


def render_markdown(collected: Collected, sweep_dir: Path, baseline: str = "qin") -> str:
    """The report as Markdown (Table 3 layout)."""
    base = collected.experiments.get(baseline)
    lines = [
        f"# Report: {sweep_dir.name}",
        "",
        f"Best validation AUC per run (mean ± std over seeds); Δ is to `{baseline}`.",
        "Paper AUC: MicroLens_1M_MMCTR validation (QIN paper Tables 2 and 3), for reference only: "
        "other data gives other absolute numbers, compare the ordering and the deltas.",
        "",
        "| experiment | paper row | AUC (mean ± std) | logloss | seeds | Δ AUC vs " + baseline + " | paper AUC | paper Δ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for runs in _ordered(collected.experiments):
        delta = f"{runs.mean - base.mean:+.4f}" if base else "n/a"
        paper = PAPER_AUC.get(runs.name)
        paper_base = PAPER_AUC.get(baseline)
        paper_delta = f"{paper - paper_base:+.4f}" if paper is not None and paper_base is not None else "–"
        lines.append(
            f"| {runs.name} | {PAPER_ROW.get(runs.name, '–')} | {runs.mean:.4f} ± {runs.std:.4f} | "
            f"{statistics.fmean(runs.loglosses):.4f} | {len(runs.aucs)} ({', '.join(map(str, sorted(runs.seeds)))}) | "
            f"{delta} | {f'{paper:.4f}' if paper is not None else '–'} | {paper_delta} |"
        )
    lines += ["", "## Runs not in the table", ""]
    if collected.problems:
        lines += [f"- `{run}`: {what}" for run, what in collected.problems]
    else:
        lines.append("None: every run completed.")
    return "\n".join(lines) + "\n"


def render_chart(collected: Collected, title: str) -> bytes:
    """A bar chart (PNG bytes) of the mean AUC per experiment with std error bars and the paper's AUC."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ordered(collected.experiments)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    ax.bar(xs, [r.mean for r in rows], yerr=[r.std for r in rows], capsize=4, color="#4C72B0", label="ours")
    paper = [(i, PAPER_AUC[r.name]) for i, r in enumerate(rows) if r.name in PAPER_AUC]
    if paper:
        ax.scatter([i for i, _ in paper], [v for _, v in paper], marker="_", s=400, color="#C44E52", label="paper")
    ax.set_xticks(list(xs), [r.name for r in rows], rotation=30, ha="right")
    lows = [r.mean - r.std for r in rows] + [v for _, v in paper]
    ax.set_ylim(max(0.0, min(lows, default=0.5) - 0.05), 1.0)
    ax.set_ylabel("best validation AUC")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_report(sweep_dir: str | Path, baseline: str = "qin") -> Collected:
    """Write report.md and report.png into ``sweep_dir``; returns what was collected."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise QinError(f"sweep folder '{sweep_dir}' does not exist or is not a folder")
    collected = collect(sweep_dir)
    if not collected.experiments and not collected.problems:
        raise QinError(f"no runs found below '{sweep_dir}': expected run folders with results.json")
    atomic_write_text(sweep_dir / "report.md", render_markdown(collected, sweep_dir, baseline))
    if collected.experiments:
        atomic_write_bytes(sweep_dir / "report.png", render_chart(collected, sweep_dir.name))
    return collected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qin_lightning.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a multirun folder (logs/train/multiruns/<date>) or any folder of runs")
    parser.add_argument("--baseline", default="qin", help="experiment the deltas are taken against")
    args = parser.parse_args(argv)
    collected = run_reporting_errors(lambda: write_report(args.sweep_dir, args.baseline))
    print((Path(args.sweep_dir) / "report.md").read_text())
    if collected.problems:
        print(f"{len(collected.problems)} run(s) not in the table (listed in report.md)")


if __name__ == "__main__":
    main()
