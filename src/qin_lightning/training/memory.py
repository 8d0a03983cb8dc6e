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

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qin_lightning.errors import ConfigError
from qin_lightning.machine import CreationBudgetExceeded, cpu_available, creation_budget
from qin_lightning.models.build import build_network

BYTES_PER_PARAMETER = 4 * 4  # fp32 weight + gradient + Adam exp_avg + exp_avg_sq
MAX_BUILD_TENSORS = 100_000  # tensors a network may create while it is built (ours: a few hundred)


def build_budget_elements() -> int:
    """Elements a network may create while it is built for counting: as many 4-byte values as the largest memory
    there is (RAM available, every GPU's total) could hold; a config declaring more (num_layers=3e6) stops at the
    first tensor over it instead of building every layer on the meta device."""
    sizes = [cpu_available() or 0]
    if torch.cuda.is_available():
        sizes += [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return max(sizes) // 4 if max(sizes) else 2**62


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
    limit = build_budget_elements()
    what = (f"model.net: building it on the meta device to count its parameters (at most the {limit:,} elements "
            "that 4-byte weights in all the memory there is could hold)")
    try:
        with creation_budget(limit, MAX_BUILD_TENSORS, what), torch.device("meta"):
            net: nn.Module = build_network(net_cfg, torch.empty(item_tags.shape, dtype=item_tags.dtype),
                                           torch.empty(item_mm.shape, dtype=item_mm.dtype), num_tags)
    except CreationBudgetExceeded as err:
        raise ConfigError(f"{err}; make the model smaller (model.net.interaction.num_layers, embedding_dim) or check "
                          "the data (memory_check=false skips this check)") from None
    parameters = sum(p.numel() for p in net.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    return TrainingMemory(parameters, parameters * BYTES_PER_PARAMETER, buffers)


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
