"""datamodule.py: tensors read once, Batch shapes/dtypes, truncation, seeded sharded sampling, row order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from qin_lightning.data.datamodule import Batch, MMCTRDataModule, ShardedBatchSampler
from qin_lightning.data.synthetic import SyntheticConfig, generate
from qin_lightning.errors import ConfigError, DataValidationError

TINY = SyntheticConfig.tiny()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dm")
    generate(TINY, root / TINY.fingerprint())
    return root


def make(cache: Path, **kwargs: object) -> MMCTRDataModule:
    dm = MMCTRDataModule(str(cache), synthetic=TINY, **kwargs)  # type: ignore[arg-type]
    dm.prepare_data()
    return dm


def raw(root: Path, split: str) -> dict[str, np.ndarray]:
    table = pq.read_table(root / f"{split}.parquet")
    out = {name: table.column(name).to_numpy() for name in table.column_names if name != "item_seq"}
    out["item_seq"] = np.array(table.column("item_seq").to_pylist())
    return out


def test_setup_exposes_tables(cache: Path) -> None:
    dm = make(cache, max_len=8, batch_size=32)
    dm.setup("fit")
    assert dm.data_dir == cache / TINY.fingerprint()
    assert dm.num_items == TINY.num_items and dm.num_tags <= TINY.num_tags
    assert dm.item_tags is not None and dm.item_mm is not None
    assert dm.item_tags.dtype == torch.long and dm.item_tags.shape == (TINY.num_items, TINY.tags_per_item)
    assert dm.item_mm.dtype == torch.float32 and dm.item_mm.shape == (TINY.num_items, TINY.emb_dim)
    assert not dm.item_tags[0].any() and not dm.item_mm[0].any()
    assert dm.pin_memory == torch.cuda.is_available()
    assert dm.num_tags == int(dm.item_tags.max()) + 1
    dm2 = make(cache, num_tags=100)
    dm2.setup("validate")
    assert dm2.num_tags == 100


def test_batch_shapes_and_dtypes(cache: Path) -> None:
    dm = make(cache, max_len=8, batch_size=32, eval_batch_size=50)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch)
    b = batch.item_id.shape[0]
    assert 30 <= b <= 32  # train batches are nearly equal: 300 rows -> 10 batches of 30
    assert batch.item_seq.shape == (b, 8) and batch.item_seq.dtype == torch.long
    for name in ("item_id", "likes_level", "views_level", "user_id"):
        assert getattr(batch, name).shape == (b,) and getattr(batch, name).dtype == torch.long, name
    assert batch.label.dtype == torch.float32 and set(batch.label.tolist()) <= {0.0, 1.0}
    sizes = [b.item_id.shape[0] for b in dm.val_dataloader()]
    assert sizes == [50, 50]


def test_truncation_keeps_most_recent(cache: Path) -> None:
    expected = raw(cache / TINY.fingerprint(), "valid")["item_seq"]
    for max_len in (5, TINY.max_len, TINY.max_len + 4):
        dm = make(cache, max_len=max_len, eval_batch_size=1000)
        dm.setup("validate")
        got = next(iter(dm.val_dataloader())).item_seq.numpy()
        keep = min(max_len, TINY.max_len)
        np.testing.assert_array_equal(got[:, max_len - keep :], expected[:, TINY.max_len - keep :])
        assert not got[:, : max_len - keep].any()  # left padding


def test_predict_loader_in_row_order(cache: Path) -> None:
    dm = make(cache, max_len=TINY.max_len, eval_batch_size=7)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    expected = raw(cache / TINY.fingerprint(), "test")
    for name in ("user_id", "item_id", "likes_level", "views_level", "label", "item_seq"):
        got = torch.cat([getattr(b, name) for b in batches]).numpy()
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
    assert dm.has_test_labels
    assert [b.item_id.shape[0] for b in batches][-1] == TINY.test_rows % 7 or TINY.test_rows % 7 == 0


def test_train_sampler_seeded_shuffle() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        s = ShardedBatchSampler(100, 16, shuffle=True, seed=seed, rank=0, world_size=1)
        s.set_epoch(epoch)
        return torch.cat(list(s)).tolist()

    assert order(3, 0) == order(3, 0)
    assert order(3, 0) != order(3, 1) and order(3, 0) != order(4, 0)
    assert order(3, 0) == order(2, 1)  # the generator seed is seed + epoch
    assert sorted(order(3, 5)) == list(range(100))
    s = ShardedBatchSampler(100, 16, shuffle=True, seed=3, rank=0, world_size=1)
    assert len(s) == len(list(s)) == 7 and max(len(b) for b in s) <= 16


@pytest.mark.parametrize(
    "n,batch_size,world_size",
    [(103, 10, 2), (100, 10, 2), (101, 10, 3), (7, 4, 2), (5, 1, 2), (1000, 64, 4), (2, 8, 2), (21, 10, 2)],
)
def test_exactly_once_across_ranks(n: int, batch_size: int, world_size: int) -> None:
    seen: list[int] = []
    lengths = set()
    for rank in range(world_size):
        sampler = ShardedBatchSampler(n, batch_size, shuffle=True, seed=7, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        batches = list(sampler)
        lengths.add(len(batches))
        assert len(batches) == len(sampler)
        assert all(len(b) >= 1 for b in batches)
        assert sum(len(b) for b in batches) == sampler.num_samples
        if batch_size > 1:
            assert all(len(b) <= batch_size for b in batches)
        seen += torch.cat(batches).tolist()
    assert len(lengths) == 1, "every rank must run the same number of steps"
    assert sorted(seen) == list(range(n)), "every row exactly once per epoch"


def test_sampler_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="1 rows cannot be sharded over 2 ranks without repeats"):
        ShardedBatchSampler(1, 4, True, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank=2 is outside world_size=2"):
        ShardedBatchSampler(10, 4, True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=0, expected >= 1"):
        ShardedBatchSampler(10, 0, True, rank=0, world_size=1)


def test_eval_sampler_sequential() -> None:
    s = ShardedBatchSampler(23, 10, shuffle=False, rank=0, world_size=1)
    assert [b.tolist() for b in s] == [list(range(10)), list(range(10, 20)), [20, 21, 22]]


def test_state_dict_resumes_epoch(cache: Path) -> None:
    dm = make(cache, batch_size=64)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    first = list(loader)
    state = dm.state_dict()
    assert state["epoch"] == 3
    dm2 = make(cache, batch_size=64)
    dm2.load_state_dict(state)
    dm2.setup("fit")
    again = list(dm2.train_dataloader())
    assert len(again) == len(first) == len(loader) > 1  # an empty resumed loader must not pass
    for a, b in zip(first, again):
        for name in Batch._fields:
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the restored epoch is what makes them equal: a fresh module (epoch 0) shuffles differently
    fresh = make(cache, batch_size=64)
    fresh.setup("fit")
    epoch0 = torch.cat([b.user_id for b in fresh.train_dataloader()])
    assert not torch.equal(epoch0, torch.cat([b.user_id for b in first]))


def test_train_covers_every_row_once(cache: Path) -> None:
    dm = make(cache, batch_size=64)
    dm.setup("fit")
    order = torch.cat([b.user_id for b in dm.train_dataloader()])
    expected = raw(cache / TINY.fingerprint(), "train")["user_id"]
    assert sorted(order.tolist()) == sorted(expected.tolist())


def test_plain_root_and_errors(cache: Path, tmp_path: Path) -> None:
    dm = MMCTRDataModule(str(cache / TINY.fingerprint()), max_len=8)
    with pytest.raises(DataValidationError, match="item_emb_d128"):  # tiny vectors are 8 wide, not 128
        dm.setup("fit")
    with pytest.raises(DataValidationError, match="does not exist"):
        MMCTRDataModule(str(tmp_path / "missing")).setup("fit")


def test_setup_generates_without_prepare(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, seed=9)
    dm = MMCTRDataModule(str(tmp_path), synthetic=config, max_len=4)
    dm.setup("test")
    assert (tmp_path / config.fingerprint() / "test.parquet").is_file()
    assert len(dm.dataset("test")) == config.test_rows


def test_generic_source(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, seed=10)
    dm = MMCTRDataModule(str(tmp_path), source=config, max_len=4)  # any object with fingerprint() / prepare()
    assert dm.data_dir == tmp_path / config.fingerprint()
    with pytest.raises(ConfigError, match="data.synthetic and data.source are both set"):
        MMCTRDataModule(str(tmp_path), synthetic=config, source=config)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(TINY.num_items, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, b: Batch) -> torch.Tensor:
        return self.out(self.emb(b.item_seq).sum(1) + self.emb(b.item_id)).squeeze(-1)

    def training_step(self, b: Batch, _: int) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self(b), b.label)

    def validation_step(self, b: Batch, _: int) -> None:
        self.log("val/loss", nn.functional.binary_cross_entropy_with_logits(self(b), b.label), batch_size=len(b.label))

    def predict_step(self, b: Batch, _: int) -> torch.Tensor:
        return torch.sigmoid(self(b))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), 1e-2)


def test_lightning_fit_and_predict(cache: Path) -> None:
    dm = make(cache, max_len=8, batch_size=64, eval_batch_size=30)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(_Tiny(), datamodule=dm)
    assert trainer.global_step == 2 * len(dm.train_dataloader())
    assert dm.state_dict()["epoch"] == 1  # Lightning calls set_epoch on the sampler
    preds = trainer.predict(_Tiny(), datamodule=dm)
    assert preds is not None and torch.cat(preds).shape == (TINY.test_rows,)  # type: ignore[arg-type]


def test_train_loader_skips_the_batches_a_checkpoint_says_were_done(cache: Path) -> None:
    dm = make(cache, batch_size=64)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.state_dict() == {"batches_done": 0, "epoch": 0}  # no trainer attached: nothing done
    full = [b.user_id for b in loader]
    loader.load_state_dict({"batches_done": 2, "epoch": 0})
    rest = [b.user_id for b in loader]
    assert len(full) > 2 and len(rest) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(full[2:], rest))
    assert len(list(loader)) == len(full)  # the skip applies to the resumed epoch only
    loader.load_state_dict({"batches_done": len(full), "epoch": 0})  # a finished epoch: the next starts afresh
    assert len(list(loader)) == len(full)
