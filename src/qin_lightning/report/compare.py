"""Which test a table's comparisons get, with the inputs each needs (report.stats computes them).

Every comparison of a table is one row's runs against its baseline row's runs on the test split. When every run
kept its test predictions and the test split they were scored on can be read (its `user_id` and `label`), the
comparisons are paired bootstraps over users and seeds; otherwise the table falls back to the seed-paired
t-test on the recorded test AUCs and says why. Either way the p-values are Holm-adjusted across the table.
Validation numbers are never used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qin_lightning.data import layout
from qin_lightning.errors import QinError
from qin_lightning.report.collect import Run
from qin_lightning.report.stats import (
    N_RESAMPLES, Comparison, Pairing, SortedRun, UserSplit, paired_bootstrap, seed_t_test, with_holm,
)
from qin_lightning.predictions import read_predictions

BOOTSTRAP_NOTE = ("paired bootstrap over the test split's users and the seeds ({resamples} resamples; each draws"
                  " the users, the same for every row, baseline and seed, and each row's seeds, a seed's row and"
                  " baseline runs together) of the seed-mean test AUC difference; 95% percentile interval")
AUC_TOLERANCE = 1e-5  # the record's AUC is torchmetrics' float32 result of the same probabilities
T_TEST_NOTE = ("seed-paired t-test on the recorded test AUCs (95% t interval): {why}, so no paired test over users"
               " could be computed")


@dataclass(frozen=True)
class TableTests:
    """The comparisons of one table (Holm-adjusted together), by row label, and a sentence saying how."""

    comparisons: dict[str, Comparison]
    note: str


def _seeded(runs: Sequence[Run]) -> dict[int, Run]:
    return {int(r.seed): r for r in runs if r.problem is None and r.seed is not None and r.test_auc is not None}


def read_split(data_dir: str) -> UserSplit:
    """The users and labels of a data folder's test split."""
    path = Path(data_dir) / layout.TEST_FILE
    try:
        table = pq.read_table(path, columns=[layout.USER_ID, layout.LABEL])
    except (OSError, ValueError, KeyError) as err:  # pyarrow: missing file or column
        raise QinError(f"{path}: cannot read its '{layout.USER_ID}' and '{layout.LABEL}' ({str(err)[:160]})") from None
    return UserSplit.of(table.column(layout.USER_ID).to_numpy(), table.column(layout.LABEL).to_numpy())


def _bootstrap_inputs(pairs: list[tuple[str, dict[int, Run], dict[int, Run]]]) -> tuple[UserSplit, list[Pairing]]:
    """The shared test split and every pairing's sorted runs; QinError saying why not."""
    runs = {id(r): r for _, row, base in pairs for r in (*row.values(), *base.values())}
    missing = [r for r in runs.values() if r.predictions is None]
    if missing:
        raise QinError(f"{len(missing)} of {len(runs)} runs kept no test predictions (e.g. {missing[0].name})")
    data_dirs = sorted({str(r.data_dir) for r in runs.values()})
    splits = [read_split(d) for d in data_dirs]
    split = splits[0]
    for other, data_dir in zip(splits[1:], data_dirs[1:]):
        if not (np.array_equal(other.users, split.users) and np.array_equal(other.labels, split.labels)):
            raise QinError(f"the runs were scored on different test splits ({data_dirs[0]} and {data_dir})")
    sorted_runs: dict[int, SortedRun] = {}
    for key, run in runs.items():
        assert run.predictions is not None and run.test_auc is not None
        sorted_runs[key] = SortedRun(split, read_predictions(run.predictions, len(split.labels)))
        kept_auc = float(sorted_runs[key].aucs(np.ones((1, split.n_users)))[0])
        if abs(kept_auc - run.test_auc) > AUC_TOLERANCE:  # a stale or foreign file, or another split
            raise QinError(f"{run.predictions}: its AUC on {data_dirs[0]} is {kept_auc:.6f}, the record's test AUC"
                           f" {run.test_auc:.6f}")
    pairings = []
    for label, row, base in pairs:
        seeds = tuple(sorted(set(row) & set(base)))
        pairings.append(Pairing(label, seeds, tuple(sorted_runs[id(row[s])] for s in seeds),
                                tuple(sorted_runs[id(base[s])] for s in seeds)))
    return split, pairings


def compare(pairs: Sequence[tuple[str, Sequence[Run], Sequence[Run]]], resamples: int = N_RESAMPLES) -> TableTests:
    """(row label, row runs, baseline runs) -> each row's test comparison with its baseline, Holm across all."""
    seeded = [(label, _seeded(row), _seeded(base)) for label, row, base in pairs]
    seeded = [(label, row, base) for label, row, base in seeded if set(row) & set(base)]
    if not seeded:
        return TableTests({}, "no row shares a seed with a test-evaluated baseline run: nothing to compare")
    try:
        split, pairings = _bootstrap_inputs(seeded)
    except QinError as why:
        tests = [seed_t_test(label, {s: float(r.test_auc) for s, r in row.items() if r.test_auc is not None},
                             {s: float(r.test_auc) for s, r in base.items() if r.test_auc is not None})
                 for label, row, base in seeded]
        return TableTests({c.row: c for c in with_holm(tests)}, T_TEST_NOTE.format(why=why))
    tests = with_holm(paired_bootstrap(split, pairings, n_resamples=resamples))
    return TableTests({c.row: c for c in tests}, BOOTSTRAP_NOTE.format(resamples=resamples))
