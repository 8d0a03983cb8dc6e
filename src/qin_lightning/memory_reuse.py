"""Keep freed tensor memory in the process for reuse (glibc's `mallopt`): exact, it changes only where memory
comes from.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on
`free`, so a training step whose activations are tens of MiB (the winner's transformer at batch 2048: a ~90 MiB
gradient buffer per attention layer) faults every page in again on every step. `M_MMAP_MAX = 0` serves those
blocks from the heap and a high `M_TRIM_THRESHOLD` keeps freed heap pages, so the next step reuses them. The
cost: the process keeps its peak heap until it exits instead of returning it between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
