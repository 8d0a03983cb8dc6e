"""A researcher's first hour (issue 38): the mistakes a newcomer makes are one line each, exit status 2, and leave
no run folder; `debug=<option>` runs are short; multirun job folders are named by what was swept; qin-eval keeps an
ONNX evaluation apart from its checkpoint's and lists only its own keys.

Each error goes through the entry point a user runs (``main()`` of qin_lightning.train / eval, which reads
``sys.argv``), in-process so that the whole list costs one import; tests/test_errors.py runs a Hydra composition
error (an unknown experiment) and the project's own errors through the shell (exit status 2 there too), and
tests/test_train.py::test_cli_end_to_end checks a normal run's output for noise.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose_train, tiny_model_overrides, tiny_overrides
from hydra.core.global_hydra import GlobalHydra

from qin_lightning import eval as qin_eval
from qin_lightning import train as qin_train

TINY_DATA = [o for o in tiny_overrides(Path("/unused")) if o.startswith("data.")]

# (extra overrides, substrings of the one error line); every case fails before anything is trained
TRAIN_ERRORS: dict[str, tuple[list[str], list[str]]] = {
    "unknown_group_option": (["data=foo"], ["data=foo: no such option", "mmctr, movielens, synthetic"]),
    "unknown_nested_option": (["model/attention=foo"], ["model/attention=foo", "relu, relu2, silu, softmax"]),
    "unknown_debug_option": (["debug=foo"], ["debug=foo: no such option", "fdr, limit, overfit, profiler"]),
    "typo_in_key": (["trainer.max_epoch=1"], ["trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"]),
    "not_key_value": (["max_epochs"], ["cannot read the command line", "key=value"]),
    "missing_mandatory": (["data=mmctr"], ["data.root has no value: add data.root=<value>"]),
    "batch_size_text": (["data.batch_size=abc"], ["data.batch_size='abc': expected an integer >= 1"]),
    "batch_size_zero": (["data.batch_size=0"], ["data.batch_size=0: expected an integer >= 1"]),
    "threads_text": (["threads=abc"], ["threads='abc': expected an integer >= 1 or null"]),
    "lr_text": (["model.lr=abc"], ["model.lr='abc': expected a number > 0"]),
    "gpu_without_gpu": (["trainer=gpu"], ["no CUDA GPU", "use trainer=cpu or trainer=auto"]),
}


def run_main(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str, str]:
    """(exit code, stdout, stderr) of an entry point's ``main()`` run with ``argv``."""
    GlobalHydra.instance().clear()
    saved = sys.argv
    sys.argv = ["qin", *argv]
    try:
        main()  # type: ignore[operator]
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: object, err: str, needles: list[str]) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", sorted(TRAIN_ERRORS))
def test_a_training_mistake_is_one_line_and_leaves_no_run_folder(case: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    extra, needles = TRAIN_ERRORS[case]
    if case == "gpu_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    base = [o for o in tiny_overrides(tmp_path) if case != "missing_mandatory" or not o.startswith("data.synthetic")]
    base = [o for o in base if not (case == "gpu_without_gpu" and o.startswith("trainer.accelerator"))]
    code, _, err = run_main(qin_train.main, [*base, *tiny_model_overrides(), *extra], capsys)
    assert_one_line(code, err, needles)
    assert not [p for p in (tmp_path / "logs").rglob("*") if p.is_file()], "a failed config left a run folder"


@pytest.mark.parametrize(("extra", "needle"), [
    (["device=foo"], "device=foo: expected auto, cpu, cuda or cuda:N"),
    (["device=cpu", "threads=abc"], "threads='abc'"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0: expected an integer >= 1"),
    (["data.batch_size=64"], "data.batch_size: unknown key; did you mean data.eval_batch_size?"),
    (["trainer=gpu"], "this command has no config group 'trainer'"),
])
def test_an_eval_mistake_is_one_line(extra: list[str], needle: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(qin_eval.main, [f"ckpt_path={tmp_path / 'none.ckpt'}", *extra], capsys)
    assert_one_line(code, err, [needle])
    code, _, err = run_main(qin_eval.main, [], capsys)
    assert_one_line(code, err, ["ckpt_path has no value: add ckpt_path=<value>"])


def test_traceback_switch_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hydra.errors import ConfigCompositionException

    from qin_lightning.errors import ConfigError

    with pytest.raises(ConfigCompositionException):
        run_main(qin_train.main, [f"paths.log_dir={tmp_path}", "trainer.max_epoch=1", "traceback=true"], capsys)
    with pytest.raises(ConfigError):
        run_main(qin_train.main, [*tiny_overrides(tmp_path), "data.batch_size=0", "traceback=true"], capsys)


def test_debug_fdr_runs_one_batch_into_the_debug_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`debug=fdr`: fast_dev_run (one training and one validation batch), under <log_dir>/debug/ where reports
    over <log_dir>/train/ do not see it."""
    args = [o for o in tiny_overrides(tmp_path) if not o.startswith(("trainer.max_epochs", "callbacks.progress_bar"))]
    code, out, _ = run_main(qin_train.main, [*args, *tiny_model_overrides(), "debug=fdr"], capsys)
    assert code == 0
    (record,) = (tmp_path / "logs" / "debug" / "runs" / "fdr").rglob("results.json")
    result = json.loads(record.read_text())
    assert result["fast_dev_run"] is True and result["epochs_trained"] == 1 and result["status"] == "completed"
    assert "epoch 0/0: 1 steps" in out  # one training batch (the plain progress line: stdout is not a terminal)
    assert not (tmp_path / "logs" / "train").exists()
    assert not list(record.parent.rglob("*.ckpt"))  # fast_dev_run writes no checkpoint


@pytest.mark.parametrize(("option", "expected"), [
    ("fdr", {"fast_dev_run": True}),
    ("limit", {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 3}),
    ("overfit", {"max_epochs": 20, "limit_train_batches": 3}),
    ("profiler", {"max_epochs": 1, "limit_train_batches": 20}),
])
def test_debug_options_compose(option: str, expected: dict[str, object], tmp_path: Path) -> None:
    cfg = compose_train([f"debug={option}"], tmp_path / "run")
    for key, value in expected.items():
        assert cfg.trainer[key] == value, key
    if option == "overfit":
        assert cfg.callbacks.early_stopping is None and "same_batches" in cfg.callbacks
    if option == "profiler":
        assert cfg.trainer.profiler._target_.endswith("SimpleProfiler")
    assert compose_train([], tmp_path / "run").trainer.fast_dev_run is False  # the default trains for real


class RecordFirstBatch(pl.Callback):
    """Keeps the item ids of every epoch's first training batch (added by Hydra from the test's overrides)."""

    seen: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if batch_idx == 0:
            RecordFirstBatch.seen.append(batch.item_id[:8].tolist())  # type: ignore[attr-defined]


def test_overfit_sees_the_same_batches_every_epoch(tmp_path: Path) -> None:
    """SameBatchesEveryEpoch: with debug=overfit every epoch's batches are epoch 0's (the sampler reshuffles by
    seed + epoch otherwise; without the callback the first batches differ)."""
    RecordFirstBatch.seen = []
    overrides = [*tiny_overrides(tmp_path), *tiny_model_overrides(), "debug=overfit", "trainer.max_epochs=3",
                 "+callbacks.record._target_=test_first_hour.RecordFirstBatch"]
    qin_train.train(compose_train(overrides, tmp_path / "run"))
    first, second, third = RecordFirstBatch.seen
    assert first == second == third
    RecordFirstBatch.seen = []
    qin_train.train(compose_train([*overrides, "callbacks.same_batches=null"], tmp_path / "run2"))
    assert RecordFirstBatch.seen[0] != RecordFirstBatch.seen[1]


def test_multirun_job_folders_name_the_swept_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*tiny_overrides(tmp_path), *tiny_model_overrides(), "trainer.max_epochs=1", "debug=limit",
            "hydra.sweep.dir=" + str(tmp_path / "sweep"), "model/attention=relu,softmax"]
    code, _, _ = run_main(qin_train.main, ["-m", *args], capsys)
    assert code == 0
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0_attention=relu", "1_attention=softmax"]


def test_run_folder_name_is_short_and_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    from qin_lightning.training.results import run_folder_name

    monkeypatch.setattr(sys, "argv", ["train"])
    assert run_folder_name("", "qin") == "qin"
    assert run_folder_name("+experiment=din,seed=3", "qin") == "experiment=din,seed=3"
    params = {"model.lr": "x", "model/attention": "x"}
    name = run_folder_name("data.batch_size=128,model.lr=0.00030924900699119516,model/attention=relu", "qin", params)
    assert name == "lr=0.0003092,attention=relu"
    assert len(run_folder_name(",".join(f"model.k{i}=value{i}" for i in range(40)), "qin")) <= 100
    assert "/" not in run_folder_name("paths.x=/a/b", "qin")
    monkeypatch.setattr(sys, "argv", ["train", "-m", "seed=1,2", "data.batch_size=128"])
    assert run_folder_name("data.batch_size=128,seed=2", "qin") == "seed=2"


def test_onnx_evaluation_does_not_replace_the_checkpoints() -> None:
    ckpt = Path("run/checkpoints/last.ckpt")
    own = qin_eval.default_output(ckpt, None, "valid")
    onnx = qin_eval.default_output(ckpt, Path("run/checkpoints/last.onnx"), "valid")
    assert own == Path("run/checkpoints/last.eval_valid.json")
    assert onnx == Path("run/checkpoints/last.onnx.eval_valid.json") != own


def test_eval_help_lists_only_its_own_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(qin_eval.main, ["--help"], capsys)
    assert code == 0 and "ckpt_path: ???" in out and "onnx: null" in out
    assert "Configuration groups" not in out and "trainer" not in out and "experiment" not in out


def test_optuna_plugin_setup_lines_stay_quiet(tmp_path: Path) -> None:
    """alembic (Optuna's database layer) logs `setup plugin alembic.autogenerate.*` at INFO: Hydra's logging
    config keeps it at WARNING, in Hydra's own log and the job's."""
    cfg = compose_train([], tmp_path / "run")
    assert cfg is not None
    from hydra import compose, initialize_config_dir

    from qin_lightning.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        full = compose(config_name="train", return_hydra_config=True)
    for node in (full.hydra.hydra_logging, full.hydra.job_logging):
        assert node.loggers.alembic.level == "WARNING"
    assert full.hydra.job_logging.loggers["qin_lightning.result"].handlers == ["file"]


def test_wandb_is_started_without_the_anonymous_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from qin_lightning.training.tracking import start_wandb, wandb_run_id

    monkeypatch.setenv("WANDB_MODE", "disabled")
    lg = WandbLogger(project="qin-lightning", save_dir=str(tmp_path), offline=True)
    assert "anonymous" in lg._wandb_init  # Lightning passes it (as None): wandb warns that it has no effect
    start_wandb([lg])
    assert "anonymous" not in lg._wandb_init
    assert wandb_run_id([lg]) == str(lg.version) and wandb_run_id([]) is None
    import wandb

    wandb.finish()


def test_quiet_lightning_notices_drop_only_the_listed_lines() -> None:
    from qin_lightning.training.callbacks import quiet_lightning_notices

    quiet_lightning_notices()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    keep = logging.LogRecord(logger.name, logging.INFO, "", 0, "Restoring states from the checkpoint", None, None)
    drop = logging.LogRecord(logger.name, logging.INFO, "", 0, "GPU available: False, used: False", None, None)
    assert logger.filter(keep) and not logger.filter(drop)
