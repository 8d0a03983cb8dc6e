"""The MMCTR parquet layout (MicroLens_1M_MMCTR, challenge Task 2), stated once, and its writers.

A dataset is a folder with four parquet files; ids are integer-encoded and 0 is padding everywhere:

    train.parquet, valid.parquet, test.parquet   one row per impression
        user_id      int                 (not a model input)
        item_seq     list[int]           history, left-padded with 0, most recent last; one length per split
        likes_level  int in 0..10
        views_level  int in 0..10
        item_id      int                 target item, a row of item_info
        label        0/1 (int or float)  required in train/valid, optional in test
    item_info.parquet                    row i describes item i; row 0 is the all-zero padding item
        item_id        int               == row position
        item_tags      list[int]         tag ids, left-padded with 0, one length for all items
        item_emb_d128  list[float]       frozen multimodal vector (128 wide), finite

The validating reader is `qin_lightning.data.reader`; generators and converters write through the table
builders at the end of this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

# ---- columns -------------------------------------------------------------------------------------------
USER_ID = "user_id"
ITEM_SEQ = "item_seq"
LIKES_LEVEL = "likes_level"
VIEWS_LEVEL = "views_level"
ITEM_ID = "item_id"
LABEL = "label"
ITEM_TAGS = "item_tags"
ITEM_EMB = "item_emb_d128"

# ---- files ---------------------------------------------------------------------------------------------
TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS: tuple[str, ...] = (TRAIN, VALID, TEST)
ITEM_INFO = "item_info"
TRAIN_FILE = "train.parquet"
VALID_FILE = "valid.parquet"
TEST_FILE = "test.parquet"
ITEM_INFO_FILE = "item_info.parquet"
FILE_NAMES: dict[str, str] = {TRAIN: TRAIN_FILE, VALID: VALID_FILE, TEST: TEST_FILE, ITEM_INFO: ITEM_INFO_FILE}

# ---- value domains -------------------------------------------------------------------------------------
NUM_LEVELS = 11  # likes_level / views_level take values 0..NUM_LEVELS-1
EMB_DIM = 128  # width of item_emb_d128
PADDING_ID = 0

SPLIT_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_SEQ, LIKES_LEVEL, VIEWS_LEVEL, ITEM_ID, LABEL)
ITEM_INFO_COLUMNS: tuple[str, ...] = (ITEM_ID, ITEM_TAGS, ITEM_EMB)
LABEL_REQUIRED: dict[str, bool] = {TRAIN: True, VALID: True, TEST: False}


def split_path(root: Path, split: str) -> Path:
    """Path of a split's (or item_info's) parquet file inside a dataset folder."""
    return Path(root) / FILE_NAMES[split]


# ---- writing (generators and converters build their tables here) -----------------------------------
def list_column(matrix: np.ndarray) -> pa.ListArray:
    """A (rows, width) numpy matrix as a parquet list column (int32 offsets, no per-row objects)."""
    rows, width = matrix.shape
    offsets = (np.arange(rows + 1, dtype=np.int64) * width).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(matrix).reshape(-1)))


def item_info_table(tags: np.ndarray, mm: np.ndarray) -> pa.Table:
    """item_info as an arrow table: tags (N, T) int, mm (N, D) float; row i = item i, row 0 = padding."""
    return pa.table(
        {
            ITEM_ID: pa.array(np.arange(tags.shape[0], dtype=np.int64)),
            ITEM_TAGS: list_column(tags.astype(np.int64, copy=False)),
            ITEM_EMB: list_column(mm.astype(np.float32, copy=False)),
        }
    )


def split_table(
    user_id: np.ndarray,
    item_seq: np.ndarray,
    likes_level: np.ndarray,
    views_level: np.ndarray,
    item_id: np.ndarray,
    label: np.ndarray | None,
) -> pa.Table:
    """One split (or a chunk of it) as an arrow table in the layout's column order; label=None omits it."""
    columns = {
        USER_ID: pa.array(user_id.astype(np.int64, copy=False)),
        ITEM_SEQ: list_column(item_seq.astype(np.int64, copy=False)),
        LIKES_LEVEL: pa.array(likes_level.astype(np.int64, copy=False)),
        VIEWS_LEVEL: pa.array(views_level.astype(np.int64, copy=False)),
        ITEM_ID: pa.array(item_id.astype(np.int64, copy=False)),
    }
    if label is not None:
        columns[LABEL] = pa.array(label.astype(np.int64, copy=False))
    return pa.table(columns)
