"""Every committed sweep table regenerates byte for byte on a fresh clone: the committed files of each sweep
folder (``git archive HEAD``: records, kept predictions, plans; no data/, an empty cache) copied to a temporary
folder, ``python -m qin_lightning.report <folder>`` run there, and every file it writes (table.md, report.md,
report.png, report_curves.png) compared with the committed one.

By default a representative subset (about 30 s on 2 cores): a converged plan whose rows are compared by the
paired bootstrap from kept predictions alone (converged_history20, 3 seeds), a plan compared with a row of
another plan with no kept predictions (synthetic_qnn_alpha_bce), and a Hydra multirun without a plan
(experiments/synthetic). Every folder, and experiments/precision/table.md: the slow test.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

WRITTEN = ("table.md", "report.md", "report.png", "report_curves.png")
SUBSET = ("experiments/movielens/converged_history20", "experiments/converged/synthetic_qnn_alpha_bce",
          "experiments/synthetic")


def _committed_experiments(into: Path) -> None:
    """The committed experiments/ folder (HEAD), as a fresh clone has it."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "experiments"], cwd=REPO_ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def sweep_folders(root: Path) -> list[str]:
    """Every committed sweep folder: a folder of records (``runs/``) below experiments/."""
    return sorted(str(p.parent.relative_to(root)) for p in (root / "experiments").rglob("runs") if p.is_dir())


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("clone")
    _committed_experiments(root)
    cache = tmp_path_factory.mktemp("empty_cache")
    env = {**os.environ, "QIN_CACHE_DIR": str(cache), "MPLBACKEND": "Agg"}
    env.pop("QIN_MOVIELENS_SRC", None)
    return root, env


def _regenerates(root: Path, env: dict[str, str], folder: str) -> None:
    committed = {name: (root / folder / name).read_bytes() for name in WRITTEN if (root / folder / name).is_file()}
    assert "report.md" in committed, f"{folder}: no committed report.md"
    for name in committed:
        (root / folder / name).unlink()  # what the report does not rewrite would be missing below
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.report", folder], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (root / "data").exists() and not any(Path(env["QIN_CACHE_DIR"]).iterdir())
    written = {name for name in WRITTEN if (root / folder / name).is_file()}
    assert written == set(committed), (folder, written, set(committed))
    for name, content in committed.items():
        assert (root / folder / name).read_bytes() == content, f"{folder}/{name} differs from the committed file"


@pytest.mark.parametrize("folder", SUBSET)
def test_a_committed_table_regenerates_on_a_fresh_clone(clone: tuple[Path, dict[str, str]], folder: str) -> None:
    _regenerates(*clone, folder)


@pytest.mark.slow
def test_every_committed_table_regenerates_on_a_fresh_clone(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    folders = sweep_folders(root)
    assert set(SUBSET) <= set(folders) and len(folders) >= 17
    for folder in folders:
        _regenerates(root, env, folder)
    committed = (root / "experiments" / "precision" / "table.md").read_bytes()
    proc = subprocess.run([sys.executable, "experiments/precision/table.py"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (root / "experiments" / "precision" / "table.md").read_bytes() == committed
