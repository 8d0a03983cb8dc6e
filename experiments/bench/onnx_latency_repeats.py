"""Run-to-run spread of the batch-1 ONNX latency: the bench's measurement (qin_lightning.bench.onnx_latency_ms:
fp32 and int8 exports alternating, one live session at a time, 10,000 requests each) repeated, one minute apart.

Default QIN with random weights and the MicroLens vocabulary (latency does not depend on the weights' values);
requests as in onnx_latency_options.py (history of 0-19 items, left padded to 64).
Run: .venv/bin/python experiments/bench/onnx_latency_repeats.py --out experiments/bench/onnx_latency_repeats.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from qin_lightning.bench import MICROLENS_ITEMS, MICROLENS_TAGS, onnx_latency_ms, percentile
from qin_lightning.files import atomic_write_json
from qin_lightning.models.qin import QIN
from qin_lightning.serving.onnx_export import int8_onnx_bytes, onnx_bytes


def requests(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        length = rng.integers(0, 20)
        seq = np.zeros((1, 64), dtype=np.int64)
        seq[0, 64 - length:] = rng.integers(1, MICROLENS_ITEMS, length)
        feeds.append({"item_seq": seq, "item_id": rng.integers(1, MICROLENS_ITEMS, (1,)),
                      "likes_level": rng.integers(0, 11, (1,)), "views_level": rng.integers(0, 11, (1,))})
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pause-s", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    tags = torch.randint(1, MICROLENS_TAGS, (MICROLENS_ITEMS, 5))
    tags[0] = 0
    vectors = torch.randn(MICROLENS_ITEMS, 128)
    vectors[0] = 0
    fp32 = onnx_bytes(QIN(tags, vectors, MICROLENS_TAGS).eval(), seq_len=64)
    models = {"onnx": fp32, "onnx_int8": int8_onnx_bytes(fp32)}
    feeds = requests(1_000)
    runs = []
    for repeat in range(args.repeats):
        if repeat:
            time.sleep(args.pause_s)
        run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": os.getloadavg()}
        for threads in (2, 1):
            for key, times in onnx_latency_ms(models, feeds, threads, args.requests).items():
                run[f"{key}_{threads}thread_p50_ms"] = round(percentile(times, 50), 3)
                run[f"{key}_{threads}thread_p99_ms"] = round(percentile(times, 99), 3)
        print(run, flush=True)
        runs.append(run)
    summary = {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in runs[0] if k.endswith("_ms")}
    atomic_write_json(args.out, {"command": f"python experiments/bench/onnx_latency_repeats.py --out {args.out}",
                                 "runs": runs, "min_max": summary})
    for key, (lo, hi) in summary.items():
        print(f"{key:32s} {lo:.3f} - {hi:.3f}")


if __name__ == "__main__":
    main()
