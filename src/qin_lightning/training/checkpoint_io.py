"""How Lightning reads and writes our checkpoints during training (``Trainer(plugins=[SafeCheckpointIO()])``).

- Read (``trainer.fit(ckpt_path=...)``, i.e. ``train ckpt_path=last|<file>``, on every rank): through
  ``qin_lightning.checkpoint.read_checkpoint``, i.e. ``torch.load(weights_only=True)`` unless the user passed
  ``trust_checkpoint=true``; a refused, truncated or foreign file is one ``error:`` line.
- Write (best, ``last.ckpt``, mid-epoch and interrupt checkpoints): ``torch.save`` into a temporary file beside
  the target, fsync, rename (``qin_lightning.files.atomic_writer``). A ``kill -9`` or a full disk at any moment
  leaves the previous complete file; a failed write is a one-line error naming the file. The temporary file of
  a killed write is removed by the next successful write of that checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from qin_lightning.checkpoint import read_checkpoint
from qin_lightning.files import atomic_writer


class SafeCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with strict loading and atomic, fsynced saving (local filesystems)."""

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = trust

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO.save_checkpoint does not take storage_options")
        with atomic_writer(path, "wb") as f:
            torch.save(checkpoint, f)
        remove_stale_temporaries(Path(path))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,  # ignored: strict unless the user trusts the file (self.trust)
    ) -> dict[str, Any]:
        return read_checkpoint(path, trust=self.trust, map_location=map_location)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of `path` left by a process killed while writing it (only one process writes a
    run's checkpoints: rank 0)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
