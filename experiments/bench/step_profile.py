"""Where a training step of the published QIN goes at the whole-run size (experiments/bench/whole_run.py: 3,000
items, 500 tags, 64-long histories of mean length 8, batch 2048, 2 threads; the fast paths, fp32): torch.profiler
over `--steps` steps after two warm-up steps, self CPU time per op and the matrix products' achieved GFLOP/s; then
the roofline: the step's dense matrix products (shapes from the profile) timed alone at the same thread count,
against the step's own wall time (fastest of `--steps` steps timed outside the profiler).

    PYTHONPATH=src python experiments/bench/step_profile.py > experiments/bench/step_profile.txt
    PYTHONPATH=src python experiments/bench/step_profile.py --override model.net.interaction.dropout_draw=sfc64
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from qin_lightning.bench import BenchArgs, compose_config
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.machine import machine
from qin_lightning.training.build import build_module

GEMMS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from converged_profile import dense_gemms, gemm_floor_s  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--override", action="append", default=[], help="a model config override (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SyntheticConfig(num_items=3000, num_tags=500, train_rows=2048 * (args.steps + 2), valid_rows=256,
                             test_rows=64, max_len=64, mean_history_len=8.0, seed=0, name="profile")
    with tempfile.TemporaryDirectory() as tmp:
        dm = MMCTRDataModule(str(Path(tmp) / "data"), max_len=64, batch_size=2048, synthetic=config)
        dm.prepare_data()
        dm.setup("fit")
        cfg = compose_config(BenchArgs(overrides=args.override))  # the published QIN (model=qin), fast paths on
        module = build_module(cfg, dm)
        optimizer = module.configure_optimizers()["optimizer"]
        clip = cfg.trainer.gradient_clip_val
        module.train()
        batches = list(dm.train_dataloader())

        def step(index: int) -> None:
            optimizer.zero_grad(set_to_none=True)
            module.training_step(batches[index], index).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            optimizer.step()

        step(0), step(1)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
            for i in range(2, 2 + args.steps):
                step(i)
        step_s = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            step(2 + i)
            step_s.append(time.perf_counter() - t0)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_op = collections.Counter({e.key: e.self_cpu_time_total for e in events})
    n_params = sum(p.numel() for p in module.parameters())
    print(f"{machine()}; overrides {args.override or 'none'}")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps of batch 2048, "
          f"{n_params:,} parameters; self CPU time {total / 1e6:.2f} s = {total / 1e3 / args.steps:.0f} ms per step\n")
    print(f"{'op':40s} {'share':>7s} {'ms/step':>9s}")
    for key, us in by_op.most_common(15):
        print(f"{key:40s} {100 * us / total:6.1f}% {us / 1e3 / args.steps:9.1f}")
    gemm_us = sum(e.self_cpu_time_total for e in events if e.key in GEMMS)
    print(f"\nmatrix products ({', '.join(GEMMS)}): {100 * gemm_us / total:.1f}% of the step (self time; the packed "
          f"histories' sparse CSR products included)")
    dense = dense_gemms(prof)
    floor = gemm_floor_s([(e.name, [list(x) for x in e.input_shapes]) for e in dense], time.perf_counter) / args.steps
    dense_flops = sum(e.flops for e in dense) / args.steps
    dense_us = sum(e.self_cpu_time_total for e in dense)
    print(f"dense matrix products: {100 * dense_us / total:.1f}% of the step, {dense_flops / 1e9:.1f} GFLOP per step, "
          f"{dense_flops * args.steps / max(dense_us, 1) / 1e3:.1f} GFLOP/s achieved in the step (the sparse products' "
          f"dense-equivalent FLOPs, counted by the profiler from their shapes, left out)")
    print(f"roofline: the step's dense matrix products ({dense_flops / 1e9:.1f} GFLOP per step) take {floor:.3f} s "
          f"alone ({dense_flops / 1e9 / floor:.1f} GFLOP/s at {args.threads} threads); the step takes {min(step_s):.3f} s "
          f"(fastest of {args.steps}, wall): {min(step_s) / floor:.2f}x the products' time, "
          f"{100 * floor / min(step_s):.0f}% of it spent in them")


if __name__ == "__main__":
    main()
