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


# ---- issue 39: what a zip or folder really holds ---------------------------------------------------------------
def _lying_zip(path: Path, mib: int, declared_ratio: int) -> Path:
    """A release whose ratings.csv (`mib` MiB of repeated rows, deflated) declares a compressed size
    `declared_ratio` times smaller than its inflated size: far more than the bytes it occupies in the file."""
    import zlib

    raw = b"userId,movieId,rating,timestamp\n" + b"1,1,4.0,1\n" * (mib * 2**20 // 10)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = packer.compress(raw) + packer.flush()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("movies.csv", MOVIES)
    small = path.read_bytes()
    cd_start, end = small.index(b"PK\x01\x02"), small.index(b"PK\x05\x06")
    name, size = b"ratings.csv", len(raw)
    declared = size // declared_ratio
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, zlib.crc32(raw), declared, size, len(name),
                        0) + name
    entry = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, zlib.crc32(raw), declared, size,
                        len(name), 0, 0, 0, 0, 0, cd_start) + name
    directory = small[cd_start:end] + entry
    tail = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(directory), cd_start + len(local) + len(body), 0)
    path.write_bytes(small[:cd_start] + local + body + directory + tail)
    return path


def test_a_zip_member_is_measured_by_the_bytes_it_occupies_not_its_declared_size(tmp_path: Path) -> None:
    """The issue's 1.6 MB zip declaring ratio 10 that inflates to 1.5 GB, at 32 MiB: refused from the bytes the
    member occupies in the file (ratio ~ 500), before it is inflated."""
    lying = _lying_zip(tmp_path / "lying.zip", mib=32, declared_ratio=10)
    info = zipfile.ZipFile(lying).getinfo("ratings.csv")
    assert info.file_size / info.compress_size <= MAX_COMPRESSION_RATIO  # the declared sizes pass
    tracemalloc.start()
    with pytest.raises(DataValidationError, match=r"ratings.csv: expected a compression ratio of at most 20.*"
                                                  r"compressed bytes in the file"):
        load_movielens(lying)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20


def test_duplicate_zip_members_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "w") as zf:
        zf.writestr("movies.csv", MOVIES)
        zf.writestr("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,1\n")
        zf.writestr("ratings.csv", "userId,movieId,rating,timestamp\n1,2,4,1\n")
    with pytest.raises(DataValidationError, match=r"ratings.csv: appears 2 times in the zip, expected each member once"):
        load_movielens(path)


@pytest.mark.parametrize("value", ["NaN", "inf", "-inf"])
def test_non_finite_ratings_are_one_line(tmp_path: Path, value: str) -> None:
    ratings = f"userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,{value},20\n".encode()
    with pytest.raises(DataValidationError, match=r"ratings row 2: rating .*, expected a finite number"):
        load_movielens(_zip(tmp_path / "r.zip", ratings=ratings))


def test_a_huge_title_is_refused_before_it_is_encoded(tmp_path: Path) -> None:
    """The issue's 30 MB title (here 3 MB) cost 7 GB in the hashing encoder: refused when the release is read."""
    path = tmp_path / "title.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("movies.csv", b"movieId,title,genres\n1,Toy Story (1995),Animation\n2," + b"x" * 3_000_000
                    + b",Action\n")
        zf.writestr("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,20\n")
    with pytest.raises(DataValidationError, match=r"movies row 2: column 'title' has 3,000,000 characters, expected "
                                                  r"at most 1,000"):
        load_movielens(path)


def test_a_release_folder_is_listed_two_levels_deep_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """src=/ walked the whole filesystem (PermissionError at the end): a folder is listed two levels deep, links
    are not followed, and finding no release there is one line."""
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    listed = []
    original = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: listed.append(self) or original(self))
    with pytest.raises(DataValidationError, match="unknown MovieLens layout"):
        load_movielens(tmp_path)
    assert set(listed) == {tmp_path, tmp_path / "a"}  # not a/b, not the link
    with pytest.raises(DataValidationError):
        load_movielens(Path("/"))
