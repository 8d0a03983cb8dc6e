"""One training step of QIN, DIN and the winner at the converged MovieLens shapes, side by side in one process:
CPU seconds per step (the process's CPU time, which other processes on a shared machine do not run on; the models
interleaved within every round, median and minimum over rounds), where each step goes (torch.profiler self CPU time per op, as shares), and the
GEMM floor: every matrix product of the profiled step (mm / addmm / bmm, with its shapes) timed alone at the same
thread count, summed, against the step's time (how fast the step could be if only its matrix products remained).

Shapes (experiments/movielens/converged.yaml): width 32, multimodal projection 32, 20-long histories, batch 2048,
1 thread, the winner with cross_rank=64; `qin-bench --data-scale converged` data (qin_lightning.bench.data).
`--before REV` also builds DIN and the winner from din.py / transformer_dcn.py as they were at git revision REV
(same weights: the same seed) and times them in the same rounds: the speed-up of the changes since REV.

    PYTHONPATH=src python experiments/bench/converged_profile.py --rounds 6 --before b7c0622~1 \
        --also din:+model.net.attention_dropout_draw=sfc64 > experiments/bench/converged_profile.txt
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from qin_lightning.bench import BenchArgs, compose_config
from qin_lightning.bench.data import synthetic_config
from qin_lightning.data.datamodule import Batch, MMCTRDataModule
from qin_lightning.training.build import build_module
from qin_lightning.training.module import CTRModule

REPO = Path(__file__).resolve().parents[2]
GEMMS = ("aten::addmm", "aten::mm", "aten::bmm")  # the kernels (aten::linear / matmul only call them)
CONVERGED = ["model.net.embedding_dim=32", "model.net.mm_projection_dim=32"]
PER_EXPERIMENT = {"transformer_dcn": ["model.net.cross_rank=64"]}
MODULE_OF = {"din": "din", "transformer_dcn": "transformer_dcn"}  # models/<file>.py of the nets --before rebuilds


def converged_data(tmp: str, rows: int) -> MMCTRDataModule:
    """`qin-bench --data-scale converged` data with `rows` training rows, generated under `tmp`."""
    config = synthetic_config(BenchArgs(data_scale="converged", train_rows=rows, eval_rows=256, seed=0))
    dm = MMCTRDataModule(str(Path(tmp) / "data"), max_len=config.max_len, batch_size=2048, synthetic=config)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def module_at(revision: str, name: str) -> str:
    """models/<name>.py as it was at `revision`, importable as `before_<name>`; returns that module's name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:src/qin_lightning/models/{name}.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"before_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"before_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return spec.name


def make_step(module: CTRModule, clip: float | None) -> Callable[[Batch, int], None]:
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


def dense_gemms(prof: profile) -> list:
    """The profiled step's dense matrix products: mm / addmm / bmm events that are neither a sparse CSR product
    (the packed histories' row_sum: its shapes would read as a dense (B, P) matrix) nor the outer call of one."""
    picked = []
    for event in prof.events():
        if event.name not in GEMMS:
            continue
        below = {child.name for child in event.cpu_children}
        parent, inside = event.cpu_parent, False
        while parent is not None:
            inside |= parent.name in GEMMS or "sparse" in parent.name
            parent = parent.cpu_parent
        if not inside and not below & {*GEMMS, "aten::_nnz", "aten::crow_indices"}:
            picked.append(event)
    return picked


def gemm_floor_s(shapes: list[tuple[str, list[list[int]]]], clock: Callable[[], float] = time.process_time) -> float:
    """Seconds (of `clock`: CPU time by default) the given matrix products take alone (each timed on fresh
    tensors, best of 3)."""
    total = 0.0
    for op, dims in shapes:
        if op == "aten::addmm":
            args = [torch.randn(*dims[1]), torch.randn(*dims[2])]
            call = lambda a=args: torch.addmm(torch.zeros(a[0].shape[0], a[1].shape[1]), a[0], a[1])
        else:
            args = [torch.randn(*dims[0]), torch.randn(*dims[1])]
            call = (lambda a=args: torch.mm(*a)) if op == "aten::mm" else (lambda a=args: torch.bmm(*a))
        call()
        best = float("inf")
        for _ in range(3):
            c0 = clock()
            call()
            best = min(best, clock() - c0)
        total += best
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="qin,din,transformer_dcn")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before", default=None, help="git revision: also time DIN and the winner as they were there")
    p.add_argument("--also", action="append", default=[],
                   help="NAME:OVERRIDE: also time experiment NAME with one more Hydra override (repeatable), e.g. "
                        "din:+model.net.attention_dropout_draw=sfc64")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.experiments.split(",")
    runs: dict[str, tuple[Callable[[Batch, int], None], CTRModule]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dm = converged_data(tmp, 2048 * 4)
        batches = list(dm.train_dataloader())
        for name in names:
            cfg = compose_config(BenchArgs(experiment=name, overrides=[*CONVERGED, *PER_EXPERIMENT.get(name, [])]))
            variants = [(name, cfg)]
            for also in args.also:
                also_name, _, override = also.partition(":")
                if also_name == name:
                    overrides = [*CONVERGED, *PER_EXPERIMENT.get(name, []), override]
                    variants.append((f"{name} {override.split('.')[-1]}",
                                     compose_config(BenchArgs(experiment=name, overrides=overrides))))
            if args.before and name in MODULE_OF:
                before = cfg.copy()
                net_class = str(cfg.model.net._target_).split(".")[-1]
                OmegaConf.update(before, "model.net._target_", f"{module_at(args.before, MODULE_OF[name])}.{net_class}")
                variants.append((f"{name}@{args.before}", before))
            for label, config in variants:
                torch.manual_seed(0)
                module = build_module(config, dm)
                runs[label] = (make_step(module, config.trainer.get("gradient_clip_val")), module)
    mean_len = float((batches[0].item_seq > 0).sum(1).float().mean())
    for step, _ in runs.values():
        step(batches[0], 0)  # warm-up
    times: dict[str, list[float]] = {label: [] for label in runs}  # CPU seconds of the process per step
    wall: dict[str, list[float]] = {label: [] for label in runs}
    for r in range(args.rounds):
        for label in list(runs) if r % 2 == 0 else reversed(list(runs)):  # every other round in reverse order
            step = runs[label][0]
            t0, c0 = time.perf_counter(), time.process_time()
            step(batches[1 + r % 3], r)
            times[label].append(time.process_time() - c0)
            wall[label].append(time.perf_counter() - t0)
    best = {label: min(t) for label, t in times.items()}
    median = {label: statistics.median(t) for label, t in times.items()}
    base = names[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 2048, history 20 (mean {mean_len:.2f} items "
          f"in the timed batches); loadavg at the end {', '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}"
          f"\n\nCPU seconds per training step over {args.rounds} interleaved rounds, and x {base}'s (the process's "
          f"CPU time: other processes on a shared machine do not run on its clock; wall medians beside):")
    for label in runs:
        print(f"  {label:26s} min {best[label]:6.3f} x{best[label] / best[base]:5.2f}  median {median[label]:6.3f} "
              f"x{median[label] / median[base]:5.2f}  (wall median {statistics.median(wall[label]):6.3f})  "
              f"rounds {', '.join(f'{t:.3f}' for t in times[label])}")
    for label, (step, module) in runs.items():
        if label != label.split("@")[0].split(" ")[0]:  # the variants: timed only
            continue
        with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
            step(batches[1], 0)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        by_op = collections.Counter({e.key: e.self_cpu_time_total for e in events})
        gemms = dense_gemms(prof)
        gemm_us = sum(e.self_cpu_time_total for e in gemms)
        gemm_flops = sum(e.flops for e in gemms)
        shapes = [(e.name, [list(s) for s in e.input_shapes]) for e in gemms]
        floor = gemm_floor_s(shapes)
        n_params = sum(p.numel() for p in module.parameters())
        print(f"\n## {label}: {n_params:,} parameters; profiled step {total / 1e6:.3f} s of self CPU time; "
              f"dense matrix products {100 * gemm_us / total:.1f}% of it ({len(shapes)} calls, "
              f"{gemm_flops / 1e9:.1f} GFLOP at {gemm_flops / max(gemm_us, 1) / 1e3:.1f} GFLOP/s in the step)")
        print(f"   GEMM floor: those products alone take {floor:.3f} s ({gemm_flops / 1e9 / floor:.1f} GFLOP/s) = "
              f"x{floor / best[base]:.2f} {base}'s fastest step; this model's fastest step is x{best[label] / floor:.2f} "
              f"its floor")
        for key, us in by_op.most_common(12):
            print(f"  {key[:52]:52s} {100 * us / total:6.1f}%")


if __name__ == "__main__":
    main()
