"""The package the way a user gets it: a wheel with every config, installed outside the repository.

Builds the wheel, checks that it holds every YAML of ``src/qin_lightning/conf``, installs it into a fresh
virtual environment (``torch==2.13.0`` pinned in the same pip call, as the README says), and from an empty
folder runs each console script's ``--help`` and a seconds-long ``qin-train`` whose outputs land in that folder.
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


def test_installed_wheel_trains_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH_PIN,
         str(wheel)], cwd=tmp_path, timeout=1500)
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
