"""Will training fit in memory? Known before the model is allocated, so a run stops with one line, not a kill.

The network is first built on PyTorch's ``meta`` device (shapes only, no storage) to count its parameters.
Training in fp32 with Adam holds, per parameter, the weight, its gradient and Adam's two moments:
``16 bytes x parameters``, plus the item tables (buffers) on the training device. Activations come on top,
so this is a lower bound: it catches a model that cannot possibly fit (e.g. a tag table sized by a stray id).

Available memory: on a GPU, the total memory of the smallest visible device (asking for the free memory would
create a CUDA context, on device 0 for every DDP rank); on the CPU the smallest of the cgroup
limit minus usage (v2 ``memory.max``/``memory.current``, v1 ``memory.limit_in_bytes``/``usage_in_bytes``),
``MemAvailable`` of /proc/meminfo and, where neither exists, ``sysconf`` available physical pages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qin_lightning.cli import instantiate_reporting
from qin_lightning.errors import ConfigError

BYTES_PER_PARAMETER = 4 * 4  # fp32 weight + gradient + Adam exp_avg + exp_avg_sq
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class TrainingMemory:
    """Parameter count and the bytes training needs at least (fp32 Adam) on the training device."""

    parameters: int
    parameter_bytes: int  # weights + gradients + 2 Adam states
    buffer_bytes: int  # item tables and other buffers

    def needed(self, on_gpu: bool) -> int:
        """Bytes that must be free: buffers count too on a GPU (on the CPU the data already holds them)."""
        return self.parameter_bytes + (self.buffer_bytes if on_gpu else 0)


def estimate_training_memory(net_cfg: DictConfig, item_tags: Tensor, item_mm: Tensor, num_tags: int) -> TrainingMemory:
    """Build ``net_cfg`` on the meta device (no storage) and count what training it in fp32 with Adam needs."""
    with torch.device("meta"):
        net: nn.Module = instantiate_reporting(
            net_cfg,
            item_tags=torch.empty(item_tags.shape, dtype=item_tags.dtype),
            item_mm=torch.empty(item_mm.shape, dtype=item_mm.dtype),
            num_tags=num_tags,
        )
    parameters = sum(p.numel() for p in net.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    return TrainingMemory(parameters, parameters * BYTES_PER_PARAMETER, buffers)


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


def cpu_available() -> int | None:
    """Bytes of RAM this process may still use (smallest known bound), None when nothing can be read."""
    known = [v for v in (cgroup_available(), meminfo_available()) if v is not None]
    if not known:
        try:
            known = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(known)


def trains_on_gpu(accelerator: str | None) -> bool:
    """Whether Lightning will put the model on a CUDA device for this ``trainer.accelerator``."""
    name = str(accelerator or "auto").lower()
    return torch.cuda.is_available() and name in ("auto", "gpu", "cuda")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_training_memory(memory: TrainingMemory, on_gpu: bool) -> None:
    """ConfigError when training cannot fit in the memory available now (nothing is allocated yet)."""
    if on_gpu:  # total, not free, memory: asking for free memory would create a CUDA context on every rank
        available = min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        where = "on the GPU (its total memory)"
    else:
        found = cpu_available()
        if found is None:
            return  # nothing to compare with on this platform
        available, where = found, "available in RAM (cgroup limit / MemAvailable)"
    needed = memory.needed(on_gpu)
    if needed > available:
        raise ConfigError(
            f"the model has {memory.parameters:,} parameters; training it (fp32 weights, gradients and 2 Adam "
            f"states{', item tables' if on_gpu else ''}) needs at least {_gib(needed)}, but only {_gib(available)} "
            f"is {where}; make the model smaller (model.net.embedding_dim, data.num_tags) or check the data "
            "(memory_check=false skips this check)"
        )
