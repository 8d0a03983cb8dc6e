"""report/stats.py: the weighted AUC of a replicate, the paired bootstrap's coverage and size on simulated scores
with a known AUC difference (user effects; whole-run seed effects), Holm on a worked example, the seed-paired
t-test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.report.stats import (
    Comparison, Pairing, SortedRun, UserSplit, auc, holm, paired_bootstrap, seed_scale, seed_t_test, with_holm,
)


def _torch_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(binary_auroc(torch.from_numpy(probs), torch.from_numpy(labels).long()))


def test_replicate_auc_equals_the_auc_of_the_materialised_rows() -> None:
    """A replicate's count-weighted AUC is the AUC of its users' rows repeated (scores with many ties)."""
    rng = np.random.default_rng(0)
    n = 2000
    split = UserSplit.of(rng.integers(100, 600, n), rng.random(n) < 0.3)
    probs = np.round(rng.random(n) * 0.6 + 0.3 * split.labels, 2).astype(np.float32)
    assert auc(split, probs) == pytest.approx(_torch_auc(probs, split.labels), abs=1e-6)
    counts = rng.multinomial(split.n_users, np.full(split.n_users, 1 / split.n_users), size=3)
    aucs = SortedRun(split, probs).aucs(counts)
    for b in range(3):
        rows = np.concatenate([np.tile(np.flatnonzero(split.users == u), c) for u, c in enumerate(counts[b])])
        assert aucs[b] == pytest.approx(_torch_auc(probs[rows], split.labels[rows]), abs=1e-6)


USERS, ROWS, SHARED_SD, OWN_SD = 80, 8, 0.6, 1.0
SEEDS = 5  # a row's seeds where the test is about users (with 2 the seed part's t_1 leaves no power)


def _simulated(rng: np.random.Generator, mu: tuple[float, float], seeds: int,
               seed_sd: float = 0.0) -> tuple[UserSplit, list[Pairing]]:
    """USERS users x ROWS rows, label rate 0.3; a score = label x (mu + the run's shift + the run's own offset for
    the user) + the user's offset shared by every run + row noise. The run's offsets move a user's positives
    together in the difference of two runs, so users, not rows, are the independent units (resampling rows
    undercovers); the run's shift N(0, seed_sd^2) moves all of its users: a seed that trained better or worse."""
    user = np.repeat(np.arange(USERS), ROWS)
    labels = rng.random(len(user)) < 0.3
    split = UserSplit.of(user, labels)
    shared = rng.normal(0.0, SHARED_SD, USERS)[user]

    def run(m: float) -> SortedRun:
        shift = rng.normal(0.0, seed_sd) if seed_sd else 0.0  # no draw without it: the other tests' streams
        own = rng.normal(0.0, OWN_SD, USERS)[user] + shift
        return SortedRun(split, (labels * (m + own) + shared + rng.normal(0.0, 1.0, len(user))).astype(np.float32))

    runs_a, runs_b = [run(mu[0]) for _ in range(seeds)], [run(mu[1]) for _ in range(seeds)]
    return split, [Pairing("a", tuple(range(seeds)), tuple(runs_a), tuple(runs_b))]


def _true_difference(mu: tuple[float, float], seed_sd: float = 0.0) -> float:
    """Population AUC of positives N(mu + shift, shared^2 + own^2 + 1) over negatives N(0, shared^2 + 1), per
    model, averaged over the run's shift N(0, seed_sd^2)."""
    sd = math.sqrt(2 * SHARED_SD**2 + OWN_SD**2 + 2.0 + seed_sd**2)
    return float(scipy.stats.norm.cdf(mu[0] / sd) - scipy.stats.norm.cdf(mu[1] / sd))


@pytest.mark.parametrize("mu", [(1.5, 1.0), (1.0, 1.0)], ids=["difference", "null"])
def test_bootstrap_interval_covers_the_truth_and_the_null_is_rarely_rejected(mu: tuple[float, float]) -> None:
    """200 simulated tables: the 95% interval covers the true difference in >= 88%, a true null is rejected
    (p < 0.05) in <= 12%."""
    rng = np.random.default_rng(7)
    truth = _true_difference(mu)
    covered = rejected = 0
    for rep in range(200):
        split, pairings = _simulated(rng, mu=mu, seeds=SEEDS)
        (c,) = paired_bootstrap(split, pairings, n_resamples=300, seed=rep)
        covered += c.low <= truth <= c.high
        rejected += c.p < 0.05
    assert covered >= 176
    if truth == 0.0:
        assert rejected <= 24
    else:
        assert rejected >= 20  # and it has some power at this size


@pytest.mark.parametrize("seeds", [3, 5, pytest.param(8, marks=pytest.mark.slow)])
def test_bootstrap_covers_the_truth_when_whole_seeds_train_better_or_worse(seeds: int) -> None:
    """Runs that shift as a whole (seed_sd 0.6): the interval must carry the seed spread to cover the expected
    difference (>= 85% of 200; resampling users alone covers 76 at 8 seeds), and a true null is rejected in <= 12%.
    With few seeds the seed part is corrected for its small n (stats.seed_scale): covered / null rejected 196 / 1
    at 3 seeds, 196 / 6 at 5, 192 / 4 at 8. Uncorrected, 3 seeds give 165 / 31 (both limits broken); with only
    sqrt(n / (n - 1)), 175 / 31."""
    rng = np.random.default_rng(11)
    for mu, check in (((1.3, 1.0), "coverage"), ((1.0, 1.0), "size")):
        truth = _true_difference(mu, seed_sd=0.6)
        covered = rejected = 0
        for rep in range(200):
            split, pairings = _simulated(rng, mu=mu, seeds=seeds, seed_sd=0.6)
            (c,) = paired_bootstrap(split, pairings, n_resamples=300, seed=rep)
            covered += c.low <= truth <= c.high
            rejected += c.p < 0.05
        if check == "coverage":
            assert covered >= 170, covered
            print(f"whole-seed effects, {seeds} seeds: covered {covered} of 200")
        else:
            assert rejected <= 24, rejected
            print(f"whole-seed effects, {seeds} seeds: null rejected {rejected} of 200")


def test_bootstrap_is_deterministic_and_pairs_every_seed() -> None:
    """Same seed, same answer; the difference is the seed-mean of the plain AUC differences."""
    rng = np.random.default_rng(3)
    n = 600
    split = UserSplit.of(np.repeat(np.arange(150), 4), rng.random(n) < 0.3)
    row = [(split.labels * 1.5 + rng.normal(size=n)).astype(np.float32) for _ in range(3)]
    base = [(split.labels * 1.0 + rng.normal(size=n)).astype(np.float32) for _ in range(3)]
    pairing = Pairing("a", (1, 2, 3), tuple(SortedRun(split, p) for p in row), tuple(SortedRun(split, p) for p in base))
    (c,) = paired_bootstrap(split, [pairing], n_resamples=200)
    assert [c] == paired_bootstrap(split, [pairing], n_resamples=200)
    observed = np.mean([_torch_auc(a, split.labels) - _torch_auc(b, split.labels) for a, b in zip(row, base)])
    assert c.difference == pytest.approx(observed, abs=1e-5) and c.seeds == 3 and c.low < c.difference < c.high


def test_holm_worked_example() -> None:
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06,
    0.04 x 1 = 0.04 -> 0.06 (monotone); nan is not a comparison."""
    assert holm([0.01, 0.04, 0.03, 0.005, math.nan])[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.01)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    rows = with_holm([Comparison("x", "m", 3, 0.01, 0.0, 0.02, 0.02), Comparison("y", "m", 3, 0.01, 0.0, 0.02, 0.02)])
    assert [c.p_holm for c in rows] == pytest.approx([0.04, 0.04]) and all(c.significant for c in rows)


def test_seed_t_test_matches_scipy() -> None:
    row, base = {1: 0.71, 2: 0.73, 3: 0.72}, {1: 0.70, 2: 0.715, 3: 0.712}
    c = seed_t_test("x", row, base)
    expected = scipy.stats.ttest_rel([0.71, 0.73, 0.72], [0.70, 0.715, 0.712])
    assert c.p == pytest.approx(expected.pvalue) and c.seeds == 3 and c.low < c.difference < c.high
    assert math.isnan(seed_t_test("x", {1: 0.7}, {1: 0.6}).p)


def _two_rows(rng: np.random.Generator, users: int, rows: int, seeds: int, user_sd: float,
              signal: tuple[float, float] = (1.4, 1.0)) -> tuple[UserSplit, list[np.ndarray], list[np.ndarray]]:
    """A split of ``users`` x ``rows`` and the probabilities of two rows' runs per seed; each run moves each
    user's positives by its own N(0, user_sd^2) (user effects, independent between runs)."""
    user = np.repeat(np.arange(users), rows)
    labels = rng.random(len(user)) < 0.3
    split = UserSplit.of(user, labels)

    def run(m: float) -> np.ndarray:
        own = rng.normal(0.0, user_sd, users)[user]
        return (labels * (m + own) + rng.normal(0.0, 1.0, len(user))).astype(np.float32)

    return split, [run(signal[0]) for _ in range(seeds)], [run(signal[1]) for _ in range(seeds)]


def _pairing(split: UserSplit, row: list[np.ndarray], base: list[np.ndarray], name: str = "row") -> Pairing:
    return Pairing(name, tuple(range(len(row))), tuple(SortedRun(split, p) for p in row),
                   tuple(SortedRun(split, p) for p in base))


def test_p_is_the_same_whichever_run_is_the_baseline() -> None:
    """Two-sided: p(row vs baseline) == p(baseline vs row) exactly, the interval mirrored (a one-sided p, the
    centred replicates kept signed, differs between the two)."""
    rng = np.random.default_rng(5)
    for signal in ((1.15, 1.0), (1.0, 1.0), (1.0, 1.3)):
        split, row, base = _two_rows(rng, 120, 6, 3, 0.5, signal)
        (forward,) = paired_bootstrap(split, [_pairing(split, row, base)], n_resamples=300, seed=1)
        (backward,) = paired_bootstrap(split, [_pairing(split, base, row)], n_resamples=300, seed=1)
        assert forward.p == backward.p and 0.0 < forward.p <= 1.0
        assert forward.difference == -backward.difference
        assert (forward.low, forward.high) == pytest.approx((-backward.high, -backward.low), abs=1e-12)


def test_identical_row_and_baseline_runs_differ_by_exactly_zero_in_every_replicate() -> None:
    """The same probabilities on both sides: every replicate difference is 0 (the users drawn once for both, the
    seed drawn with its baseline), so the interval is [0, 0] and p = 1. Runs that drew their own users, or seeds
    drawn apart from their baseline, give a spread."""
    rng = np.random.default_rng(9)
    split, row, _ = _two_rows(rng, 100, 5, 3, 0.5)
    copies = [p.copy() for p in row]
    (c,) = paired_bootstrap(split, [_pairing(split, row, copies)], n_resamples=300, seed=2)
    assert (c.difference, c.low, c.high, c.p) == (0.0, 0.0, 0.0, 1.0)


def test_users_not_rows_are_resampled_when_user_effects_dominate() -> None:
    """Each run moves each user's positives by N(0, 1.5^2) (20 rows a user): the rows of a user are not
    independent, so the interval over users must be clearly wider than the same bootstrap treating every row as
    its own user (measured: about 2.5x); and over 100 simulated tables the user-level interval covers the truth
    far more often than the row-level one (rows as users under-cover)."""
    rng = np.random.default_rng(21)
    split, row, base = _two_rows(rng, 60, 20, 1, 1.5)
    rows_as_users = UserSplit.of(np.arange(len(split.users)), split.labels)
    (by_user,) = paired_bootstrap(split, [_pairing(split, row, base)], n_resamples=400, seed=3)
    (by_row,) = paired_bootstrap(rows_as_users, [_pairing(rows_as_users, row, base)], n_resamples=400, seed=3)
    assert by_user.difference == by_row.difference
    assert (by_user.high - by_user.low) > 1.8 * (by_row.high - by_row.low)
    covered = {"users": 0, "rows": 0}
    truth = 0.0
    for rep in range(100):
        split, row, base = _two_rows(rng, 60, 20, 1, 1.5, (1.0, 1.0))
        as_rows = UserSplit.of(np.arange(len(split.users)), split.labels)
        (u,) = paired_bootstrap(split, [_pairing(split, row, base)], n_resamples=200, seed=rep)
        (r,) = paired_bootstrap(as_rows, [_pairing(as_rows, row, base)], n_resamples=200, seed=rep)
        covered["users"] += u.low <= truth <= u.high
        covered["rows"] += r.low <= truth <= r.high
    print(f"dominant user effects: covered {covered} of 100")
    assert covered["users"] >= 88 and covered["rows"] <= 75


def test_seed_scale_corrects_the_bootstrap_of_few_seeds() -> None:
    """sqrt(n / (n - 1)) (a bootstrap of n values has (n - 1) / n of their variance) x t_{n-1} / z (their spread
    is estimated from n values); no seed part with one seed; -> 1 with many."""
    assert seed_scale(1) == 1.0
    assert seed_scale(3) == pytest.approx(math.sqrt(1.5) * 4.302653 / 1.959964, rel=1e-6)
    assert seed_scale(5) == pytest.approx(math.sqrt(1.25) * 2.776445 / 1.959964, rel=1e-6)
    assert 1.0 < seed_scale(1000) < 1.002
