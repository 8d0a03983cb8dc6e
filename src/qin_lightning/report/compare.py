"""Which test a table's comparisons get, with the inputs each needs (report.stats computes them).

Every comparison of a table is one row's runs against its baseline row's runs on the test split: a paired
bootstrap over the test split's users and the seeds, computed from the runs' kept predictions alone (each
``*.preds.parquet`` carries its rows' users and labels and the split's key: qin_lightning.predictions), so no
data folder, cache or release is read. Its p-values are Holm-adjusted across the table, and only they give a
verdict. Where the bootstrap cannot be computed (a run kept no predictions, the runs were scored on different
splits, a file is stale), the table says so plainly and gives no verdict; the seed-paired t-test on the recorded
test AUCs is then shown in a column of its own, named as such, never as the verdict.
Validation numbers are never used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qin_lightning.errors import QinError
from qin_lightning.predictions import KeptPredictions, read_predictions
from qin_lightning.report.collect import Run
from qin_lightning.report.stats import (
    N_RESAMPLES, Comparison, Pairing, SortedRun, UserSplit, paired_bootstrap, seed_t_test, with_holm,
)

BOOTSTRAP_NOTE = ("paired bootstrap over the test split's users and the seeds ({resamples} resamples, seeded; each"
                  " draws the users, the same for every row, baseline and seed, and each row's seeds, a seed's row"
                  " and baseline runs together, the seed part corrected for few seeds) of the seed-mean test AUC"
                  " difference; 95% percentile interval")
AUC_TOLERANCE = 1e-5  # the record's AUC is torchmetrics' float32 result of the same probabilities
NO_BOOTSTRAP_NOTE = ("**no paired test over users could be computed** ({why}), so no row has a verdict; the column"
                     " `seed t-test p (Holm)` is a seed-paired t-test on the recorded test AUCs, which ignores the"
                     " sampling of test users: shown for orientation, it decides nothing")


@dataclass(frozen=True)
class TableTests:
    """The comparisons of one table (Holm-adjusted together), by row label, and a sentence saying how.
    ``comparisons`` is the paired bootstrap (the only source of a verdict); where it could not be computed it is
    empty and ``seed_tests`` holds the seed-paired t-tests instead."""

    comparisons: dict[str, Comparison]
    note: str
    seed_tests: dict[str, Comparison] = field(default_factory=dict)

    @property
    def bootstrap(self) -> bool:
        return not self.seed_tests


def _seeded(runs: Sequence[Run]) -> dict[int, Run]:
    return {int(r.seed): r for r in runs if r.problem is None and r.seed is not None and r.test_auc is not None}


def _bootstrap_inputs(pairs: list[tuple[str, dict[int, Run], dict[int, Run]]]) -> tuple[UserSplit, list[Pairing]]:
    """The shared test split and every pairing's sorted runs, from the kept predictions; QinError saying why
    not."""
    runs = {id(r): r for _, row, base in pairs for r in (*row.values(), *base.values())}
    missing = [r for r in runs.values() if r.predictions is None]
    if missing:
        raise QinError(f"{len(missing)} of {len(runs)} runs kept no test predictions (e.g. {missing[0].name})")
    kept: dict[int, KeptPredictions] = {key: read_predictions(run.predictions) for key, run in runs.items()
                                        if run.predictions is not None}
    first_key = next(iter(kept))
    first, first_run = kept[first_key], runs[first_key]
    for key, other in kept.items():
        if (other.split, other.rows_digest) != (first.split, first.rows_digest) or not (
                np.array_equal(other.users, first.users) and np.array_equal(other.labels, first.labels)):
            raise QinError(f"the runs were scored on different test splits ({first_run.name}: {first.split}, "
                           f"{runs[key].name}: {other.split})")
    split = UserSplit.of(first.users, first.labels)
    sorted_runs: dict[int, SortedRun] = {}
    for key, run in runs.items():
        assert run.test_auc is not None
        sorted_runs[key] = SortedRun(split, kept[key].probs)
        kept_auc = float(sorted_runs[key].aucs(np.ones((1, split.n_users)))[0])
        if abs(kept_auc - run.test_auc) > AUC_TOLERANCE:  # a stale or foreign file
            raise QinError(f"{run.predictions.name if run.predictions else run.name} of {run.name}: its AUC is "
                           f"{kept_auc:.6f}, the record's test AUC {run.test_auc:.6f}")
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
        return TableTests({}, NO_BOOTSTRAP_NOTE.format(why=str(why).rstrip(".")), {c.row: c for c in with_holm(tests)})
    tests = with_holm(paired_bootstrap(split, pairings, n_resamples=resamples))
    return TableTests({c.row: c for c in tests}, BOOTSTRAP_NOTE.format(resamples=resamples))
