"""Property-based tests: random valid layouts load and batch losslessly; random corruptions are rejected."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qin_lightning.data import layout, reader
from qin_lightning.data.datamodule import MMCTRDataModule, ShardedBatchSampler
from qin_lightning.errors import DataValidationError

EMB = layout.EMB_DIM
SETTINGS = settings(max_examples=30, deadline=None)


@dataclass
class Layout:
    """A dataset as numpy arrays; user_id = row index so every row can be traced through the loaders."""

    num_items: int
    num_tags: int
    tags: np.ndarray  # (N, T)
    mm: np.ndarray  # (N, EMB)
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    test_label: bool = True

    def write(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        pq.write_table(layout.item_info_table(self.tags, self.mm), root / layout.ITEM_INFO_FILE)
        for split, c in self.splits.items():
            label = c["label"] if (split != layout.TEST or self.test_label) else None
            table = layout.split_table(c["user_id"], c["item_seq"], c["likes_level"], c["views_level"], c["item_id"], label)
            pq.write_table(table, layout.split_path(root, split))
        return root


@st.composite
def layouts(draw: st.DrawFn, min_hist: int = 0) -> Layout:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_items = draw(st.integers(2, 25))
    t = draw(st.integers(1, 4))
    n_tags = draw(st.integers(2, 30))
    tags = rng.integers(0, n_tags, (n_items, t))
    tags[0] = 0
    mm = rng.standard_normal((n_items, EMB)).astype(np.float32)
    mm[0] = 0
    case = Layout(n_items, n_tags, tags, mm, test_label=draw(st.booleans()))
    for split in layout.SPLITS:
        n = draw(st.integers(1, 40))
        hist = draw(st.integers(min_hist, 9))
        length = rng.integers(0, hist + 1, n)
        seq = rng.integers(1, n_items, (n, hist))
        seq[np.arange(hist)[None, :] < (hist - length)[:, None]] = 0  # left padding
        case.splits[split] = {
            "user_id": np.arange(n),
            "item_seq": seq,
            "likes_level": rng.integers(0, layout.NUM_LEVELS, n),
            "views_level": rng.integers(0, layout.NUM_LEVELS, n),
            "item_id": rng.integers(0, n_items, n),
            "label": rng.integers(0, 2, n),
        }
    return case


def expected_seq(seq: np.ndarray, max_len: int) -> np.ndarray:
    out = np.zeros((seq.shape[0], max_len), dtype=np.int64)
    keep = min(max_len, seq.shape[1])
    if keep:
        out[:, max_len - keep :] = seq[:, seq.shape[1] - keep :]
    return out


def check_rows(batches: list, columns: dict[str, np.ndarray], max_len: int, has_label: bool) -> torch.Tensor:
    rows = torch.cat([b.user_id for b in batches])
    idx = rows.numpy()
    got = {name: torch.cat([getattr(b, name) for b in batches]).numpy() for name in batches[0]._fields}
    np.testing.assert_array_equal(got["item_seq"], expected_seq(columns["item_seq"], max_len)[idx])
    for name in ("item_id", "likes_level", "views_level"):
        np.testing.assert_array_equal(got[name], columns[name][idx])
    np.testing.assert_array_equal(got["label"], columns["label"][idx] if has_label else np.zeros(len(idx)))
    return rows


@SETTINGS
@given(case=layouts(), max_len=st.integers(1, 12), batch_size=st.integers(1, 16), world=st.integers(1, 3),
       epoch=st.integers(0, 5))
def test_valid_layouts_load_and_batch(case: Layout, max_len: int, batch_size: int, world: int, epoch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = case.write(Path(tmp) / "data")
        summary = reader.validate_dataset(root, max_len=max_len, num_tags=case.num_tags)
        assert summary.num_items == case.num_items
        dm = MMCTRDataModule(str(root), max_len=max_len, batch_size=batch_size, eval_batch_size=batch_size,
                             num_tags=case.num_tags)
        dm.setup()
    assert torch.equal(dm.item_tags, torch.from_numpy(case.tags))
    assert torch.equal(dm.item_mm, torch.from_numpy(case.mm))
    # train: every row exactly once across `world` simulated ranks, values preserved
    train = case.splits[layout.TRAIN]
    n = len(train["user_id"])
    world = min(world, n)
    seen = []
    for rank in range(world):
        sampler = ShardedBatchSampler(n, batch_size, shuffle=True, seed=11, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        data = dm.dataset(layout.TRAIN)
        seen.append(check_rows([data[i] for i in sampler], train, max_len, True))
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    # eval / predict: whole split, row order
    for split, loader in ((layout.VALID, dm.val_dataloader()), (layout.TEST, dm.predict_dataloader())):
        has_label = split != layout.TEST or case.test_label
        rows = check_rows(list(loader), case.splits[split], max_len, has_label)
        assert rows.tolist() == list(range(len(case.splits[split]["user_id"])))


CORRUPTIONS = [
    "missing_file", "corrupt_file", "missing_column", "float_ids", "string_ids", "list_scalar", "float_history",
    "ragged_history", "negative_history", "history_beyond", "negative_target", "target_beyond", "negative_user",
    "likes_range", "views_range", "label_range", "empty_split", "null_value", "not_position_indexed",
    "no_padding_row", "padding_tags", "padding_vector", "tag_beyond", "negative_tag", "ragged_tags",
    "vector_width", "vector_nan", "vector_inf",
]


def _replace(root: Path, split: str, column: str, array: pa.Array) -> None:
    path = layout.split_path(root, split)
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, array), path)


SPLIT_ROW_KINDS = {  # corruption -> the column it puts a bad value in, at row r of a train / valid split
    "negative_history": layout.ITEM_SEQ, "history_beyond": layout.ITEM_SEQ, "negative_target": layout.ITEM_ID,
    "target_beyond": layout.ITEM_ID, "negative_user": layout.USER_ID, "likes_range": layout.LIKES_LEVEL,
    "views_range": layout.VIEWS_LEVEL, "label_range": layout.LABEL, "null_value": layout.ITEM_ID, "ragged_history": layout.ITEM_SEQ,
}
ITEM_ROW_KINDS = {  # corruption -> the item_info column it breaks, at item row item_r (0: the padding row)
    "not_position_indexed": layout.ITEM_ID, "no_padding_row": layout.ITEM_ID, "padding_tags": layout.ITEM_TAGS,
    "padding_vector": layout.ITEM_EMB, "tag_beyond": layout.ITEM_TAGS, "negative_tag": layout.ITEM_TAGS, "ragged_tags": layout.ITEM_TAGS,
    "vector_width": layout.ITEM_EMB, "vector_nan": layout.ITEM_EMB, "vector_inf": layout.ITEM_EMB,
}


def names(file: str, column: str | None = None, row: int | None = None, expectation: bool = True) -> list[str]:
    """Patterns a one-line error must contain: the file as its subject, the column, the row, the expectation."""
    patterns = [rf"(^|/){re.escape(file)}: "]
    if column is not None:
        patterns.append(rf"column '{re.escape(column)}'")
    if row is not None:
        patterns.append(rf"\brow {row}\b")
    if expectation:
        patterns.append(r"\bexpected\b")
    return patterns


def assert_names(msg: str, patterns: list[str]) -> None:
    assert "\n" not in msg
    for pattern in patterns:
        assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"


def corrupt(case: Layout, root: Path, kind: str, rng: np.random.Generator) -> list[str]:
    """Writes `case` with one corruption of `kind`; returns what the error must name (`names`)."""
    split = layout.SPLITS[int(rng.integers(0, 2))]  # train or valid (labels required there)
    c = case.splits[split]
    n = len(c["user_id"])
    r = int(rng.integers(0, n))
    item_r = int(rng.integers(1, case.num_items))
    big = int(rng.integers(0, 50))
    if kind in ("negative_history", "history_beyond"):
        c["item_seq"][r, int(rng.integers(0, c["item_seq"].shape[1]))] = -1 - big if kind[0] == "n" else case.num_items + big
    elif kind in ("negative_target", "target_beyond"):
        c["item_id"][r] = -1 - big if kind[0] == "n" else case.num_items + big
    elif kind == "negative_user":
        c["user_id"][r] = -1 - big
    elif kind in ("likes_range", "views_range"):
        c[kind.replace("range", "level")][r] = layout.NUM_LEVELS + big if big % 2 else -1 - big
    elif kind == "label_range":
        c["label"][r] = 2 + big
    elif kind == "padding_tags":
        case.tags[0, int(rng.integers(0, case.tags.shape[1]))] = 1 + big
    elif kind == "padding_vector":
        case.mm[0, int(rng.integers(0, EMB))] = 0.5
    elif kind == "tag_beyond":
        case.tags[item_r, int(rng.integers(0, case.tags.shape[1]))] = case.num_tags + big
    elif kind == "negative_tag":
        case.tags[item_r, int(rng.integers(0, case.tags.shape[1]))] = -1 - big
    elif kind in ("vector_nan", "vector_inf"):
        case.mm[item_r, int(rng.integers(0, EMB))] = np.nan if kind == "vector_nan" else -np.inf
    case.write(root)
    info = layout.ITEM_INFO
    split_file = layout.FILE_NAMES[split]
    # a ragged list is told from the most common length: with two rows either one may be the odd one out
    row_known = kind not in ("ragged_history", "ragged_tags", "vector_width") or (
        (n if kind == "ragged_history" else case.num_items) >= 3)
    expected: list[str] = []
    if kind in SPLIT_ROW_KINDS:
        expected = names(split_file, SPLIT_ROW_KINDS[kind], r if row_known else None)
    elif kind in ITEM_ROW_KINDS:
        item_row = 0 if kind in ("no_padding_row", "padding_tags", "padding_vector") else item_r
        expected = names(layout.ITEM_INFO_FILE, ITEM_ROW_KINDS[kind], item_row if row_known else None)
    if kind == "missing_file":
        missing = [layout.TRAIN, layout.VALID, layout.TEST, info][int(rng.integers(0, 4))]
        layout.split_path(root, missing).unlink()
        expected = names(layout.FILE_NAMES[missing]) + ["file not found"]
    elif kind == "corrupt_file":
        broken = [layout.TRAIN, layout.VALID, layout.TEST, info][int(rng.integers(0, 4))]
        path = layout.split_path(root, broken)
        data = path.read_bytes()
        path.write_bytes(data[: int(rng.integers(0, len(data) - 8))])
        expected = names(layout.FILE_NAMES[broken], expectation=False) + ["unreadable or corrupt parquet"]
    elif kind == "missing_column":
        col = layout.SPLIT_COLUMNS[int(rng.integers(0, len(layout.SPLIT_COLUMNS)))]
        path = layout.split_path(root, split)
        pq.write_table(pq.read_table(path).drop_columns([col]), path)
        expected = names(split_file, col, expectation=False) + ["missing column", "found columns"]
    elif kind == "float_ids":
        col = [layout.USER_ID, layout.ITEM_ID, layout.LIKES_LEVEL, layout.VIEWS_LEVEL][int(rng.integers(0, 4))]
        _replace(root, split, col, pa.array(c[col].astype(np.float64)))
        expected = names(split_file, col) + ["has type double"]
    elif kind == "string_ids":
        _replace(root, split, layout.ITEM_ID, pa.array([str(v) for v in c["item_id"]]))
        expected = names(split_file, layout.ITEM_ID) + ["has type string"]
    elif kind == "list_scalar":
        _replace(root, split, layout.VIEWS_LEVEL, pa.array([[int(v)] for v in c["views_level"]]))
        expected = names(split_file, layout.VIEWS_LEVEL) + ["has type list"]
    elif kind == "float_history":
        _replace(root, split, layout.ITEM_SEQ, pa.array([[float(x) for x in row] for row in c["item_seq"]]))
        expected = names(split_file, layout.ITEM_SEQ) + ["expected a list of integers"]
    elif kind == "ragged_history":
        assume(n >= 2)  # one row of another length needs another row to differ from
        rows = [list(map(int, row)) for row in c["item_seq"]]
        rows[r] = rows[r][1:] if rng.random() < 0.5 else [0] + rows[r]
        _replace(root, split, layout.ITEM_SEQ, pa.array(rows, pa.list_(pa.int64())))
    elif kind == "empty_split":
        path = layout.split_path(root, split)
        pq.write_table(pq.read_table(path).slice(0, 0), path)
        expected = names(split_file) + ["0 rows"]
    elif kind == "null_value":
        values = c["item_id"].tolist()
        values[r] = None
        _replace(root, split, layout.ITEM_ID, pa.array(values, pa.int64()))
    elif kind in ("not_position_indexed", "no_padding_row", "ragged_tags", "vector_width"):
        path = root / layout.ITEM_INFO_FILE
        table = pq.read_table(path)
        if kind == "no_padding_row":
            table = table.slice(1)
        elif kind == "not_position_indexed":
            ids = np.arange(case.num_items)
            ids[item_r] = (item_r + 1 + big) % (case.num_items + 60)
            table = table.set_column(0, layout.ITEM_ID, pa.array(ids))
        else:
            col = layout.ITEM_TAGS if kind == "ragged_tags" else layout.ITEM_EMB
            rows = table.column(col).to_pylist()
            rows[item_r] = rows[item_r][1:] if (rng.random() < 0.5 and len(rows[item_r]) > 1) else rows[item_r] + [0]
            table = table.set_column(table.schema.get_field_index(col), col, pa.array(rows, table.schema.field(col).type))
        pq.write_table(table, path)
    assert expected, f"no expectation written for {kind}"
    return expected


@SETTINGS
@given(case=layouts(min_hist=1), kind=st.sampled_from(CORRUPTIONS), seed=st.integers(0, 2**32 - 1))
def test_corruptions_rejected(case: Layout, kind: str, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        expected = corrupt(case, root, kind, np.random.default_rng(seed))
        with pytest.raises(DataValidationError) as info:
            reader.validate_dataset(root, num_tags=case.num_tags)
        assert_names(str(info.value), expected)  # file, column, row and expectation, not just ".parquet"
        with pytest.raises(DataValidationError) as info:
            MMCTRDataModule(str(root), max_len=4, num_tags=case.num_tags).setup()
        assert_names(str(info.value), expected)


def test_every_corruption_kind_is_exercised() -> None:
    """Each kind once, deterministically (hypothesis may not draw all of them)."""
    for i, kind in enumerate(CORRUPTIONS):
        case = _fixed_layout(i)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            expected = corrupt(case, root, kind, np.random.default_rng(i))
            with pytest.raises(DataValidationError) as info:
                reader.validate_dataset(root, num_tags=case.num_tags)
            assert_names(str(info.value), expected)


def _fixed_layout(seed: int) -> Layout:
    rng = np.random.default_rng(seed)
    n_items, t, n_tags = 12, 3, 9
    tags = rng.integers(0, n_tags, (n_items, t))
    tags[0] = 0
    mm = rng.standard_normal((n_items, EMB)).astype(np.float32)
    mm[0] = 0
    case = Layout(n_items, n_tags, tags, mm)
    for split in layout.SPLITS:
        n = 20
        case.splits[split] = {
            "user_id": np.arange(n), "item_seq": rng.integers(0, n_items, (n, 5)),
            "likes_level": rng.integers(0, 11, n), "views_level": rng.integers(0, 11, n),
            "item_id": rng.integers(0, n_items, n), "label": rng.integers(0, 2, n),
        }
    return case
