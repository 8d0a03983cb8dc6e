"""MMCTRDataModule: an MMCTR parquet folder -> whole-column tensors (read once) -> batches by fancy indexing.

Every split is held as a few contiguous tensors (histories as one (n, max_len) int32 matrix); a batch is
`column[index_tensor]` for each column, so there are no per-row Python objects, no per-row __getitem__
and no collate. The DataLoader runs with `batch_size=None` over `ShardedBatchSampler`, which yields index
tensors.

Sharding policy (DDP): every epoch, all ranks draw the same permutation (seed + epoch) and cut it into
`world_size * steps` nearly equal chunks, steps = ceil(n / (world_size * batch_size)); rank r takes chunks
r, r + world_size, ... So every row is seen exactly once per epoch across ranks (no padding, no drop) and
every rank runs the same number of steps; batch sizes differ by at most one row and are <= batch_size
(except with batch_size 1 and n not divisible by world_size, where some batches hold 2 rows). A single
process without shuffling gets plain fixed-size batches in row order (the last one smaller).
Evaluation policy: validation and test loaders are sharded the same way without shuffling (rank r takes
chunks r, r + world_size, ... of the row order), so under DDP each rank evaluates a disjoint part of the
split, every row exactly once, and all ranks run the same number of steps. The metrics (torchmetrics: AUROC
keeps every prediction, dist_reduce_fx="cat") are synchronised across ranks in `compute()`, so the logged
value is the metric of the whole split, equal to single-process evaluation. The predict loader is never
sharded: every rank yields the whole test split in row order (predictions are written by one process).
In a single process every eval loader is plain fixed-size batches in row order (the last one smaller).
The samplers subclass DistributedSampler only so that Lightning does not wrap them in its own distributed
sampler.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from qin_lightning.data import layout, reader
from qin_lightning.data.resumable_loader import ResumableLoader
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.errors import ConfigError


class DataSource(Protocol):
    """Anything that writes the layout on first use (e.g. `movielens.source.MovieLensSource`)."""

    def fingerprint(self) -> str: ...

    def prepare(self, out_dir: Path) -> Path: ...


class Batch(NamedTuple):
    """One batch of rows; ids are int64 (converted from compact storage per batch)."""

    item_seq: Tensor  # (B, max_len) long, left padded, most recent last
    item_id: Tensor  # (B,) long, target item
    likes_level: Tensor  # (B,) long in 0..10
    views_level: Tensor  # (B,) long in 0..10
    label: Tensor  # (B,) float 0/1 (zeros when the split has no label)
    user_id: Tensor  # (B,) long


class SplitDataset(Dataset[Batch]):
    """A split as whole-column tensors; `dataset[index_tensor]` returns a Batch."""

    def __init__(self, arrays: reader.SplitArrays) -> None:
        self.name = arrays.name
        self.item_seq = torch.from_numpy(arrays.item_seq)  # (n, max_len) int32
        self.item_id = torch.from_numpy(arrays.item_id)  # (n,) int32
        self.likes_level = torch.from_numpy(arrays.likes_level)  # (n,) int8
        self.views_level = torch.from_numpy(arrays.views_level)  # (n,) int8
        self.user_id = torch.from_numpy(arrays.user_id)  # (n,) int64
        self.has_label = arrays.label is not None
        n = len(arrays)
        self.label = torch.from_numpy(arrays.label) if arrays.label is not None else torch.zeros(n)  # (n,) float32

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def __getitem__(self, index: Tensor) -> Batch:  # type: ignore[override]
        return Batch(
            item_seq=self.item_seq[index].long(),
            item_id=self.item_id[index].long(),
            likes_level=self.likes_level[index].long(),
            views_level=self.views_level[index].long(),
            label=self.label[index],
            user_id=self.user_id[index],
        )


def _dist_default(value: int | None, getter: str, fallback: int) -> int:
    if value is not None:
        return value
    if dist.is_available() and dist.is_initialized():
        return int(getattr(dist, getter)())
    return fallback


class ShardedBatchSampler(DistributedSampler):
    """Yields LongTensor batches of row indices; seeded shuffle (seed + epoch) and DDP sharding (module doc)."""

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.num_rows = num_rows
        self.batch_size = batch_size
        rank, world_size = _dist_default(rank, "get_rank", 0), _dist_default(world_size, "get_world_size", 1)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}, expected >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        # sets rank, num_replicas, shuffle, seed, epoch = 0, drop_last; its sizes are replaced below (module doc)
        super().__init__(range(num_rows), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        if num_rows < self.num_replicas:
            raise ValueError(f"{num_rows} rows cannot be sharded over {self.num_replicas} ranks without repeats")
        steps = math.ceil(num_rows / (self.num_replicas * batch_size))
        self.steps = max(1, min(steps, num_rows // self.num_replicas))
        chunks = self.num_replicas * self.steps
        base, extra = divmod(num_rows, chunks)
        self.num_samples = sum(base + (j < extra) for j in range(self.rank, chunks, self.num_replicas))
        self.total_size = num_rows

    @property
    def world_size(self) -> int:
        return self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):  # type: ignore[override]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_rows, generator=g)
        else:
            order = torch.arange(self.num_rows)
        if self.num_replicas == 1 and not self.shuffle:
            chunks = order.split(self.batch_size)  # sequential: plain fixed-size batches, last one smaller
            yield from chunks
            return
        chunks = order.tensor_split(self.num_replicas * self.steps)
        yield from chunks[self.rank :: self.num_replicas]


class MMCTRDataModule(L.LightningDataModule):
    """Loads an MMCTR folder (or a generated synthetic one) into tensors and serves Batch loaders."""

    def __init__(
        self,
        root: str,
        max_len: int = 64,
        batch_size: int = 8192,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        seed: int = 20242025,
        num_tags: int | None = None,
        synthetic: SyntheticConfig | None = None,
        source: DataSource | None = None,
    ) -> None:
        super().__init__()
        if synthetic is not None and source is not None:
            raise ConfigError("data.synthetic and data.source are both set, expected at most one of them")
        self.root = Path(root)
        self.synthetic = synthetic
        self.source = source
        # the one way data is made on first use: a generated synthetic set or a converted release, both a DataSource
        self.generator: DataSource | None = synthetic if synthetic is not None else source
        self.data_dir: Path = self.root / self.generator.fingerprint() if self.generator is not None else self.root
        self.max_len = max_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        self._given_num_tags = num_tags
        self._epoch = 0
        self._splits: dict[str, SplitDataset] = {}
        self._train_sampler: ShardedBatchSampler | None = None
        self.item_tags: Tensor | None = None  # (N, T) long
        self.item_mm: Tensor | None = None  # (N, emb_dim) float32
        self.num_items = 0
        self.num_tags = 0

    # ---- data ------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.generator is not None:
            self.generator.prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        self._read_items()
        needed = {"fit": (layout.TRAIN, layout.VALID), "validate": (layout.VALID,), "test": (layout.TEST,), "predict": (layout.TEST,)}
        for split in needed.get(stage or "", layout.SPLITS):
            self._load(split)

    def _read_items(self) -> None:
        """The item table (tags, multimodal embeddings) and the vocabulary sizes, once; generated data is written
        first where prepare_data has not run (single-process use)."""
        if self.item_tags is not None:
            return
        if self.generator is not None and not self.data_dir.exists():
            self.prepare_data()
        emb_dim = self.synthetic.emb_dim if self.synthetic is not None else layout.EMB_DIM
        items = reader.read_item_info(self.data_dir, emb_dim=emb_dim, num_tags=self._given_num_tags)
        self.item_tags = torch.from_numpy(items.tags)
        self.item_mm = torch.from_numpy(items.mm)
        self.num_items, self.num_tags = items.num_items, items.num_tags

    def _load(self, split: str) -> SplitDataset:
        if split not in self._splits:
            self._read_items()  # used without setup
            arrays = reader.read_split(self.data_dir, split, self.num_items, self.max_len)
            self._splits[split] = SplitDataset(arrays)
        return self._splits[split]

    def dataset(self, split: str) -> SplitDataset:
        """The loaded split (loading it on first use)."""
        return self._load(split)

    @property
    def has_test_labels(self) -> bool:
        return self._load(layout.TEST).has_label

    # ---- loaders ---------------------------------------------------------------------------------------
    def _loader(self, data: SplitDataset, sampler: ShardedBatchSampler) -> DataLoader:
        return DataLoader(
            data,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_sampler(self, rank: int | None = None, world_size: int | None = None) -> ShardedBatchSampler:
        data = self._load(layout.TRAIN)
        sampler = ShardedBatchSampler(len(data), self.batch_size, True, self.seed, rank, world_size)
        sampler.set_epoch(self._current_epoch())
        return sampler

    def _current_epoch(self) -> int:
        return self._train_sampler.epoch if self._train_sampler is not None else self._epoch

    def train_dataloader(self) -> ResumableLoader:
        """The training batches; resumable mid-epoch (its state: the batches the trainer has done)."""
        self._train_sampler = self.train_sampler()
        return ResumableLoader(self._loader(self._load(layout.TRAIN), self._train_sampler), self._batches_done)

    def _batches_done(self) -> int:
        """Training batches of the current epoch done so far (the fitting trainer's progress; 0 without one)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def eval_sampler(self, split: str, rank: int | None = None, world_size: int | None = None) -> ShardedBatchSampler:
        """Sequential batches of `split`, sharded over the DDP ranks (defaults: torch.distributed; module doc)."""
        data = self._load(split)
        return ShardedBatchSampler(len(data), self.eval_batch_size, False, rank=rank, world_size=world_size)

    def _eval_loader(self, split: str, sharded: bool) -> DataLoader:
        sampler = self.eval_sampler(split) if sharded else self.eval_sampler(split, rank=0, world_size=1)
        return self._loader(self._load(split), sampler)

    def split_dataloader(self, split: str) -> DataLoader:
        """Every row of `split` once, in row order, in this process alone (scoring: qin-eval, qin-predict)."""
        return self._eval_loader(split, sharded=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(layout.VALID, sharded=True)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(layout.TEST, sharded=True)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(layout.TEST, sharded=False)

    # ---- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._current_epoch(), "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch = int(state_dict.get("epoch", 0))
        self.seed = int(state_dict.get("seed", self.seed))
        if self._train_sampler is not None:
            self._train_sampler.load_state_dict({"epoch": self._epoch, "seed": self.seed})


__all__ = ["Batch", "DataSource", "MMCTRDataModule", "ShardedBatchSampler", "SplitDataset"]
