"""fp32 vs bf16 (CPU autocast, `trainer=cpu_bf16`) converged accuracy of QIN: the AUC difference against the
seed spread, on the default synthetic data and on MovieLens.

    python experiments/precision/table.py          # writes experiments/precision/table.md and prints it

The runs come from the converged sweeps: the fp32 side is the `qin` row of `experiments/converged/synthetic.yaml`
and `experiments/movielens/converged.yaml`, the bf16 side the same protocol and seeds with `trainer=cpu_bf16`
(`experiments/converged/synthetic_bf16.yaml`, `experiments/movielens/converged_bf16.yaml`), each trained to
early stopping:

    python experiments/converged/sweep.py experiments/converged/synthetic_bf16.yaml --jobs 2
    python experiments/converged/sweep.py experiments/movielens/converged_bf16.yaml --jobs 2

"Within the seed spread": |mean(bf16) - mean(fp32)| <= the standard deviation of the fp32 seeds; the paired
difference per seed (same data order and initialisation) is listed too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent


# the row helpers of experiments/converged/table.py (a script, not a package)
_spec = importlib.util.spec_from_file_location("converged_table", EXPERIMENTS / "converged" / "table.py")
_converged = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_converged)
mean_std, seconds_per_epoch = _converged.mean_std, _converged.seconds_per_epoch

# data -> (fp32 records, bf16 records): the `runs/` folders the sweep driver fills
PLANS = {
    "synthetic": (EXPERIMENTS / "converged" / "synthetic", EXPERIMENTS / "converged" / "synthetic_bf16"),
    "movielens": (EXPERIMENTS / "movielens" / "converged", EXPERIMENTS / "movielens" / "converged_bf16"),
}


def runs(folder: Path) -> dict[int, dict]:
    """seed -> the committed record of a plan's qin runs."""
    found = {}
    for path in sorted((folder / "runs").glob("qin_seed*.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "completed":
            found[int(record["seed"])] = record
    return found


def cell(values: list[float]) -> str:
    return f"{mean_std(values)} ({len(values)})" if values else "–"


def mean(values: list[float], digits: int = 1) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else "–"


def machines(records: dict[int, dict]) -> str:
    """The SIMD level and bf16 kernels of the CPUs the runs trained on (`machine` in results.json; records made
    before it was recorded say so)."""
    seen = sorted({f"{m['cpu_capability']}{', bf16 kernels' if m['cpu_bf16_kernels'] else ''}"
                   if (m := r.get("machine")) else "not recorded" for r in records.values()})
    return "; ".join(seen) or "–"


def row(data: str) -> str:
    fp32, bf16 = (runs(folder) for folder in PLANS[data])
    a32 = [r["best_val_auc"] for r in fp32.values()]
    a16 = [r["best_val_auc"] for r in bf16.values()]
    paired = [bf16[s]["best_val_auc"] - fp32[s]["best_val_auc"] for s in sorted(set(fp32) & set(bf16))]
    diff = statistics.fmean(a16) - statistics.fmean(a32) if a16 and a32 else None
    spread = statistics.stdev(a32) if len(a32) > 1 else None
    within = "–" if diff is None or spread is None else ("yes" if abs(diff) <= spread else "no")
    return (f"| {data} | {cell(a32)} | {cell(a16)} | {'–' if diff is None else f'{diff:+.4f}'} | "
            f"{', '.join(f'{d:+.4f}' for d in paired) or '–'} | {'–' if spread is None else f'{spread:.4f}'} | "
            f"{within} | {mean([r['best_epoch'] + 1 for r in fp32.values()])} / "
            f"{mean([r['best_epoch'] + 1 for r in bf16.values()])} | "
            f"{mean([seconds_per_epoch(r) for r in fp32.values()])} / "
            f"{mean([seconds_per_epoch(r) for r in bf16.values()])} | {machines(fp32)} / {machines(bf16)} |")


def table() -> str:
    header = ("| data | fp32 val AUC (n) | bf16 val AUC (n) | bf16 − fp32 | paired, per seed | seed std (fp32) | "
              "within the seed spread | best epoch (1-based) fp32 / bf16 | s / epoch fp32 / bf16 | CPU fp32 / bf16 |")
    return "\n".join([header, "|" + "---|" * 10, *(row(d) for d in PLANS)]) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    text = table()
    tmp = HERE / ".table.md.tmp"
    tmp.write_text(text)
    tmp.replace(HERE / "table.md")
    print(text)


if __name__ == "__main__":
    main()
