"""experiments/peer/side_by_side.py: its command line and argument checks work without the authors' checkouts (no
environment is made, nothing is run), their hyperparameters are our experiment configs, and the README's table
is the committed records; the full comparisons themselves are run by hand (see its docstring)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "experiments" / "peer" / "side_by_side.py"


@pytest.fixture(scope="module")
def side_by_side() -> ModuleType:
    spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_checkout(root: Path) -> Path:
    for name in ("src/__init__.py", "src/QIN_variety_v9.py", "src/mmctr_dataloader.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def test_help(side_by_side: ModuleType, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        side_by_side.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--qin-repo" in out


@pytest.mark.parametrize("extra, message", [
    ([], "--qin-repo {missing}: no src/__init__.py, src/QIN_variety_v9.py, src/mmctr_dataloader.py; expected a "
         "checkout of github.com/salmon1802/QIN (git clone https://github.com/salmon1802/QIN)"),
    (["--epochs", "0"], "--epochs: 0, expected a positive integer"),
    (["--precision", "32,fp8"], "--precision: '32,fp8', expected a comma-separated list of 32, bf16"),
    (["--their-workers", "-1"], "--their-workers: -1, expected 0 or more"),
])
def test_argument_checks_fail_in_one_line_before_anything_runs(
        side_by_side: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    repo = tmp_path / "missing" if not extra else fake_checkout(tmp_path / "QIN")
    venv = tmp_path / "venv"
    with pytest.raises(SystemExit) as exit_info:
        side_by_side.main(["--qin-repo", str(repo), "--out", str(tmp_path / "out.json"), "--venv", str(venv), *extra])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: " + message.format(missing=repo)
    assert not venv.exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--model", "din"], "--winner-repo: missing, --model din needs a checkout of github.com/pinskyrobin/WWW2025_MMCTR "
                         "(git clone https://github.com/pinskyrobin/WWW2025_MMCTR)"),
    (["--model", "qnn_alpha", "--fuxictr-repo", "{tmp}"],
     "--fuxictr-repo {tmp}: no model_zoo/QNN/src/QNN_alpha.py; expected a checkout of github.com/reczoo/FuxiCTR "
     "(git clone https://github.com/reczoo/FuxiCTR)"),
    (["--model", "transformer_dcn", "--winner-repo", "{winner}", "--draws", "sfc64"],
     "--draws: 'sfc64', --model transformer_dcn has no QNN dropout draw option; expected torch"),
])
def test_each_model_names_the_checkouts_it_needs(
        side_by_side: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    qin = fake_checkout(tmp_path / "QIN")
    winner = tmp_path / "WWW2025_MMCTR"
    for name in side_by_side.WINNER_FILES:
        (winner / name).parent.mkdir(parents=True, exist_ok=True)
        (winner / name).write_text("")
    extra = [e.format(tmp=tmp_path, winner=winner) for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        side_by_side.main(["--qin-repo", str(qin), "--out", str(tmp_path / "out.json"), "--venv",
                           str(tmp_path / "venv"), *extra])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: " + message.format(tmp=tmp_path)
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out.json").exists()


def test_model_defaults(side_by_side: ModuleType) -> None:
    """qin keeps its record's defaults; the winner runs at its published batch 128."""
    qin = side_by_side.parse_args(["--qin-repo", "x", "--out", "y"])
    assert (qin.model, qin.epochs, qin.batch_size, qin.draws) == ("qin", 8, 2048, "torch")
    winner = side_by_side.parse_args(["--model", "transformer_dcn", "--out", "y"])
    assert (winner.epochs, winner.batch_size) == (2, 128)
    assert side_by_side.parse_args(["--model", "din", "--out", "y", "--epochs", "5"]).epochs == 5


@pytest.mark.parametrize("model", ["qnn_alpha", "din", "transformer_dcn"])
def test_their_hyperparameters_are_our_experiment_configs(side_by_side: ModuleType, tmp_path: Path,
                                                          model: str) -> None:
    """The values written into their config are the ones our `+experiment=<model>` composes (a change on either
    side goes red), apart from the batch, which the comparison sets for both."""
    from conftest import compose_train

    args = side_by_side.parse_args(["--model", model, "--out", "y"])
    theirs = side_by_side.their_hyperparameters(args, {"max_len": 64})
    cfg = compose_train([f"+experiment={model}", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "run")
    net = cfg.model.net
    assert (theirs["learning_rate"], theirs["embedding_regularizer"], theirs["net_regularizer"]) == (
        cfg.model.lr, cfg.model.embedding_l2, 0)
    assert theirs["early_stop_patience"] == cfg.callbacks.early_stopping.patience
    if model == "qnn_alpha":
        qnn = net.interaction
        assert cfg.model.self_ensemble and theirs["factor"] == cfg.model.lr_factor
        assert (theirs["embedding_dim"], theirs["num_layers"], theirs["num_row"], theirs["net_dropout"],
                theirs["batch_norm"], theirs["num_heads"]) == (
            net.embedding_dim, qnn.num_layers, qnn.num_row, qnn.dropout, qnn.batch_norm, qnn.num_heads)
    elif model == "din":
        assert cfg.model.lr_factor == 0.1  # FuxiCTR's lr_decay default, which their DIN keeps
        assert (theirs["embedding_dim"], theirs["attention_hidden_units"], theirs["attention_dropout"],
                theirs["dnn_hidden_units"], theirs["net_dropout"], theirs["batch_norm"]) == (
            net.embedding_dim, list(net.attention_units), net.attention_dropout, list(net.dnn_units),
            net.dnn_dropout, net.batch_norm)
    else:
        assert cfg.model.lr_factor == 0.1 and cfg.data.batch_size == theirs["batch_size"] == 128
        assert (theirs["embedding_dim"], theirs["transformer_layers"], theirs["num_heads"], theirs["dim_feedforward"],
                theirs["transformer_dropout"], theirs["first_k_cols"], theirs["dcn_cross_layers"],
                theirs["dcn_hidden_units"], theirs["net_dropout"], theirs["mlp_hidden_units"]) == (
            net.embedding_dim, net.transformer_layers, net.num_heads, net.feedforward_dim, net.transformer_dropout,
            net.first_k_cols, net.cross_layers, list(net.dnn_units), net.dnn_dropout, list(net.head_units))
        assert net.cross_rank is None


def fake_record(their_auc: list[float], our_auc: list[float], params: tuple[int, int]) -> dict:
    return {"their_model": "Theirs", "data": {"train_rows": 1000, "valid_rows": 200},
            "settings": {"epochs": len(their_auc), "batch_size": 64},
            "theirs": {"n_params": params[0], "val_history": [{"AUC": a, "logloss": 0.5} for a in their_auc]},
            "ours": {"runs": {"fp32_2ep": {"n_params": params[1],
                                           "val_history": [{"epoch": i, "auc": a, "logloss": 0.5}
                                                           for i, a in enumerate(our_auc)]},
                              "fp32_2ep_sfc64": {"n_params": params[1], "val_history": []}}},
            "ratio_their_fit_to_ours": {"fp32_2ep": 2.5, "fp32_2ep_sfc64": 3.0}}


def test_fidelity_and_table_read_epoch_one_and_the_best(side_by_side: ModuleType, tmp_path: Path) -> None:
    record = fake_record([0.60, 0.70], [0.595, 0.72], (10, 10))
    assert side_by_side.fidelity(record) == {"params_equal": True, "auc_epoch1_ours_minus_theirs": -0.005,
                                             "auc_best_ours_minus_theirs": 0.02, "within_0.01": False}
    assert side_by_side.fidelity(fake_record([0.6, 0.7], [0.6, 0.705], (10, 11)))["within_0.01"]
    (tmp_path / "side_by_side_din.json").write_text(json.dumps(record))
    lines = side_by_side.table(tmp_path).splitlines()
    assert len(lines) == 3  # header, rule, the one record present
    assert lines[2] == "| din | Theirs | 1,000 / 200, 2, 64 | 10 / 10 | logit | 0.6000 / 0.5950 | 0.7000 / 0.7200 | 2.50x | – |"
    summary = {"teacher_forced_clean_steps": {"steps": 12, "max_loss_rel_diff": 3e-6},
               "teacher_forced_steps_with_such_rows": {"steps": 8, "max_loss_rel_diff": 4.8e-6}}
    (tmp_path / "trajectory_din.json").write_text(json.dumps({"summary": summary, "settings": {"steps": 20}}))
    assert side_by_side.table(tmp_path).splitlines()[2].endswith("| 20 of 20 steps, each alone: loss within 4.8e-06 |")


def test_readme_table_is_the_records(side_by_side: ModuleType) -> None:
    """experiments/peer/README.md carries exactly `side_by_side.py --table` between its markers."""
    text = (REPO_ROOT / "experiments" / "peer" / "README.md").read_text()
    start = text.index(side_by_side.README_TABLE_START) + len(side_by_side.README_TABLE_START)
    end = text.index(side_by_side.README_TABLE_END)
    assert text[start:end].strip() == side_by_side.table().strip()
    # the copy the docs include (docs/results.md) is the same table
    assert (REPO_ROOT / "experiments" / "peer" / "table.md").read_text() == side_by_side.table()
    for spec in side_by_side.MODELS.values():  # every model of our tables has its committed record
        assert (REPO_ROOT / "experiments" / "peer" / spec.record).is_file(), spec.record
