"""What the benchmark reads off the machine: memory, percentiles, synchronised wall time (the CPU's name:
`qin_lightning.machine`)."""

from __future__ import annotations

import math
import resource
import time
from typing import Callable

import torch


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
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes, the device's queued work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def latency_ms(run: Callable[[int], object], count: int, device: torch.device, warmup: int = 20) -> list[float]:
    """Milliseconds of `run(i)` for i < count, one call at a time, after `warmup` untimed calls."""
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
