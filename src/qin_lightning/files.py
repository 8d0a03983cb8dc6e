"""Atomic file writes: a temporary file beside the target, fsync, rename (never a half-written file).

A process killed at any moment (``kill -9``) or a full disk leaves either the previous file or the new
complete one, never a mix: the target is only replaced by ``os.replace`` after the new content is on disk.
A failed write (e.g. ``ENOSPC``, no space left on device) is a ``FileWriteError`` naming the file, and the
temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from qin_lightning.errors import QinError


class FileWriteError(QinError):
    """Writing an output failed (disk full, permissions...); the previous file at that path is unchanged."""


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb", newline: str | None = None) -> Iterator[IO[Any]]:
    """Yield a file opened on a temporary file beside ``path``; on success it is fsynced and renamed to ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text). An ``OSError`` while writing becomes a ``FileWriteError``;
    any exception removes the temporary file and leaves the previous ``path`` untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FileWriteError(f"{path}: cannot write ({err.strerror or err})") from err
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise FileWriteError(f"{path}: cannot write ({err.strerror or err}); {kept}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
