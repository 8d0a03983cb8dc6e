"""Does `model.compile=true` (torch.compile of the network) make the fp32 training step faster on this CPU? The
published QIN at the whole-run size (experiments/bench/whole_run.py: 3,000 items, 500 tags, 64-long histories of
mean 8, batch 2048, 1 thread; the fast paths, fp32), built twice from one seed in one process, eager and compiled; after the
compiled one's warm-up steps (compile time recorded), the two alternate for `--rounds` rounds; CPU seconds of the
process per step (other processes on a shared machine do not run on its clock) and wall seconds, written to `--out`.
Under torch.compile the packed histories are off (a data-dependent size): the compiled step runs the dense grid.

    PYTHONPATH=src python experiments/bench/compile_check.py --out experiments/bench/compile_check.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from qin_lightning.bench import BenchArgs, compose_config
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.files import atomic_write_json
from qin_lightning.machine import machine
from qin_lightning.training.build import build_module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="1: the CPU time is the work (idle pool threads spin)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = SyntheticConfig(num_items=3000, num_tags=500, train_rows=2048 * 4, valid_rows=256, test_rows=64,
                             max_len=64, mean_history_len=8.0, seed=0, name="compile_check")
    steps, warmup = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dm = MMCTRDataModule(str(Path(tmp) / "data"), max_len=64, batch_size=2048, synthetic=config)
        dm.prepare_data()
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        for name, compiled in (("eager", False), ("compiled", True)):
            cfg = compose_config(BenchArgs())  # the published QIN (model=qin), fast paths on
            torch.manual_seed(0)
            module = build_module(cfg, dm)
            module.compile_net = compiled
            module.setup("fit")  # torch.compile of the training forward when compiled
            optimizer = module.configure_optimizers()["optimizer"]
            module.train()

            def step(index: int, module=module, optimizer=optimizer, clip=cfg.trainer.gradient_clip_val) -> None:
                optimizer.zero_grad(set_to_none=True)
                module.training_step(batches[index % len(batches)], index).backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
                optimizer.step()

            t0 = time.perf_counter()
            step(0), step(1)  # compiles forward and backward
            warmup[name] = round(time.perf_counter() - t0, 1)
            steps[name] = step
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in list(steps) if r % 2 == 0 else reversed(list(steps)):
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name](2 + r)
            cpu[name].append(round(time.process_time() - c0, 3))
            wall[name].append(round(time.perf_counter() - t0, 3))
    record = {
        "command": "python experiments/bench/compile_check.py " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "cpu_count": os.cpu_count()}, "loadavg_end": os.getloadavg(),
        "warmup_two_steps_s": warmup, "cpu_s_per_step": cpu, "wall_s_per_step": wall,
        "median_cpu_s_per_step": {name: statistics.median(v) for name, v in cpu.items()},
        "compiled_over_eager_cpu": statistics.median(cpu["compiled"]) / statistics.median(cpu["eager"]),
    }
    atomic_write_json(args.out, record)
    print({k: record[k] for k in ("warmup_two_steps_s", "median_cpu_s_per_step", "compiled_over_eager_cpu")})


if __name__ == "__main__":
    main()
