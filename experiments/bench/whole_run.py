"""Whole-run timing of the published QIN at the size of issue 16: N epochs of `python -m qin_lightning.train`,
wall time of the process and the per-epoch breakdown of its results.json (`timing`: train / val / checkpoint).

Size (the synthetic generator's overrides): 100,000 train / 20,000 valid rows, 3,000 items, 500 tags, 64-long
histories (mean 8), batch 2048, 2 threads; the default callbacks (early stopping cannot stop 8 epochs early with patience 8).

    PYTHONPATH=src flock /tmp/heavy.lock python experiments/bench/whole_run.py \
        --out experiments/bench/whole_run.json --precision 32 --epochs 8

Each (precision, epochs) run is one entry of the record, which is rewritten (atomically) after every run;
an entry already in `--out` is skipped, so an interrupted series resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from qin_lightning.files import atomic_write_json  # noqa: E402

SIZE = [
    "data.synthetic.train_rows=100000", "data.synthetic.valid_rows=20000", "data.synthetic.num_items=3000",
    "data.synthetic.num_tags=500", "data.batch_size=2048", "threads=2",
]
TRAINERS = {"32": "trainer=cpu", "bf16": "trainer=cpu_bf16"}  # each states its precision (conf/trainer)


def overrides(precision: str, epochs: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [*SIZE, TRAINERS[precision], f"trainer.max_epochs={epochs}",
            "callbacks.progress_bar=null", f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}", *extra]


def train_rows(args: list[str]) -> int:
    """The training rows the overrides set (the last `data.synthetic.train_rows=` wins, as in Hydra)."""
    return [int(a.split("=", 1)[1]) for a in args if a.startswith("data.synthetic.train_rows=")][-1]


def run_one(precision: str, epochs: int, extra: list[str], python: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qin_whole_run_") as tmp:
        run_dir = Path(tmp) / "run"
        args = overrides(precision, epochs, run_dir, extra)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
        load_start = os.getloadavg()
        t0 = time.perf_counter()
        done = subprocess.run([python, "-m", "qin_lightning.train", *args], env=env, cwd=REPO,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"error: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results = json.loads((run_dir / "results.json").read_text())
    timing = results["timing"]
    return {
        "command": "python -m qin_lightning.train " + " ".join(a for a in args if not a.startswith(("paths.", "hydra."))),
        "precision": precision,
        "epochs": epochs,
        "wall_s": round(wall, 1),
        "train_seconds_in_results": results["train_seconds"],
        "fit_s": timing["total_epoch_s"],
        "startup_and_final_s": round(wall - timing["total_epoch_s"], 1),
        "train_samples_per_s": round(epochs * train_rows(args) / timing["total_train_s"], 1),
        "timing": timing,
        "val_history": results["val_history"],
        "n_params": results["n_params"],
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--precision", default="32", help="comma-separated: 32, bf16")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--tag", default="", help="name suffix of the entry (e.g. for --override runs)")
    p.add_argument("--override", action="append", default=[], help="extra train override (repeatable)")
    args = p.parse_args()
    record = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    record["script"] = "python experiments/bench/whole_run.py " + " ".join(sys.argv[1:])
    record["cpu"] = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                          if l.startswith("model name")), "?")
    record["cpu_count"] = os.cpu_count()
    for precision in args.precision.split(","):
        name = f"{'fp32' if precision == '32' else precision}_{args.epochs}ep{args.tag}"
        if name in record["runs"]:
            print(f"{name}: already in {args.out}, skipped")
            continue
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        entry = run_one(precision, args.epochs, args.override, sys.executable)
        record["runs"][name] = {"started": started, **entry}
        atomic_write_json(args.out, record)
        t = entry["timing"]
        print(f"{name}: wall {entry['wall_s']} s, epochs {t['total_epoch_s']} s (train {t['total_train_s']}, "
              f"val {t['total_val_s']}, checkpoint {t['total_checkpoint_s']}; non-training "
              f"{100 * t['non_training_share']:.1f}%)", flush=True)


if __name__ == "__main__":
    main()
