"""The sweep report: Table 3 layout, mean +- std over seeds, rows split by varying overrides, stop counts,
Optuna trials ranked, the curves figure, failed and incomplete runs listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qin_lightning.errors import QinError
from qin_lightning.report import main, write_report
from qin_lightning.report.collect import Row


PNG = b"\x89PNG\r\n\x1a\n"


def _run(sweep: Path, name: str, results: dict | None, overrides: list[str] | None = None) -> None:
    run_dir = sweep / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
    if overrides is not None:
        (run_dir / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))


def _ok(experiment: str, seed: int, auc: float) -> dict:
    return {"status": "completed", "experiment": experiment, "seed": seed, "best_val_auc": auc,
            "best_val_logloss": 0.4, "best_epoch": 2}


def test_report_table_contents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, "0_qin_seed1", _ok("qin", 1, 0.80))
    _run(tmp_path, "1_qin_seed2", _ok("qin", 2, 0.82))
    _run(tmp_path, "2_softmax_seed1", _ok("ablation_softmax", 1, 0.75))
    _run(tmp_path, "3_softmax_seed2", _ok("ablation_softmax", 2, 0.77))
    _run(tmp_path, "4_din_seed1", {"status": "failed", "experiment": "din", "error": "ConfigError: boom"})
    _run(tmp_path, "5_din_seed2", None)  # killed before it wrote results.json

    collected = write_report(tmp_path)
    assert {r.experiment for r in collected.rows if r.completed} == {"qin", "ablation_softmax"}
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "report_curves.png").exists()  # no run recorded a validation history
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "0.8100 ± 0.0141" in rows["qin"]
    assert "+0.0000" in rows["qin"] and "0.9701" in rows["qin"]
    assert "0.7600 ± 0.0141" in rows["ablation_softmax"]
    assert "-0.0500" in rows["ablation_softmax"]  # ours vs qin
    assert "0.9490" in rows["ablation_softmax"] and "-0.0211" in rows["ablation_softmax"]  # paper and paper delta
    assert "2 (1, 2)" in rows["ablation_softmax"]
    assert "`4_din_seed1`: failed: ConfigError: boom" in md
    assert "`5_din_seed2`: incomplete" in md
    main([str(tmp_path)])
    assert "run(s) not in the table" in capsys.readouterr().out


def test_report_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(QinError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(QinError, match="no runs found"):
        write_report(tmp_path)


def _full(experiment: str, seed: int, aucs: list[float], overrides: list[str], **extra: object) -> dict:
    history = [{"epoch": e, "auc": a, "logloss": 0.5, "lr": 2e-3} for e, a in enumerate(aucs)]
    best = max(range(len(aucs)), key=aucs.__getitem__)
    return {"status": "completed", "experiment": experiment, "seed": seed, "best_val_auc": aucs[best],
            "best_val_logloss": 0.5, "best_epoch": best, "epochs_trained": len(aucs), "val_history": history,
            "overrides": [f"+experiment={experiment}", f"seed={seed}", *overrides], **extra}


def test_rows_split_by_varying_overrides_and_stop_counts(tmp_path: Path) -> None:
    """A sweep over num_row=2,3 x seeds: one row per (experiment, num_row); seeds averaged; stop reasons counted."""
    job = 0
    for num_row, aucs in (("2", [0.70, 0.72]), ("3", [0.80, 0.84])):
        for seed, auc in zip((1, 2), aucs):
            stop = {"stop_reason": "early_stopping"} if (num_row, seed) == ("3", 2) else {"stop_reason": "max_epochs"}
            over = [f"model.net.interaction.num_row={num_row}", "trainer.max_epochs=3"]
            _run(tmp_path, f"{job}_qin_seed{seed}", _full("qin", seed, [0.6, auc, auc - 0.01], over, **stop))
            job += 1
    _run(tmp_path, f"{job}_qin_seed3", {"status": "failed", "experiment": "qin", "seed": 3, "error": "boom",
                                         "overrides": ["+experiment=qin", "seed=3", "model.net.interaction.num_row=3",
                                                       "trainer.max_epochs=3"]})
    collected = write_report(tmp_path)
    assert collected.varying == ["model.net.interaction.num_row"]  # seed and the constant max_epochs do not split
    by_row = {dict(r.setting)["model.net.interaction.num_row"]: r for r in collected.rows}
    assert by_row["2"].aucs == [0.70, 0.72] and by_row["3"].aucs == [0.80, 0.84]
    md = (tmp_path / "report.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| model.net.interaction.num_row=")]
    assert len(lines) == 2  # every run is qin: the row is named by what was swept, not by the shared experiment
    assert lines[0].startswith("| model.net.interaction.num_row=2 |") and "0.7100 ± 0.0141" in lines[0]
    assert lines[1].startswith("| model.net.interaction.num_row=3 |") and "0.8200 ± 0.0283" in lines[1]
    assert lines[0].endswith("0 / 2 / 0 |") and lines[1].endswith("1 / 1 / 1 |")
    # no row has the default num_row (4): no baseline unless one is named
    assert "Δ is to no row (no row has the default value of `model.net.interaction.num_row`" in md
    write_report(tmp_path, baseline="model.net.interaction.num_row=2")
    md = (tmp_path / "report.md").read_text()
    assert "| model.net.interaction.num_row=3 | – | 0.8200 ± 0.0283 | 0.5000 | 2 (1, 2) | +0.1100 |" in md
    assert (tmp_path / "report_curves.png").read_bytes()[:8] == PNG
    assert "(report_curves.png)" in md and "(report.png)" in md


def test_stop_reason_of_older_records_is_inferred_from_the_epochs(tmp_path: Path) -> None:
    _run(tmp_path, "0_qin_seed1", _full("qin", 1, [0.6, 0.7, 0.8], ["trainer.max_epochs=3"]))
    _run(tmp_path, "1_qin_seed2", _full("qin", 2, [0.6, 0.7], ["trainer.max_epochs=3"]))
    collected = write_report(tmp_path)
    assert sorted(r.stop_reason for r in collected.rows[0].runs) == ["early_stopping", "max_epochs"]


def test_committed_record_files_are_read(tmp_path: Path) -> None:
    """`runs/<run>.json` (records copied out of a sweep, as under experiments/) count like run folders."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "0_qin_seed1.json").write_text(json.dumps(_full("qin", 1, [0.6, 0.7], [])))
    collected = write_report(tmp_path)
    assert [r.name for r in collected.rows[0].runs] == ["runs/0_qin_seed1.json"]
    assert (tmp_path / "report_curves.png").exists()


def test_optuna_sweep_gets_a_ranked_trials_table(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper\n"
        "    direction: maximize\noptimized_metric: val/auc\n")
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  model.lr: 0.003\n  model/attention: relu\nbest_value: 0.9\n")
    trials = [("0.001", "softmax", 0.7), ("0.003", "relu", 0.9), ("0.002", "silu", 0.8)]
    for job, (lr, attention, auc) in enumerate(trials):
        over = ["hparams_search=qin_optuna", f"model.lr={lr}", f"model/attention={attention}"]
        _run(tmp_path, f"{job}_qin_optuna_seed20242025", _full("qin_optuna", 20242025, [0.5, auc], over))
    md = (tmp_path / "report.md").read_text() if write_report(tmp_path) else ""
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[2] for line in table] == ["0.900000", "0.800000", "0.700000"]  # best first
    assert table[0].split(" | ")[1] == "`1_qin_optuna_seed20242025`" and "0.003 | relu" in table[0]
    assert "Best parameters" in md and "`model.lr=0.003`" in md
    assert "Δ AUC" not in md  # no Table 3: every trial is its own setting


def test_a_resumed_run_stays_in_its_row(tmp_path: Path) -> None:
    """`ckpt_path=last` (an exact resume) is not a setting: the resumed seed averages with the others."""
    _run(tmp_path, "0_qin_seed1", _full("qin", 1, [0.6, 0.7], ["ckpt_path=last"]))
    _run(tmp_path, "1_qin_seed2", _full("qin", 2, [0.6, 0.8], []))
    collected = write_report(tmp_path)
    assert collected.varying == [] and [r.aucs for r in collected.rows] == [[0.7, 0.8]]


def test_rows_split_by_the_precision_trained_in_not_by_how_the_command_stated_it(tmp_path: Path) -> None:
    """A plan that starts stating its fp32 mid-sweep (older records: no override, no `precision`) keeps each row
    whole; a bf16 run, by override, trainer config or record, is its own row."""
    _run(tmp_path, "0_qin_seed1", _full("qin", 1, [0.6, 0.7], []))  # before trainer.precision=auto: fp32
    _run(tmp_path, "1_qin_seed2", _full("qin", 2, [0.6, 0.8], ["trainer.precision=32-true"]))
    _run(tmp_path, "2_qin_seed3", _full("qin", 3, [0.6, 0.9], ["trainer.precision=32-true"], precision="32-true"))
    collected = write_report(tmp_path)
    assert collected.varying == [] and [r.aucs for r in collected.rows] == [[0.7, 0.8, 0.9]]
    _run(tmp_path, "3_qin_seed1", _full("qin", 1, [0.6, 0.75], ["trainer=cpu_bf16"]))  # an older bf16 record
    _run(tmp_path, "4_qin_seed2", _full("qin", 2, [0.6, 0.85], [], precision="bf16-mixed"))  # auto resolved
    collected = write_report(tmp_path)
    rows = {(dict(r.setting)["trainer"], dict(r.setting)["trainer.precision"]): r.aucs for r in collected.rows}
    assert rows == {("–", "32-true"): [0.7, 0.8, 0.9], ("cpu_bf16", "bf16-mixed"): [0.75], ("–", "bf16-mixed"): [0.85]}


def test_curve_labels_name_only_the_overrides_a_row_sets() -> None:
    """A key only one experiment sets (the winner's cross_rank) splits rows but labels only that row."""
    setting = (("model.net.cross_rank", "64"),)
    assert Row("transformer_dcn", setting).label == "transformer_dcn model.net.cross_rank=64"
    assert Row("qin", setting, show_experiment=False).label == "model.net.cross_rank=64"
    assert Row("qin", (("model.net.cross_rank", "–"),)).label == "qin"


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("best_val_auc", "0.7", "expected a number, got str \"0.7\""),
    ("best_val_auc", [0.7], "expected a number, got list [0.7]"),
    ("best_val_auc", None, "expected a number, got null null"),
    ("seed", 1.5, "expected an integer, got float 1.5"),
])
def test_records_with_wrong_field_types_are_listed_and_the_report_goes_on(tmp_path: Path, key: str, value: object,
                                                                          expected: str) -> None:
    _run(tmp_path, "0_qin_seed1", _ok("qin", 1, 0.80))
    _run(tmp_path, "1_qin_seed2", {**_ok("qin", 2, 0.82), key: value})
    collected = write_report(tmp_path)
    assert collected.rows[0].aucs == [0.80]
    ((name, problem),) = collected.problems
    assert name == "1_qin_seed2"
    assert problem == f"unreadable: {tmp_path / '1_qin_seed2' / 'results.json'}: key '{key}': {expected}"
    assert f"`1_qin_seed2`: {problem}" in (tmp_path / "report.md").read_text()


def test_a_run_config_with_an_integer_trainer_is_unreadable(tmp_path: Path) -> None:
    _run(tmp_path, "0_qin_seed1", _ok("qin", 1, 0.80))
    _run(tmp_path, "1_qin_seed2", _ok("qin", 2, 0.82))
    (tmp_path / "1_qin_seed2" / ".hydra" / "config.yaml").write_text("trainer: 3\n")
    collected = write_report(tmp_path)
    config = tmp_path / "1_qin_seed2" / ".hydra" / "config.yaml"
    expected = f"unreadable: {config}: key 'trainer': expected a mapping, got int 3"
    assert collected.problems == [("1_qin_seed2", expected)]


def test_an_oversized_record_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path, "0_qin_seed1", _ok("qin", 1, 0.80))
    _run(tmp_path, "1_qin_seed2", {**_ok("qin", 2, 0.82), "padding": "x" * (1 << 20)})

    def no_reading(self: Path) -> str:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: no_reading(self) if self.name == "results.json"
                        and self.parent.name == "1_qin_seed2" else Path.read_bytes(self).decode())
    collected = write_report(tmp_path)
    ((_, problem),) = collected.problems
    assert problem.endswith("1_qin_seed2/results.json: 1,048,710 bytes: expected at most 1,048,576 (refused unread)")


def _split_with_predictions(tmp_path: Path, seeds: int) -> None:
    """Kept predictions (200 users x 5 rows, self-contained: users, labels, split key) of qin and a better row
    for every seed; no data folder anywhere."""
    import numpy as np

    from qin_lightning.predictions import write_predictions
    from qin_lightning.training.metrics import split_metrics

    rng = np.random.default_rng(0)
    users, labels = np.repeat(np.arange(200), 5), rng.random(1000) < 0.3
    job = 0
    for experiment, signal in (("qin", 1.0), ("ablation_softmax", 2.0)):
        for seed in range(1, seeds + 1):
            probs = (1 / (1 + np.exp(-(labels * signal + rng.normal(size=1000))))).astype(np.float32)
            test_auc = split_metrics(probs, labels.astype(np.float32), users)["auc"]
            record = {**_ok(experiment, seed, 0.8), "test_auc": test_auc, "data_dir": "/elsewhere/never/read"}
            _run(tmp_path, f"{job}_{experiment}_seed{seed}", record)
            write_predictions(tmp_path / f"{job}_{experiment}_seed{seed}" / "test.preds.parquet", probs, users,
                              labels, "synthetic-abc/test")
            job += 1


def test_kept_predictions_give_the_paired_bootstrap(tmp_path: Path) -> None:
    _split_with_predictions(tmp_path, seeds=3)
    md = write_report(tmp_path) and (tmp_path / "report.md").read_text()
    assert "Significance: paired bootstrap over the test split's users and the seeds (2000 resamples" in md
    row = next(line for line in md.splitlines() if line.startswith("| ablation_softmax |"))
    cells = [c.strip() for c in row.split("|")]
    difference, (low, high) = float(cells[8]), (float(v) for v in cells[9].strip("[]").split(", "))
    assert 0.05 < low < difference < high and cells[12] == "significant"
    assert all(p == "< 0.001" or float(p) < 0.01 for p in cells[10:12])
    assert "| qin |" in md and "| baseline | – |" in md and "seed t-test" not in md


def test_stale_kept_predictions_give_no_verdict_and_say_why(tmp_path: Path) -> None:
    """A predictions file whose AUC is not its record's (stale, another run's) is not used: the table says
    plainly that no paired test could be computed, gives no verdict, and shows the seed t-test in its own
    column."""
    _split_with_predictions(tmp_path, seeds=3)
    record_path = tmp_path / "0_qin_seed1" / "results.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "test_auc": record["test_auc"] - 0.01}))
    md = write_report(tmp_path) and (tmp_path / "report.md").read_text()
    assert "**no paired test over users could be computed** (test.preds.parquet of 0_qin_seed1: its AUC is" in md
    header = next(line for line in md.splitlines() if line.startswith("| row |"))
    assert header.split(" | ")[-4:] == ["seed t-test p (Holm)", "paper AUC", "paper Δ",
                                        "early stop / epoch cap / failed |"]
    row = next(line for line in md.splitlines() if line.startswith("| ablation_softmax |"))
    assert "| – | – | – | not computed | < 0.001 (< 0.001) |" in row or "| – | – | – | not computed | 0.0" in row


def test_the_verdict_never_comes_from_a_seed_test(tmp_path: Path) -> None:
    """Runs without kept predictions whose seed t-test is overwhelming (p < 0.001): the verdict column still says
    "not computed" in every row, never "significant"."""
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.81, 0.71), (0.82, 0.72), (0.80, 0.71)], 1):
        _run(tmp_path, f"q{seed}", {**_ok("qin", seed, 0.8), "test_auc": b})
        _run(tmp_path, f"s{seed}", {**_ok("ablation_softmax", seed, 0.8), "test_auc": a})
    md = write_report(tmp_path) and (tmp_path / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ablation_softmax |")]
    assert rows and all("significant" not in line for line in rows) and "not computed" in rows[0]
    assert "kept no test predictions" in md and "it decides nothing" in md


def test_predictions_of_different_splits_are_not_paired(tmp_path: Path) -> None:
    """Kept predictions with another split key (another conversion) cannot be paired with the rest."""
    import numpy as np

    from qin_lightning.predictions import read_predictions, write_predictions

    _split_with_predictions(tmp_path, seeds=3)
    path = tmp_path / "0_qin_seed1" / "test.preds.parquet"
    kept = read_predictions(path)
    write_predictions(path, kept.probs, kept.users, kept.labels, "synthetic-other/test")
    md = write_report(tmp_path) and (tmp_path / "report.md").read_text()
    assert "the runs were scored on different test splits (" in md and "0_qin_seed1: synthetic-other/test" in md
    assert np.array_equal(read_predictions(path).users, kept.users)


def test_hostile_sweep_files_do_not_stop_the_report(tmp_path: Path) -> None:
    """best_params that is a list, an optimized_metric that is a list, a null logloss: the report is written (a
    `hydra` node that is not a mapping is a one-line error: tests/test_report_hostile.py)."""
    (tmp_path / "multirun.yaml").write_text("hydra: {}\noptimized_metric: [1]\n")
    (tmp_path / "optimization_results.yaml").write_text("best_params: [1, 2]\nbest_value: x\n")
    _run(tmp_path, "0_qin_seed1", {**_ok("qin", 1, 0.80), "best_val_logloss": None})
    collected = write_report(tmp_path)
    assert not collected.is_optuna and collected.rows[0].aucs == [0.80]
    assert "| qin |" in (tmp_path / "report.md").read_text()
