"""fp32 vs bf16 (CPU autocast, `trainer=cpu_bf16`) converged accuracy of QIN: the AUC difference against the
seed spread, on the default synthetic data and on MovieLens.

    python experiments/precision/table.py          # writes experiments/precision/table.md and prints it

The runs come from the converged sweeps: the fp32 side is the `qin` row of `experiments/converged/synthetic.yaml`
and `experiments/movielens/converged.yaml`, the bf16 side the same protocol and seeds with `trainer=cpu_bf16`
(`experiments/converged/synthetic_bf16.yaml`, `experiments/movielens/converged_bf16.yaml`), each trained to
early stopping:

    python experiments/converged/sweep.py experiments/converged/synthetic_bf16.yaml --jobs 2
    python experiments/converged/sweep.py experiments/movielens/converged_bf16.yaml --jobs 2

"Within the seed spread": |mean(compared) - mean(reference)| <= the standard deviation of the reference seeds;
the paired difference per seed (same data order and initialisation) is listed too. The fp32 rows of the
converged tables were trained on an AVX2 machine and the bf16 runs on one with bf16 kernels, so each data set
also has the fp32 twin on the bf16 machine (`experiments/converged/synthetic_fp32_avx512.yaml`,
`experiments/movielens/converged_fp32_avx512.yaml`): one row
compares bf16 with fp32 on the same CPU, one fp32 with fp32 across the two machines (what the machine alone
changes). The last columns give reference / compared; the CPU column is `machine` of the records.
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

# (data, what is compared, reference records, compared records): the `runs/` folders the sweep driver fills.
# The fp32 rows of the converged tables were trained on an AVX2 machine, the bf16 runs on one with bf16 kernels
# (AVX-512 + avx512_bf16); fp32 rounding differs with the SIMD width, so the fp32 twin on the bf16 machine
# (synthetic_fp32_avx512, converged_fp32_avx512) separates bf16's effect from the machine's.
SYNTHETIC, MOVIELENS = EXPERIMENTS / "converged", EXPERIMENTS / "movielens"
COMPARISONS = [
    ("synthetic", "bf16 vs fp32, same CPU", SYNTHETIC / "synthetic_fp32_avx512", SYNTHETIC / "synthetic_bf16"),
    ("synthetic", "bf16 vs the converged table's fp32", SYNTHETIC / "synthetic", SYNTHETIC / "synthetic_bf16"),
    ("synthetic", "fp32 vs fp32, the machine alone", SYNTHETIC / "synthetic", SYNTHETIC / "synthetic_fp32_avx512"),
    ("movielens", "bf16 vs fp32, same CPU", MOVIELENS / "converged_fp32_avx512", MOVIELENS / "converged_bf16"),
    ("movielens", "bf16 vs the converged table's fp32", MOVIELENS / "converged", MOVIELENS / "converged_bf16"),
    ("movielens", "fp32 vs fp32, the machine alone", MOVIELENS / "converged", MOVIELENS / "converged_fp32_avx512"),
]


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


def row(data: str, what: str, reference_folder: Path, compared_folder: Path) -> str:
    reference, compared = runs(reference_folder), runs(compared_folder)
    a_ref = [r["best_val_auc"] for r in reference.values()]
    a_cmp = [r["best_val_auc"] for r in compared.values()]
    paired = [compared[s]["best_val_auc"] - reference[s]["best_val_auc"] for s in sorted(set(reference) & set(compared))]
    diff = statistics.fmean(a_cmp) - statistics.fmean(a_ref) if a_cmp and a_ref else None
    spread = statistics.stdev(a_ref) if len(a_ref) > 1 else None
    within = "–" if diff is None or spread is None else ("yes" if abs(diff) <= spread else "no")
    return (f"| {data} | {what} | {cell(a_ref)} | {cell(a_cmp)} | {'–' if diff is None else f'{diff:+.4f}'} | "
            f"{', '.join(f'{d:+.4f}' for d in paired) or '–'} | {'–' if spread is None else f'{spread:.4f}'} | "
            f"{within} | {mean([r['best_epoch'] + 1 for r in reference.values()])} / "
            f"{mean([r['best_epoch'] + 1 for r in compared.values()])} | "
            f"{mean([seconds_per_epoch(r) for r in reference.values()])} / "
            f"{mean([seconds_per_epoch(r) for r in compared.values()])} | "
            f"{machines(reference)} / {machines(compared)} |")


def table() -> str:
    header = ("| data | comparison | reference val AUC (n) | compared val AUC (n) | compared − reference | paired, "
              "per seed | seed std (reference) | within the seed spread | best epoch (1-based) | s / epoch | CPU |")
    return "\n".join([header, "|" + "---|" * 11, *(row(*c) for c in COMPARISONS)]) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    text = table()
    tmp = HERE / ".table.md.tmp"
    tmp.write_text(text)
    tmp.replace(HERE / "table.md")
    print(text)


if __name__ == "__main__":
    main()
