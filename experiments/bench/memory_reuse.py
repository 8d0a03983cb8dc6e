"""`reuse_freed_memory=true` vs `false` side by side: the same short training run of one experiment, the two
settings alternating round by round, each a fresh `python -m qin_lightning.train` process; per run the
training seconds of its results.json (`timing.total_train_s`), and from the kernel (os.wait4) its minor page
faults, system CPU seconds and peak resident memory.

Default size: the MovieLens converged configuration of the winner (width 32, multimodal projection 32, 20-long
histories, batch 2048, `cross_rank=64`), 20 training batches and one validation batch:

    PYTHONPATH=src python experiments/bench/memory_reuse.py --out experiments/bench/memory_reuse.json

`--experiment qin` measures QIN at the same size. Needs the MovieLens conversion (`data=movielens`; the hashing
encoder unless `--override data.source.encoder=minilm`).
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

from qin_lightning.files import atomic_write_json  # noqa: E402

SIZE = [
    "data=movielens", "model.net.embedding_dim=32", "model.net.mm_projection_dim=32", "data.max_len=20",
    "data.batch_size=2048", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "threads=1",
    "callbacks.progress_bar=null", "callbacks.model_summary=null",
]
SHRINK = {"transformer_dcn": ["model.net.cross_rank=64"]}


def run_one(experiment: str, reuse: bool, batches: int, extra: list[str], python: str) -> dict[str, Any]:
    """One training process; its seconds from results.json, its page faults and memory from the kernel."""
    with tempfile.TemporaryDirectory(prefix="qin_memory_reuse_") as tmp:
        run_dir = Path(tmp) / "run"
        args = [f"+experiment={experiment}", *SIZE, *SHRINK.get(experiment, []),
                f"trainer.limit_train_batches={batches}", f"reuse_freed_memory={str(reuse).lower()}", *extra,
                f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
        load_start = os.getloadavg()
        process = subprocess.Popen([python, "-m", "qin_lightning.train", *args], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr = process.stderr.read() if process.stderr else ""
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"error: training failed ({status}):\n{stderr[-3000:]}")
        results = json.loads((run_dir / "results.json").read_text())
    return {
        "reuse_freed_memory": reuse,
        "train_s": results["timing"]["total_train_s"],
        "s_per_batch": round(results["timing"]["total_train_s"] / batches, 4),
        "minor_page_faults": usage.ru_minflt,
        "system_cpu_s": round(usage.ru_stime, 2),
        "user_cpu_s": round(usage.ru_utime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "loadavg_start": load_start,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round: false / true training seconds (the speed-up of reusing memory); their median."""
    by_round: dict[int, dict[bool, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["reuse_freed_memory"]] = run
    ratios = [r[False]["train_s"] / r[True]["train_s"] for r in by_round.values() if len(r) == 2]
    return {"speedup_per_round": [round(x, 3) for x in ratios],
            "speedup_median": round(statistics.median(ratios), 3) if ratios else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--experiment", default="transformer_dcn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=20, help="training batches per run")
    p.add_argument("--override", action="append", default=[], help="extra train override (repeatable)")
    args = p.parse_args()
    record: dict[str, Any] = {
        "script": "python experiments/bench/memory_reuse.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "?"),
        "cpu_count": os.cpu_count(),
        "experiment": args.experiment,
        "runs": [],
    }
    for round_index in range(args.rounds):
        order = (True, False) if round_index % 2 == 0 else (False, True)  # alternate who goes first
        for reuse in order:
            run = {"round": round_index, **run_one(args.experiment, reuse, args.batches, args.override,
                                                    sys.executable)}
            record["runs"].append(run)
            record.update(summary(record["runs"]))
            atomic_write_json(args.out, record)
            print(f"round {round_index} reuse={reuse}: {run['train_s']} s, {run['minor_page_faults']:,} faults, "
                  f"sys {run['system_cpu_s']} s, peak {run['peak_rss_mib']} MiB", flush=True)
    print(f"speed-up (false / true): {record['speedup_per_round']}, median {record['speedup_median']}")


if __name__ == "__main__":
    main()
