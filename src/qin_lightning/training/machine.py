"""Which machine a run ran on: the CPU (its name, the SIMD level torch uses, whether it has bf16 kernels), the
GPU if one trained, torch's version and thread count. Recorded in every ``results.json`` (``machine``) so that
seconds per epoch from different machines are never compared as if they came from one."""

from __future__ import annotations

import platform
from typing import Any

import torch


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
