"""reader.py: every layout violation raises DataValidationError with a one-line message naming file, column, value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin_lightning.data import layout, reader
from qin_lightning.data.synthetic import SyntheticConfig, generate
from qin_lightning.errors import DataValidationError, QinError

from conftest import copy_of

TINY = SyntheticConfig.tiny()
EMB = TINY.emb_dim


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(TINY, tmp_path_factory.mktemp("schema") / "base")


@pytest.fixture
def root(base: Path, tmp_path: Path) -> Path:
    return copy_of(base, tmp_path)


def edit(root: Path, split: str, fn: Callable[[dict[str, list]], dict[str, list]], types: dict | None = None) -> None:
    """Rewrite a file through Python lists (tiny data only); `types` overrides arrow types of columns."""
    path = layout.split_path(root, split)
    table = pq.read_table(path)
    cols = fn(table.to_pydict())
    types = types or {}
    arrays = {}
    for name, values in cols.items():
        t = types.get(name, table.schema.field(name).type if name in table.schema.names else None)
        arrays[name] = pa.array(values, type=t)
    pq.write_table(pa.table(arrays), path)


def set_cell(root: Path, split: str, column: str, row: int, value: object, type_: pa.DataType | None = None) -> None:
    def fn(cols: dict[str, list]) -> dict[str, list]:
        cols[column][row] = value
        return cols

    edit(root, split, fn, {column: type_} if type_ is not None else None)


def expect(root: Path, *needles: str, **kwargs: object) -> str:
    with pytest.raises(DataValidationError) as info:
        reader.validate_dataset(root, emb_dim=kwargs.pop("emb_dim", EMB), **kwargs)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_valid_dataset_passes(root: Path) -> None:
    summary = reader.validate_dataset(root, emb_dim=EMB, max_len=8)
    assert summary.num_items == TINY.num_items
    assert summary.rows == {"train": TINY.train_rows, "valid": TINY.valid_rows, "test": TINY.test_rows}
    assert summary.history_len == {"train": TINY.max_len, "valid": TINY.max_len, "test": TINY.max_len}
    assert summary.tags_per_item == TINY.tags_per_item and summary.emb_dim == EMB
    assert issubclass(DataValidationError, QinError)


def test_constants() -> None:
    assert (layout.USER_ID, layout.ITEM_SEQ, layout.LIKES_LEVEL, layout.VIEWS_LEVEL) == ("user_id", "item_seq", "likes_level", "views_level")
    assert (layout.ITEM_ID, layout.LABEL, layout.ITEM_TAGS, layout.ITEM_EMB) == ("item_id", "label", "item_tags", "item_emb_d128")
    assert layout.NUM_LEVELS == 11 and layout.FILE_NAMES["item_info"] == "item_info.parquet"


# ---- files ---------------------------------------------------------------------------------------------
def test_missing_folder(tmp_path: Path) -> None:
    expect(tmp_path / "nope", "nope", "does not exist", "train.parquet")


def test_missing_file(root: Path) -> None:
    (root / "valid.parquet").unlink()
    expect(root, "valid.parquet", "file not found")


def test_corrupt_parquet(root: Path) -> None:
    (root / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    expect(root, "train.parquet", "corrupt parquet")


def test_truncated_parquet(root: Path) -> None:
    data = (root / "test.parquet").read_bytes()
    (root / "test.parquet").write_bytes(data[: len(data) // 2])
    expect(root, "test.parquet", "corrupt parquet")


# ---- columns and types ---------------------------------------------------------------------------------
@pytest.mark.parametrize("split,column", [("train", "label"), ("valid", "item_seq"), ("test", "likes_level")])
def test_missing_column(root: Path, split: str, column: str) -> None:
    edit(root, split, lambda c: {k: v for k, v in c.items() if k != column})
    expect(root, f"{split}.parquet", f"missing column '{column}'")


def test_missing_item_info_column(root: Path) -> None:
    edit(root, "item_info", lambda c: {k: v for k, v in c.items() if k != "item_tags"})
    expect(root, "item_info.parquet", "missing column 'item_tags'")


def test_test_label_optional(root: Path) -> None:
    edit(root, "test", lambda c: {k: v for k, v in c.items() if k != "label"})
    summary = reader.validate_dataset(root, emb_dim=EMB)
    assert summary.has_label == {"train": True, "valid": True, "test": False}


@pytest.mark.parametrize(
    "column,transform,type_,expected",
    [
        ("user_id", str, pa.string(), "expected an integer type"),
        ("item_id", float, pa.float64(), "expected an integer type"),
        ("likes_level", lambda v: [v], pa.list_(pa.int64()), "expected an integer type"),
        ("item_seq", lambda v: [float(x) for x in v], pa.list_(pa.float64()), "expected a list of integers"),
        ("item_seq", lambda v: v[-1], pa.int64(), "expected a list of integers"),
        ("label", str, pa.string(), "expected integer or float 0/1 labels"),
    ],
)
def test_wrong_dtype(root: Path, column: str, transform: Callable, type_: pa.DataType, expected: str) -> None:
    edit(root, "train", lambda c: {**c, column: [transform(v) for v in c[column]]}, {column: type_})
    expect(root, "train.parquet", f"column '{column}'", "has type", expected)


def test_float_label_accepted(root: Path) -> None:
    edit(root, "valid", lambda c: {**c, "label": [float(v) for v in c["label"]]}, {"label": pa.float32()})
    reader.validate_dataset(root, emb_dim=EMB)


def test_item_emb_wrong_dtype(root: Path) -> None:
    edit(root, "item_info", lambda c: {**c, "item_emb_d128": [[str(x) for x in v] for v in c["item_emb_d128"]]},
         {"item_emb_d128": pa.list_(pa.string())})
    expect(root, "item_info.parquet", "column 'item_emb_d128'", "expected a list of floats")


def test_null_value(root: Path) -> None:
    set_cell(root, "valid", "views_level", 7, None)
    expect(root, "valid.parquet", "column 'views_level'", "row 7 is null")


# ---- histories -----------------------------------------------------------------------------------------
def test_ragged_history(root: Path) -> None:
    def fn(c: dict[str, list]) -> dict[str, list]:
        c["item_seq"][17] = c["item_seq"][17][1:]
        return c

    edit(root, "valid", fn)
    expect(root, "valid.parquet", "column 'item_seq'", "row 17", f"length {TINY.max_len - 1}", f"expected {TINY.max_len}")


def test_null_history_element(root: Path) -> None:
    def fn(c: dict[str, list]) -> dict[str, list]:
        c["item_seq"][4][0] = None
        return c

    edit(root, "train", fn)
    expect(root, "train.parquet", "column 'item_seq'", "row 4", "null")


def test_negative_history_id(root: Path) -> None:
    def fn(c: dict[str, list]) -> dict[str, list]:
        c["item_seq"][9][-1] = -3
        return c

    edit(root, "test", fn)
    expect(root, "test.parquet", "column 'item_seq'", "row 9", "-3", "expected ids >= 0")


def test_history_id_beyond_items(root: Path) -> None:
    def fn(c: dict[str, list]) -> dict[str, list]:
        c["item_seq"][11][-2] = TINY.num_items
        return c

    edit(root, "train", fn)
    expect(root, "train.parquet", "column 'item_seq'", "row 11", f"item id {TINY.num_items}", f"0..{TINY.num_items - 1}")


def test_history_length_may_differ_between_splits(root: Path) -> None:
    edit(root, "test", lambda c: {**c, "item_seq": [v[-5:] for v in c["item_seq"]]})
    summary = reader.validate_dataset(root, emb_dim=EMB, max_len=8)
    assert summary.history_len["test"] == 5 and summary.history_len["train"] == TINY.max_len


# ---- scalar values -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "split,column,value,expected",
    [
        ("train", "item_id", -1, "expected an item id in 0.."),
        ("valid", "item_id", TINY.num_items + 5, f"0..{TINY.num_items - 1}"),
        ("test", "user_id", -7, "expected a user id >= 0"),
        ("train", "likes_level", 11, "expected a level in 0..10"),
        ("valid", "views_level", -1, "expected a level in 0..10"),
        ("train", "label", 2, "expected 0 or 1"),
        ("test", "label", -1, "expected 0 or 1"),
    ],
)
def test_bad_scalar(root: Path, split: str, column: str, value: int, expected: str) -> None:
    set_cell(root, split, column, 3, value)
    expect(root, f"{split}.parquet", f"column '{column}'", "row 3", f"value {value}", expected)


def test_label_half(root: Path) -> None:
    set_cell(root, "train", "label", 5, 0.5, pa.float64())
    expect(root, "train.parquet", "column 'label'", "row 5", "0.5", "expected 0 or 1")


def test_empty_split(root: Path) -> None:
    edit(root, "valid", lambda c: {k: v[:0] for k, v in c.items()})
    expect(root, "valid.parquet", "split is empty")


# ---- item_info -----------------------------------------------------------------------------------------
def test_item_info_not_position_indexed(root: Path) -> None:
    set_cell(root, "item_info", "item_id", 7, 9)
    expect(root, "item_info.parquet", "column 'item_id'", "row 7", "value 9", "expected 7")


def test_item_info_missing_padding_row(root: Path) -> None:
    edit(root, "item_info", lambda c: {k: v[1:] for k, v in c.items()})
    expect(root, "item_info.parquet", "column 'item_id'", "row 0", "value 1", "expected 0", "padding")


def test_padding_row_tags_nonzero(root: Path) -> None:
    set_cell(root, "item_info", "item_tags", 0, [0] * (TINY.tags_per_item - 1) + [3])
    expect(root, "item_info.parquet", "column 'item_tags'", "row 0", "3", "expected all zeros")


def test_padding_row_vector_nonzero(root: Path) -> None:
    set_cell(root, "item_info", "item_emb_d128", 0, [0.0, 0.5] + [0.0] * (EMB - 2))
    expect(root, "item_info.parquet", "column 'item_emb_d128'", "row 0", "0.5", "position 1", "expected all zeros")


def test_negative_tag(root: Path) -> None:
    set_cell(root, "item_info", "item_tags", 4, [-2] * TINY.tags_per_item)
    expect(root, "item_info.parquet", "column 'item_tags'", "row 4", "-2")


def test_tag_beyond_num_tags(root: Path) -> None:
    set_cell(root, "item_info", "item_tags", 6, [0] * (TINY.tags_per_item - 1) + [TINY.num_tags + 4])
    expect(root, "item_info.parquet", "column 'item_tags'", "row 6", str(TINY.num_tags + 4), "num_tags=40",
           num_tags=TINY.num_tags)
    assert reader.validate_dataset(root, emb_dim=EMB).num_tags == TINY.num_tags + 5  # inferred when not given


def test_ragged_tags(root: Path) -> None:
    set_cell(root, "item_info", "item_tags", 5, [1])
    expect(root, "item_info.parquet", "column 'item_tags'", "row 5", "length 1", f"expected {TINY.tags_per_item}")


def test_vector_wrong_width(root: Path) -> None:
    set_cell(root, "item_info", "item_emb_d128", 8, [0.1] * (EMB + 1))
    expect(root, "item_info.parquet", "column 'item_emb_d128'", "row 8", f"length {EMB + 1}", f"expected {EMB}")


def test_vector_width_other_than_128(root: Path) -> None:
    expect(root, "item_info.parquet", "column 'item_emb_d128'", f"length {EMB}", "expected 128", emb_dim=128)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_vector_not_finite(root: Path, bad: float) -> None:
    set_cell(root, "item_info", "item_emb_d128", 12, [0.1] * 3 + [bad] + [0.1] * (EMB - 4))
    expect(root, "item_info.parquet", "column 'item_emb_d128'", "row 12", str(np.float32(bad)), "position 3", "finite")


# ---- readers -------------------------------------------------------------------------------------------
def test_read_split_truncates_and_pads(root: Path) -> None:
    raw = np.array(pq.read_table(root / "train.parquet").column("item_seq").to_pylist())
    short = reader.read_split(root, "train", TINY.num_items, max_len=5)
    assert short.item_seq.dtype == np.int32 and short.item_seq.flags.c_contiguous
    np.testing.assert_array_equal(short.item_seq, raw[:, -5:])
    long = reader.read_split(root, "train", TINY.num_items, max_len=TINY.max_len + 3)
    np.testing.assert_array_equal(long.item_seq[:, 3:], raw)
    assert not long.item_seq[:, :3].any()


def test_read_split_chunked(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = reader.read_split(root, "train", TINY.num_items, max_len=6)
    monkeypatch.setattr(reader, "CHUNK_ROWS", 7)
    chunked = reader.read_split(root, "train", TINY.num_items, max_len=6)
    for name in ("user_id", "item_seq", "item_id", "likes_level", "views_level", "label"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))


def test_error_in_later_chunk_names_global_row(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_cell(root, "train", "likes_level", 250, 42)
    monkeypatch.setattr(reader, "CHUNK_ROWS", 64)
    expect(root, "train.parquet", "column 'likes_level'", "row 250", "value 42")


# ---- declared sizes are checked against what is read (issue 30) ---------------------------------------------
def _footer_claims(path: Path, claimed: int) -> None:
    """Rewrite the file-level row count of a parquet footer (thrift compact: field 3, i64 varint) to `claimed`,
    leaving the row groups as they are: the footer then claims rows the file does not hold."""
    import struct

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            if not n:
                return out + bytes([byte])
            out += bytes([byte | 0x80])

    data = bytearray(path.read_bytes())
    size = struct.unpack("<i", data[-8:-4])[0]
    start = len(data) - 8 - size
    rows = pq.ParquetFile(path).metadata.num_rows
    old, new = b"\x16" + varint(2 * rows), b"\x16" + varint(2 * claimed)  # zigzag-encoded
    assert len(old) == len(new)
    at = start + bytes(data[start:-8]).index(old)  # the first: FileMetaData.num_rows precedes the row groups
    data[at:at + len(old)] = new
    path.write_bytes(bytes(data))
    assert pq.ParquetFile(path).metadata.num_rows == claimed


def test_a_footer_claiming_more_rows_than_the_file_holds(root: Path) -> None:
    """eval once filled the missing rows from uninitialised memory; describe reported the claimed count."""
    from qin_lightning.data.describe import describe

    path = layout.split_path(root, layout.VALID)
    held = pq.ParquetFile(path).metadata.num_rows
    _footer_claims(path, held + 20)
    for read in (lambda: reader.read_split(root, layout.VALID, TINY.num_items, 8), lambda: describe(root)):
        with pytest.raises(DataValidationError) as info:
            read()
        assert str(info.value) == (f"valid.parquet: the footer declares {held + 20:,} rows, but the file holds "
                                   f"{held:,}; expected a complete parquet file")


def test_declared_rows_must_fit_in_memory_before_allocation(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "cpu_available", lambda: 1000)
    with pytest.raises(DataValidationError, match=r"train.parquet: the footer declares 300 rows of 8 history items, "
                                                  r"which need 0.0 GiB, expected at most the 0.0 GiB available"):
        reader.read_split(root, layout.TRAIN, TINY.num_items, 8)


def test_a_duplicate_column_is_one_line(root: Path) -> None:
    path = layout.split_path(root, layout.TRAIN)
    table = pq.read_table(path)
    pq.write_table(table.append_column(layout.LABEL, table.column(layout.LABEL)), path)
    expect(root, "train.parquet: column 'label' appears 2 times, expected one column of that name")


def test_empty_tag_lists_are_one_line(root: Path) -> None:
    edit(root, layout.ITEM_INFO, lambda cols: {**cols, layout.ITEM_TAGS: [[] for _ in cols[layout.ITEM_TAGS]]})
    expect(root, "item_info.parquet: column 'item_tags' row 0 has length 0, expected at least one value per item")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux only: VmHWM")
def test_a_huge_declared_history_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 2.2 KB parquet declaring one history of 10^8 items: refused from the metadata, peak memory bounded
    (it peaked at 1.8 GB when the values were read first). Measured in a fresh process (VmHWM: ru_maxrss would
    carry the parent's peak across exec)."""
    import subprocess
    import sys

    root = tmp_path / "huge"
    root.mkdir()
    make = f"""
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
seq = pa.ListArray.from_arrays(pa.array([0, 10**8], pa.int32()), pa.array(np.zeros(10**8, np.int8)))
pq.write_table(pa.table({{"user_id": [1], "item_seq": seq, "likes_level": [1], "views_level": [1], "item_id": [1],
                          "label": [1]}}), "{root}/train.parquet", compression="zstd")
"""
    subprocess.run([sys.executable, "-c", make], check=True, timeout=300)
    assert (root / "train.parquet").stat().st_size < 10_000  # 2.2 KB (zstd)
    measure = f"""
from pathlib import Path
from qin_lightning.data import reader
from qin_lightning.errors import DataValidationError
peak = lambda: int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) // 1024  # MiB
before = peak()
try:
    reader.read_split(Path("{root}"), "train", 10, 8)
except DataValidationError as err:
    print(err)
print(peak() - before)
"""
    out = subprocess.run([sys.executable, "-c", measure], check=True, timeout=300, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0] == ("train.parquet: column 'item_seq' rows 0-0 declare 100,000,000 list elements for 1 rows, "
                      f"expected at most {reader.CHUNK_VALUES:,} per row"), out
    assert int(out[1]) < 64, f"peak grew by {out[1]} MiB"


def test_metadata_that_understates_a_list_is_caught_before_conversion(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow decodes the values a file holds whatever its metadata says: a row-group column declaring 500
    elements that holds 1,000 passes the metadata check (limit 600 here) and is refused once decoded, before
    the numpy conversions that multiply its size."""
    import struct

    path = tmp_path / "train.parquet"
    seq = pa.ListArray.from_arrays(pa.array([0, 1000], pa.int32()), pa.array(np.zeros(1000, np.int8)))
    pq.write_table(pa.table({"user_id": [1], "item_seq": seq, "likes_level": [1], "views_level": [1],
                             "item_id": [1], "label": [1]}), path, compression="zstd")
    data = bytearray(path.read_bytes())
    size = struct.unpack("<i", data[-8:-4])[0]
    start = len(data) - 8 - size
    at = start + bytes(data[start:-8]).index(b"\x16\xd0\x0f")  # ColumnMetaData.num_values = 1000 (zigzag varint)
    data[at:at + 3] = b"\x16\xe8\x07"  # 500
    path.write_bytes(bytes(data))
    assert pq.ParquetFile(path).metadata.row_group(0).column(1).num_values == 500
    monkeypatch.setattr(reader, "CHUNK_VALUES", 600)
    with pytest.raises(DataValidationError, match=r"train.parquet: column 'item_seq' rows 0-0 hold 1,000 list "
                                                  r"elements, expected at most the 500 its metadata declares"):
        reader.read_split(tmp_path, layout.TRAIN, 10, 8)


# ---- issue 39: per-row list lengths and memory, checked before anything is decoded or allocated ------------------
def _lists(path: Path, lengths: list[int], **write: object) -> Path:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    values = pa.array(np.arange(offsets[-1], dtype=np.int64) % 7)
    pq.write_table(pa.table({layout.ITEM_SEQ: pa.ListArray.from_arrays(pa.array(offsets), values)}), path, **write)
    return path


WRITERS = [{}, {"data_page_version": "2.0"}, {"compression": "zstd"}, {"compression": "gzip"},
           {"compression": "none", "use_dictionary": False, "data_page_size": 4096}]


@pytest.mark.parametrize("write", WRITERS)
def test_the_longest_row_is_read_from_the_repetition_levels(tmp_path: Path, write: dict) -> None:
    """Random list lengths (v1 and v2 pages, several codecs, many pages): the longest row read from the levels is
    the true longest, and a limit one below it names that row."""
    rng = np.random.default_rng(len(str(write)))
    for _ in range(4):
        lengths = rng.integers(0, 40, int(rng.integers(1, 3000))).tolist()
        lengths[int(rng.integers(len(lengths)))] = int(rng.integers(41, 5000))
        path = _lists(tmp_path / "l.parquet", lengths, **write)
        pf = pq.ParquetFile(path)
        longest = max(lengths)
        assert reader.longest_row(path, pf, 0, 0, 0, 10**9) == longest
        with pytest.raises(DataValidationError, match=rf"row {lengths.index(longest)} holds {longest:,} list elements"):
            reader.longest_row(path, pf, 0, 0, 0, longest - 1)


def test_one_long_row_among_many_is_refused_before_it_is_decoded(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's 3.2 KB valid.parquet: one 3e8-item history among 256 rows passed the per-row-group average
    (1.2e6 < CHUNK_VALUES) and peaked at 6.7 GB. Scaled down (the limits / 1000): refused from the levels."""
    monkeypatch.setattr(reader, "CHUNK_VALUES", 4_000)
    monkeypatch.setattr(reader, "SCAN_ABOVE_VALUES", 16_000)
    lengths = [8] * 256
    lengths[100] = 300_000
    path = _lists(tmp_path / "valid.parquet", lengths)
    assert 300_000 // 256 < reader.CHUNK_VALUES  # the average alone would pass
    decoded = []
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda *a, **k: decoded.append(1) or iter(()))
    with pytest.raises(DataValidationError, match=r"row 100 holds 300,000 list elements, expected at most 4,000"):
        reader.declared_list_length(path, pq.ParquetFile(path), [layout.ITEM_SEQ])
    assert not decoded


def test_a_split_is_checked_against_memory_before_its_first_chunk(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_len=10^7 allocated a chunk's (rows, max_len) matrix before the memory check: now refused first."""
    monkeypatch.setattr(reader, "cpu_available", lambda: 2**30)
    zeros = []
    monkeypatch.setattr(reader.np, "zeros", lambda *a, **k: zeros.append(a) or np.empty(0))
    with pytest.raises(DataValidationError, match=r"rows of 10000000 history items, which need"):
        next(reader.iter_split(root, layout.VALID, TINY.num_items, max_len=10**7))
    assert not zeros


def test_item_info_is_checked_against_memory_from_its_footer(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "cpu_available", lambda: 1000)
    with pytest.raises(DataValidationError, match=r"item_info.parquet: the footer declares 60 items whose tags and "
                                                  r"vectors need"):
        reader.read_item_info(root, emb_dim=EMB)
    assert reader.item_info_rows(root) == TINY.num_items
