"""fp32 vs bf16 (CPU autocast, `trainer=cpu_bf16`) converged accuracy of QIN: the AUC difference against the
seed spread, on the default synthetic data and on MovieLens.

    python experiments/precision/table.py          # writes experiments/precision/table.md and prints it

The runs come from the converged sweeps: the fp32 side is the `qin` row of `experiments/converged/synthetic.yaml`
and `experiments/movielens/converged.yaml`, the bf16 side the same protocol and seeds with `trainer=cpu_bf16`
(`experiments/converged/synthetic_bf16.yaml`, `experiments/movielens/converged_bf16.yaml`), each trained to
early stopping:

    python experiments/converged/sweep.py experiments/converged/synthetic_bf16.yaml --jobs 2
    python experiments/converged/sweep.py experiments/movielens/converged_bf16.yaml --jobs 2

The validation columns are shown, never tested. The comparison is on the test split, through the package's one
implementation (qin_lightning.report.compare, as `qin-report` and experiments/converged/table.py): compared -
reference test AUC with its 95% interval and p (a paired user bootstrap where the runs kept predictions, else a
seed-paired t-test on the recorded test AUCs), Holm-adjusted across the table's six comparisons. The fp32 rows of the
converged tables were trained on an AVX2 machine and the bf16 runs on one with bf16 kernels, so each data set
also has the fp32 twin on the bf16 machine (`experiments/converged/synthetic_fp32_avx512.yaml`,
`experiments/movielens/converged_fp32_avx512.yaml`): one row
compares bf16 with fp32 on the same CPU, one fp32 with fp32 across the two machines (what the machine alone
changes). The last columns give reference / compared; the CPU column is `machine` of the records.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
from pathlib import Path

from qin_lightning.files import atomic_write_text
from qin_lightning.report.collect import Run, find_runs
from qin_lightning.report.compare import TableTests, compare
from qin_lightning.report.tables import comparison_cells, comparison_header

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


@functools.cache
def runs(folder: Path) -> dict[int, Run]:
    """seed -> the committed, completed qin run of a plan (read once: a folder's runs are the same objects in
    every comparison)."""
    return {int(r.seed): r for r in find_runs(folder)
            if r.problem is None and r.experiment == "qin" and r.seed is not None}


def cell(values: list[float]) -> str:
    return f"{mean_std(values)} ({len(values)})" if values else "–"


def mean(values: list[float], digits: int = 1) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else "–"


def machines(records: dict[int, Run]) -> str:
    """The SIMD level and bf16 kernels of the CPUs the runs trained on (`machine` in results.json; records made
    before it was recorded say so)."""
    seen = sorted({f"{m['cpu_capability']}{', bf16 kernels' if m['cpu_bf16_kernels'] else ''}"
                   if (m := (r.record or {}).get("machine")) else "not recorded" for r in records.values()})
    return "; ".join(seen) or "–"


def label(data: str, what: str) -> str:
    return f"{data}: {what}"


def row(data: str, what: str, reference_folder: Path, compared_folder: Path, tests: TableTests) -> str:
    reference = {s: r.record for s, r in runs(reference_folder).items()}
    compared = {s: r.record for s, r in runs(compared_folder).items()}
    a_ref = [r["best_val_auc"] for r in reference.values()]
    a_cmp = [r["best_val_auc"] for r in compared.values()]
    diff = statistics.fmean(a_cmp) - statistics.fmean(a_ref) if a_cmp and a_ref else None
    test_ref = [r.test_auc for r in runs(reference_folder).values() if r.test_auc is not None]
    test_cmp = [r.test_auc for r in runs(compared_folder).values() if r.test_auc is not None]
    return (f"| {data} | {what} | {cell(a_ref)} | {cell(a_cmp)} | {'–' if diff is None else f'{diff:+.4f}'} | "
            f"{cell(test_ref)} | {cell(test_cmp)} | "
            f"{' | '.join(comparison_cells(tests.comparisons.get(label(data, what))))} | "
            f"{mean([r['best_epoch'] + 1 for r in reference.values()])} / "
            f"{mean([r['best_epoch'] + 1 for r in compared.values()])} | "
            f"{mean([seconds_per_epoch(r) for r in reference.values()])} / "
            f"{mean([seconds_per_epoch(r) for r in compared.values()])} | "
            f"{machines(runs(reference_folder))} / {machines(runs(compared_folder))} |")


def table() -> str:
    tests = compare([(label(data, what), list(runs(cmp).values()), list(runs(ref).values()))
                     for data, what, ref, cmp in COMPARISONS])
    columns = ["data", "comparison", "reference val AUC (n)", "compared val AUC (n)", "val: compared − reference",
               "reference test AUC (n)", "compared test AUC (n)", *comparison_header("reference"),
               "best epoch (1-based)", "s / epoch", "CPU"]
    lines = [f"Test comparisons: {tests.note}; Holm across the {len(tests.comparisons)} comparisons.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join([*lines, *(row(*c, tests) for c in COMPARISONS)]) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    text = table()
    atomic_write_text(HERE / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
