"""fp32 vs bf16 (CPU autocast, `trainer=cpu_bf16`) converged accuracy of QIN: the AUC difference against the
seed spread, on the default synthetic data and on MovieLens.

    python experiments/precision/table.py          # writes experiments/precision/table.md and prints it

The runs come from the converged sweeps, each trained to early stopping, the bf16 side with the same protocol
and seeds as its fp32 side plus `trainer=cpu_bf16`:

    python -m qin_lightning.train -m hydra/sweeper=plan hydra.sweeper.plan=experiments/converged/synthetic_fp32_avx512.yaml hydra/launcher=submitit_local hydra.sweeper.max_batch_size=2   # 5 seeds
    python -m qin_lightning.train -m hydra/sweeper=plan hydra.sweeper.plan=experiments/converged/synthetic_bf16.yaml hydra/launcher=submitit_local hydra.sweeper.max_batch_size=2          # 5 seeds
    python -m qin_lightning.train -m hydra/sweeper=plan hydra.sweeper.plan=experiments/movielens/converged_rating_100k_bf16.yaml hydra/launcher=submitit_local hydra.sweeper.max_batch_size=2
    python -m qin_lightning.train -m hydra/sweeper=plan hydra.sweeper.plan=experiments/movielens/converged_bf16.yaml hydra/launcher=submitit_local hydra.sweeper.max_batch_size=2          # 3 seeds

The fp32 sides: the fp32 twin on the bf16 machine (`synthetic_fp32_avx512.yaml`), the `qin` row of
`experiments/movielens/converged_rating_100k.yaml` (real labels, per-user time split; same machine), and for
the older sampled-protocol MovieLens runs `experiments/movielens/converged_fp32_avx512.yaml`. The `qin` rows of
the first converged tables (`experiments/converged/synthetic.yaml`, `experiments/movielens/converged.yaml`) were
trained on an AVX2 machine: one row per data set compares them with the fp32 twin (what the machine alone
changes).

The validation columns are shown, never tested. The comparison is on the test split, through the package's one
implementation (qin_lightning.report.compare, as `qin-report` and experiments/converged/table.py), once per data set
(one test split each): compared - reference test AUC with its 95% interval and p (a paired bootstrap over users and
seeds where every run of that data set kept its predictions, else a seed-paired t-test on the recorded test AUCs;
the test column says which), Holm-adjusted across all the table's comparisons. The last columns give reference /
compared; the CPU column is `machine` of the records.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

from qin_lightning.files import atomic_write_text
from qin_lightning.report.collect import Run, find_runs
from qin_lightning.report.compare import TableTests, compare
from qin_lightning.report.converged import mean_std, seconds_per_epoch
from qin_lightning.report.stats import with_holm
from qin_lightning.report.tables import comparison_cells, comparison_header

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent


# (data, what is compared, reference records, compared records): the `runs/` folders the sweep driver fills.
# The fp32 rows of the first converged tables were trained on an AVX2 machine, the bf16 runs on one with bf16
# kernels (AVX-512 + avx512_bf16); fp32 rounding differs with the SIMD width, so the fp32 twins on the bf16
# machine separate bf16's effect from the machine's.
SYNTHETIC, MOVIELENS = EXPERIMENTS / "converged", EXPERIMENTS / "movielens"
COMPARISONS = [
    ("synthetic", "bf16 vs fp32, same CPU", SYNTHETIC / "synthetic_fp32_avx512", SYNTHETIC / "synthetic_bf16"),
    ("synthetic", "fp32 vs fp32, the machine alone", SYNTHETIC / "synthetic", SYNTHETIC / "synthetic_fp32_avx512"),
    ("ml-100k, rating protocol", "bf16 vs fp32, same CPU", MOVIELENS / "converged_rating_100k",
     MOVIELENS / "converged_rating_100k_bf16"),
    ("ml-latest-small, sampled protocol", "bf16 vs fp32, same CPU", MOVIELENS / "converged_fp32_avx512",
     MOVIELENS / "converged_bf16"),
    ("ml-latest-small, sampled protocol", "fp32 vs fp32, the machine alone", MOVIELENS / "converged",
     MOVIELENS / "converged_fp32_avx512"),
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
            f"{' | '.join(comparison_cells(tests, label(data, what)))} | "
            f"{mean([r['best_epoch'] + 1 for r in reference.values()])} / "
            f"{mean([r['best_epoch'] + 1 for r in compared.values()])} | "
            f"{mean([seconds_per_epoch(r) for r in reference.values()])} / "
            f"{mean([seconds_per_epoch(r) for r in compared.values()])} | "
            f"{machines(runs(reference_folder))} / {machines(runs(compared_folder))} |")


def kept_predictions(reference_folder: Path, compared_folder: Path) -> bool:
    """Whether every run of a comparison kept its test predictions (so it can join its data set's bootstrap)."""
    return all(r.predictions is not None for f in (reference_folder, compared_folder) for r in runs(f).values())


def tests_by_split() -> tuple[TableTests, list[str]]:
    """Every comparison's test, computed per data set (the paired bootstrap needs one test split). The paired
    bootstraps are Holm-adjusted across the whole table and alone give verdicts; a comparison whose runs kept no
    predictions gets no verdict, only the seed t-test in its own column (Holm across those). One sentence per
    group says which it got."""
    groups: dict[tuple[str, bool], list[tuple[str, str, Path, Path]]] = {}
    for data, what, ref, cmp in COMPARISONS:
        groups.setdefault((data, kept_predictions(ref, cmp)), []).append((data, what, ref, cmp))
    bootstrap, seed_tests, notes = [], [], []
    for (data, _), members in groups.items():
        tests = compare([(label(d, what), list(runs(cmp).values()), list(runs(ref).values()))
                         for d, what, ref, cmp in members])
        bootstrap += tests.comparisons.values()
        seed_tests += tests.seed_tests.values()
        notes.append(f"{data} ({', '.join(what for _, what, _, _ in members)}): {tests.note}.")
    return TableTests({c.row: c for c in with_holm(bootstrap)}, "",
                      {c.row: c for c in with_holm(seed_tests)}), notes


def table() -> str:
    tests, notes = tests_by_split()
    columns = ["data", "comparison", "reference val AUC (n)", "compared val AUC (n)", "val: compared − reference",
               "reference test AUC (n)", "compared test AUC (n)", *comparison_header("reference", tests),
               "best epoch (1-based)", "s / epoch", "CPU"]
    lines = [f"Test comparisons, per data set (one test split each); the paired bootstraps ({len(tests.comparisons)})"
             f" Holm-adjusted together and alone giving verdicts, the seed t-tests ({len(tests.seed_tests)}) apart:",
             "", *(f"- {n}" for n in notes), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join([*lines, *(row(*c, tests) for c in COMPARISONS)]) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    text = table()
    atomic_write_text(HERE / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
