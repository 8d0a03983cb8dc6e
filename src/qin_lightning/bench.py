"""Benchmark the plain (paper-literal) and fast (exact) paths side by side: `python -m qin_lightning.bench`.

One process, one network, one set of weights: every round measures the plain configuration and then the fast
one (models.inference.set_fast_paths) on the same batches (ABAB...), and the median over rounds is reported.
- training: CTRModule.training_step (BCE + the L2 terms) + backward + gradient-norm clipping (trainer value)
  + the CTRModule optimizer step, samples/s;
- inference: eval mode, `torch.inference_mode`, batches of `--batch-size`, samples/s;
- single-request latency (batch 1, p50/p99 over `--requests`) of the eager model (plain and fast) and of the
  exported ONNX model in onnxruntime (if installed), exact fp32 and `--weights int8` in alternating rounds
  (`--onnx-requests`, one live session at a time); inputs are prepared beforehand (not timed);
- AUC parity: the trained weights evaluated on the validation split by both paths (AUCs and max |dp|);
- peak RSS (getrusage) and the RSS after each phase.
Data: a synthetic dataset in the MMCTR layout (qin_lightning.data) with the real MicroLens vocabulary sizes
(91,718 items, 11,740 tags, 128-d vectors), histories of mean length 8 left-padded to 64. `--data-scale
microlens` uses the full MicroLens-scale dataset (3.6M train rows) and also records its load time and
memory against the bytes of its columns. Writes `--out` (JSON, atomically) and prints a small table.
`--precision 32,bf16` adds the fast paths under bf16 autocast as a third configuration of every round (keys
`bf16_*`, AUC parity against the fp32 fast paths); `--experiment A,B` measures any `+experiment=` config.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.cli import CONFIG_DIR, run_reporting_errors
from qin_lightning.data.datamodule import Batch, MMCTRDataModule, ShardedBatchSampler
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.errors import ConfigError
from qin_lightning.files import atomic_write_json
from qin_lightning.models.inference import fast_path_state, inference_form, set_fast_paths
from qin_lightning.serving.runtime import feed as onnx_feed
from qin_lightning.serving.runtime import open_session
from qin_lightning.training.build import build_module
from qin_lightning.training.module import CTRModule

MICROLENS_ITEMS, MICROLENS_TAGS = 91_718, 11_740  # incl. the padding id 0 (REFERENCE section 1)
PRECISIONS = ("32", "bf16")


@dataclass(frozen=True)
class Config:
    """One measured configuration: the paths (plain / fast) and the precision; `prefix` names its record keys."""

    name: str  # plain | fast | bf16 (the fast paths under bf16 autocast) ...
    fast: bool
    precision: str  # 32 | bf16
    prefix: str  # "plain_" | "" | "bf16_": e.g. {prefix}train_samples_per_s


def configurations(precisions: tuple[str, ...]) -> list[Config]:
    """plain and fast in the first precision (today's keys), then the fast paths in every other precision."""
    main = precisions[0]
    configs = [Config("plain", False, main, "plain_"), Config("fast", True, main, "")]
    return configs + [Config(p, True, p, f"{p}_") for p in precisions[1:]]


@dataclass
class BenchArgs:
    """Everything that defines a run (recorded verbatim in the JSON)."""

    model: str = "qin"
    data_scale: str = "bench"  # bench (MicroLens vocab, --train-rows) | microlens (full scale) | tiny (tests)
    train_rows: int = 100_000
    eval_rows: int = 10_000
    batch_size: int = 2048
    rounds: int = 5
    train_steps: int = 2  # per configuration and round
    infer_batches: int = 2  # per configuration and round
    requests: int = 1_000
    onnx_requests: int = 10_000  # cheap per request: a longer window makes the p99 less a matter of luck
    threads: int = 2
    device: str = "cpu"
    precision: str = "32"  # 32 | bf16 | 32,bf16 (the first one gets the plain and fast keys, the others `bf16_*`)
    experiment: str | None = None  # a `+experiment=` config (conf/experiment/) instead of `model=<model>`
    train_batches: str = "auto"  # loader (datamodule batches) | device (device-resident columns) | auto
    compile: bool = False
    epoch: bool = False  # also time one whole training epoch with the fast configuration
    onnx: bool = True
    data_only: bool = False  # only generate/load the data and record its load time and memory
    data_root: str = field(default_factory=lambda: os.path.join(os.environ.get("QIN_CACHE_DIR", ".cache/qin"),
                                                                "synthetic"))
    seed: int = 20242025
    overrides: list[str] = field(default_factory=list)  # Hydra overrides of the model config, e.g. model.net.x=1


# ---- small helpers ---------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size (MB) from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def batch_to(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return Batch(*(t.to(device, non_blocking=True) for t in batch))


def inputs(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return batch.item_seq, batch.item_id, batch.likes_level, batch.views_level


# ---- data ------------------------------------------------------------------------------------------------
def synthetic_config(args: BenchArgs) -> SyntheticConfig:
    if args.data_scale == "microlens":
        return SyntheticConfig.microlens(seed=args.seed)
    if args.data_scale == "tiny":
        return dataclasses.replace(SyntheticConfig.tiny(seed=args.seed), train_rows=args.train_rows,
                                   valid_rows=args.eval_rows, test_rows=64)
    return SyntheticConfig(
        num_items=MICROLENS_ITEMS, num_tags=MICROLENS_TAGS, num_users=100_000, train_rows=args.train_rows,
        valid_rows=args.eval_rows, test_rows=1_000, max_len=64, mean_history_len=8.0, num_topics=32,
        seed=args.seed, name="bench",
    )


def load_data(args: BenchArgs, record: dict[str, Any]) -> MMCTRDataModule:
    """Generate (first use) and load the dataset; records sizes, generation/load time and memory."""
    config = synthetic_config(args)
    dm = MMCTRDataModule(args.data_root, max_len=config.max_len, batch_size=args.batch_size,
                         eval_batch_size=args.batch_size, seed=args.seed, synthetic=config,
                         pin_memory=args.device.startswith("cuda"))
    existed = dm.data_dir.exists()
    t0 = time.perf_counter()
    dm.prepare_data()
    t1 = time.perf_counter()
    rss_before = rss_mb()
    dm.setup("fit")
    test = dm.dataset("test")
    t2 = time.perf_counter()
    splits = {"train": dm.dataset("train"), "valid": dm.dataset("valid"), "test": test}
    column_bytes = {
        name: sum(t.numel() * t.element_size() for t in (d.item_seq, d.item_id, d.likes_level, d.views_level,
                                                         d.user_id, d.label))
        for name, d in splits.items()
    }
    table_bytes = sum(t.numel() * t.element_size() for t in (dm.item_tags, dm.item_mm))
    history = splits["train"].item_seq
    record["data"] = {
        "scale": args.data_scale,
        "dir": str(dm.data_dir),
        "fingerprint": config.fingerprint(),
        "synthetic_config": dataclasses.asdict(config),
        "rows": {name: len(d) for name, d in splits.items()},
        "num_items": dm.num_items,
        "num_tags": dm.num_tags,
        "mean_history_len_train": float((history > 0).sum(1, dtype=torch.int32).float().mean()),
        "generated_now": not existed,
        "generate_s": round(t1 - t0, 3),
        "load_s": round(t2 - t1, 3),
        "column_bytes": column_bytes,  # id/level/label columns as held in memory (int32/int8/int64/float32)
        "item_table_bytes": table_bytes,
        "total_bytes": sum(column_bytes.values()) + table_bytes,
        "total_bytes_mb": round((sum(column_bytes.values()) + table_bytes) / 2**20, 1),
        "rss_before_load_mb": round(rss_before, 1),
        "rss_after_load_mb": round(rss_mb(), 1),
        "peak_rss_after_load_mb": round(peak_rss_mb(), 1),
    }
    return dm


class DeviceBatches:
    """Training batches indexed directly from device-resident columns (GPU: no host round trip per step).

    Same sampling as the datamodule's train loader (a seeded permutation per epoch cut into `steps` nearly equal
    batches): on the CPU exactly the loader's batches, on CUDA another permutation (the device's generator).
    """

    def __init__(self, dm: MMCTRDataModule, device: torch.device, batch_size: int, seed: int) -> None:
        data = dm.dataset("train")
        self.columns = [t.to(device) for t in (data.item_seq, data.item_id, data.likes_level, data.views_level,
                                               data.label, data.user_id)]
        self.n, self.batch_size, self.seed, self.device = len(data), batch_size, seed, device
        self.steps = len(ShardedBatchSampler(self.n, batch_size, True, seed, rank=0, world_size=1))

    def steps_per_epoch(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[Batch]:
        g = torch.Generator(device=self.device).manual_seed(self.seed + epoch)
        order = torch.randperm(self.n, device=self.device, generator=g)
        for index in order.tensor_split(self.steps):
            seq, iid, likes, views, label, user = (c[index] for c in self.columns)
            yield Batch(seq.long(), iid.long(), likes.long(), views.long(), label, user)


def cycle_batches(make_epoch: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


# ---- model -----------------------------------------------------------------------------------------------
def compose_config(args: BenchArgs) -> DictConfig:
    """conf/train.yaml with `+experiment=<args.experiment>` (or `model=<args.model>`) and the given overrides:
    exactly the model config a training run of it uses."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    selection = f"+experiment={args.experiment}" if args.experiment else f"model={args.model}"
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose(config_name="train", overrides=[selection, *args.overrides])
    except Exception as err:  # hydra's MissingConfigException / OverrideParseException: one line for the user
        raise ConfigError(f"{selection}: {str(err).splitlines()[0]}") from err
    finally:
        GlobalHydra.instance().clear()


def precisions_of(args: BenchArgs) -> tuple[str, ...]:
    """`--precision 32,bf16` -> ("32", "bf16"); every name checked."""
    names = tuple(p.strip() for p in args.precision.split(","))
    if not names or any(p not in PRECISIONS for p in names) or len(set(names)) != len(names):
        raise ConfigError(f"--precision: {args.precision!r}, expected a comma-separated list of distinct values "
                          f"from {', '.join(PRECISIONS)} (e.g. 32,bf16)")
    return names


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16: torch.autocast (weights, optimizer state, loss and metrics stay fp32; module doc of CTRModule)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """The automatic-optimisation step of Lightning, spelled out: zero_grad, training_step (under autocast for
    bf16), backward, clip_grad_norm_, optimizer.step."""

    def __init__(self, module: CTRModule, clip: float | None, device: torch.device) -> None:
        self.module, self.clip, self.device = module, clip, device
        self.optimizer = module.configure_optimizers()["optimizer"]
        self.step_index = 0
        self.precision = "32"

    def step(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision, self.device):
            loss = self.module.training_step(batch, self.step_index)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.step_index += 1


def predict(net: nn.Module, batch: Batch, precision: str, device: torch.device) -> Tensor:
    with torch.inference_mode(), autocast(precision, device):
        return torch.sigmoid(net(*inputs(batch)).float())


# ---- measurements ----------------------------------------------------------------------------------------
def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def measure_training(trainer: Trainer, batches: Iterator[Batch], args: BenchArgs, device: torch.device,
                     record: dict[str, Any]) -> None:
    net = trainer.module.net
    trainer.module.train()
    configs = configurations(precisions_of(args))
    for config in configs:  # warm-up (allocator, compile) for every configuration
        use(trainer, config)
        elapsed = timed(lambda: trainer.step(next(batches)), device)
        record.setdefault("warmup_step_s", {})[config.name] = round(elapsed, 3)
    rates: dict[str, list[float]] = {c.name: [] for c in configs}
    for _ in range(args.rounds):
        round_batches = [next(batches) for _ in range(args.train_steps)]
        samples = sum(b.label.shape[0] for b in round_batches)
        for config in configs:
            use(trainer, config)
            elapsed = timed(lambda: [trainer.step(b) for b in round_batches], device)
            rates[config.name].append(samples / elapsed)
    for config in configs:
        record[f"{config.prefix}train_samples_per_s"] = statistics.median(rates[config.name])
    record["train_rounds_samples_per_s"] = rates
    use(trainer, configs[1])
    record["rss_mb"]["after_training"] = round(rss_mb(), 1)


def use(trainer: Trainer, config: Config) -> None:
    """Switch the trainer's network to `config`'s paths and precision."""
    set_fast_paths(trainer.module.net, config.fast)
    trainer.precision = config.precision


def measure_epoch(trainer: Trainer, make_epoch: Callable[[int], Iterator[Batch]], steps: int, rows: int,
                  device: torch.device, record: dict[str, Any]) -> None:
    trainer.module.train()  # the fast paths in the first precision (measure_training leaves them on)
    elapsed = timed(lambda: [trainer.step(b) for b in make_epoch(10_000)], device)
    record["epoch_seconds"] = elapsed
    record["epoch_steps"] = steps
    record["epoch_samples_per_s"] = rows / elapsed


def eval_batches(dm: MMCTRDataModule, device: torch.device) -> list[Batch]:
    return [batch_to(b, device) for b in dm.val_dataloader()]


def measure_inference(net: nn.Module, batches: list[Batch], args: BenchArgs, device: torch.device,
                      record: dict[str, Any]) -> None:
    net.eval()
    full = [b for b in batches if b.label.shape[0] == args.batch_size] or batches
    configs = configurations(precisions_of(args))
    for config in configs:
        set_fast_paths(net, config.fast)
        timed(lambda: predict(net, full[0], config.precision, device), device)  # warm-up
    rates: dict[str, list[float]] = {c.name: [] for c in configs}
    for r in range(args.rounds):
        chosen = [full[(r * args.infer_batches + i) % len(full)] for i in range(args.infer_batches)]
        samples = sum(b.label.shape[0] for b in chosen)
        for config in configs:
            set_fast_paths(net, config.fast)
            elapsed = timed(lambda: [predict(net, b, config.precision, device) for b in chosen], device)
            rates[config.name].append(samples / elapsed)
    for config in configs:
        record[f"{config.prefix}infer_samples_per_s"] = statistics.median(rates[config.name])
    record["infer_rounds_samples_per_s"] = rates
    record["rss_mb"]["after_inference"] = round(rss_mb(), 1)


def measure_parity(net: nn.Module, batches: list[Batch], args: BenchArgs, device: torch.device,
                   record: dict[str, Any]) -> None:
    """Same weights, whole validation split, plain vs fast: AUCs and the max |probability difference|; every
    further precision against the fast paths of the first: `bf16_auc`, `bf16_max_abs_prob_diff`, ..."""
    net.eval()
    labels = torch.cat([b.label for b in batches]).long().cpu()
    probs = {}
    configs = configurations(precisions_of(args))
    for config in configs:
        set_fast_paths(net, config.fast)
        probs[config.name] = torch.cat([predict(net, b, config.precision, device).cpu() for b in batches])
    for config in configs[:2]:
        record[f"auc_{config.name}"] = float(binary_auroc(probs[config.name], labels))
    record["auc_abs_diff"] = abs(record["auc_fast"] - record["auc_plain"])
    record["max_abs_prob_diff"] = float((probs["fast"] - probs["plain"]).abs().max())
    for config in configs[2:]:
        diff = (probs[config.name] - probs["fast"]).abs()
        record[f"{config.prefix}auc"] = float(binary_auroc(probs[config.name], labels))
        record[f"{config.prefix}max_abs_prob_diff"] = float(diff.max())
        record[f"{config.prefix}mean_abs_prob_diff"] = float(diff.mean())
    set_fast_paths(net, True)
    record["parity_rows"] = int(labels.numel())


def single_requests(batches: list[Batch], count: int, device: torch.device) -> list[Batch]:
    rows = [Batch(*(t[i: i + 1] for t in b)) for b in batches for i in range(b.label.shape[0])]
    return [batch_to(rows[i % len(rows)], device) for i in range(count)]


def latency_ms(run: Callable[[int], object], count: int, device: torch.device, warmup: int = 20) -> list[float]:
    for i in range(min(warmup, count)):
        run(i)
    synchronize(device)
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        run(i)
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_latency(net: nn.Module, requests: list[Batch], args: BenchArgs, device: torch.device,
                    record: dict[str, Any]) -> None:
    """Batch-1 latency with `--threads` intra-op threads (the main keys) and, where different, with 1 thread
    (`*_1thread_*` keys: the usual serving setting, one request per core; also far less sensitive to other
    processes on a small machine, where every parallel region waits for a descheduled thread)."""
    net.eval()
    main = precisions_of(args)[0]
    for threads in sorted({args.threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        suffix = "_1thread" if threads != args.threads else ""
        for config in ("plain", "fast"):
            set_fast_paths(net, config == "fast")
            times = latency_ms(lambda i: predict(net, requests[i], main, device), len(requests), device)
            prefix = "plain_" if config == "plain" else ""
            record[f"{prefix}latency{suffix}_p50_ms"] = percentile(times, 50)
            record[f"{prefix}latency{suffix}_p99_ms"] = percentile(times, 99)
    torch.set_num_threads(args.threads)
    record["latency_requests"] = len(requests)


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


def measure_onnx(net: nn.Module, requests: list[Batch], batches: list[Batch], args: BenchArgs,
                 record: dict[str, Any]) -> None:
    """Export (qin_lightning.export) in both weight formats, then onnxruntime batch-1 latency (fp32 and int8
    alternating, onnx_latency_ms), throughput, and parity with the eager model over the validation split
    (max / mean |dp|, AUC); keys `onnx_*` for the exact fp32 export, `onnx_int8_*` for `--weights int8`."""
    try:
        import onnxruntime as ort
    except ImportError:
        record["onnx_skipped"] = "onnxruntime not installed (pip install -e '.[serve]')"
        return
    from qin_lightning.serving.export import DEFAULT_BLOCK_SIZE, export_onnx, int8_onnx_bytes

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

    def feed(batch: Batch) -> dict[str, Any]:
        return onnx_feed(*inputs(batch))

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


# ---- report ----------------------------------------------------------------------------------------------
def table(record: dict[str, Any]) -> str:
    def fmt(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.1f}{unit}" if value >= 10 else f"{value:.3g}{unit}"

    def ratio(a: Any, b: Any) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    r = record.get
    lines = [
        f"{'metric':34s} {'plain':>14s} {'fast':>14s} {'fast/plain':>10s}",
        f"{'train samples/s':34s} {fmt(r('plain_train_samples_per_s')):>14s} {fmt(r('train_samples_per_s')):>14s} "
        f"{ratio(r('train_samples_per_s'), r('plain_train_samples_per_s')):>10s}",
        f"{'inference samples/s (batch ' + str(r('config')['batch_size']) + ')':34s} "
        f"{fmt(r('plain_infer_samples_per_s')):>14s} {fmt(r('infer_samples_per_s')):>14s} "
        f"{ratio(r('infer_samples_per_s'), r('plain_infer_samples_per_s')):>10s}",
        f"{'latency p50 / p99 ms (batch 1)':34s} "
        f"{fmt(r('plain_latency_p50_ms')) + ' / ' + fmt(r('plain_latency_p99_ms')):>14s} "
        f"{fmt(r('latency_p50_ms')) + ' / ' + fmt(r('latency_p99_ms')):>14s}",
        f"{'AUC (validation)':34s} {fmt(r('auc_plain')):>14s} {fmt(r('auc_fast')):>14s}",
    ]
    for p in record.get("precisions", [])[1:]:
        lines.append(f"{p + ' fast: train / infer samples/s':34s} {fmt(r(p + '_train_samples_per_s')):>14s} "
                     f"{fmt(r(p + '_infer_samples_per_s')):>14s} "
                     f"{'x' + format(r(p + '_train_speedup'), '.2f') + ' / x' + format(r(p + '_infer_speedup'), '.2f'):>14s}"
                     f" vs {record['precisions'][0]} fast; AUC {r(p + '_auc'):.6f}, max |dp| "
                     f"{fmt(r(p + '_max_abs_prob_diff'))}")
    if r("latency_1thread_p50_ms") is not None:
        lines.append(f"{'latency p50 / p99 ms, 1 thread':34s} "
                     f"{fmt(r('plain_latency_1thread_p50_ms')) + ' / ' + fmt(r('plain_latency_1thread_p99_ms')):>14s} "
                     f"{fmt(r('latency_1thread_p50_ms')) + ' / ' + fmt(r('latency_1thread_p99_ms')):>14s}")
    for key, name in (("onnx", "ONNX fp32"), ("onnx_int8", "ONNX int8")):
        for suffix, label in (("", ""), ("_1thread", ", 1 thread")):
            p50, p99 = r(f"{key}{suffix}_latency_p50_ms"), r(f"{key}{suffix}_latency_p99_ms")
            if p50 is not None:
                cell = fmt(p50) + " / " + fmt(p99)
                lines.append(f"{name + ' latency p50 / p99 ms' + label:34s} {'':>14s} {cell:>14s}")
    if r("onnx_int8_auc") is not None:
        lines.append(f"ONNX int8 vs eager: AUC {r('onnx_int8_auc'):.6f} vs {r('auc_fast'):.6f}, mean |dp| "
                     f"{fmt(r('onnx_int8_mean_abs_prob_diff'))}, max |dp| {fmt(r('onnx_int8_max_abs_prob_diff'))}")
    if r("epoch_seconds") is not None:
        lines.append(f"{'whole epoch s (fast)':34s} {'':>14s} {fmt(r('epoch_seconds')):>14s}")
    lines.append(f"max |p_fast - p_plain| = {fmt(r('max_abs_prob_diff'))}; peak RSS {fmt(r('peak_rss_mb'))} MB; "
                 f"device {r('device')}, {r('threads')} threads")
    return "\n".join(lines)


def run(args: BenchArgs, out: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the record (also written to `out` when given)."""
    if args.model not in ("qin", "din"):
        raise ConfigError(f"--model: unknown value {args.model!r}, expected 'qin' or 'din'")
    if args.experiment is not None and "," in args.experiment:
        raise ConfigError(f"--experiment {args.experiment}: one experiment per run() (run_all takes a list)")
    if args.train_batches not in ("auto", "loader", "device"):
        raise ConfigError(f"--train-batches: unknown value {args.train_batches!r}, expected auto, loader or device")
    precisions_of(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32; bf16 is opted into by --precision
    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*self.trainer.*")
    record: dict[str, Any] = {
        "command": command if command is not None else " ".join(["python -m qin_lightning.bench", *sys.argv[1:]]),
        "config": dataclasses.asdict(args),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "experiment": args.experiment or args.model,
        "precisions": list(precisions_of(args)),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "rss_mb": {"start": round(rss_mb(), 1)},
    }
    dm = load_data(args, record)
    record["rss_mb"]["after_data"] = round(rss_mb(), 1)
    if not args.data_only:
        run_model(args, dm, device, record)
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    record["loadavg_end"] = os.getloadavg()
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if out is not None:
        atomic_write_json(out, record)
    return record


def run_model(args: BenchArgs, dm: MMCTRDataModule, device: torch.device, record: dict[str, Any]) -> None:
    cfg = compose_config(args)
    module = build_module(cfg, dm).to(device)
    module.compile = args.compile
    net = module.net
    record["model"] = {
        "name": type(net).__name__.lower(),
        "n_params": sum(p.numel() for p in net.parameters()),
        "net": OmegaConf.to_container(cfg.model.net, resolve=True),
        "module": {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "net"},
        "fast_paths": fast_path_state(net),
    }
    clip = cfg.trainer.get("gradient_clip_val")
    record["gradient_clip_val"] = clip
    t0 = time.perf_counter()
    module.setup("fit")  # torch.compile of the training forward when --compile
    trainer = Trainer(module, clip, device)
    if args.train_batches == "device" or (args.train_batches == "auto" and device.type == "cuda"):
        source = DeviceBatches(dm, device, args.batch_size, args.seed)
        make_epoch, steps, rows = source.epoch, source.steps_per_epoch(), source.n
        record["train_batches"] = "device-resident columns, indexed on the device"
    else:
        def make_epoch(epoch: int) -> Iterator[Batch]:
            sampler = dm.train_sampler()
            sampler.set_epoch(epoch)
            data = dm.dataset("train")
            return (data[index] for index in sampler)

        steps, rows = len(dm.train_sampler()), len(dm.dataset("train"))
        record["train_batches"] = "datamodule train split (shuffled batches), assembled before timing"
    batches = cycle_batches(make_epoch)
    measure_training(trainer, batches, args, device, record)
    record["training_setup_and_measure_s"] = round(time.perf_counter() - t0, 2)
    if args.epoch:
        measure_epoch(trainer, make_epoch, steps, rows, device, record)
    valid = eval_batches(dm, device)
    set_fast_paths(net, True)
    with inference_form(net):  # prepared from the fast form; "plain" switches it off and computes literally
        measure_inference(net, valid, args, device, record)
        measure_parity(net, valid, args, device, record)
        requests = single_requests(valid, args.requests, device)
        measure_latency(net, requests, args, device, record)
    if args.onnx:
        measure_onnx(net, [Batch(*(t.cpu() for t in r)) for r in requests], valid, args, record)
        net.to(device)
    record["train_speedup"] = record["train_samples_per_s"] / record["plain_train_samples_per_s"]
    record["infer_speedup"] = record["infer_samples_per_s"] / record["plain_infer_samples_per_s"]
    for config in configurations(precisions_of(args))[2:]:  # e.g. bf16 / fp32, both with the fast paths
        record[f"{config.prefix}train_speedup"] = record[f"{config.prefix}train_samples_per_s"] / record["train_samples_per_s"]
        record[f"{config.prefix}infer_speedup"] = record[f"{config.prefix}infer_samples_per_s"] / record["infer_samples_per_s"]


def run_all(args: BenchArgs, out: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """`run` for every name of `--experiment A,B` in turn (one name, or none: exactly `run`). Several names
    write one JSON `{"command": ..., "experiments": {name: record}}`, rewritten after each experiment."""
    names = [n.strip() for n in args.experiment.split(",")] if args.experiment else []
    if len(names) <= 1:
        return run(dataclasses.replace(args, experiment=names[0] if names else None), out, command)
    combined: dict[str, Any] = {"command": None, "experiments": {}}
    for name in names:  # the file is rewritten after every experiment: a stopped series keeps what it measured
        record = run(dataclasses.replace(args, experiment=name), None, command)
        combined["command"] = record["command"]
        combined["experiments"][name] = record
        if out is not None:
            atomic_write_json(out, combined)
    return combined


def parse_args(argv: list[str] | None = None) -> tuple[BenchArgs, Path | None]:
    d = BenchArgs()
    p = argparse.ArgumentParser(prog="python -m qin_lightning.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("qin", "din"), default=d.model)
    p.add_argument("--experiment", default=d.experiment,
                   help="NAME[,NAME...]: measure `+experiment=NAME` (conf/experiment/, any model) instead of --model;"
                        " several names are measured in turn into one JSON; only the experiment's model config is"
                        " used (data and batch size stay the bench's)")
    p.add_argument("--data-scale", choices=("bench", "microlens", "tiny"), default=d.data_scale,
                   help="bench: MicroLens vocab with --train-rows rows; microlens: 3.6M train rows; tiny: tests")
    p.add_argument("--train-rows", type=int, default=d.train_rows)
    p.add_argument("--eval-rows", type=int, default=d.eval_rows, help="validation rows (AUC parity, inference)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--train-steps", type=int, default=d.train_steps, help="training steps per config and round")
    p.add_argument("--infer-batches", type=int, default=d.infer_batches, help="batches per config and round")
    p.add_argument("--requests", type=int, default=d.requests, help="single requests for the latency")
    p.add_argument("--onnx-requests", type=int, default=d.onnx_requests,
                   help="single requests for each ONNX latency (cycling over the --requests inputs)")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--device", default=d.device)
    p.add_argument("--precision", default=d.precision,
                   help="32 | bf16 | 32,bf16: measure every precision side by side in each round (bf16: autocast,"
                        " fp32 weights); the first gets the plain and fast keys, the others `bf16_*` (fast paths)")
    p.add_argument("--train-batches", choices=("auto", "loader", "device"), default=d.train_batches,
                   help="device: training batches indexed from device-resident columns (auto: on CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (CTRModule)")
    p.add_argument("--epoch", action="store_true", help="also time one whole epoch with the fast paths")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export and latency")
    p.add_argument("--data-only", action="store_true", help="only generate/load the data, record time and memory")
    p.add_argument("--data-root", default=d.data_root)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--override", dest="overrides", action="append", default=[],
                   help="Hydra override of the composed config, e.g. model.net.embedding_dim=64 (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON record here (atomically)")
    ns = vars(p.parse_args(argv))
    out = ns.pop("out")
    return BenchArgs(**ns), out


def main(argv: list[str] | None = None) -> int:
    args, out = parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m qin_lightning.bench", *argv_list])
    combined = run_reporting_errors(lambda: run_all(args, out, command))
    records = combined["experiments"] if "experiments" in combined else {combined["experiment"]: combined}
    for name, record in records.items():
        if args.data_only:
            print({k: record["data"][k] for k in ("rows", "generate_s", "load_s", "total_bytes_mb",
                                                  "rss_after_load_mb", "peak_rss_after_load_mb")})
        else:
            print(f"experiment {name}:\n{table(record)}")
    if out is not None:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
