"""The machine a process runs on: what it is (CPU, SIMD level, bf16 kernels, GPU; recorded in every
``results.json`` as ``machine`` so that seconds from different machines are never compared as if they came from
one), what it can still give (CPUs, RAM: cgroup limit, MemAvailable), and the process settings that depend on it
(intra-op threads; glibc's freed-memory reuse).

Freed-memory reuse (``reuse_freed_memory``) keeps freed tensor memory in the process for the next step (glibc's
`mallopt`); it is exact: it changes only where memory comes from.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on
`free`, so a training step whose activations are tens of MiB (the winner's transformer at batch 2048: a ~90 MiB
gradient buffer per attention layer) faults every page in again on every step. `M_MMAP_MAX = 0` serves those
blocks from the heap and a high `M_TRIM_THRESHOLD` keeps freed heap pages, so the next step reuses them. The
cost: the process keeps its peak heap until it exits instead of returning it between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from qin_lightning.errors import QinError

CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")

def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (avx512_bf16, AMX...)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def auto_precision(on_gpu: bool) -> str:
    """What ``trainer.precision=auto`` trains in: ``bf16-mixed`` where the device has bf16 kernels (a CUDA GPU
    that supports bf16; a CPU with avx512_bf16 / AMX), ``32-true`` elsewhere (without those kernels bf16 matrix
    products take a fallback many times slower than fp32)."""
    has_bf16 = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_bf16()
    return "bf16-mixed" if has_bf16 else "32-true"


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """The facts that decide a run's speed on this machine (`device`: the one that trained, if a GPU)."""
    facts: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512
        "cpu_bf16_kernels": cpu_has_bf16(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if device is not None and device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def cgroup_available() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2 or v1), None when there is no limit."""
    for limit_file, usage_file in ((CGROUP_V2 / "memory.max", CGROUP_V2 / "memory.current"),
                                   (CGROUP_V1 / "memory.limit_in_bytes", CGROUP_V1 / "memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 reports "no limit" as ~2^63
            return max(limit - usage, 0)
    return None


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (Linux), None elsewhere."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def address_space_available(status: Path = Path("/proc/self/status")) -> int | None:
    """The address-space limit (``RLIMIT_AS``, e.g. ``ulimit -v``) minus what this process maps now (VmSize);
    None when there is no limit or it cannot be read."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, limit - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_available() -> int | None:
    """Bytes of RAM this process may still use (smallest known bound: cgroup, MemAvailable, address-space limit),
    None when nothing can be read."""
    known = [v for v in (cgroup_available(), meminfo_available(), address_space_available()) if v is not None]
    if not known:
        try:
            known = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(known)


def usable_cpus() -> int:
    """The CPUs this process may run on: ``os.process_cpu_count()`` (Python 3.13+), else the affinity mask
    (Linux), else ``os.cpu_count()`` (macOS, Windows); 1 when nothing is known."""
    if hasattr(os, "process_cpu_count"):
        count = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    return max(1, count or 1)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (None: torch's default, capped at the cores this process may use)."""
    if threads is None:
        threads = min(torch.get_num_threads(), usable_cpus())
    if threads < 1:
        raise QinError(f"config key 'threads' must be >= 1 or null, got {threads}")
    torch.set_num_threads(threads)


M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before any trimming


def reuse_freed_memory(enabled: bool) -> bool:
    """With `enabled`, set glibc's M_MMAP_MAX = 0 and M_TRIM_THRESHOLD = 2 GiB for this process; True when it
    was applied (Linux with glibc), False otherwise (disabled, another OS or C library: nothing changes)."""
    if not enabled or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


class CreationBudgetExceeded(QinError):
    """Building a network created more tensors or elements than its budget (`creation_budget`)."""


class _CreationBudget(TorchFunctionMode):
    """Counts the tensors the factory functions create (any device, meta included) and stops at the budget."""

    def __init__(self, max_elements: int, max_tensors: int, what: str) -> None:
        super().__init__()
        self.max_elements, self.max_tensors, self.what = max_elements, max_tensors, what
        self.elements = self.tensors = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in FACTORY_FUNCTIONS and isinstance(result, torch.Tensor):
            self.tensors += 1
            self.elements += result.numel()
            if self.tensors > self.max_tensors or self.elements > self.max_elements:
                raise CreationBudgetExceeded(
                    f"{self.what}: expected at most {self.max_tensors:,} tensors of {self.max_elements:,} elements "
                    f"in all, got more (stopped after {self.tensors:,} tensors of {self.elements:,} elements)"
                )
        return result


FACTORY_FUNCTIONS = frozenset({
    "empty", "zeros", "ones", "full", "rand", "randn", "randint", "randperm", "tensor", "as_tensor", "arange",
    "eye", "linspace", "logspace", "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
    "randint_like", "empty_strided", "tril_indices", "triu_indices",
})  # fmt: skip


@contextmanager
def creation_budget(max_elements: int, max_tensors: int, what: str) -> Iterator[None]:
    """Within the block, creating more than `max_tensors` tensors or `max_elements` elements in all (meta device
    included) raises `CreationBudgetExceeded` at once: a config declaring 3 million layers stops at the first
    layer over the budget instead of building them all, even shapes only."""
    with _CreationBudget(max_elements, max_tensors, what):
        yield
