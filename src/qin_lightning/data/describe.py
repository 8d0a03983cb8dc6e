"""What a user checks first about a dataset folder: ``python -m qin_lightning.prepare describe --root DIR``.

Reads the folder with the validating reader (a folder that breaks the layout fails with the usual one-line
error), one chunk at a time, and reports per split the rows, positive rate and distinct target items, and the
history lengths (non-padding positions per row: mean, median, p90, max, and the share of the stored history
that is padding); for the item table the items, tag vocabulary, tags per item and multimodal embedding width;
for a generated synthetic folder the oracle AUC of ``synthetic.json`` (the best achievable AUC).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from qin_lightning.data import layout, reader
from qin_lightning.errors import DataValidationError


def describe_split(root: Path, split: str, num_items: int) -> dict[str, Any]:
    """Rows, positive rate, distinct targets and history-length statistics of one split (streamed)."""
    lengths: list[np.ndarray] = []
    positives, labelled, stored = 0, 0, 0
    targets = np.zeros(num_items, dtype=bool)
    rows = 0
    for _, _, chunk in reader.iter_split(root, split, num_items):
        rows += len(chunk)  # the rows read, never the footer's declared count
        lengths.append((chunk.item_seq != layout.PADDING_ID).sum(axis=1))  # (n,) non-padding history items
        targets[chunk.item_id] = True
        stored = chunk.history_len
        if chunk.label is not None:
            positives += int(chunk.label.sum())
            labelled += len(chunk)
    hist = np.concatenate(lengths).astype(np.float64)
    return {
        "rows": rows,
        "positive_rate": positives / labelled if labelled else None,
        "target_items": int(targets.sum()),
        "history": {
            "stored_length": stored,
            "mean": float(hist.mean()),
            "median": float(np.median(hist)),
            "p90": float(np.percentile(hist, 90)),
            "max": int(hist.max()),
            "empty_rows": float((hist == 0).mean()),
            "padding_share": float(1.0 - hist.sum() / (stored * len(hist))) if stored else 1.0,
        },
    }


def describe(root: str | Path) -> dict[str, Any]:
    """The description of a dataset folder as a dict (what ``format_description`` prints)."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(f"data folder {root} does not exist, expected a folder in the MMCTR layout")
    items = reader.read_item_info(root, emb_dim=None)
    meta_path = root / "synthetic.json"
    oracle = json.loads(meta_path.read_text()).get("oracle_auc") if meta_path.is_file() else None
    return {
        "root": str(root),
        "items": items.num_items - 1,  # row 0 is the padding item
        "tag_vocab": items.num_tags,
        "tags_per_item": int(items.tags.shape[1]),
        "embedding_width": int(items.mm.shape[1]),
        "splits": {split: describe_split(root, split, items.num_items) for split in layout.SPLITS},
        "oracle_auc": oracle,
    }


def format_description(desc: dict[str, Any]) -> str:
    """The description as a few aligned lines."""
    lines = [
        f"{desc['root']}: {desc['items']:,} items (+ padding row 0), tag vocabulary {desc['tag_vocab']:,},"
        f" {desc['tags_per_item']} tags per item, embedding width {desc['embedding_width']}",
        f"{'split':<6} {'rows':>10} {'positive':>9} {'targets':>8}   history (non-padding items per row)",
    ]
    for split, s in desc["splits"].items():
        h = s["history"]
        pos = f"{s['positive_rate']:.3f}" if s["positive_rate"] is not None else "no label"
        lines.append(
            f"{split:<6} {s['rows']:>10,} {pos:>9} {s['target_items']:>8,}   mean {h['mean']:.1f}, median"
            f" {h['median']:.0f}, p90 {h['p90']:.0f}, max {h['max']} of {h['stored_length']};"
            f" {h['padding_share']:.1%} padding, {h['empty_rows']:.1%} empty"
        )
    if desc["oracle_auc"]:
        oracle = desc["oracle_auc"]
        shown = ", ".join(f"{split} {oracle[split]:.4f}" for split in layout.SPLITS if split in oracle)
        lines.append(f"oracle AUC (synthetic.json, the best achievable): {shown}")
    return "\n".join(lines)
