"""One benchmark run: the data, the experiment's network, every measurement in turn, the JSON record."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from qin_lightning.bench.args import BenchArgs, PROG, check, configurations, overrides_for, parse_args, precisions_of
from qin_lightning.bench.data import (DeviceBatches, cycle_batches, eval_batches, load_data, loader_epochs,
                                     single_requests)
from qin_lightning.bench.eager import (TrainingSteps, measure_epoch, measure_inference, measure_latency, measure_parity,
                                      measure_training)
from qin_lightning.bench.onnx import measure_onnx
from qin_lightning.bench.system import peak_rss_mb, rss_mb
from qin_lightning.bench.table import table
from qin_lightning.config import CONFIG_DIR
from qin_lightning.data.datamodule import Batch, MMCTRDataModule
from qin_lightning.errors import ConfigError, run_reporting_errors
from qin_lightning.files import atomic_write_json
from qin_lightning.machine import cpu_name, machine
from qin_lightning.models.inference import fast_path_state, inference_form, set_fast_paths
from qin_lightning.training.build import build_module


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


def run(args: BenchArgs, out: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the record (also written to `out` when given)."""
    check(args)
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
        "command": command if command is not None else " ".join([PROG, *sys.argv[1:]]),
        "config": dataclasses.asdict(args),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "experiment": args.experiment or args.model,
        "precisions": list(precisions_of(args)),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": machine(device),  # CPU name, SIMD level, bf16 kernels, torch, threads (and the GPU)
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
    """Build the experiment's network on the bench data and take every measurement of the eager (and ONNX) model."""
    cfg = compose_config(args)
    module = build_module(cfg, dm).to(device)
    module.compile_net = args.compile
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
    trainer = TrainingSteps(module, clip, device)
    if args.train_batches == "device" or (args.train_batches == "auto" and device.type == "cuda"):
        source = DeviceBatches(dm, device, args.batch_size, args.seed)
        make_epoch, steps, rows = source.epoch, source.steps_per_epoch(), source.n
        record["train_batches"] = "device-resident columns, indexed on the device"
    else:
        make_epoch = loader_epochs(dm)
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
    overrides = overrides_for(args, names)
    if len(names) <= 1:
        one = names[0] if names else None
        return run(dataclasses.replace(args, experiment=one, overrides=overrides.get(one, args.overrides)), out,
                   command)
    combined: dict[str, Any] = {"command": None, "experiments": {}}
    for name in names:  # the file is rewritten after every experiment: a stopped series keeps what it measured
        record = run(dataclasses.replace(args, experiment=name, overrides=overrides[name]), None, command)
        combined["command"] = record["command"]
        combined["experiments"][name] = record
        first = combined["experiments"][names[0]]
        # seconds per training step (fast paths) relative to the first experiment's, from the samples/s
        combined["train_step_time_vs_first"] = {
            n: first["train_samples_per_s"] / r["train_samples_per_s"] for n, r in combined["experiments"].items()}
        combined["train_step_cpu_time_vs_first"] = {  # the same from CPU seconds per step (see measure_training)
            n: r["train_cpu_s_per_step"] / first["train_cpu_s_per_step"] for n, r in combined["experiments"].items()}
        if out is not None:
            atomic_write_json(out, combined)
    return combined


def main(argv: list[str] | None = None) -> int:
    """`python -m qin_lightning.bench` / `qin-bench`: run, print the table, write `--out`."""
    args, out = parse_args(argv)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
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

