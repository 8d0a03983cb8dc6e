"""Bad input ends in one clear line (file, column, value/row, expectation), never a traceback, at the CLI level.

tests/test_reader.py covers the validator function by function; here each mistake goes through training
(`train(cfg)` in-process, or the real `python -m qin_lightning.train` for a representative few), including
config mistakes and the non-finite guard.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO_ROOT, compose_train, copy_of, tiny_model_overrides, tiny_overrides

from qin_lightning.data import layout
from qin_lightning.data.synthetic import SyntheticConfig, generate
from qin_lightning.errors import QinError
from qin_lightning.train import train
from qin_lightning.training.module import NonFiniteLossError

MMCTR = SyntheticConfig(num_items=60, num_tags=20, num_users=40, train_rows=256, valid_rows=128, test_rows=64,
                        max_len=8, emb_dim=layout.EMB_DIM, name="errors")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(MMCTR, tmp_path_factory.mktemp("errors") / "data")


@pytest.fixture
def data(base: Path, tmp_path: Path) -> Path:
    return copy_of(base, tmp_path)


def mmctr_args(tmp_path: Path, root: Path) -> list[str]:
    keep = [o for o in tiny_overrides(tmp_path) if not o.startswith("data.")]
    return [*keep, *tiny_model_overrides(), "data=mmctr", f"data.root={root}", "data.batch_size=64",
            "data.eval_batch_size=128", "data.max_len=8", "trainer.max_epochs=1"]


def rewrite(root: Path, split: str, fn: Callable[[dict[str, list]], dict[str, list]],
            types: dict[str, pa.DataType] | None = None) -> None:
    path = layout.split_path(root, split)
    table = pq.read_table(path)
    cols = fn(table.to_pydict())
    types = types or {}
    pq.write_table(pa.table({k: pa.array(v, type=types.get(k, table.schema.field(k).type if k in table.schema.names
                                                          else None)) for k, v in cols.items()}), path)


def cell(split: str, column: str, row: int, value: object, type_: pa.DataType | None = None):
    def apply(root: Path) -> None:
        def fn(cols: dict[str, list]) -> dict[str, list]:
            cols[column][row] = value
            return cols

        rewrite(root, split, fn, {column: type_} if type_ is not None else None)

    return apply


def drop_column(split: str, column: str):
    return lambda root: rewrite(root, split, lambda c: {k: v for k, v in c.items() if k != column})


def swap_item_rows(root: Path) -> None:
    def fn(c: dict[str, list]) -> dict[str, list]:
        for k in c:
            c[k][3], c[k][4] = c[k][4], c[k][3]
        return c

    rewrite(root, layout.ITEM_INFO, fn)


def drop_padding_row(root: Path) -> None:
    rewrite(root, layout.ITEM_INFO, lambda c: {k: v[1:] for k, v in c.items()})


def narrow_vectors(root: Path) -> None:
    rewrite(root, layout.ITEM_INFO, lambda c: {**c, layout.ITEM_EMB: [v[:64] for v in c[layout.ITEM_EMB]]})


def empty_valid(root: Path) -> None:
    rewrite(root, layout.VALID, lambda c: {k: v[:0] for k, v in c.items()})


# (corruption, extra overrides, substrings the message must contain)
CASES = {
    "missing_column": (drop_column(layout.VALID, layout.LIKES_LEVEL), [], ["valid.parquet: missing column 'likes_level'"]),
    "string_ids": ((lambda r: rewrite(r, layout.TRAIN, lambda c: {**c, layout.USER_ID: [str(x) for x in c[layout.USER_ID]]},
                                      {layout.USER_ID: pa.string()})),
                   [], ["train.parquet: column 'user_id' has type string, expected an integer type"]),
    "float_item_ids": ((lambda r: rewrite(r, layout.VALID, lambda c: {**c, layout.ITEM_ID: [float(x) for x in c[layout.ITEM_ID]]},
                                          {layout.ITEM_ID: pa.float64()})),
                       [], ["valid.parquet: column 'item_id' has type double, expected an integer type"]),
    "ragged_history": (cell(layout.TRAIN, layout.ITEM_SEQ, 5, [1, 2, 3]), [],
                       ["train.parquet: column 'item_seq' row 5 has length 3, expected 8"]),
    "negative_history_id": (cell(layout.TRAIN, layout.ITEM_SEQ, 2, [0] * 7 + [-4]), [],
                            ["train.parquet: column 'item_seq' row 2 contains negative item id -4"]),
    "negative_user_id": (cell(layout.VALID, layout.USER_ID, 9, -1), [], ["valid.parquet: column 'user_id' row 9 has value -1"]),
    "history_id_beyond_items": (cell(layout.TRAIN, layout.ITEM_SEQ, 3, [0] * 7 + [60]), [],
                                ["train.parquet: column 'item_seq' row 3 contains item id 60, expected 0..59"]),
    "target_beyond_items": (cell(layout.VALID, layout.ITEM_ID, 4, 999), [],
                            ["valid.parquet: column 'item_id' row 4 has value 999", "item_info.parquet has 60 rows"]),
    "tag_beyond_vocabulary": (lambda r: None, ["data.num_tags=5"],
                              ["item_info.parquet: column 'item_tags' row", "expected 0..4 (num_tags=5)"]),
    "item_info_not_position_indexed": (swap_item_rows, [],
                                       ["item_info.parquet: column 'item_id' row 3 has value 4, expected 3"]),
    "item_info_without_padding_row": (drop_padding_row, [],
                                      ["item_info.parquet: column 'item_id' row 0 has value 1, expected 0",
                                       "row 0 is the padding item"]),
    "vector_nan": (cell(layout.ITEM_INFO, layout.ITEM_EMB, 7, [float("nan")] * layout.EMB_DIM), [],
                   ["item_info.parquet: column 'item_emb_d128' row 7 has value nan", "expected finite floats"]),
    "vector_inf": (cell(layout.ITEM_INFO, layout.ITEM_EMB, 8, [0.0] * 5 + [float("inf")] * (layout.EMB_DIM - 5)), [],
                   ["item_info.parquet: column 'item_emb_d128' row 8 has value inf at position 5"]),
    "vector_width_differs_from_config": (narrow_vectors, [],
                                         ["item_info.parquet: column 'item_emb_d128' row 0 has length 64, "
                                          "expected 128"]),
    "label_outside_0_1": (cell(layout.TRAIN, layout.LABEL, 11, 2), [], ["train.parquet: column 'label' row 11 has value 2.0",
                                                              "expected 0 or 1"]),
    "empty_split": (empty_valid, [], ["valid.parquet: split is empty (0 rows)"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_clear_line(case: str, data: Path, tmp_path: Path) -> None:
    corrupt, extra, needles = CASES[case]
    corrupt(data)
    cfg = compose_train(mmctr_args(tmp_path, data) + extra, tmp_path / "run")
    with pytest.raises(QinError) as info:
        train(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_clean_mmctr_folder_trains(data: Path, tmp_path: Path) -> None:
    assert train(compose_train(mmctr_args(tmp_path, data), tmp_path / "run"))["status"] == "completed"


# ---- through the real command line ---------------------------------------------------------------------------
def run_cli(tmp_path: Path, args: list[str], module: str = "qin_lightning.train",
            pythonpath: list[Path] = ()) -> subprocess.CompletedProcess[str]:  # type: ignore[assignment]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO_ROOT / "src")])}
    env.pop("HYDRA_FULL_ERROR", None)  # the user's default experience
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    return last


def test_cli_missing_file_and_traceback_switch(data: Path, tmp_path: Path) -> None:
    (data / layout.TRAIN_FILE).unlink()
    proc = run_cli(tmp_path, mmctr_args(tmp_path, data))
    assert_one_line_error(proc, f"{data / layout.TRAIN_FILE}: file not found")
    # it failed on its data before anything ran: no run folder is left for a report to pick up
    assert not [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    proc = run_cli(tmp_path, [*mmctr_args(tmp_path, data), "traceback=true"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataValidationError" in proc.stderr


def test_cli_corrupt_parquet(data: Path, tmp_path: Path) -> None:
    (data / layout.VALID_FILE).write_bytes(b"PAR1 this is not a parquet file")
    assert_one_line_error(run_cli(tmp_path, mmctr_args(tmp_path, data)),
                          f"{data / layout.VALID_FILE}: unreadable or corrupt parquet")


def test_cli_unknown_experiment_has_no_traceback(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, ["+experiment=no_such_thing", *tiny_overrides(tmp_path)])
    assert_one_line_error(proc, "experiment=no_such_thing: no such option", "din", "qin")


def test_cli_unknown_attention_activation(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, [*tiny_overrides(tmp_path), *tiny_model_overrides(),
                              "model.net.attention.activation=gelu"])
    assert_one_line_error(proc, "model.net.attention.activation: unknown value 'gelu'", "relu")


def test_cli_unknown_optimized_metric_fails_before_training(tmp_path: Path) -> None:
    """A sweep objective no run records (it used to come back NaN after the whole fit) is one line, up front."""
    proc = run_cli(tmp_path, [*tiny_overrides(tmp_path), *tiny_model_overrides(), "optimized_metric=val/gauc"])
    assert_one_line_error(proc, "optimized_metric", "'val/gauc'", "val/auc, val/logloss")
    assert not list((tmp_path / "logs").rglob("*.ckpt"))  # nothing was trained


def test_every_accepted_optimized_metric_is_a_number_every_run_records(tmp_path: Path) -> None:
    from qin_lightning.config import OBJECTIVES

    results = train(compose_train([*tiny_overrides(tmp_path), *tiny_model_overrides(), "trainer.max_epochs=1"],
                                  tmp_path / "run"))
    assert all(math.isfinite(results[key]) for key in OBJECTIVES.values())


POISON_CALLBACK = '''
import lightning.pytorch as pl
import torch

class PoisonItems(pl.Callback):
    """Puts NaN into the multimodal item table at (epoch, batch): the next loss is NaN."""
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            with torch.no_grad():
                pl_module.net.items.item_mm.fill_(float("nan"))
'''


def test_cli_non_finite_loss_stops_keeping_last_good_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "poison_cb.py").write_text(POISON_CALLBACK)
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(tmp_path), *tiny_model_overrides(), "trainer.max_epochs=3", f"hydra.run.dir={run_dir}",
            "+callbacks.poison._target_=poison_cb.PoisonItems", "+callbacks.poison.epoch=1",
            "+callbacks.poison.batch=2"]
    proc = run_cli(tmp_path, args, pythonpath=[tmp_path])
    last = assert_one_line_error(proc, "non-finite training loss nan at epoch 1, global step 6",
                                 "non-finite logits", f"last good checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}")
    assert "128 non-finite logits" in last
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
                                      if v.is_floating_point())
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == record["stop_reason"] == "failed"


def test_non_finite_guard_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qin_lightning.training.module as M

    real = M.F.binary_cross_entropy  # the default model.bce_input=probability's BCE
    calls = {"n": 0}

    def nan_after_five(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real(probabilities, target)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(M.F, "binary_cross_entropy", nan_after_five)
    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides(), tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"global step 5 .*last good checkpoint: .*last.ckpt"):
        train(cfg)


# ---- a broken checkpoint is one line too (issue 30) ----------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache folder, last.ckpt) of a one-epoch tiny QIN run."""
    tmp = tmp_path_factory.mktemp("resume_errors")
    train(compose_train(tiny_overrides(tmp) + tiny_model_overrides() + ["trainer.max_epochs=1"], tmp / "run"))
    return tmp, tmp / "run" / "checkpoints" / "last.ckpt"


BROKEN_STATES: dict[str, Callable[[dict], None]] = {
    "loops": lambda ckpt: ckpt["loops"]["fit_loop"].update({"epoch_progress": "broken"}),
    "optimizer": lambda ckpt: ckpt["optimizer_states"][0].update({"param_groups": [{"params": [0]}]}),
    "rng": lambda ckpt: ckpt.update({"qin_rng": {"torch": "broken"}}),
}


@pytest.mark.parametrize("part", sorted(BROKEN_STATES))
def test_resuming_from_a_broken_training_state_is_one_line(trained: tuple[Path, Path], tmp_path: Path,
                                                           part: str) -> None:
    """weights_only-valid checkpoints whose loops / optimizer / RNG state cannot be restored: a ConfigError
    naming the file (it was a traceback from inside Lightning)."""
    cache, last = trained
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    BROKEN_STATES[part](ckpt)
    broken = tmp_path / f"broken_{part}.ckpt"
    torch.save(ckpt, broken)
    cfg = compose_train(tiny_overrides(cache) + tiny_model_overrides() + ["trainer.max_epochs=2",
                                                                          f"ckpt_path={broken}"], tmp_path / "run")
    with pytest.raises(QinError) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith(f"{broken}: ") and "\n" not in message, message
    assert ("cannot resume from it" in message) if part != "rng" else ("qin_rng: expected the RNG states" in message)


def test_an_integer_tag_table_in_a_checkpoint_is_one_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from qin_lightning.serving.load import load_network

    _, last = trained
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    key = "net.items.tag_embedding.weight"
    ckpt["state_dict"][key] = ckpt["state_dict"][key].long()
    path = tmp_path / "int_tags.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(QinError, match=r"int_tags.ckpt: state_dict net.items.\*: expected int64 item_tags and float "
                                       r"item_mm / tag_embedding.weight, got torch.int64, torch.float32, torch.int64"):
        load_network(path)
