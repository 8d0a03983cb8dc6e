"""experiments/peer/side_by_side.py: its command line and argument checks work without the authors' checkout (no
environment is made, nothing is run); the full comparison itself is run by hand (see its docstring)."""

from __future__ import annotations

import importlib.util
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
