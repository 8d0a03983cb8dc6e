"""What every entry point shares: clear one-line errors for user mistakes, sensible CPU threads."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from qin_lightning.errors import QinError

T = TypeVar("T")
log = logging.getLogger("qin_lightning")
# the Hydra configs ship inside the package (src/qin_lightning/conf), so an installed wheel finds them anywhere
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


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


def exit_with_error(err: QinError) -> NoReturn:
    """End the process with ``error: <message>`` on stderr, exit status 2, no traceback."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def run_reporting_errors(fn: Callable[[], T], debug: bool = False) -> T:
    """Run ``fn``; a ``QinError`` ends the process with ``error: <message>`` (exit 2) and no traceback."""
    try:
        return fn()
    except QinError as err:
        if debug:
            raise
        exit_with_error(err)


def instantiate_reporting(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising a QinError raised inside a constructor as itself (one line)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, QinError):
            cause = cause.__cause__
        if isinstance(cause, QinError):
            raise cause from err
        raise
