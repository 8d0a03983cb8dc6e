"""A sweep report names what was swept (issue 38): the real command `python -m qin_lightning.train -m
model/attention=relu,softmax` on tiny overrides, then qin-report on its folder. Rows are named by the overrides
that differ between the jobs; the paper row and AUC come from the composed model config (QIN's with softmax
attention is the paper's `ablation_softmax`), Δ is to the row with the swept key's default (relu) or --baseline;
the figure's legend covers no bar and has one paper marker per row that has one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_model_overrides, tiny_overrides

from qin_lightning.errors import QinError
from qin_lightning.report import write_report
from qin_lightning.report.plots import chart_figure


@pytest.fixture(scope="module")
def multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    command = [sys.executable, "-m", "qin_lightning.train", "-m", "model/attention=relu,softmax",
               *tiny_overrides(tmp), *tiny_model_overrides(), "test_after_fit=true"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    return folder


def _rows(md: str) -> dict[str, list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
            } | {"header": header}


def test_rows_are_named_by_the_swept_override_and_the_paper_comes_from_the_composed_model(multirun: Path) -> None:
    write_report(multirun)
    rows = _rows((multirun / "report.md").read_text())
    header = rows.pop("header")
    assert list(rows) == ["model/attention=relu", "model/attention=softmax"]  # not "qin", "qin"
    col = {name: header.index(name) for name in ("paper row", "paper AUC", "paper Δ")}
    relu, softmax = rows["model/attention=relu"], rows["model/attention=softmax"]
    assert (relu[col["paper row"]], relu[col["paper AUC"]]) == ("QIN", "0.9701")
    assert (softmax[col["paper row"]], softmax[col["paper AUC"]], softmax[col["paper Δ"]]) == (
        "ASTA w/ SoftMax", "0.9490", "-0.0211")
    delta = header.index("Δ test AUC vs model/attention=relu")  # the default attention is the baseline
    assert relu[delta] == "baseline" and softmax[delta] not in ("baseline", "–")
    assert "one row per value of `model/attention`" in (multirun / "report.md").read_text()


def test_baseline_row_by_name(multirun: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(multirun, folder)
    write_report(folder, baseline="model/attention=softmax")
    rows = _rows((folder / "report.md").read_text())
    delta = rows["header"].index("Δ test AUC vs model/attention=softmax")
    assert rows["model/attention=softmax"][delta] == "baseline"
    with pytest.raises(QinError, match=r"--baseline qin: no such row \(rows: 'model/attention=relu', 'model/"):
        write_report(folder, baseline="qin")


def test_no_paper_value_where_the_composed_model_is_no_paper_experiment(multirun: Path, tmp_path: Path) -> None:
    """The softmax job's own composed model changed (as a run with another dropout would be): no paper row."""
    folder = tmp_path / "copy"
    shutil.copytree(multirun, folder)
    (config_path,) = [p for p in folder.glob("*/.hydra/config.yaml") if "softmax" in p.parent.parent.name]
    config = yaml.safe_load(config_path.read_text())
    config["model"]["lr"] = 0.123
    config_path.write_text(yaml.safe_dump(config))
    write_report(folder)
    rows = _rows((folder / "report.md").read_text())
    col = rows["header"].index("paper AUC")
    assert rows["model/attention=softmax"][col] == "–" and rows["model/attention=relu"][col] == "0.9701"


def test_the_chart_legend_covers_no_bar_and_marks_each_paper_row_once() -> None:
    rows = [("model/attention=relu", 0.9701, [0.97, 0.96], []), ("model/attention=softmax", 0.9490, [0.95], []),
            ("model/attention=silu", None, [0.90], [])]
    fig = chart_figure(rows, "sweep")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 3 and not any(legend.overlaps(bar) for bar in bars)
    (markers,) = ax.collections[-1:]
    assert [tuple(xy) for xy in markers.get_offsets()] == [(0.0, 0.9701), (1.0, 0.9490)]
