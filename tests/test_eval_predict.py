"""eval (AUC, logloss, gAUC from a checkpoint) and predict (streamed ID,Task2 submission, zip, no overwrite), scored
by Lightning over the DataModule's batches (ONNX: the scorer's loop over the same batches), quietly."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import lightning.pytorch as pl
import pytest
import torch
from conftest import REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides
from omegaconf import OmegaConf

from qin_lightning.data import layout
from qin_lightning.errors import ConfigError, DataValidationError, QinError
from qin_lightning.eval import evaluate
from qin_lightning.models.inference import inference_form
from qin_lightning.predict import predict
from qin_lightning.serving import scorer
from qin_lightning.serving.load import load_network
from qin_lightning.serving.onnx_export import export_checkpoint
from qin_lightning.serving.runtime import open_session
from qin_lightning.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("evalpred")
    results = train(compose_train(tiny_overrides(tmp) + tiny_model_overrides(), tmp / "run"))
    return tmp, results


def _eval_cfg(ckpt: str, **kw: object):
    base = {"ckpt_path": ckpt, "split": "valid", "output": None, "data": {"root": None, "eval_batch_size": None},
            "device": "cpu", "threads": 1, "traceback": False}
    base.update(kw)
    return OmegaConf.create(base)


def _predict_cfg(ckpt: str, output: Path, **kw: object):
    base = {"ckpt_path": ckpt, "output": str(output), "zip": False, "overwrite": False,
            "data": {"root": None, "eval_batch_size": None}, "device": "cpu", "threads": 1, "traceback": False}
    base.update(kw)
    return OmegaConf.create(base)


def test_eval_matches_training_validation(trained: tuple[Path, dict]) -> None:
    tmp, results = trained
    ckpt = results["best_checkpoint"]
    r = evaluate(_eval_cfg(ckpt))
    assert r["auc"] == pytest.approx(results["best_val_auc"], abs=1e-6)
    assert r["logloss"] == pytest.approx(results["best_val_logloss"], abs=1e-5)
    assert 0.0 < r["gauc"] < 1.0 and r["gauc_users"] > 0 and r["rows"] == 256
    beside = Path(ckpt).with_name(Path(ckpt).stem + ".eval_valid.json")
    assert json.loads(beside.read_text())["auc"] == r["auc"]
    r2 = evaluate(_eval_cfg(ckpt, data={"root": None, "eval_batch_size": 7}, output=str(tmp / "m.json")))
    assert r2["auc"] == pytest.approx(r["auc"], abs=1e-6) and (tmp / "m.json").exists()


def test_eval_test_split_and_bad_overrides(trained: tuple[Path, dict]) -> None:
    ckpt = trained[1]["best_checkpoint"]
    assert evaluate(_eval_cfg(ckpt, split="test"))["rows"] == 128
    with pytest.raises(ConfigError, match=r"data.max_len: cannot be overridden here.*data.root, data.eval_batch_size"):
        evaluate(_eval_cfg(ckpt, data={"root": None, "eval_batch_size": None, "max_len": 4}))
    with pytest.raises(ConfigError, match="split=train: expected valid or test"):
        evaluate(_eval_cfg(ckpt, split="train"))
    with pytest.raises(QinError, match=r"nope\.ckpt: checkpoint not found \(expected a \.ckpt file"):
        evaluate(_eval_cfg(str(trained[0] / "nope.ckpt")))


def _moved_data(trained: tuple[Path, dict], name: str) -> tuple[Path, Path]:
    """A copy of the run's data under a new root (the layout the datamodule expects: root/<fingerprint>)."""
    tmp, results = trained
    src = Path(results["data_dir"])
    root = tmp / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(src, root / src.name)
    return root, root / src.name


def test_eval_with_moved_data_and_item_table_mismatch(trained: tuple[Path, dict]) -> None:
    ckpt = trained[1]["best_checkpoint"]
    root, folder = _moved_data(trained, "moved")
    moved = evaluate(_eval_cfg(ckpt, data={"root": str(root), "eval_batch_size": None}))
    assert moved["data_dir"] == str(folder) and moved["auc"] == pytest.approx(trained[1]["best_val_auc"], abs=1e-6)

    table = pq.read_table(folder / layout.ITEM_INFO_FILE).to_pydict()
    table[layout.ITEM_EMB][3] = [v + 1.0 for v in table[layout.ITEM_EMB][3]]
    pq.write_table(pa.table(table), folder / layout.ITEM_INFO_FILE)
    with pytest.raises(ConfigError, match=r"item_info.parquet: column 'item_emb_d128' differs from the vectors"):
        evaluate(_eval_cfg(ckpt, data={"root": str(root), "eval_batch_size": None}))

    table[layout.ITEM_EMB] = [v[:4] for v in table[layout.ITEM_EMB]]  # narrower vectors than the run's config
    pq.write_table(pa.table(table), folder / layout.ITEM_INFO_FILE)
    with pytest.raises(DataValidationError, match=r"item_info.parquet: column 'item_emb_d128' row 0 has length 4, "
                                                  r"expected \d+"):
        evaluate(_eval_cfg(ckpt, data={"root": str(root), "eval_batch_size": None}))


def test_predict_streams_submission_and_refuses_overwrite(trained: tuple[Path, dict], tmp_path: Path) -> None:
    ckpt = trained[1]["best_checkpoint"]
    out = tmp_path / "sub" / "prediction.csv"
    r = predict(_predict_cfg(ckpt, out, zip=True, data={"root": None, "eval_batch_size": 50}))
    assert r["rows"] == 128
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", "Task2"] and [int(x[0]) for x in rows[1:]] == list(range(128))
    probs = np.array([float(x[1]) for x in rows[1:]], dtype=np.float32)

    net, _ = load_network(ckpt)  # the same network, whole test split in one batch
    test = pq.read_table(Path(trained[1]["data_dir"]) / layout.TEST_FILE)
    seq = torch.tensor(np.array(test[layout.ITEM_SEQ].to_pylist()))[:, -8:]
    with torch.no_grad():
        expected = torch.sigmoid(net(seq, *(torch.tensor(test[c].to_numpy()) for c in
                                            (layout.ITEM_ID, layout.LIKES_LEVEL, layout.VIEWS_LEVEL)))).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
    with zipfile.ZipFile(out.with_suffix(".zip")) as z:
        assert z.namelist() == ["prediction.csv"] and z.read("prediction.csv") == out.read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no temporary files left behind"

    before = out.read_bytes()
    with pytest.raises(ConfigError, match=r"prediction.csv already exists; pass overwrite=true"):
        predict(_predict_cfg(ckpt, out))
    assert out.read_bytes() == before
    out.unlink()
    with pytest.raises(ConfigError, match=r"prediction.zip already exists"):  # the zip is checked before any work
        predict(_predict_cfg(ckpt, out, zip=True))
    assert not out.exists()
    assert predict(_predict_cfg(ckpt, out, zip=True, overwrite=True))["rows"] == 128
    with pytest.raises(ConfigError, match="expected a .csv file name"):
        predict(_predict_cfg(ckpt, tmp_path / "x.txt"))


def test_scoring_runs_lightning_over_the_datamodules_batches(trained: tuple[Path, dict], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """torch: Trainer.predict over `split_dataloader`; ONNX: the scorer's loop over `eval_sampler`; both in the
    DataModule's batches of data.eval_batch_size, every row once in row order, equal to a hand loop over them."""
    ckpt = trained[1]["best_checkpoint"]
    net, _, dm = scorer.load_for_inference(ckpt, {"eval_batch_size": 7}, "validate")
    calls: list[str] = []
    for name in ("split_dataloader", "eval_sampler"):
        monkeypatch.setattr(dm, name, lambda *a, _f=getattr(dm, name), _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    predicted = pl.Trainer.predict
    monkeypatch.setattr(pl.Trainer, "predict", lambda *a, **k: (calls.append("Trainer.predict"), predicted(*a, **k))[1])
    seen: list[int] = []
    hook = net.register_forward_hook(lambda module, args, out: seen.append(int(args[1].shape[0])))
    probs = scorer.split_probabilities(net, (None, None), dm, "valid", "cpu")
    hook.remove()
    assert calls == ["split_dataloader", "eval_sampler", "Trainer.predict"]
    assert seen == [7] * 36 + [4] and probs.dtype == np.float32 and probs.shape == (256,)

    data = dm.dataset("valid")
    with torch.inference_mode(), inference_form(net):  # the same batches by hand, in row order
        expected = np.concatenate([torch.sigmoid(net(*data[torch.arange(i, min(i + 7, 256))][:4]).float()).numpy()
                                   for i in range(0, 256, 7)])
    assert np.array_equal(probs, expected)  # bitwise: same batches, same fp32 network

    calls.clear()
    model = export_checkpoint(Path(ckpt), tmp_path / "model.onnx")
    session = open_session(model, threads=1)
    fed: list[int] = []
    run = session.run
    monkeypatch.setattr(session, "run", lambda out, feed: (fed.append(len(feed["item_id"])), run(out, feed))[1])
    onnx_probs = scorer.split_probabilities(net, (model, session), dm, "valid", "cpu")
    assert calls == ["eval_sampler"] and fed == [7] * 36 + [4]
    np.testing.assert_allclose(onnx_probs, probs, rtol=1e-5, atol=1e-6)


LIGHTNING_NOTICES = ("GPU available", "TPU available", "Tip:", "LOCAL_RANK", "LeafSpec", "lightning")


def test_eval_and_predict_cli(trained: tuple[Path, dict], tmp_path: Path) -> None:
    ckpt = trained[1]["best_checkpoint"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.eval", f"ckpt_path={ckpt}", "split=valid",
                           f"output={tmp_path}/metrics.json", "threads=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("valid: rows=256 auc=") and "gauc=" in lines[1], proc.stdout
    assert not [n for n in LIGHTNING_NOTICES if n in proc.stderr], proc.stderr  # Lightning scores quietly
    assert json.loads((tmp_path / "metrics.json").read_text())["split"] == "valid"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()

    args = [sys.executable, "-m", "qin_lightning.predict", f"ckpt_path={ckpt}", "output=prediction.csv", "zip=true",
            "threads=1"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "prediction.zip").exists() and proc.stdout.startswith("wrote 128 predictions to ")
    assert len(proc.stdout.strip().splitlines()) == 1 and not [n for n in LIGHTNING_NOTICES if n in proc.stderr]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: output prediction.csv already exists")
