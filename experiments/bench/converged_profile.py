"""One training step of QIN, DIN and the winner at the converged MovieLens shapes, side by side in one process:
time per step (median over rounds, the models interleaved within each round) and where each step goes
(torch.profiler self CPU time per op, as shares of the step; matrix products' achieved GFLOP/s).

Shapes (experiments/movielens/converged.yaml): width 32, multimodal projection 32, 20-long histories, batch 2048,
1 thread, the winner with cross_rank=64; synthetic data at the MovieLens vocabulary (9,725 items, 1,019 tags,
5 tags per item, 128-d vectors), histories geometric with mean parameter 150 capped at 20 (mean 18.7, 88% full:
ml-latest-small's training rows have mean 18.71, 87.8% full).

    PYTHONPATH=src python experiments/bench/converged_profile.py > experiments/bench/converged_profile.txt
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from qin_lightning.bench import BenchArgs, compose_config
from qin_lightning.data.datamodule import Batch, MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.training.build import build_module
from qin_lightning.training.module import CTRModule

GEMMS = ("aten::addmm", "aten::mm", "aten::bmm")  # the kernels (aten::linear / matmul only call them)
CONVERGED = ["model.net.embedding_dim=32", "model.net.mm_projection_dim=32"]
PER_EXPERIMENT = {"transformer_dcn": ["model.net.cross_rank=64"]}


def converged_data(tmp: str, rows: int) -> MMCTRDataModule:
    """The synthetic stand-in of the converged MovieLens data (sizes in the module docstring)."""
    config = SyntheticConfig(num_items=9_725, num_tags=1_019, num_users=610, train_rows=rows, valid_rows=256,
                             test_rows=64, max_len=20, mean_history_len=150.0, seed=0, name="converged")
    dm = MMCTRDataModule(str(Path(tmp) / "data"), max_len=20, batch_size=2048, synthetic=config)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def make_step(module: CTRModule, clip: float | None) -> callable:
    """One training step as the bench times it: loss, backward, gradient clipping, optimizer step."""
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()

    def step(batch: Batch, index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, index).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="qin,din,transformer_dcn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for every model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.experiments.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        dm = converged_data(tmp, 2048 * 4)
        batches = list(dm.train_dataloader())
        steps = {}
        for name in names:
            overrides = [*CONVERGED, *PER_EXPERIMENT.get(name, []), *args.override]
            cfg = compose_config(BenchArgs(experiment=name, overrides=overrides))
            module = build_module(cfg, dm)
            steps[name] = (make_step(module, cfg.trainer.get("gradient_clip_val")), module)
    mean_len = float((batches[0].item_seq > 0).sum(1).float().mean())
    for name, (step, _) in steps.items():
        step(batches[0], 0)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name, (step, _) in steps.items():
            t0 = time.perf_counter()
            step(batches[1 + r % 3], r)
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 2048, history 20 (mean {mean_len:.2f} items)\n")
    print("time per training step, median of {} interleaved rounds (s); ratio to {}:".format(args.rounds, names[0]))
    for name in names:
        print(f"  {name:18s} {median[name]:7.3f}  x{median[name] / median[names[0]]:5.2f}   "
              f"rounds {', '.join(f'{t:.3f}' for t in times[name])}")
    for name, (step, module) in steps.items():
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for i in range(args.profile_steps):
                step(batches[1 + i % 3], i)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        by_op = collections.Counter({e.key: e.self_cpu_time_total for e in events})
        n_params = sum(p.numel() for p in module.parameters())
        gemm_us = sum(e.self_cpu_time_total for e in events if e.key in GEMMS)
        gemm_flops = sum(e.flops for e in events if e.key in GEMMS)
        print(f"\n## {name}: {n_params:,} parameters; profiled self CPU time {total / 1e3 / args.profile_steps:.0f} "
              f"ms per step; matrix products {100 * gemm_us / total:.1f}% of it, "
              f"{gemm_flops / args.profile_steps / 1e9:.1f} GFLOP per step at "
              f"{gemm_flops / max(gemm_us, 1) / 1e3:.1f} GFLOP/s")
        for key, us in by_op.most_common(14):
            print(f"  {key[:52]:52s} {100 * us / total:6.1f}%")


if __name__ == "__main__":
    main()
