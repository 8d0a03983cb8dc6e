"""experiments/peer/side_by_side.py: its command line and argument checks work without the authors' checkout (no
environment is made, nothing is run); the full comparison itself is run by hand (see its docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "experiments" / "peer" / "side_by_side.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def fake_checkout(root: Path) -> Path:
    for name in ("src/__init__.py", "src/QIN_variety_v9.py", "src/mmctr_dataloader.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def test_help(tmp_path: Path) -> None:
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("usage: ") and "--qin-repo" in done.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra, message", [
    ([], "--qin-repo {missing}: no src/__init__.py, src/QIN_variety_v9.py, src/mmctr_dataloader.py; expected a "
         "checkout of github.com/salmon1802/QIN (git clone https://github.com/salmon1802/QIN)"),
    (["--epochs", "0"], "--epochs: 0, expected a positive integer"),
    (["--precision", "32,fp8"], "--precision: '32,fp8', expected a comma-separated list of 32, bf16"),
    (["--their-workers", "-1"], "--their-workers: -1, expected 0 or more"),
])
def test_argument_checks_fail_in_one_line_before_anything_runs(tmp_path: Path, extra: list[str],
                                                                message: str) -> None:
    repo = tmp_path / "missing" if not extra else fake_checkout(tmp_path / "QIN")
    venv = tmp_path / "venv"
    done = run("--qin-repo", str(repo), "--out", str(tmp_path / "out.json"), "--venv", str(venv), *extra,
               cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: " + message.format(missing=repo)
    assert not venv.exists() and not (tmp_path / "out.json").exists()
