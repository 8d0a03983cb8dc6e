"""fp32 vs bf16 (CPU autocast, `trainer=cpu_bf16`) converged accuracy: QIN trained to early stopping, 3 seeds
per precision, on the default synthetic data and on MovieLens; the AUC difference against the seed spread.

    PYTHONPATH=src flock /tmp/heavy.lock python experiments/precision/run.py            # all 12 runs, then the table
    python experiments/precision/run.py --table-only                                   # the table from what ran

Resumable: every finished run leaves `runs/<data>_<precision>_seed<N>.json` (its results.json) and is skipped
next time; the table (`table.md`) is rewritten from whatever runs exist. Protocol: experiments/synthetic's
(QIN with embedding_dim 32, early stopping on validation AUC with patience 3, at most 30 epochs; every other
setting the published one), 2 threads. Change it with `--override` (then use another `--runs` folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))

from qin_lightning.files import atomic_write_json, atomic_write_text  # noqa: E402

PROTOCOL = ["model.net.embedding_dim=32", "callbacks.early_stopping.patience=3", "trainer.max_epochs=30",
            "threads=2", "callbacks.progress_bar=null", "callbacks.model_summary=null"]
DATA = {"synthetic": [], "movielens": ["data=movielens"]}
TRAINERS = {"fp32": "trainer=cpu", "bf16": "trainer=cpu_bf16"}
SEEDS = (1, 2, 3)


def run_one(data: str, precision: str, seed: int, extra: list[str], out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="qin_precision_") as tmp:
        args = [*DATA[data], TRAINERS[precision], f"seed={seed}", *PROTOCOL, *extra,
                f"paths.log_dir={tmp}/logs", f"hydra.run.dir={tmp}/run"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
        done = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{out.name}: failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}", flush=True)
            return
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    results["command"] = "python -m qin_lightning.train " + " ".join(a for a in args if not a.startswith(("paths.", "hydra.")))
    atomic_write_json(out, results)
    print(f"{out.name}: best val AUC {results['best_val_auc']:.5f} after {results['epochs_trained']} epochs", flush=True)


def table(runs: Path) -> str:
    lines = ["| data | fp32 AUC mean +- std (n) | bf16 AUC mean +- std (n) | bf16 - fp32 | seed std (fp32) | "
             "within the seed spread | epochs fp32 / bf16 | s/epoch fp32 / bf16 |", "|---|---|---|---|---|---|---|---|"]
    for data in DATA:
        stats = {}
        for precision in TRAINERS:
            results = [json.loads(p.read_text()) for p in sorted(runs.glob(f"{data}_{precision}_seed*.json"))]
            aucs = [r["best_val_auc"] for r in results]
            epochs = [r["epochs_trained"] for r in results]
            per_epoch = [sum(r["timing"]["epoch_s"]) / len(r["timing"]["epoch_s"]) for r in results if r.get("timing")]
            stats[precision] = (aucs, epochs, per_epoch)
        (a32, e32, s32), (a16, e16, s16) = stats["fp32"], stats["bf16"]

        def cell(v: list[float]) -> str:
            if not v:
                return "-"
            return f"{statistics.mean(v):.5f} +- {statistics.stdev(v) if len(v) > 1 else 0:.5f} ({len(v)})"

        diff = statistics.mean(a16) - statistics.mean(a32) if a16 and a32 else None
        spread = statistics.stdev(a32) if len(a32) > 1 else None
        within = "-" if diff is None or spread is None else ("yes" if abs(diff) <= spread else "no")
        mean = lambda v: f"{statistics.mean(v):.1f}" if v else "-"  # noqa: E731
        lines.append(f"| {data} | {cell(a32)} | {cell(a16)} | {'-' if diff is None else f'{diff:+.5f}'} | "
                     f"{'-' if spread is None else f'{spread:.5f}'} | {within} | {mean(e32)} / {mean(e16)} | "
                     f"{mean(s32)} / {mean(s16)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=HERE / "runs")
    p.add_argument("--data", default="synthetic,movielens")
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for data in args.data.split(","):
            for seed in SEEDS:
                for precision in TRAINERS:  # fp32 and bf16 alternate, seed by seed
                    out = args.runs / f"{data}_{precision}_seed{seed}.json"
                    if not out.exists():
                        run_one(data, precision, seed, args.override, out)
    text = table(args.runs)
    atomic_write_text(args.runs.parent / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
