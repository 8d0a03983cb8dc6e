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
    Comparison, Pairing, SortedRun, UserSplit, auc, holm, paired_bootstrap, seed_t_test, with_holm,
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
        split, pairings = _simulated(rng, mu=mu, seeds=2)
        (c,) = paired_bootstrap(split, pairings, n_resamples=300, seed=rep)
        covered += c.low <= truth <= c.high
        rejected += c.p < 0.05
    assert covered >= 176
    if truth == 0.0:
        assert rejected <= 24
    else:
        assert rejected >= 20  # and it has some power at this size


def test_bootstrap_covers_the_truth_when_whole_seeds_train_better_or_worse() -> None:
    """Runs that shift as a whole (seed_sd 0.6, 8 seeds a row): the interval must carry the seed spread to cover
    the expected difference (>= 85% of 200: 183 here; resampling users alone covers 76), and a true null is
    rejected in <= 12% (10 here)."""
    rng = np.random.default_rng(11)
    for mu, check in (((1.3, 1.0), "coverage"), ((1.0, 1.0), "size")):
        truth = _true_difference(mu, seed_sd=0.6)
        covered = rejected = 0
        for rep in range(200):
            split, pairings = _simulated(rng, mu=mu, seeds=8, seed_sd=0.6)
            (c,) = paired_bootstrap(split, pairings, n_resamples=300, seed=rep)
            covered += c.low <= truth <= c.high
            rejected += c.p < 0.05
        if check == "coverage":
            assert covered >= 170, covered
            print(f"whole-seed effects: covered {covered} of 200")
        else:
            assert rejected <= 24, rejected
            print(f"whole-seed effects: null rejected {rejected} of 200")


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
