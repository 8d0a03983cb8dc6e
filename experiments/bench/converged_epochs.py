"""Seconds per epoch of QIN, DIN and the winner on a converged plan's configuration, trained one after the other in
one invocation (the plan's shared and per-experiment overrides, its first seed, `--epochs` full epochs each, no
test evaluation), with the machine and each model's ratio to QIN's, into one JSON record.

    PYTHONPATH=src python experiments/bench/converged_epochs.py experiments/movielens/converged.yaml \
        --out experiments/bench/converged_epochs.json

s / epoch is results.json's `timing.epoch_s` (training, validation and checkpoint of the epoch); the record also
keeps the training and validation parts and each process's wall time. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from qin_lightning.errors import ConfigError  # noqa: E402
from qin_lightning.files import atomic_write_json  # noqa: E402
from qin_lightning.machine import machine  # noqa: E402
from qin_lightning.training.plan import Job, plan_jobs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan", type=Path, help="a converged plan (experiments/movielens/converged.yaml)")
    p.add_argument("--out", type=Path, required=True, help="the JSON record (written atomically after each model)")
    p.add_argument("--experiments", default="qin,din,transformer_dcn", help="comma-separated; the first is the base")
    p.add_argument("--epochs", type=int, default=1, help="full epochs per model")
    return p.parse_args(argv)


def plan_threads(job: Job) -> int | None:
    """The intra-op threads each training run uses: the plan's last `threads=` override (None: the config's)."""
    values = [int(o.split("=", 1)[1]) for o in job.overrides if o.startswith("threads=")]
    return values[-1] if values else None


def time_epochs(job: Job, epochs: int) -> dict[str, Any]:
    """Train `job` for `epochs` epochs in a temporary folder; its timing, wall time and size."""
    with tempfile.TemporaryDirectory(prefix="qin_epochs_") as tmp:
        command = [sys.executable, "-m", "qin_lightning.train", f"+experiment={job.experiment}", f"seed={job.seed}",
                   *job.overrides, f"trainer.max_epochs={epochs}", "test_after_fit=false",
                   f"paths.log_dir={tmp}/logs", f"hydra.run.dir={tmp}/run"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
        load_start, start = os.getloadavg(), time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"error: {job.experiment} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    timing = results["timing"]
    return {
        "command": " ".join(["python", *command[1:-2]]),
        "s_per_epoch": round(statistics.mean(timing["epoch_s"]), 2),
        "epoch_s": timing["epoch_s"], "train_s": timing["train_s"], "val_s": timing["val_s"],
        "wall_s": round(wall, 1), "n_params": results["n_params"], "precision": results.get("precision"),
        "val_history": results["val_history"], "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.epochs < 1:
        raise ConfigError(f"--epochs: {args.epochs}, expected a positive integer")
    names = args.experiments.split(",")
    jobs = plan_jobs(args.plan, Path(tempfile.gettempdir()))  # run folders unused: each trains in a temporary one
    chosen = {job.experiment: job for job in jobs if job.experiment in names and job.seed == jobs[0].seed}
    missing = [name for name in names if name not in chosen]
    if missing:
        raise ConfigError(f"--experiments: {', '.join(missing)} not in {args.plan}")
    record: dict[str, Any] = {
        "command": "python experiments/bench/converged_epochs.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine(), "threads": plan_threads(jobs[0]), "cpu_count": os.cpu_count()},
        "plan": str(args.plan), "epochs": args.epochs, "models": {},
    }
    for name in names:
        record["models"][name] = time_epochs(chosen[name], args.epochs)
        base = record["models"][names[0]]["s_per_epoch"]
        record["ratio_to_base"] = {n: round(m["s_per_epoch"] / base, 2) for n, m in record["models"].items()}
        atomic_write_json(args.out, record)
        print(f"{name}: {record['models'][name]['s_per_epoch']} s / epoch, x{record['ratio_to_base'][name]} "
              f"{names[0]}", flush=True)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
