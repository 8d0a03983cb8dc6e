"""The sweep report: Table 3 layout, mean +- std over seeds, deltas, failed and incomplete runs listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qin_lightning.errors import QinError
from qin_lightning.report import main, write_report


def _run(sweep: Path, name: str, results: dict | None) -> None:
    run_dir = sweep / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
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
    assert set(collected.experiments) == {"qin", "ablation_softmax"}
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
