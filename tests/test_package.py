"""The package the way a user gets it: a wheel with every config, installed outside the repository.

Builds the wheel, checks that it holds every YAML of ``src/qin_lightning/conf``, installs it into a fresh
virtual environment, and from an empty folder runs each console script's ``--help`` and a seconds-long
``qin-train`` whose outputs land in that folder: by default the wheel alone beside this environment's
dependencies; the slow test lets pip resolve the declared dependencies too (``torch==2.13.0`` pinned in the same
pip call, as the README says), which takes minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from qin_lightning.config import CONFIG_DIR

TORCH_PIN = "torch==2.13.0"
SCRIPTS = ("qin-train", "qin-eval", "qin-predict", "qin-export", "qin-prepare", "qin-report", "qin-bench")
TINY_TRAIN = [
    "data.synthetic.num_items=60", "data.synthetic.num_tags=20", "data.synthetic.num_users=20",
    "data.synthetic.train_rows=256", "data.synthetic.valid_rows=128", "data.synthetic.test_rows=64",
    "data.batch_size=128", "data.eval_batch_size=128", "data.max_len=8", "data.synthetic.max_len=8",
    "model.net.embedding_dim=8", "trainer.max_epochs=1", "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null", "callbacks.model_summary=null", "threads=1",
]


def run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["WANDB_MODE"] = "disabled"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:4])} ... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--disable-pip-version-check", "-w", str(out), str(REPO_ROOT)], cwd=out)
    (path,) = out.glob("qin_lightning-*.whl")
    return path


def test_wheel_holds_every_config_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"qin_lightning/conf/{p.relative_to(CONFIG_DIR).as_posix()}" for p in Path(CONFIG_DIR).rglob("*.yaml")}
    assert len(configs) > 30
    assert configs <= names, sorted(configs - names)
    assert any(n.endswith("licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{script} = " in text for script in SCRIPTS)


def fresh_env(tmp_path: Path) -> Path:
    """A new virtual environment outside the repository; its bin/ folder."""
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    return env_dir / ("Scripts" if os.name == "nt" else "bin")


def runs_from_an_empty_folder(bin_dir: Path, tmp_path: Path) -> None:
    """Every console script answers --help and a tiny qin-train trains, from a folder holding nothing."""
    work = tmp_path / "empty"
    work.mkdir()
    for script in SCRIPTS:
        proc = run([str(bin_dir / script), "--help"], cwd=work, timeout=300)
        assert proc.stdout.strip(), script
    proc = run([str(bin_dir / "qin-train"), *TINY_TRAIN], cwd=work)
    assert "best val/auc=" in proc.stdout.splitlines()[-1]
    results = list(work.glob("logs/train/runs/qin/*/results.json"))
    assert len(results) == 1, sorted(p.relative_to(work).as_posix() for p in work.rglob("*"))[:50]
    assert (work / ".cache" / "qin").is_dir()  # the generated dataset lands under the folder it ran from


def test_installed_wheel_runs_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    """The wheel alone (`--no-deps`) in a fresh environment that borrows this one's installed dependencies (a
    path line, so this environment's editable checkout stays invisible): the shipped configs, plugin and
    scripts work outside the repository. The slow test below also resolves the declared dependencies."""
    bin_dir = fresh_env(tmp_path)
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    (next((tmp_path / "env").glob("lib*/python*/site-packages")) / "borrowed.pth").write_text(f"{site}\n")
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-index", str(wheel)], cwd=tmp_path)
    proc = run([str(bin_dir / "python"), "-c", "import qin_lightning; print(qin_lightning.__file__)"], cwd=tmp_path)
    assert str(tmp_path / "env") in proc.stdout, proc.stdout  # the wheel's copy, not the checkout
    runs_from_an_empty_folder(bin_dir, tmp_path)


@pytest.mark.slow
def test_installed_wheel_trains_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    """As a user installs it: the wheel with its declared dependencies resolved by pip (torch pinned in the same
    call), nothing borrowed."""
    bin_dir = fresh_env(tmp_path)
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH_PIN,
         str(wheel)], cwd=tmp_path, timeout=1500)
    runs_from_an_empty_folder(bin_dir, tmp_path)
