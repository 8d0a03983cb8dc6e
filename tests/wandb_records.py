"""Read an offline wandb run back from its ``run-*.wandb`` file (this wandb version keeps the summary only there).

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (crc32 4 bytes, length 2,
type 1) that carry serialized ``wandb_internal_pb2.Record`` protobufs (type 1 = whole record; 2/3/4 = first,
middle and last piece of a record split across blocks).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list[Any]:
    """Every record of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos, pieces, out = HEADER, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces + chunk)
            out.append(record)
            pieces = b""
        elif kind in (2, 3):
            pieces += chunk
        else:
            break
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> dict[str, Any]:
    """``{"summary": {...}, "config": {...}, "tags": [...], "group": str, "job_type": str}`` of an offline run."""
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    run: dict[str, Any] = {"tags": [], "group": "", "job_type": ""}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(tags=list(record.run.tags), group=record.run.run_group, job_type=record.run.job_type)
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"summary": summary, "config": config, **run}
