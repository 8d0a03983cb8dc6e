"""Measurements of the eager network, every configuration (plain, fast, bf16 ...) side by side in each round."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.bench.args import BenchArgs, Config, configurations, precisions_of
from qin_lightning.bench.data import inputs
from qin_lightning.bench.system import latency_ms, percentile, rss_mb, timed
from qin_lightning.data.datamodule import Batch
from qin_lightning.models.inference import set_fast_paths
from qin_lightning.training.module import CTRModule


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16: torch.autocast (weights, optimizer state, loss and metrics stay fp32; module doc of CTRModule)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainingSteps:
    """The automatic-optimisation step of Lightning, spelled out: zero_grad, training_step (under autocast for
    bf16), backward, clip_grad_norm_, optimizer.step. Not a second training loop: the bench times single steps
    and switches configurations (plain, fast, bf16) between them within one round, which Lightning's loop
    cannot do; training itself always runs in Lightning."""

    def __init__(self, module: CTRModule, clip: float | None, device: torch.device) -> None:
        self.module, self.clip, self.device = module, clip, device
        self.optimizer = module.configure_optimizers()["optimizer"]
        self.step_index = 0
        self.precision = "32"

    def use(self, config: Config) -> None:
        """Switch the network to `config`'s paths and the steps to its precision."""
        set_fast_paths(self.module.net, config.fast)
        self.precision = config.precision

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
    """Click probabilities of one batch (inference mode, fp32 output)."""
    with torch.inference_mode(), autocast(precision, device):
        return torch.sigmoid(net(*inputs(batch)).float())


def measure_training(trainer: TrainingSteps, batches: Iterator[Batch], args: BenchArgs, device: torch.device,
                     record: dict[str, Any]) -> None:
    """`{prefix}train_samples_per_s`: the median over rounds; each round times every configuration on the same
    `--train-steps` batches. `{prefix}train_cpu_s_per_step`: the process's CPU seconds per step (median over rounds;
    on a shared machine less disturbed than wall time by other processes, which do not run on its clock)."""
    trainer.module.train()
    configs = configurations(precisions_of(args))
    for config in configs:  # warm-up (allocator, compile) for every configuration
        trainer.use(config)
        elapsed = timed(lambda: trainer.step(next(batches)), device)
        record.setdefault("warmup_step_s", {})[config.name] = round(elapsed, 3)
    rates: dict[str, list[float]] = {c.name: [] for c in configs}
    cpu: dict[str, list[float]] = {c.name: [] for c in configs}
    for _ in range(args.rounds):
        round_batches = [next(batches) for _ in range(args.train_steps)]
        samples = sum(b.label.shape[0] for b in round_batches)
        for config in configs:
            trainer.use(config)
            cpu_start = time.process_time()
            elapsed = timed(lambda: [trainer.step(b) for b in round_batches], device)
            cpu[config.name].append((time.process_time() - cpu_start) / len(round_batches))
            rates[config.name].append(samples / elapsed)
    for config in configs:
        record[f"{config.prefix}train_samples_per_s"] = statistics.median(rates[config.name])
        record[f"{config.prefix}train_cpu_s_per_step"] = statistics.median(cpu[config.name])
    record["train_rounds_samples_per_s"] = rates
    record["train_rounds_cpu_s_per_step"] = cpu
    trainer.use(configs[1])
    record["rss_mb"]["after_training"] = round(rss_mb(), 1)


def measure_epoch(trainer: TrainingSteps, make_epoch: Callable[[int], Iterator[Batch]], steps: int, rows: int,
                  device: torch.device, record: dict[str, Any]) -> None:
    """One whole training epoch with the fast paths in the first precision (measure_training leaves them on)."""
    trainer.module.train()
    elapsed = timed(lambda: [trainer.step(b) for b in make_epoch(10_000)], device)
    record["epoch_seconds"] = elapsed
    record["epoch_steps"] = steps
    record["epoch_samples_per_s"] = rows / elapsed


def measure_inference(net: nn.Module, batches: list[Batch], args: BenchArgs, device: torch.device,
                      record: dict[str, Any]) -> None:
    """`{prefix}infer_samples_per_s`: full batches of the validation split, every configuration in each round."""
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
