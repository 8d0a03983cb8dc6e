"""synthetic.py: deterministic, valid layout, calibrated labels, left padding, atomic writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from qin_lightning.data import reader
from qin_lightning.data import synthetic
from qin_lightning.data.synthetic import SyntheticConfig, generate
from qin_lightning.errors import DataValidationError

TINY = SyntheticConfig.tiny()
FILES = ("train.parquet", "valid.parquet", "test.parquet", "item_info.parquet")


def test_fingerprint_stable_and_sensitive() -> None:
    assert TINY.fingerprint() == SyntheticConfig.tiny().fingerprint()
    assert len(TINY.fingerprint()) == 16
    seen = {TINY.fingerprint()}
    for field in dataclasses.fields(SyntheticConfig):
        value = getattr(TINY, field.name)
        changed = value + "x" if isinstance(value, str) else value + (1 if isinstance(value, int) else 0.01)
        if field.name == "positive_rate":
            changed = 0.3
        seen.add(dataclasses.replace(TINY, **{field.name: changed}).fingerprint())
    assert len(seen) == len(dataclasses.fields(SyntheticConfig)) + 1


def test_config_presets() -> None:
    small = SyntheticConfig.small()
    assert small == SyntheticConfig()
    assert 2_000 <= small.num_items <= 5_000 and 20_000 <= small.train_rows <= 40_000 and small.valid_rows == 5_000
    big = SyntheticConfig.microlens()
    assert (big.train_rows, big.valid_rows, big.test_rows) == (3_600_000, 10_000, 379_142)
    assert (big.num_items, big.num_tags, big.max_len, big.emb_dim) == (91_718, 11_740, 64, 128)
    with pytest.raises(ValueError, match="positive_rate"):
        SyntheticConfig(positive_rate=1.5)


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = generate(TINY, tmp_path / "a")
    b = generate(TINY, tmp_path / "b")
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = generate(dataclasses.replace(TINY, seed=1), tmp_path / "c")
    assert (a / "train.parquet").read_bytes() != (c / "train.parquet").read_bytes()


def test_layout_valid(tmp_path: Path) -> None:
    root = generate(TINY, tmp_path / "d")
    summary = reader.validate_dataset(root, emb_dim=TINY.emb_dim, num_tags=TINY.num_tags)
    assert summary.num_items == TINY.num_items and summary.tags_per_item == TINY.tags_per_item
    assert summary.rows == {"train": TINY.train_rows, "valid": TINY.valid_rows, "test": TINY.test_rows}
    assert all(summary.has_label.values())  # test labels present (useful for evaluation)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp folder left behind


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticConfig, Path]:
    config = dataclasses.replace(SyntheticConfig.small(), train_rows=40_000, valid_rows=500, test_rows=500, name="m")
    return config, generate(config, tmp_path_factory.mktemp("syn") / "m")


def test_positive_rate_and_histories(medium: tuple[SyntheticConfig, Path]) -> None:
    config, root = medium
    table = pq.read_table(root / "train.parquet")
    label = table.column("label").to_numpy()
    assert abs(label.mean() - config.positive_rate) < 0.02
    seq = np.asarray(table.column("item_seq").combine_chunks().flatten()).reshape(len(label), config.max_len)
    filled = seq > 0
    assert not (np.maximum.accumulate(filled, axis=1) & ~filled).any(), "padding must be on the left"
    length = filled.sum(1)
    assert 6.0 < length.mean() < 10.0
    assert (length == 0).mean() > 0.05 and length.max() == config.max_len
    # Zipf-like popularity: the 1% most frequent items take a large share of history slots
    counts = np.sort(np.bincount(seq[filled], minlength=config.num_items))[::-1]
    assert counts[: config.num_items // 100].sum() > 0.2 * counts.sum()


def test_planted_signal(medium: tuple[SyntheticConfig, Path]) -> None:
    """Label rate rises with the history-target topic affinity that the item features reveal."""
    config, root = medium
    world = synthetic._world(config)
    table = pq.read_table(root / "train.parquet")
    label = table.column("label").to_numpy()
    seq = np.asarray(table.column("item_seq").combine_chunks().flatten()).reshape(len(label), config.max_len)
    target = table.column("item_id").to_numpy()
    same = (world.topic[seq] == world.topic[target][:, None]) & (seq > 0)
    affinity = same.sum(1) / np.maximum((seq > 0).sum(1), 1)
    assert label[affinity > 0.5].mean() > 2 * label[affinity < 0.1].mean()
    # item features carry the topic: tags mostly come from the item's topic pool
    tags = np.asarray(pq.read_table(root / "item_info.parquet").column("item_tags").combine_chunks().flatten())
    tags = tags.reshape(config.num_items, config.tags_per_item)[1:]
    real = tags > 0
    in_pool = (tags - 1) % config.num_topics == world.topic[1:, None]
    assert in_pool[real].mean() > 0.75


def test_atomic_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._write_table_chunks
    calls = []

    def failing(path: Path, chunks: object) -> None:
        calls.append(path)
        real(path, chunks)  # type: ignore[arg-type]
        if len(calls) == 2:
            raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_table_chunks", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(TINY, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder(tmp_path: Path) -> None:
    out = generate(TINY, tmp_path / "x")
    stamp = (out / "train.parquet").stat().st_mtime_ns
    assert generate(TINY, out) == out  # reused, not rewritten
    assert (out / "train.parquet").stat().st_mtime_ns == stamp
    with pytest.raises(DataValidationError, match="not the synthetic dataset"):
        generate(dataclasses.replace(TINY, seed=5), out)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataValidationError, match="other"):
        generate(TINY, tmp_path / "other")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`qin-prepare synthetic` writes the folder; a folder holding another dataset is one error line, status 2."""
    from qin_lightning.prepare import main as prepare

    assert prepare(["synthetic", "--out", str(tmp_path / "cli"), "--scale", "tiny", "--seed", "3"]) == 0
    assert "cli" in capsys.readouterr().out
    assert all((tmp_path / "cli" / name).is_file() for name in FILES)
    assert prepare(["synthetic", "--out", str(tmp_path / "cli"), "--scale", "tiny", "--seed", "4"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_meta_records_the_oracle_auc(tmp_path: Path) -> None:
    """synthetic.json records the AUC of the true click probabilities (the ceiling a model can reach)."""
    import json

    import numpy as np

    from qin_lightning.data.synthetic import oracle_auc

    assert oracle_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    out = generate(SyntheticConfig.tiny(), tmp_path / "d")
    oracle = json.loads((out / "synthetic.json").read_text())["oracle_auc"]
    assert set(oracle) == {"train", "valid", "test"} and all(0.6 < v <= 1.0 for v in oracle.values())
