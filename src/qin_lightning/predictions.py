"""Kept predictions: the probabilities every test-split evaluation scored, kept beside its JSON record
(a training run's ``test.preds.parquet``, ``qin-eval``'s ``<output stem>.preds.parquet``), self-contained so that
a report needs no data folder, no cache and no release:

- ``prob`` (float32): exactly the probabilities the record's metrics were computed from, in the split's row order;
- ``user_id`` (int64) and ``label`` (int8, 0/1): the row's user and label, what a paired test over users needs;
- the schema metadata ``qin.split``: which split and row order these are (the data folder's name, which carries
  the conversion's or the generator's fingerprint, and the split: ``movielens-ml-100k-rating-per_user-1515f9646d/
  test``), and ``qin.rows``: a digest of the user and label columns. Runs compare only with the same key and rows.

The report pairs runs over them (``qin_lightning.report.compare``). Reading is bounded: the row count is taken
from the footer and refused above MAX_ROWS before anything is read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin_lightning.errors import QinError
from qin_lightning.files import atomic_writer

PREDICTIONS_SUFFIX = ".preds.parquet"
TEST_PREDICTIONS = "test" + PREDICTIONS_SUFFIX  # a training run's, beside its results.json
PROB, USER_ID, LABEL = "prob", "user_id", "label"
SPLIT_KEY, ROWS_DIGEST = b"qin.split", b"qin.rows"
COLUMNS = {PROB: pa.float32(), USER_ID: pa.int64(), LABEL: pa.int8()}
MAX_ROWS = 20_000_000  # ~260 MB of columns; a test split of MicroLens_1M_MMCTR has ~0.4M rows


@dataclass(frozen=True)
class KeptPredictions:
    """One evaluation's kept test split: probabilities, users and labels in row order, and the split's key."""

    probs: np.ndarray  # (n,) float32
    users: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) bool
    split: str  # e.g. "movielens-ml-100k-rating-per_user-1515f9646d/test"
    rows_digest: str


def predictions_path(json_path: str | Path) -> Path:
    """Where the predictions of an evaluation written to ``json_path`` are kept: eval_test.json ->
    eval_test.preds.parquet."""
    path = Path(json_path)
    return path.with_name(path.stem + PREDICTIONS_SUFFIX)


def split_key(data_dir: str | Path, split: str) -> str:
    """The key of a split: its data folder's name (the conversion's or generator's fingerprint) and the split."""
    return f"{Path(data_dir).name}/{split}"


def rows_digest(users: np.ndarray, labels: np.ndarray) -> str:
    """sha256 (16 hex digits) of a split's user ids (int64) and labels (int8), in row order."""
    digest = hashlib.sha256(np.ascontiguousarray(users, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int8).tobytes())
    return digest.hexdigest()[:16]


def write_predictions(path: str | Path, probs: np.ndarray, users: np.ndarray, labels: np.ndarray,
                      split: str) -> None:
    """Keep a split's probabilities with its users, labels and key (row order), atomically."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int8)
    if not len(probs) == len(users) == len(labels):
        raise ValueError(f"{len(probs)} probabilities, {len(users)} users, {len(labels)} labels")
    metadata = {SPLIT_KEY: split.encode(), ROWS_DIGEST: rows_digest(users, labels).encode()}
    table = pa.table({PROB: probs, USER_ID: users, LABEL: labels}).replace_schema_metadata(metadata)
    with atomic_writer(path) as f:
        pq.write_table(table, f)


def read_predictions(path: str | Path) -> KeptPredictions:
    """The kept predictions of ``path``: exactly the columns prob (float32), user_id (int64), label (int8, 0/1)
    and the split key; probabilities in [0, 1]; at most MAX_ROWS rows (checked in the footer, unread). QinError
    (one line) otherwise."""
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise QinError(f"{path}: not a readable parquet file ({str(err).splitlines()[0][:200]})") from None
    schema = parquet.schema_arrow
    found = {f.name: f.type for f in schema}
    if found != COLUMNS:
        shown = ", ".join(f"{name}: {kind}" for name, kind in found.items()) or "no columns"
        if list(found) == [PROB]:
            shown += " (a record from before kept predictions carried their users and labels: run " \
                     "experiments/migrate_predictions.py)"
        raise QinError(f"{path}: expected the columns prob: float, user_id: int64, label: int8, got {shown}")
    metadata = schema.metadata or {}
    if SPLIT_KEY not in metadata or ROWS_DIGEST not in metadata:
        raise QinError(f"{path}: schema metadata: expected '{SPLIT_KEY.decode()}' and '{ROWS_DIGEST.decode()}' "
                       "(which split and row order these are)")
    rows = parquet.metadata.num_rows
    if rows > MAX_ROWS:
        raise QinError(f"{path}: {rows:,} rows: expected at most {MAX_ROWS:,} (refused unread)")
    try:
        table = parquet.read()
    except (OSError, pa.ArrowException) as err:
        raise QinError(f"{path}: cannot read its columns ({str(err).splitlines()[0][:200]})") from None
    if table.num_rows != rows:
        raise QinError(f"{path}: expected {rows} rows (its footer), got {table.num_rows}")
    columns = {name: table.column(name) for name in COLUMNS}
    for name, column in columns.items():
        if column.null_count:
            raise QinError(f"{path}: column '{name}': expected no nulls, got {column.null_count}")
    probs = np.array(columns[PROB].to_numpy(), dtype=np.float32)
    users = np.array(columns[USER_ID].to_numpy(), dtype=np.int64)
    raw_labels = np.array(columns[LABEL].to_numpy(), dtype=np.int8)
    bad = np.flatnonzero(~((probs >= 0.0) & (probs <= 1.0)))
    if bad.size:
        raise QinError(f"{path}: column '{PROB}', row {int(bad[0])}: expected a probability in [0, 1], got "
                       f"{probs[bad[0]]}")
    bad = np.flatnonzero((raw_labels != 0) & (raw_labels != 1))
    if bad.size:
        raise QinError(f"{path}: column '{LABEL}', row {int(bad[0])}: expected 0 or 1, got {raw_labels[bad[0]]}")
    digest = metadata[ROWS_DIGEST].decode(errors="replace")
    if rows_digest(users, raw_labels) != digest:
        raise QinError(f"{path}: the user and label columns do not match their digest '{digest[:16]}' (edited?)")
    return KeptPredictions(probs, users, raw_labels.astype(bool), metadata[SPLIT_KEY].decode(errors="replace"),
                           digest)
