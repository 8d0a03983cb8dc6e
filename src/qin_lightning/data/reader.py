"""The validating reader of the MMCTR layout (`qin_lightning.data.layout`): one line per problem.

Files are read in row chunks with pyarrow and checked with vectorised numpy: the readers here both validate
and return compact numpy arrays, so the datamodule reads every file exactly once. Every problem raises
`DataValidationError` with a one-line message naming the file, column, row/value and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qin_lightning.data.layout import (
    EMB_DIM,
    FILE_NAMES,
    ITEM_EMB,
    ITEM_ID,
    ITEM_INFO,
    ITEM_INFO_COLUMNS,
    ITEM_SEQ,
    ITEM_TAGS,
    LABEL,
    LABEL_REQUIRED,
    LIKES_LEVEL,
    NUM_LEVELS,
    SPLIT_COLUMNS,
    SPLITS,
    USER_ID,
    VIEWS_LEVEL,
    split_path,
)
from qin_lightning.errors import DataValidationError
from qin_lightning.machine import cpu_available

CHUNK_ROWS = 131_072  # rows per read chunk: bounds the transient memory of reading a split
# list elements per read chunk: a chunk holds fewer rows when the lists are long, and a list longer than this
# (declared in the parquet metadata) is refused before it is read: a few KB of run-length-encoded zeros can
# declare a history of 10^8 items
CHUNK_VALUES = 4_194_304
# Inferring the tag vocabulary (data.num_tags=null) as largest id + 1 is refused when that is more than
# max(SPARSE_TAGS_FLOOR, SPARSE_TAGS_FACTOR x the number of distinct ids): one stray id must not size the table.
SPARSE_TAGS_FLOOR = 1000
SPARSE_TAGS_FACTOR = 100


@dataclass(frozen=True)
class ItemTable:
    """item_info.parquet as arrays (row i = item i, row 0 = padding)."""

    tags: np.ndarray  # (N, T) int64
    mm: np.ndarray  # (N, emb_dim) float32
    num_tags: int  # tag vocabulary size: max tag id + 1 unless given

    @property
    def num_items(self) -> int:
        return int(self.tags.shape[0])


@dataclass(frozen=True)
class SplitArrays:
    """One split as compact, contiguous arrays (no per-row Python objects)."""

    name: str
    user_id: np.ndarray  # (n,) int64
    item_seq: np.ndarray  # (n, max_len) int32, left padded, most recent last
    item_id: np.ndarray  # (n,) int32
    likes_level: np.ndarray  # (n,) int8
    views_level: np.ndarray  # (n,) int8
    label: np.ndarray | None  # (n,) float32, None when the split has no label column
    history_len: int  # length of the stored history lists (before truncation / padding)

    def __len__(self) -> int:
        return int(self.item_id.shape[0])


@dataclass(frozen=True)
class DatasetSummary:
    """What `validate_dataset` found."""

    root: Path
    num_items: int
    num_tags: int
    tags_per_item: int
    emb_dim: int
    rows: dict[str, int]
    history_len: dict[str, int]
    has_label: dict[str, bool]


# ---- low-level helpers ---------------------------------------------------------------------------------
def _fail(path: Path, message: str, column: str | None = None) -> DataValidationError:
    where = f"{path.name}: column '{column}' " if column is not None else f"{path.name}: "
    return DataValidationError((where + message).replace("\n", " "))


def _open(path: Path) -> pq.ParquetFile:
    if not path.parent.is_dir():
        raise DataValidationError(
            f"data folder {path.parent} does not exist, expected a folder with {', '.join(FILE_NAMES.values())}"
        )
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found, expected the {path.stem} split of the MMCTR layout")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: unreadable or corrupt parquet ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _check_columns(path: Path, schema: pa.Schema, required: Sequence[str]) -> None:
    for col in required:
        count = schema.names.count(col)
        if count > 1:
            raise _fail(path, f"appears {count} times, expected one column of that name", col)
    names = set(schema.names)
    for col in required:
        if col not in names:
            raise _fail(path, f"missing column '{col}', found columns {sorted(names)}")


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _check_int_type(path: Path, schema: pa.Schema, col: str) -> None:
    t = schema.field(col).type
    if not pa.types.is_integer(t):
        raise _fail(path, f"has type {t}, expected an integer type", col)


def _check_list_type(path: Path, schema: pa.Schema, col: str, floating: bool) -> None:
    t = schema.field(col).type
    kind = "floats" if floating else "integers"
    ok_value = (lambda v: pa.types.is_floating(v)) if floating else (lambda v: pa.types.is_integer(v))
    if not _is_list(t) or not ok_value(t.value_type):
        raise _fail(path, f"has type {t}, expected a list of {kind}", col)


# ---- list lengths per row, from the repetition levels of the pages (nothing is decoded) -------------------------
# A row group whose declared list elements exceed CHUNK_VALUES could hold them all in one row: the per-row lengths
# are then read from the repetition levels in its pages (page headers and the run-length-encoded levels only, one
# page in memory at a time), and a row longer than CHUNK_VALUES is refused before any value is decoded.
PAGE_CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli", "ZSTD": "zstd",
               "LZ4_RAW": "lz4_raw"}  # parquet codec -> pyarrow codec (others: the per-row-group bound only)
MAX_PAGE_BYTES = 256 * 2**20  # a page body inflated to read its levels (writers default to 1 MiB pages)
MAX_HEADER_BYTES = 256 * 1024  # a page header (its statistics included)
SCAN_ABOVE_VALUES = 2**24  # a row group declaring more list elements has its rows' lengths read from its pages
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3
_RLE = 3


class _Thrift:
    """The Thrift compact protocol, enough for a parquet PageHeader (nothing is allocated beyond its size)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("page header ends early")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self, depth: int = 0) -> dict[int, object]:
        if depth > 8:
            raise ValueError("page header nested too deep")
        fields: dict[int, object] = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            delta, kind = head >> 4, head & 0x0F
            last = last + delta if delta else self.zigzag()
            fields[last] = self.value(kind, depth)

    def value(self, kind: int, depth: int) -> object:
        if kind in (1, 2):
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind in (7, 8):
            size = 8 if kind == 7 else self.varint()
            if self.pos + size > len(self.data):
                raise ValueError("page header ends early")
            self.pos += size
            return None
        if kind in (9, 10):
            head = self.byte()
            size, inner = head >> 4, head & 0x0F
            size = self.varint() if size == 15 else size
            if size > len(self.data):
                raise ValueError("page header list too long")
            return [self.value(inner, depth + 1) for _ in range(size)]
        if kind == 12:
            return self.struct(depth + 1)
        raise ValueError(f"unsupported thrift type {kind}")


class _RowLengths:
    """Levels per row of one list column (repetition levels of width 1: 0 starts a row), fed run by run; the
    longest row so far, and a DataValidationError for a row longer than `limit` levels."""

    def __init__(self, path: Path, column: str, limit: int, first_row: int) -> None:
        self.path, self.column, self.limit = path, column, limit
        self.row, self.current, self.longest = first_row - 1, 0, 0  # the open row, its levels so far
        self.first_row = first_row

    def refuse(self, row: int, length: int) -> DataValidationError:
        return _fail(self.path, f"row {row} holds {length:,} list elements, expected at most {self.limit:,} per row",
                     self.column)

    def feed(self, data: bytes, count: int) -> None:
        """`count` levels, RLE / bit-packed hybrid encoded in `data` (pure integer arithmetic: a run of 10^8
        levels is one addition, a bit-packed group is read as one integer)."""
        pos, left, size = 0, count, len(data)
        row, current, longest, limit = self.row, self.current, self.longest, self.limit
        while left > 0 and pos < size:
            header = shift = 0
            while True:  # ULEB128 run header
                if pos >= size or shift > 63:
                    raise ValueError("malformed level run header")
                byte = data[pos]
                pos += 1
                header |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if header & 1:  # bit-packed: (header >> 1) groups of 8 one-bit levels
                nbits = min(left, (header >> 1) * 8)
                nbytes = (header >> 1)
                bits = int.from_bytes(data[pos : pos + nbytes], "little") & ((1 << nbits) - 1)
                pos += nbytes
                zeros = ~bits & ((1 << nbits) - 1)
                done = 0
                while zeros:
                    low = zeros & -zeros
                    at = low.bit_length() - 1
                    current += at - done
                    longest = max(longest, current)  # close the open row (none: current 0), open the next
                    if current > limit:
                        raise self.refuse(row, current)
                    row, current, done = row + 1, 1, at + 1
                    zeros ^= low
                current += nbits - done
                left -= nbits
            else:  # a run of (header >> 1) equal levels
                run = min(header >> 1, left)
                if pos >= size:
                    raise ValueError("level run without its value")
                level = data[pos]
                pos += 1
                if level:
                    current += run
                else:
                    longest = max(longest, current)
                    if current > limit:
                        raise self.refuse(row, current)
                    row, current = row + run, 1
                    longest = max(longest, 1)
                left -= run
            if current > limit:
                raise self.refuse(max(row, self.first_row), current)
        self.row, self.current, self.longest = row, current, longest

    def finish(self) -> int:
        if self.current > self.limit:
            raise self.refuse(max(self.row, self.first_row), self.current)
        return max(self.longest, self.current)


def longest_row(path: Path, pf: pq.ParquetFile, group: int, column_index: int, first_row: int, limit: int) -> int:
    """The longest list (in levels: elements, or 1 for an empty list) of this row group's list column, read from
    its pages' repetition levels; a row longer than `limit` is refused (DataValidationError naming it); -1 when the
    pages cannot be read that way (an unsupported codec or level encoding)."""
    try:
        return _longest_row(path, pf, group, column_index, first_row, limit)
    except (ValueError, OSError) as exc:
        raise _fail(path, f"row group {group}: unreadable page ({_first_line(exc)})",
                    pf.metadata.row_group(group).column(column_index).path_in_schema.split(".")[0]) from None


def _longest_row(path: Path, pf: pq.ParquetFile, group: int, column_index: int, first_row: int, limit: int) -> int:
    meta = pf.metadata.row_group(group).column(column_index)
    codec = PAGE_CODECS.get(meta.compression, "?")
    if codec == "?" or int(pf.schema.column(column_index).max_repetition_level) != 1:
        return -1
    name = meta.path_in_schema.split(".")[0]
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    end = start + meta.total_compressed_size
    rows = _RowLengths(path, name, limit, first_row)
    levels_seen = 0
    with open(path, "rb") as f:
        position = start
        while position < end and levels_seen < meta.num_values:
            f.seek(position)
            head = f.read(min(MAX_HEADER_BYTES, end - position))
            parsed = _Thrift(head)
            try:
                header = parsed.struct()
            except ValueError as exc:
                raise _fail(path, f"row group {group}: unreadable page header ({exc})", name) from None
            size = header.get(3)
            if type(size) is not int or size < 0 or position + parsed.pos + size > end:
                raise _fail(path, f"row group {group}: a page declares {size} bytes beyond its column chunk", name)
            body_at = position + parsed.pos
            position = body_at + size
            kind = header.get(1)
            if kind == _DATA_PAGE_V2:
                v2 = header.get(8)
                if not isinstance(v2, dict) or type(v2.get(1)) is not int or type(v2.get(6)) is not int:
                    raise _fail(path, f"row group {group}: malformed data page header", name)
                f.seek(body_at)
                rows.feed(f.read(min(v2[6], size)), v2[1])
                levels_seen += v2[1]
            elif kind == _DATA_PAGE:
                v1 = header.get(5)
                inflated = header.get(2)
                if not isinstance(v1, dict) or type(v1.get(1)) is not int or v1.get(4) != _RLE:
                    return -1
                if type(inflated) is not int or not 0 <= inflated <= MAX_PAGE_BYTES:
                    raise _fail(path, f"row group {group}: a page declares {inflated} bytes, expected at most "
                                      f"{MAX_PAGE_BYTES:,}", name)
                f.seek(body_at)
                body = f.read(size)
                if codec is not None:
                    try:
                        body = pa.decompress(body, decompressed_size=inflated, codec=codec).to_pybytes()
                    except (pa.ArrowException, ValueError) as exc:
                        raise _fail(path, f"row group {group}: corrupt page ({_first_line(exc)})", name) from None
                length = int.from_bytes(body[:4], "little")
                rows.feed(body[4 : 4 + length], v1[1])
                levels_seen += v1[1]
    return rows.finish()


def declared_list_length(path: Path, pf: pq.ParquetFile, columns: Sequence[str]) -> int:
    """The longest list of `columns`, read before any value: the parquet metadata's elements / rows of each row
    group, and where a row group declares more than CHUNK_VALUES elements (one row could hold them all) the
    longest row from its pages' repetition levels (`longest_row`); a DataValidationError when a row exceeds
    CHUNK_VALUES."""
    longest, first_row = 0, 0
    for g in range(pf.metadata.num_row_groups):
        group = pf.metadata.row_group(g)
        for i in range(group.num_columns):
            column = group.column(i)
            name = column.path_in_schema.split(".")[0]
            if name not in columns or column.path_in_schema == name:  # not one of the list columns read
                continue
            per_row = -(-column.num_values // max(group.num_rows, 1))
            if per_row > CHUNK_VALUES:
                raise _fail(
                    path,
                    f"rows {first_row}-{first_row + max(group.num_rows - 1, 0)} declare {column.num_values:,} list "
                    f"elements for {group.num_rows:,} rows, expected at most {CHUNK_VALUES:,} per row",
                    name,
                )
            if column.num_values > SCAN_ABOVE_VALUES:  # below: one row of them all decodes in ~400 MB, refused
                per_row = max(per_row, longest_row(path, pf, g, i, first_row, CHUNK_VALUES))
            longest = max(longest, per_row)
        first_row += group.num_rows
    return longest


def _iter_chunks(path: Path, pf: pq.ParquetFile, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield (first row index, record batch) over the file, turning read errors into DataValidationError.

    Chunks hold at most CHUNK_ROWS rows and CHUNK_VALUES list elements (lengths from the metadata, checked
    before reading); the rows read must be exactly the rows the footer declares (a footer that claims more rows
    than the file holds is an error, never rows of uninitialised memory).
    """
    declared = pf.metadata.num_rows
    longest = declared_list_length(path, pf, columns)
    batch_rows = max(1, min(CHUNK_ROWS, CHUNK_VALUES // max(longest, 1)))
    lists = [c for c in columns if c in pf.schema_arrow.names and _is_list(pf.schema_arrow.field(c).type)]
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=True):
            if start + batch.num_rows > declared:
                raise _fail(path, f"the footer declares {declared:,} rows, but the file holds more; expected a "
                                  "complete parquet file")
            for col in lists:  # metadata that understates the lists: caught as decoded, before any conversion
                held = len(batch.column(col).flatten())
                if held > max(CHUNK_VALUES, longest * batch.num_rows):
                    raise _fail(path, f"rows {start}-{start + batch.num_rows - 1} hold {held:,} list elements, "
                                      f"expected at most the {longest * batch.num_rows:,} its metadata declares", col)
            yield start, batch
            start += batch.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: unreadable or corrupt parquet ({_first_line(exc)})") from None
    if start != declared:
        raise _fail(path, f"the footer declares {declared:,} rows, but the file holds {start:,}; expected a complete "
                          "parquet file")


def _no_nulls(path: Path, arr: pa.Array, col: str, start: int) -> None:
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise _fail(path, f"row {start + row} is null, expected a value", col)


def _scalar(path: Path, batch: pa.RecordBatch, col: str, start: int) -> np.ndarray:
    arr = batch.column(col)
    _no_nulls(path, arr, col, start)
    return arr.to_numpy(zero_copy_only=False)


def _check_range(path: Path, col: str, values: np.ndarray, start: int, lo: int, hi: int, what: str) -> None:
    """Every value in lo..hi (inclusive), else name the first offending row."""
    bad = (values < lo) | (values > hi)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(path, f"row {start + row} has value {values[row]}, expected {what}", col)


def _list_values(
    path: Path, batch: pa.RecordBatch, col: str, start: int, expected_len: int | None
) -> tuple[np.ndarray, int]:
    """A fixed-length list column of one chunk as a (rows, L) numpy array; checks nulls and raggedness.

    `expected_len` is the length every list must have (None: take the most common length of this chunk).
    """
    arr = batch.column(col)
    _no_nulls(path, arr, col, start)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if expected_len is None:
        expected_len = int(np.bincount(lengths).argmax()) if lengths.size else 0
    bad = lengths != expected_len
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(
            path,
            f"row {start + row} has length {lengths[row]}, expected {expected_len} (all lists must have one length)",
            col,
        )
    flat = arr.flatten()
    if flat.null_count:
        pos = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
        raise _fail(path, f"row {start + pos // max(expected_len, 1)} contains a null element, expected values", col)
    values = flat.to_numpy(zero_copy_only=False).reshape(len(arr), expected_len)
    return values, expected_len


def _first_bad_row(bad: np.ndarray) -> tuple[int, int]:
    """(row, position) of the first True in a 2-D mask."""
    flat = int(np.flatnonzero(bad.reshape(-1))[0])
    return divmod(flat, bad.shape[1])


# ---- item_info -----------------------------------------------------------------------------------------
def read_item_info(root: Path, emb_dim: int | None = EMB_DIM, num_tags: int | None = None) -> ItemTable:
    """Read and validate item_info.parquet; returns the tag and multimodal tables (row i = item i).

    `emb_dim=None` accepts any width as long as every vector has the same one.
    """
    path = split_path(root, ITEM_INFO)
    pf = _open(path)
    schema = pf.schema_arrow
    _check_columns(path, schema, ITEM_INFO_COLUMNS)
    _check_int_type(path, schema, ITEM_ID)
    _check_list_type(path, schema, ITEM_TAGS, floating=False)
    _check_list_type(path, schema, ITEM_EMB, floating=True)
    n = pf.metadata.num_rows
    if n == 0:
        raise _fail(path, "has 0 rows, expected at least the padding row 0")
    check_item_info_fits(path, pf)

    tags_parts: list[np.ndarray] = []
    mm_parts: list[np.ndarray] = []
    tags_len: int | None = None
    for start, batch in _iter_chunks(path, pf, ITEM_INFO_COLUMNS):
        ids = _scalar(path, batch, ITEM_ID, start)
        expected = np.arange(start, start + batch.num_rows)
        bad = ids != expected
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise _fail(
                path,
                f"row {start + row} has value {ids[row]}, expected {start + row} "
                "(row i must describe item i; row 0 is the padding item)",
                ITEM_ID,
            )
        tags, tags_len = _list_values(path, batch, ITEM_TAGS, start, tags_len)
        tags = tags.astype(np.int64, copy=False)
        if (tags < 0).any():
            row, pos = _first_bad_row(tags < 0)
            raise _fail(path, f"row {start + row} contains negative tag id {tags[row, pos]}, expected ids >= 0", ITEM_TAGS)
        if num_tags is not None and (tags >= num_tags).any():
            row, pos = _first_bad_row(tags >= num_tags)
            raise _fail(
                path,
                f"row {start + row} contains tag id {tags[row, pos]}, expected 0..{num_tags - 1} (num_tags={num_tags})",
                ITEM_TAGS,
            )
        vecs, emb_dim = _list_values(path, batch, ITEM_EMB, start, emb_dim)
        finite = np.isfinite(vecs)
        if not finite.all():
            row, pos = _first_bad_row(~finite)
            raise _fail(
                path, f"row {start + row} has value {vecs[row, pos]} at position {pos}, expected finite floats", ITEM_EMB
            )
        mm_parts.append(vecs.astype(np.float32, copy=False))
        tags_parts.append(tags)
    if not tags_len or not emb_dim:
        col, width = (ITEM_TAGS, tags_len) if not tags_len else (ITEM_EMB, emb_dim)
        raise _fail(path, f"row 0 has length {width}, expected at least one value per item (0 is the padding id)", col)
    tag_table = np.ascontiguousarray(np.concatenate(tags_parts))
    mm = np.ascontiguousarray(np.concatenate(mm_parts))

    if tag_table[0].any():
        raise _fail(path, f"row 0 is {tag_table[0].tolist()}, expected all zeros (row 0 is the padding item)", ITEM_TAGS)
    if mm[0].any():
        pos = int(np.flatnonzero(mm[0])[0])
        raise _fail(
            path, f"row 0 has value {mm[0, pos]} at position {pos}, expected all zeros (row 0 is the padding item)", ITEM_EMB
        )
    vocab = num_tags if num_tags is not None else inferred_tag_vocabulary(path, tag_table)
    return ItemTable(tags=tag_table, mm=mm, num_tags=vocab)


def inferred_tag_vocabulary(path: Path, tag_table: np.ndarray) -> int:
    """Largest tag id + 1, unless that is far beyond the ids in use (see SPARSE_TAGS_FLOOR / _FACTOR).

    A largest id above max(1000, 100 x distinct ids) is a DataValidationError naming its row and value: the
    table would be sized by a stray id (10,000,000 with 60 tags in use: 1.3 B parameters). Ids that really are
    that sparse are accepted when ``data.num_tags`` is given.
    """
    largest = int(tag_table.max())
    distinct = int(np.unique(tag_table).size)
    limit = max(SPARSE_TAGS_FLOOR, SPARSE_TAGS_FACTOR * distinct)
    if largest + 1 > limit:
        row, pos = _first_bad_row(tag_table == largest)
        raise _fail(
            path,
            f"row {row} contains tag id {largest}, but only {distinct} distinct tag ids are used: inferring the tag "
            f"vocabulary from the largest id would allocate {largest + 1:,} embeddings (the limit without "
            f"data.num_tags is max({SPARSE_TAGS_FLOOR}, {SPARSE_TAGS_FACTOR} x distinct ids) = {limit:,}); "
            f"renumber the tags densely, or set data.num_tags={largest + 1} if the ids really are that sparse",
            ITEM_TAGS,
        )
    return largest + 1


# ---- splits --------------------------------------------------------------------------------------------
def _split_schema_checks(path: Path, split: str, schema: pa.Schema) -> bool:
    """Check columns and types of a split; returns whether it has a label column."""
    required = [c for c in SPLIT_COLUMNS if c != LABEL or LABEL_REQUIRED.get(split, True)]
    _check_columns(path, schema, required)
    for col in (USER_ID, LIKES_LEVEL, VIEWS_LEVEL, ITEM_ID):
        _check_int_type(path, schema, col)
    _check_list_type(path, schema, ITEM_SEQ, floating=False)
    has_label = LABEL in schema.names
    if has_label:
        t = schema.field(LABEL).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise _fail(path, f"has type {t}, expected integer or float 0/1 labels", LABEL)
    return has_label


def iter_split(
    root: Path, split: str, num_items: int, max_len: int | None = None
) -> Iterator[tuple[int, int, SplitArrays]]:
    """Validate a split chunk by chunk; yields (first row, total rows, chunk arrays).

    Histories are truncated to their last `max_len` positions, or left-padded with 0 up to `max_len`
    (None keeps the stored length). Values are checked on the full stored history, before truncation.
    """
    if max_len is not None and max_len < 1:
        raise DataValidationError(f"max_len={max_len}, expected a positive history length")
    path = split_path(root, split)
    pf = _open(path)
    schema = pf.schema_arrow
    has_label = _split_schema_checks(path, split, schema)
    total = pf.metadata.num_rows
    if total == 0:
        raise _fail(path, "split is empty (0 rows), expected at least one row")
    columns = [c for c in SPLIT_COLUMNS if c != LABEL or has_label]
    longest = declared_list_length(path, pf, [ITEM_SEQ])
    check_fits_in_memory(path, total, max_len if max_len is not None else longest, has_label)
    hist_len: int | None = None
    for start, batch in _iter_chunks(path, pf, columns):
        user = _scalar(path, batch, USER_ID, start)
        _check_range(path, USER_ID, user, start, 0, np.iinfo(np.int64).max, "a user id >= 0")
        target = _scalar(path, batch, ITEM_ID, start)
        _check_range(
            path, ITEM_ID, target, start, 0, num_items - 1,
            f"an item id in 0..{num_items - 1} (item_info.parquet has {num_items} rows)",
        )
        levels = {}
        for col in (LIKES_LEVEL, VIEWS_LEVEL):
            levels[col] = _scalar(path, batch, col, start)
            _check_range(path, col, levels[col], start, 0, NUM_LEVELS - 1, f"a level in 0..{NUM_LEVELS - 1}")
        label = None
        if has_label:
            label = _scalar(path, batch, LABEL, start).astype(np.float32)
            bad = (label != 0) & (label != 1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise _fail(path, f"row {start + row} has value {label[row]}, expected 0 or 1", LABEL)
        seq, hist_len = _list_values(path, batch, ITEM_SEQ, start, hist_len)
        if (seq < 0).any():
            row, pos = _first_bad_row(seq < 0)
            raise _fail(path, f"row {start + row} contains negative item id {seq[row, pos]}, expected ids >= 0", ITEM_SEQ)
        if (seq >= num_items).any():
            row, pos = _first_bad_row(seq >= num_items)
            raise _fail(
                path,
                f"row {start + row} contains item id {seq[row, pos]}, expected 0..{num_items - 1} "
                f"(item_info.parquet has {num_items} rows)",
                ITEM_SEQ,
            )
        width = hist_len if max_len is None else max_len
        out = np.zeros((len(seq), width), dtype=np.int32)
        keep = min(width, hist_len)
        if keep:
            out[:, width - keep :] = seq[:, hist_len - keep :]  # last positions = most recent
        yield start, total, SplitArrays(
            name=split,
            user_id=user.astype(np.int64, copy=False),
            item_seq=out,
            item_id=target.astype(np.int32),
            likes_level=levels[LIKES_LEVEL].astype(np.int8),
            views_level=levels[VIEWS_LEVEL].astype(np.int8),
            label=label,
            history_len=hist_len,
        )


def read_split(root: Path, split: str, num_items: int, max_len: int | None = None) -> SplitArrays:
    """Read and validate one split into preallocated contiguous arrays (bounded transient memory)."""
    if num_items >= np.iinfo(np.int32).max:
        raise DataValidationError(f"item_info.parquet has {num_items} rows, expected fewer than 2**31 - 1")
    out: dict[str, np.ndarray] = {}
    hist_len = 0
    label: np.ndarray | None = None
    for start, total, chunk in iter_split(root, split, num_items, max_len):
        if not out:
            width = chunk.item_seq.shape[1]
            check_fits_in_memory(split_path(root, split), total, width, chunk.label is not None)
            out = {
                USER_ID: np.empty(total, np.int64),
                ITEM_SEQ: np.empty((total, width), np.int32),
                ITEM_ID: np.empty(total, np.int32),
                LIKES_LEVEL: np.empty(total, np.int8),
                VIEWS_LEVEL: np.empty(total, np.int8),
            }
            label = np.empty(total, np.float32) if chunk.label is not None else None
        end = start + len(chunk)
        out[USER_ID][start:end] = chunk.user_id
        out[ITEM_SEQ][start:end] = chunk.item_seq
        out[ITEM_ID][start:end] = chunk.item_id
        out[LIKES_LEVEL][start:end] = chunk.likes_level
        out[VIEWS_LEVEL][start:end] = chunk.views_level
        if label is not None and chunk.label is not None:
            label[start:end] = chunk.label
        hist_len = chunk.history_len
    return SplitArrays(
        name=split,
        user_id=out[USER_ID],
        item_seq=out[ITEM_SEQ],
        item_id=out[ITEM_ID],
        likes_level=out[LIKES_LEVEL],
        views_level=out[VIEWS_LEVEL],
        label=label,
        history_len=hist_len,
    )


def check_fits_in_memory(path: Path, rows: int, width: int, has_label: bool) -> None:
    """The arrays of a split with `rows` declared rows must fit in the available memory before they are
    allocated (the rows themselves are counted as they are read: `_iter_chunks`)."""
    needed = rows * (4 * width + 8 + 4 + 1 + 1 + (4 if has_label else 0))
    free = cpu_available()
    if free is not None and needed > free:
        raise _fail(path, f"the footer declares {rows:,} rows of {width} history items, which need "
                          f"{needed / 2**30:,.1f} GiB, expected at most the {free / 2**30:,.1f} GiB available")


def declared_values(pf: pq.ParquetFile, column: str) -> int:
    """List elements of `column` in all row groups, as the parquet metadata declares them (read before any value;
    `_iter_chunks` holds the file to them as it reads)."""
    total = 0
    for g in range(pf.metadata.num_row_groups):
        group = pf.metadata.row_group(g)
        for i in range(group.num_columns):
            if group.column(i).path_in_schema.split(".")[0] == column:
                total += group.column(i).num_values
    return total


def check_item_info_fits(path: Path, pf: pq.ParquetFile) -> None:
    """item_info's tables must fit in the available memory before they are read: int64 tags and float32 vectors
    from the values its metadata declares, each held twice while read (decoded chunks, then the joined table)."""
    rows = pf.metadata.num_rows
    needed = 2 * (8 * declared_values(pf, ITEM_TAGS) + 8 * declared_values(pf, ITEM_EMB) + 8 * rows)
    free = cpu_available()
    if free is not None and needed > free:
        raise _fail(path, f"the footer declares {rows:,} items whose tags and vectors need {needed / 2**30:,.1f} GiB, "
                          f"expected at most the {free / 2**30:,.1f} GiB available")


def item_info_rows(root: Path | str) -> int:
    """The rows item_info.parquet declares (its footer only: nothing else is read)."""
    return int(_open(split_path(Path(root), ITEM_INFO)).metadata.num_rows)


def validate_dataset(
    root: Path | str,
    max_len: int | None = None,
    emb_dim: int | None = EMB_DIM,
    num_tags: int | None = None,
    splits: Sequence[str] = SPLITS,
) -> DatasetSummary:
    """Check a dataset folder against the layout (streaming, bounded memory); raise DataValidationError."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(
            f"data folder {root} does not exist, expected a folder with {', '.join(FILE_NAMES.values())}"
        )
    for split in splits:
        if split not in LABEL_REQUIRED:
            raise DataValidationError(f"unknown split '{split}', expected one of {list(SPLITS)}")
    items = read_item_info(root, emb_dim=emb_dim, num_tags=num_tags)
    rows: dict[str, int] = {}
    hist: dict[str, int] = {}
    has_label: dict[str, bool] = {}
    for split in splits:
        for _, total, chunk in iter_split(root, split, items.num_items, max_len):
            rows[split], hist[split], has_label[split] = total, chunk.history_len, chunk.label is not None
    return DatasetSummary(
        root=root,
        num_items=items.num_items,
        num_tags=items.num_tags,
        tags_per_item=int(items.tags.shape[1]),
        emb_dim=int(items.mm.shape[1]),
        rows=rows,
        history_len=hist,
        has_label=has_label,
    )
