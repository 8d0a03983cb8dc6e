"""The benchmark's data: a synthetic dataset in the MMCTR layout at the MicroLens vocabulary, and its batches."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from qin_lightning.bench.args import BenchArgs
from qin_lightning.bench.system import peak_rss_mb, rss_mb
from qin_lightning.data.datamodule import Batch, MMCTRDataModule, ShardedBatchSampler
from qin_lightning.data.synthetic import SyntheticConfig

# MicroLens-1M's vocabulary, the padding id 0 included: 91,717 items and 11,739 tags
MICROLENS_ITEMS, MICROLENS_TAGS = 91_718, 11_740
# ml-latest-small as converted for the converged sweep (experiments/movielens/README.md), padding included
MOVIELENS_ITEMS, MOVIELENS_TAGS, MOVIELENS_USERS = 9_725, 1_019, 610


def synthetic_config(args: BenchArgs) -> SyntheticConfig:
    """bench: the MicroLens vocabulary, histories of mean length 8 left-padded to 64; microlens: full scale;
    converged: the converged MovieLens sweep's shapes (experiments/movielens/converged.yaml)."""
    if args.data_scale == "microlens":
        return SyntheticConfig.microlens(seed=args.seed)
    if args.data_scale == "converged":  # histories geometric with mean 150 capped at 20: mean 18.7, 88% full, as
        # ml-latest-small's 398,464 training rows (mean 18.71 items, 87.8% full: min(k, 20) for a user's k-th rating)
        return SyntheticConfig(
            num_items=MOVIELENS_ITEMS, num_tags=MOVIELENS_TAGS, num_users=MOVIELENS_USERS, train_rows=args.train_rows,
            valid_rows=args.eval_rows, test_rows=1_000, max_len=20, mean_history_len=150.0, num_topics=32,
            seed=args.seed, name="converged",
        )
    if args.data_scale == "tiny":
        return dataclasses.replace(SyntheticConfig.tiny(seed=args.seed), train_rows=args.train_rows,
                                   valid_rows=args.eval_rows, test_rows=64)
    return SyntheticConfig(
        num_items=MICROLENS_ITEMS, num_tags=MICROLENS_TAGS, num_users=100_000, train_rows=args.train_rows,
        valid_rows=args.eval_rows, test_rows=1_000, max_len=64, mean_history_len=8.0, num_topics=32,
        seed=args.seed, name="bench",
    )


def load_data(args: BenchArgs, record: dict[str, Any]) -> MMCTRDataModule:
    """Generate (first use) and load the dataset; records sizes, generation/load time and memory."""
    config = synthetic_config(args)
    dm = MMCTRDataModule(args.data_root, max_len=config.max_len, batch_size=args.batch_size,
                         eval_batch_size=args.batch_size, seed=args.seed, synthetic=config,
                         pin_memory=args.device.startswith("cuda"))
    existed = dm.data_dir.exists()
    t0 = time.perf_counter()
    dm.prepare_data()
    t1 = time.perf_counter()
    rss_before = rss_mb()
    dm.setup("fit")
    test = dm.dataset("test")
    t2 = time.perf_counter()
    splits = {"train": dm.dataset("train"), "valid": dm.dataset("valid"), "test": test}
    column_bytes = {
        name: sum(t.numel() * t.element_size() for t in (d.item_seq, d.item_id, d.likes_level, d.views_level,
                                                         d.user_id, d.label))
        for name, d in splits.items()
    }
    table_bytes = sum(t.numel() * t.element_size() for t in (dm.item_tags, dm.item_mm))
    history = splits["train"].item_seq
    record["data"] = {
        "scale": args.data_scale,
        "dir": str(dm.data_dir),
        "fingerprint": config.fingerprint(),
        "synthetic_config": dataclasses.asdict(config),
        "rows": {name: len(d) for name, d in splits.items()},
        "num_items": dm.num_items,
        "num_tags": dm.num_tags,
        "mean_history_len_train": float((history > 0).sum(1, dtype=torch.int32).float().mean()),
        "generated_now": not existed,
        "generate_s": round(t1 - t0, 3),
        "load_s": round(t2 - t1, 3),
        "column_bytes": column_bytes,  # id/level/label columns as held in memory (int32/int8/int64/float32)
        "item_table_bytes": table_bytes,
        "total_bytes": sum(column_bytes.values()) + table_bytes,
        "total_bytes_mb": round((sum(column_bytes.values()) + table_bytes) / 2**20, 1),
        "rss_before_load_mb": round(rss_before, 1),
        "rss_after_load_mb": round(rss_mb(), 1),
        "peak_rss_after_load_mb": round(peak_rss_mb(), 1),
    }
    return dm


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device` (the same object on the CPU)."""
    if device.type == "cpu":
        return batch
    return Batch(*(t.to(device, non_blocking=True) for t in batch))


def inputs(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The network's inputs: (item_seq, item_id, likes_level, views_level)."""
    return batch.item_seq, batch.item_id, batch.likes_level, batch.views_level


class DeviceBatches:
    """Training batches indexed directly from device-resident columns (GPU: no host round trip per step).

    Same sampling as the datamodule's train loader (a seeded permutation per epoch cut into `steps` nearly equal
    batches): on the CPU exactly the loader's batches, on CUDA another permutation (the device's generator).
    """

    def __init__(self, dm: MMCTRDataModule, device: torch.device, batch_size: int, seed: int) -> None:
        data = dm.dataset("train")
        self.columns = [t.to(device) for t in (data.item_seq, data.item_id, data.likes_level, data.views_level,
                                               data.label, data.user_id)]
        self.n, self.batch_size, self.seed, self.device = len(data), batch_size, seed, device
        self.steps = len(ShardedBatchSampler(self.n, batch_size, True, seed, rank=0, world_size=1))

    def steps_per_epoch(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[Batch]:
        g = torch.Generator(device=self.device).manual_seed(self.seed + epoch)
        order = torch.randperm(self.n, device=self.device, generator=g)
        for index in order.tensor_split(self.steps):
            seq, iid, likes, views, label, user = (c[index] for c in self.columns)
            yield Batch(seq.long(), iid.long(), likes.long(), views.long(), label, user)


def loader_epochs(dm: MMCTRDataModule) -> Callable[[int], Iterator[Batch]]:
    """Epoch -> the datamodule's shuffled training batches of that epoch (assembled in this process)."""
    def make_epoch(epoch: int) -> Iterator[Batch]:
        sampler = dm.train_sampler()
        sampler.set_epoch(epoch)
        data = dm.dataset("train")
        return (data[index] for index in sampler)

    return make_epoch


def cycle_batches(make_epoch: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    """Batches of epoch 0, 1, 2, ... without end."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def eval_batches(dm: MMCTRDataModule, device: torch.device) -> list[Batch]:
    """The validation split's batches, on `device`."""
    return [batch_to(b, device) for b in dm.val_dataloader()]


def single_requests(batches: list[Batch], count: int, device: torch.device) -> list[Batch]:
    """`count` batch-1 requests cut from `batches` (cycling), on `device`."""
    rows = [Batch(*(t[i: i + 1] for t in b)) for b in batches for i in range(b.label.shape[0])]
    return [batch_to(rows[i % len(rows)], device) for i in range(count)]
