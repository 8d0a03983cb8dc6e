"""Every test a report makes, implemented once: a paired bootstrap over users and seeds of the test-split AUC
difference, Holm's step-down adjustment, and the seed-paired t-test used only where no predictions were kept.

Paired bootstrap: every run of a table was scored on the same test rows. One replicate draws the split's users
with replacement (a user drawn k times counts k times, with all of its rows); the same user draw serves every
row, the baseline and every seed. It also draws, for each row, as many of its seeds as it has, with replacement
(a seed brings its row run and its baseline run together). The statistic of a row is the mean over the drawn
seeds of AUC(row, seed) - AUC(baseline, seed). Users stand for the test sampling, seeds for the training
randomness: a seed that trains worse as a whole moves every user of it, which resampling users alone would not
see (the synthetic bf16 runs: per-seed differences -0.038 to +0.012 on one test split). With a single seed
the seed draw is the identity. The 95% interval is scipy's percentile interval of the replicates, the two-sided
p-value is the share of replicates, centred on the observed difference, at least as far from it as the
difference is from 0, so swapping row and baseline gives exactly the same p. With few seeds the seed part is
corrected for its small n: a bootstrap of n values has variance (n - 1) / n of the sample's, and their spread is
itself estimated from n values, so each replicate's seed draw is stretched around the replicate's all-seeds mean
by sqrt(n / (n - 1)) t_{n-1} / z (seed_scale; coverage at 3, 5 and 8 seeds in tests/test_report_stats.py). Identical row and baseline runs give every replicate difference
exactly 0: interval [0, 0], p = 1.

Speed: no replicate materialises its rows. A replicate is a count per user; each run's rows are sorted by score
once, and the weighted AUC of every replicate is a cumulative sum of negative weights in that order, read at each
positive row (ties count 1/2): O(replicates x rows) per run, in batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
ALPHA = 0.05  # a row is called significant when its Holm-adjusted p is below this
N_RESAMPLES = 2000
SEED = 20240607
METHOD = "paired bootstrap over users and seeds"
BATCH = 200  # replicates per batch at most ...
ROWS_PER_BATCH = 4_000_000  # ... and at most this many replicate-rows (~32 MB per float64 array) at a time


@dataclass(frozen=True)
class UserSplit:
    """The rows every run of a table was scored on: each row's user (codes 0..users-1) and label."""

    users: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) bool

    @classmethod
    def of(cls, user_ids: np.ndarray, labels: np.ndarray) -> UserSplit:
        _, codes = np.unique(np.asarray(user_ids), return_inverse=True)
        return cls(codes.astype(np.int64).reshape(-1), np.asarray(labels).astype(bool).reshape(-1))

    @property
    def n_users(self) -> int:
        return int(self.users.max()) + 1 if len(self.users) else 0


class SortedRun:
    """One run's test probabilities, sorted once for the weighted AUC of any number of user-count replicates."""

    def __init__(self, split: UserSplit, probs: np.ndarray) -> None:
        if len(probs) != len(split.labels):
            raise ValueError(f"{len(probs)} predictions for a split of {len(split.labels)} rows")
        order = np.argsort(probs, kind="stable")
        scores, labels, users = probs[order], split.labels[order], split.users[order]
        tie_group = np.cumsum(np.r_[True, scores[1:] != scores[:-1]]) - 1  # (n,) equal scores share a group
        self.neg_users = users[~labels]  # negatives in score order
        self.pos_users = users[labels]
        neg_group = tie_group[~labels]
        pos_group = tie_group[labels]
        # for each positive: negatives strictly below it = [0, first), below or tied = [0, last)
        self.first = np.searchsorted(neg_group, pos_group, side="left")
        self.last = np.searchsorted(neg_group, pos_group, side="right")

    def aucs(self, counts: np.ndarray) -> np.ndarray:
        """(B,) AUC of each replicate; `counts` (B, users) is how often each user was drawn."""
        neg_w = counts[:, self.neg_users].astype(np.float64)  # (B, n_neg)
        cum = np.zeros((len(counts), neg_w.shape[1] + 1))
        np.cumsum(neg_w, axis=1, out=cum[:, 1:])
        below = 0.5 * (cum[:, self.first] + cum[:, self.last])  # (B, n_pos), ties count 1/2
        pos_w = counts[:, self.pos_users]
        numerator = np.einsum("bp,bp->b", pos_w, below)
        return numerator / (pos_w.sum(axis=1) * cum[:, -1])


def auc(split: UserSplit, probs: np.ndarray) -> float:
    """The plain (unweighted) AUC, by the same code as the replicates."""
    return float(SortedRun(split, probs).aucs(np.ones((1, split.n_users)))[0])


@dataclass(frozen=True)
class Pairing:
    """One comparison: row vs baseline, the runs of each seed both have."""

    row: str
    seeds: tuple[int, ...]
    row_runs: tuple[SortedRun, ...]
    base_runs: tuple[SortedRun, ...]


@dataclass(frozen=True)
class Comparison:
    """Row - baseline on the test split: difference, 95% interval, p and Holm-adjusted p (nan: not computable)."""

    row: str
    method: str  # METHOD | "seed-paired t-test"
    seeds: int
    difference: float
    low: float
    high: float
    p: float
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def seed_scale(n: int, confidence: float = CONFIDENCE) -> float:
    """How far a replicate's seed draw is stretched around its all-seeds mean, for n seeds: sqrt(n / (n - 1)),
    since a bootstrap of n values has only (n - 1) / n of their variance (a third short with 3 seeds, a fifth
    with 5), times t_{n-1} / z, since the spread of a mean of n seeds is estimated from n seeds (Student's t,
    not the normal; the expanded percentile interval of Hesterberg, applied to the seed part): 2.69 at 3 seeds,
    1.58 at 5, 1.24 at 10, -> 1. 1 with a single seed (no seed part)."""
    if n < 2:
        return 1.0
    q = 0.5 + confidence / 2
    return math.sqrt(n / (n - 1)) * float(scipy.stats.t.ppf(q, n - 1) / scipy.stats.norm.ppf(q))


def _counts(user_draws: np.ndarray, n_users: int) -> np.ndarray:
    """(B, users) how often each user is drawn, from (B, draws) user indices."""
    batch = user_draws.shape[0]
    offsets = (np.arange(batch) * n_users)[:, None]
    return np.bincount((user_draws + offsets).ravel(), minlength=batch * n_users).reshape(batch, n_users)


def paired_bootstrap(split: UserSplit, pairings: Sequence[Pairing], n_resamples: int = N_RESAMPLES,
                     seed: int = SEED, confidence: float = CONFIDENCE) -> list[Comparison]:
    """Paired bootstrap over users and seeds of every pairing, one shared user draw per replicate and one seed
    draw per pairing (scipy resamples each as its own sample); not yet Holm-adjusted."""
    if not pairings:
        return []
    runs = list({id(r): r for p in pairings for r in (*p.row_runs, *p.base_runs)}.values())
    index = {id(r): i for i, r in enumerate(runs)}

    def rows(draws: np.ndarray, axis: int) -> np.ndarray:
        return np.moveaxis(draws, axis, -1).reshape(-1, draws.shape[axis])  # (B, draws)

    def statistic(user_draws: np.ndarray, *seed_draws: np.ndarray, axis: int = -1) -> np.ndarray:
        counts = _counts(rows(user_draws, axis), split.n_users)  # (B, users)
        aucs = np.stack([r.aucs(counts) for r in runs])  # (runs, B)
        diffs = []
        for pairing, drawn in zip(pairings, seed_draws):
            per_seed = np.stack([aucs[index[id(a)]] - aucs[index[id(b)]]
                                 for a, b in zip(pairing.row_runs, pairing.base_runs)], axis=1)  # (B, seeds)
            centre = per_seed.mean(axis=1)  # (B,) this replicate's users, every seed
            drawn_mean = np.take_along_axis(per_seed, rows(drawn, axis), axis=1).mean(axis=1)  # (B,)
            diffs.append(centre + seed_scale(len(pairing.seeds)) * (drawn_mean - centre))
        return np.stack(diffs).reshape(len(pairings), *user_draws.shape[:axis % user_draws.ndim])

    users = np.arange(split.n_users)
    # each pairing's seed positions; scipy needs two observations, so a single seed is listed twice (always drawn)
    seed_positions = [np.arange(len(p.seeds)) if len(p.seeds) > 1 else np.zeros(2, dtype=np.int64)
                      for p in pairings]
    observed = statistic(users[None, :], *(s[None, :] for s in seed_positions))[:, 0]
    batch = max(1, min(BATCH, ROWS_PER_BATCH // max(1, len(split.labels))))
    result = scipy.stats.bootstrap((users, *seed_positions), statistic, n_resamples=n_resamples, vectorized=True,
                                   paired=False, batch=batch, confidence_level=confidence, method="percentile",
                                   rng=np.random.default_rng(seed))
    replicates = result.bootstrap_distribution  # (pairings, B)
    out = []
    for k, pairing in enumerate(pairings):
        d = float(observed[k])
        centred = np.abs(replicates[k] - d)
        p = float((1 + np.count_nonzero(centred >= abs(d) - 1e-15)) / (n_resamples + 1))
        out.append(Comparison(pairing.row, METHOD, len(pairing.seeds), d,
                              float(result.confidence_interval.low[k]), float(result.confidence_interval.high[k]),
                              min(1.0, p)))
    return out


def seed_t_test(row: str, values: dict[int, float], base: dict[int, float],
                confidence: float = CONFIDENCE) -> Comparison:
    """Paired t-test over the seeds both rows have (row - baseline), with its t interval; nan with < 2 pairs."""
    seeds = sorted(set(values) & set(base))
    diffs = np.array([values[s] - base[s] for s in seeds])
    method = "seed-paired t-test"
    if len(diffs) < 2:
        mean = float(diffs.mean()) if len(diffs) else math.nan
        return Comparison(row, method, len(diffs), mean, math.nan, math.nan, math.nan)
    sem = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    if sem == 0.0:
        return Comparison(row, method, len(diffs), float(diffs.mean()), math.nan, math.nan, math.nan)
    test = scipy.stats.ttest_1samp(diffs, 0.0)
    interval = test.confidence_interval(confidence)
    return Comparison(row, method, len(diffs), float(diffs.mean()), float(interval.low), float(interval.high),
                      float(test.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error); nan entries stay nan and are not counted."""
    finite = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    ranked = sorted(finite, key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one table with their Holm-adjusted p-values filled in."""
    adjusted = holm([c.p for c in comparisons])
    return [Comparison(c.row, c.method, c.seeds, c.difference, c.low, c.high, c.p, a)
            for c, a in zip(comparisons, adjusted)]
