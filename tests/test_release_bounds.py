"""release.py under hostile zips: a member is checked by its declared and its actual size before it is used
(issue 30); the real releases still read."""

from __future__ import annotations

import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from qin_lightning.data.movielens import release
from qin_lightning.data.movielens.release import MAX_COMPRESSION_RATIO, load_movielens
from qin_lightning.errors import DataValidationError

REPO = Path(__file__).resolve().parents[1]
RELEASES = [(REPO / ".." / "shared" / "data" / name).resolve() for name in ("ml-latest-small.zip", "ml-100k.zip")]
MOVIES = b"movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat (1995),Action\n"


def _zip(path: Path, ratings: bytes | None = None, zeros_mib: int = 0) -> Path:
    """A csv-layout release; `zeros_mib` MiB of '0' appended to ratings.csv are streamed in (never in memory)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("movies.csv", MOVIES)
        with zf.open("ratings.csv", "w") as f:
            f.write(ratings or b"userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,20\n2,1,5.0,30\n")
            for _ in range(zeros_mib):
                f.write(b"0" * 2**20)
    return path


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """64 MiB of '0' in a ~64 KB member (ratio ~1000; the issue's 2 MB -> 1 GB is 500): refused from the
    declared sizes, the traced peak stays far below the member's size."""
    bomb = _zip(tmp_path / "bomb.zip", zeros_mib=64)
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    with pytest.raises(DataValidationError) as info:
        load_movielens(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"ratings.csv: expected a compression ratio of at most {MAX_COMPRESSION_RATIO}" in str(info.value)
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB traced"


def test_a_member_larger_than_the_memory_available_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release, "cpu_available", lambda: 10)
    with pytest.raises(DataValidationError, match=r"ratings.csv: expected a file that fits in the 0.0 GiB of memory "):
        load_movielens(_zip(tmp_path / "big.zip"))


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_member_whose_declared_size_lies_is_one_line(tmp_path: Path, factor: float) -> None:
    """The central directory declares another size than the member inflates to: one line, never more bytes
    than declared."""
    path = _zip(tmp_path / "lying.zip")
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)  # ratings.csv's central directory entry
    size = struct.unpack("<I", data[at + 24:at + 28])[0]
    data[at + 24:at + 28] = struct.pack("<I", int(size * factor))
    path.write_bytes(bytes(data))
    with pytest.raises(DataValidationError, match=r"lying.zip: ratings.csv: (corrupt zip member|expected \d+ bytes)"):
        load_movielens(path)


@pytest.mark.parametrize("src", RELEASES, ids=lambda p: p.name)
def test_the_real_releases_still_read(src: Path) -> None:
    if not src.is_file():
        pytest.skip(f"{src} not present")
    raw = load_movielens(src)
    assert raw.ratings.height == {"ml-latest-small.zip": 100_836, "ml-100k.zip": 100_000}[src.name]
    with zipfile.ZipFile(src) as zf:  # the headroom of the bound: these releases measure <= 4.96 (ml-100k u.item)
        ratios = [i.file_size / i.compress_size for i in zf.infolist() if i.compress_size]
    assert max(ratios) < 5 < MAX_COMPRESSION_RATIO
