"""Measurements of the exported ONNX model in onnxruntime: batch-1 latency, throughput, parity with the eager one."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.bench.args import BenchArgs
from qin_lightning.bench.data import inputs
from qin_lightning.bench.eager import predict
from qin_lightning.bench.system import percentile
from qin_lightning.data.datamodule import Batch
from qin_lightning.models.inference import set_fast_paths
from qin_lightning.serving.runtime import feed as onnx_feed
from qin_lightning.serving.runtime import open_session


def onnx_latency_ms(models: dict[str, bytes], feeds: list[dict[str, Any]], threads: int, count: int,
                    rounds: int = 4, warmup: int = 20) -> dict[str, list[float]]:
    """Batch-1 latencies of several exported models side by side: in each of `rounds` rounds every model gets
    a fresh session (the only one alive, as in a serving process: onnxruntime's idle pool threads spin and
    would slow a second session) and count / rounds timed requests, after `warmup` untimed ones."""
    times: dict[str, list[float]] = {name: [] for name in models}
    per_round = max(1, count // rounds)
    for r in range(rounds):
        for name, model in models.items():
            session = open_session(model, threads=threads)
            for i in range(warmup):
                session.run(None, feeds[i % len(feeds)])
            for i in range(r * per_round, (r + 1) * per_round):
                t0 = time.perf_counter()
                session.run(None, feeds[i % len(feeds)])
                times[name].append((time.perf_counter() - t0) * 1e3)
            del session
    return times


def feed(batch: Batch) -> dict[str, Any]:
    """The onnxruntime inputs of one batch."""
    return onnx_feed(*inputs(batch))


def measure_onnx(net: nn.Module, requests: list[Batch], batches: list[Batch], args: BenchArgs,
                 record: dict[str, Any]) -> None:
    """Export (qin_lightning.serving.onnx_export) in both weight formats, then onnxruntime batch-1 latency (fp32 and
    int8 alternating, onnx_latency_ms), throughput, and parity with the eager model over the validation split
    (max / mean |dp|, AUC); keys `onnx_*` for the exact fp32 export, `onnx_int8_*` for `--weights int8`."""
    try:
        import onnxruntime as ort
    except ImportError:
        record["onnx_skipped"] = "onnxruntime not installed (pip install -e '.[serve]')"
        return
    from qin_lightning.serving.onnx_export import DEFAULT_BLOCK_SIZE, export_onnx, int8_onnx_bytes

    cpu_net = net.to("cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(cpu_net, Path(tmp) / "model.onnx", seq_len=requests[0].item_seq.shape[1])
        record["onnx_export_s"] = round(time.perf_counter() - t0, 2)
        models = {"onnx": path.read_bytes()}
    models["onnx_int8"] = int8_onnx_bytes(models["onnx"], DEFAULT_BLOCK_SIZE)
    record["onnx_int8_block_size"] = DEFAULT_BLOCK_SIZE
    for key, model in models.items():
        record[f"{key}_file_mb"] = round(len(model) / 2**20, 1)
    record["onnxruntime_version"] = ort.__version__

    feeds = [feed(r) for r in requests]
    for threads in sorted({args.threads, 1}, reverse=True):
        suffix = "_1thread" if threads != args.threads else ""
        for key, times in onnx_latency_ms(models, feeds, threads, args.onnx_requests).items():
            record[f"{key}{suffix}_latency_p50_ms"] = percentile(times, 50)
            record[f"{key}{suffix}_latency_p99_ms"] = percentile(times, 99)
    full = [b for b in batches if b.label.shape[0] == args.batch_size] or batches
    chosen = [feed(full[i % len(full)]) for i in range(args.infer_batches)]
    set_fast_paths(cpu_net, True)
    cpu_batches = [Batch(*(t.cpu() for t in b)) for b in batches]
    reference = torch.cat([predict(cpu_net, b, "32", torch.device("cpu")) for b in cpu_batches])
    labels = torch.cat([b.label for b in cpu_batches]).long()
    for key, model in models.items():
        session = open_session(model, threads=args.threads)  # one live session at a time
        for f in chosen:  # warm-up: the first runs of a fresh session allocate its buffers
            session.run(None, f)
        t0 = time.perf_counter()
        n = sum(len(session.run(None, f)[0]) for f in chosen)
        record[f"{key}_infer_samples_per_s"] = n / (time.perf_counter() - t0)
        probs = torch.from_numpy(np.concatenate([session.run(None, feed(b))[0] for b in cpu_batches]))
        del session
        diff = (probs - reference).abs()
        record[f"{key}_max_abs_prob_diff"] = float(diff.max())
        record[f"{key}_mean_abs_prob_diff"] = float(diff.mean())
        record[f"{key}_auc"] = float(binary_auroc(probs, labels))
