"""How long the report's statistics take for a 55-run table: `python experiments/converged/stats_speed.py`.

11 rows x 5 seeds of simulated predictions on one 10,000-row test split of 1,000 users; every row against the
first in the paired user bootstrap (report.stats, 2,000 resamples) + Holm, as `qin-report` runs it. Writes
`stats_speed.json` beside this script (wall seconds, the sizes, the CPU count). Measured on 2 cores shared with
other jobs: 30.7 s wall, 11.7 s of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from qin_lightning.files import atomic_write_text
from qin_lightning.report.stats import N_RESAMPLES, Pairing, SortedRun, UserSplit, paired_bootstrap, with_holm

ROWS, SEEDS, TEST_ROWS, USERS = 11, 5, 10_000, 1_000


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    rng = np.random.default_rng(0)
    split = UserSplit.of(rng.integers(0, USERS, TEST_ROWS), rng.random(TEST_ROWS) < 0.3)
    started = time.perf_counter()
    runs = [[SortedRun(split, (split.labels * (1 + 0.05 * row) + rng.normal(size=TEST_ROWS)).astype(np.float32))
             for _ in range(SEEDS)] for row in range(ROWS)]
    sorted_s = time.perf_counter() - started
    pairings = [Pairing(f"row{row}", tuple(range(SEEDS)), tuple(runs[row]), tuple(runs[0])) for row in range(1, ROWS)]
    comparisons = with_holm(paired_bootstrap(split, pairings))
    total_s = time.perf_counter() - started
    result = {"runs": ROWS * SEEDS, "comparisons": len(comparisons), "test_rows": TEST_ROWS, "users": USERS,
              "resamples": N_RESAMPLES, "sort_seconds": round(sorted_s, 2), "total_seconds": round(total_s, 2),
              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    atomic_write_text(Path(__file__).with_name("stats_speed.json"), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
