"""`python -m qin_lightning.prepare describe --root DIR`: what a user checks first about a dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qin_lightning.data import reader
from qin_lightning.data.describe import describe
from qin_lightning.data.synthetic import SyntheticConfig, generate
from qin_lightning.prepare import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SyntheticConfig(num_items=50, num_tags=20, num_users=30, train_rows=300, valid_rows=100,
                             test_rows=80, max_len=8)
    return generate(config, tmp_path_factory.mktemp("data") / "synthetic")


def test_describe_counts_match_the_files(folder: Path) -> None:
    desc = describe(folder)
    items = reader.read_item_info(folder, emb_dim=None)
    assert desc["items"] == items.num_items - 1 and desc["embedding_width"] == 128 and desc["tags_per_item"] == 5
    train = reader.read_split(folder, "train", items.num_items)
    lengths = (train.item_seq != 0).sum(axis=1)
    got = desc["splits"]["train"]
    assert got["rows"] == 300 and got["positive_rate"] == pytest.approx(float(train.label.mean()))
    assert got["target_items"] == len(np.unique(train.item_id))
    assert got["history"]["mean"] == pytest.approx(lengths.mean()) and got["history"]["max"] == lengths.max()
    assert got["history"]["padding_share"] == pytest.approx(1 - lengths.sum() / (8 * 300))
    oracle = json.loads((folder / "synthetic.json").read_text())["oracle_auc"]
    assert desc["oracle_auc"] == oracle


def test_describe_cli_prints_and_fails_clearly(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", "--root", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "49 items" in out and "embedding width 128" in out and "padding" in out and "oracle AUC" in out
    assert main(["describe", "--root", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["valid"]["rows"] == 100
    assert main(["describe", "--root", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: data folder")
    (tmp_path / "broken").mkdir()
    assert main(["describe", "--root", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
