"""layout.py: the writers produce exactly the layout the reader accepts, in the stated column order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qin_lightning.data import layout, reader


def test_writers_round_trip_through_the_reader(tmp_path: Path) -> None:
    tags = np.array([[0, 0], [0, 1], [2, 3]], dtype=np.int64)  # row 0 = padding item
    mm = np.zeros((3, layout.EMB_DIM), dtype=np.float32)
    mm[1:] = np.arange(2 * layout.EMB_DIM, dtype=np.float32).reshape(2, layout.EMB_DIM)
    pq.write_table(layout.item_info_table(tags, mm), layout.split_path(tmp_path, layout.ITEM_INFO))
    seq = np.array([[0, 1], [1, 2]])
    table = layout.split_table(np.array([5, 6]), seq, np.array([0, 10]), np.array([3, 4]), np.array([2, 1]), None)
    assert tuple(table.schema.names) == tuple(c for c in layout.SPLIT_COLUMNS if c != layout.LABEL)
    pq.write_table(table, layout.split_path(tmp_path, layout.TEST))

    items = reader.read_item_info(tmp_path)
    assert np.array_equal(items.tags, tags) and np.array_equal(items.mm, mm) and items.num_tags == 4
    split = reader.read_split(tmp_path, layout.TEST, items.num_items)
    assert split.label is None and np.array_equal(split.item_seq, seq) and split.item_id.tolist() == [2, 1]
    assert split.likes_level.tolist() == [0, 10] and split.views_level.tolist() == [3, 4]


def test_file_names_cover_every_split_and_item_info() -> None:
    assert set(layout.FILE_NAMES) == {*layout.SPLITS, layout.ITEM_INFO}
    assert layout.split_path(Path("d"), layout.TRAIN) == Path("d") / "train.parquet"
