"""Two candidate exact levers for the published QIN's fp32 step, measured: (1) the QNN's three matrix products
(forward x W^T + b, backward g W and g^T x; B = 2048, D = 1024, R = 4) in MKL's sgemm (torch.addmm / torch.mm,
what training uses) against oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise), interleaved rounds;
(2) whether Adam's `foreach` and `fused` forms reproduce the default (for-loop on the CPU) bit for bit.

    PYTHONPATH=src python experiments/bench/fp32_levers.py > experiments/bench/fp32_levers.txt
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from qin_lightning.machine import machine


def gemm_cases(batch: int, dim: int, rows: int) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]]:
    """name -> (MKL form, oneDNN form) of the QNN layer's three products."""
    x, w, b, g = torch.randn(batch, dim), torch.randn(dim * rows, dim) * 0.03, torch.randn(dim * rows), torch.randn(
        batch, dim * rows)
    wt, gt, xt = w.t().contiguous(), g.t().contiguous(), x.t().contiguous()
    onednn = torch.ops.mkldnn._linear_pointwise
    return {
        "forward x W^T + b": (lambda: torch.addmm(b, x, w.t()), lambda: onednn(x, w, b, "none", [], "")),
        "backward g W": (lambda: torch.mm(g, w), lambda: onednn(g, wt, None, "none", [], "")),
        "backward g^T x": (lambda: torch.mm(g.t(), x), lambda: onednn(gt, xt, None, "none", [], "")),
    }


def adam_parameters(fused: bool | None, foreach: bool | None, steps: int = 50) -> torch.Tensor:
    """A small MLP's parameters after `steps` Adam steps on seeded data (the same for every form)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3, fused=fused, foreach=foreach)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(128, 64, generator=data), torch.randn(128, 1, generator=data)
        loss = ((net(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per form (after 3 warm-up calls)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, dim, rows = 2048, 1024, 4
    flop = 2 * batch * dim * dim * rows
    print(f"{machine()}; B={batch}, D={dim}, R={rows}; fastest of {args.rounds} interleaved rounds (wall)")
    for name, (mkl, dnn) in gemm_cases(batch, dim, rows).items():
        seconds: dict[str, list[float]] = {"MKL": [], "oneDNN": []}
        for _ in range(3):
            mkl(), dnn()
        for _ in range(args.rounds):
            for key, call in (("MKL", mkl), ("oneDNN", dnn)):
                start = time.perf_counter()
                call()
                seconds[key].append(time.perf_counter() - start)
        rates = {k: flop / min(v) / 1e9 for k, v in seconds.items()}
        print(f"  {name:18s} MKL {rates['MKL']:6.1f} GFLOP/s  oneDNN {rates['oneDNN']:6.1f} GFLOP/s  "
              f"oneDNN / MKL {rates['oneDNN'] / rates['MKL']:.2f}x  max |diff| {(mkl() - dnn()).abs().max():.1e}")
    default = adam_parameters(fused=None, foreach=None)
    for label, fused, foreach in (("foreach", None, True), ("fused", True, None)):
        other = adam_parameters(fused=fused, foreach=foreach)
        print(f"Adam {label:7s} vs default after 50 steps: bitwise equal {torch.equal(default, other)}, "
              f"max |diff| {(default - other).abs().max():.1e}")


if __name__ == "__main__":
    main()
