"""The training DataLoader with a state: how many batches of the current epoch were already trained.

Lightning saves the state of a train loader that has `state_dict`/`load_state_dict` in every checkpoint and
gives it back on resume (before the first resumed batch). After loading a mid-epoch state the next iteration
skips that many batches: the permutation depends only on ``seed + epoch`` (``ShardedBatchSampler``), so the
remaining batches are the same ones in the same order as in an uninterrupted run.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader


class ResumableLoader:
    """A DataLoader plus `state_dict`/`load_state_dict`; `batches_done` reports the batches trained so far.

    `batches_done` is asked at checkpoint time: the loader cannot count them itself, since Lightning fetches
    one batch ahead. Iterating does not draw from the global torch RNG (the DataLoader gets its own
    generator), so creating an epoch's iterator does not shift the dropout stream between an interrupted and
    an uninterrupted run.
    """

    def __init__(self, loader: DataLoader, batches_done: Callable[[], int]) -> None:
        self.loader = loader
        if loader.generator is None:
            loader.generator = torch.Generator().manual_seed(0)  # only feeds worker base seeds
        self._batches_done = batches_done
        self._skip = 0

    @property
    def sampler(self) -> Any:  # Lightning calls sampler.set_epoch(epoch) through this
        return self.loader.sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        iterator = iter(self.loader)
        for _ in range(skip):  # index gathers only: cheap next to a training step
            next(iterator)
        yield from iterator

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": int(self._batches_done()), "epoch": int(getattr(self.sampler, "epoch", 0))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = int(state.get("batches_done", 0))
        self._skip = done if 0 < done < len(self) else 0  # a finished epoch restarts at the next one
