"""Memory of the MMCTR datamodule at MicroLens scale: load time, peak RSS, and no copies per epoch / worker.

    python experiments/scale/measure_load.py --root DIR [--workers 2] [--epochs 2] [--out FILE.json]

DIR holds the synthetic MicroLens-scale dataset (generated there on first use, into DIR/<fingerprint>;
`python -m qin_lightning.prepare synthetic --out DIR/<fingerprint> --scale microlens` makes the same one).
Phases, each followed by the process RSS and peak RSS (getrusage; nothing else runs before the load is
measured):
1. load: `MMCTRDataModule.setup("fit")` + the test split; reports bytes of the columns as held (int32
   histories/ids, int8 levels, int64 user ids, float32 labels, item tables) and as int64 integer columns
   (the parquet/arrow logical width), and the RSS growth relative to both;
2. train epochs through the real DataLoader with `--workers` forked workers (persistent): RSS growth of the
   main process and the private (unshared) memory of every worker, from /proc/PID/smaps_rollup;
3. one pass of the predict loader (the test split in row order).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig

MB = 2**20


def rss_mb(pid: str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def private_mb(pid: int) -> float:
    """Unshared resident memory of a process (MB): pages a forked worker copied or allocated itself."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split(":")[0].startswith("Private")}
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_pids() -> list[int]:
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    return [int(p) for p in children]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = SyntheticConfig.microlens()
    dm = MMCTRDataModule(args.root, max_len=config.max_len, batch_size=args.batch_size, num_workers=args.workers,
                         pin_memory=False, seed=config.seed, synthetic=config)
    dm.prepare_data()  # generates on first use (not part of the load figures)
    rec: dict = {"command": "python experiments/scale/measure_load.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}
    rss0, t0 = rss_mb(), time.perf_counter()
    dm.setup("fit")
    test = dm.dataset("test")
    load_s = time.perf_counter() - t0
    rss1, peak1 = rss_mb(), peak_mb()
    splits = {name: dm.dataset(name) for name in ("train", "valid", "test")}
    cols = ("item_seq", "item_id", "likes_level", "views_level", "user_id", "label")
    held = sum(getattr(d, c).numel() * getattr(d, c).element_size() for d in splits.values() for c in cols)
    held += sum(t.numel() * t.element_size() for t in (dm.item_tags, dm.item_mm))
    int_cols = ("item_seq", "item_id", "likes_level", "views_level", "user_id")
    int64_bytes = sum(getattr(d, c).numel() * 8 for d in splits.values() for c in int_cols)
    rec["load"] = {
        "rows": {k: len(v) for k, v in splits.items()},
        "load_s": round(load_s, 2),
        "bytes_held_mb": round(held / MB, 1),
        "int64_integer_columns_mb": round(int64_bytes / MB, 1),
        "rss_before_mb": round(rss0, 1),
        "rss_after_mb": round(rss1, 1),
        "peak_rss_mb": round(peak1, 1),
        "rss_growth_mb": round(rss1 - rss0, 1),
        "peak_growth_mb": round(peak1 - rss0, 1),
        "peak_growth_over_bytes_held": round((peak1 - rss0) * MB / held, 2),
        "peak_growth_over_int64_integer_columns": round((peak1 - rss0) * MB / int64_bytes, 2),
    }
    print(json.dumps(rec["load"]), flush=True)

    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        t0, rows, workers = time.perf_counter(), 0, {}
        for i, batch in enumerate(loader):
            rows += batch.label.numel()
            if i == 50:  # workers are warm: measure them mid-epoch
                workers = {pid: round(private_mb(pid), 1) for pid in worker_pids()}
        epochs.append({"epoch": epoch, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                       "main_rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(peak_mb(), 1),
                       "worker_private_mb": workers})
        print(json.dumps(epochs[-1]), flush=True)
    rec["train_epochs"] = epochs
    t0, n = time.perf_counter(), 0
    for batch in dm.predict_dataloader():
        n += batch.label.numel()
    rec["predict"] = {"rows": n, "seconds": round(time.perf_counter() - t0, 1), "main_rss_mb": round(rss_mb(), 1),
                      "peak_rss_mb": round(peak_mb(), 1)}
    print(json.dumps(rec["predict"]), flush=True)
    assert n == len(test)
    if args.out is not None:
        args.out.write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
