"""How long the report's statistics take for a 55-run table: `python experiments/converged/stats_speed.py`.

11 experiments x 5 seeds of simulated kept predictions on one 10,000-row test split of 1,000 users, written as a
sweep folder of records (`runs/<E>_seed<S>.json` + self-contained `.preds.parquet`) in a temporary
folder; then the report's whole comparison path on it, as `qin-report` runs it: collect the records, read and check
every kept prediction file and the split, the paired bootstrap over users and seeds of every row against `qin`
(2,000 resamples) and Holm. Writes `stats_speed.json` beside this script: wall and CPU seconds, the sizes, the CPU
count and the load average before the run (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from qin_lightning.files import atomic_write_text
from qin_lightning.predictions import write_predictions
from qin_lightning.report.collect import ORDER, collect
from qin_lightning.report.stats import N_RESAMPLES
from qin_lightning.report.tables import Baseline, table_tests
from qin_lightning.training.metrics import split_metrics

EXPERIMENTS, SEEDS, TEST_ROWS, USERS = ORDER[:11], 5, 10_000, 1_000


def write_sweep(folder: Path) -> None:
    """55 records with self-contained kept predictions (each row a little better than the last)."""
    rng = np.random.default_rng(0)
    users, labels = rng.integers(0, USERS, TEST_ROWS), (rng.random(TEST_ROWS) < 0.3).astype(np.float32)
    (folder / "runs").mkdir()
    for row, experiment in enumerate(EXPERIMENTS):
        for seed in range(1, SEEDS + 1):
            probs = (1 / (1 + np.exp(-(labels * (1 + 0.05 * row) + rng.normal(size=TEST_ROWS))))).astype(np.float32)
            name = folder / "runs" / f"{experiment}_seed{seed}"
            write_predictions(name.with_suffix(".preds.parquet"), probs, users, labels, "speed/test")
            record = {"status": "completed", "experiment": experiment, "seed": seed, "best_val_auc": 0.8,
                      "test_auc": split_metrics(probs, labels, users)["auc"]}
            name.with_suffix(".json").write_text(json.dumps(record))


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_sweep(folder)
        cpu, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        tests = table_tests(collect(folder), Baseline("qin", "qin"))
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    assert len(tests.comparisons) == len(EXPERIMENTS) - 1 and tests.note.startswith("paired bootstrap"), tests.note
    result = {"runs": len(EXPERIMENTS) * SEEDS, "comparisons": len(tests.comparisons), "test_rows": TEST_ROWS,
              "users": USERS, "resamples": N_RESAMPLES, "wall_seconds": round(wall, 1),
              "cpu_seconds": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
              "cpus": os.cpu_count(), "load_average_before": round(load, 2)}
    atomic_write_text(Path(__file__).with_name("stats_speed.json"), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
