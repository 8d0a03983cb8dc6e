"""Untrusted files: checkpoints that cannot run code, vocabularies that cannot explode, runs that survive SIGKILL
and a full disk (docs/security.md)."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CONFIG_DIR, REPO_ROOT, compose_train, tiny_model_overrides, tiny_overrides
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from qin_lightning import machine
from qin_lightning.checkpoint import UnsafeCheckpointError, read_checkpoint
from qin_lightning.data import layout, reader
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.movielens.source import MovieLensSource
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.errors import ConfigError, DataValidationError, QinError
from qin_lightning.eval import evaluate
from qin_lightning.export import main as export_main
from qin_lightning.files import FileWriteError
from qin_lightning.predict import predict
from qin_lightning.serving.onnx_export import export_checkpoint
from qin_lightning.serving.load import load_network
from qin_lightning.serving.scorer import data_config, load_for_inference
from qin_lightning.serving.stored_config import DATA_MODULES, DATA_PARTS, NETWORK_PARTS, NETWORKS, StoredConfigError
from qin_lightning.serving.stored_config import stored_datamodule
from qin_lightning.train import train
from qin_lightning.training import checkpoint_io, memory
from qin_lightning.training.build import build_datamodule, build_module

EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))
TESTS = Path(__file__).resolve().parent


class Payload:
    """Unpickling this runs `exec(code)`: the classic pickle attack (here it only creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny QIN training run (2 epochs): its folder holds the best and last checkpoints."""
    tmp = tmp_path_factory.mktemp("untrusted")
    train(compose_train(tiny_overrides(tmp) + tiny_model_overrides(), tmp / "run"))
    return tmp / "run"


@pytest.fixture
def last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def _evil(last: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of a real checkpoint with one extra entry whose unpickling creates `marker`, marker)."""
    marker = tmp_path / "PWNED"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["extra"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def _compose(name: str, overrides: list[str]) -> Any:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name=name, overrides=overrides)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO_ROOT / "src")])}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- our own checkpoints load strictly ------------------------------------------------------------------
def test_best_and_last_load_with_weights_only(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    for path in (Path(results["best_checkpoint"]), run / "checkpoints" / "last.ckpt"):
        torch.load(path, map_location="cpu", weights_only=True)  # raises if anything beyond plain data
        net, cfg = load_network(path)  # the strict default of eval/predict/export
        assert cfg["experiment_name"] == "qin"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_writes_strictly_loadable_checkpoints(tmp_path_factory: pytest.TempPathFactory,
                                                               experiment: str) -> None:
    shared = tmp_path_factory.getbasetemp() / "experiments_cache"  # one tiny dataset for every experiment
    run_dir = tmp_path_factory.mktemp(experiment)
    overrides = [*tiny_overrides(shared), *tiny_model_overrides(experiment), f"+experiment={experiment}",
                 "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                 f"paths.log_dir={run_dir}/logs"]
    results = train(compose_train(overrides, run_dir / "run"))
    for path in (Path(results["best_checkpoint"]), run_dir / "run" / "checkpoints" / "last.ckpt"):
        torch.load(path, map_location="cpu", weights_only=True)
        load_network(path)


# ---- a code-running checkpoint is refused everywhere, and runs nothing -----------------------------------
def test_read_checkpoint_refuses_a_pickle_payload_and_names_it(last: Path, tmp_path: Path) -> None:
    evil, marker = _evil(last, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(evil)
    message = str(info.value)
    assert str(evil) in message and "the Python object `exec`" in message and "trust_checkpoint=true" in message
    assert "\n" not in message
    assert not marker.exists(), "the payload ran"


def test_torch_env_var_cannot_turn_strict_loading_off(last: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil, marker = _evil(last, tmp_path)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(evil)
    assert not marker.exists()


def test_trust_checkpoint_is_the_explicit_opt_in(last: Path, tmp_path: Path) -> None:
    """With trust the file is unpickled unrestricted: its code runs (the documented risk)."""
    evil, marker = _evil(last, tmp_path)
    assert "state_dict" in read_checkpoint(evil, trust=True)
    assert marker.exists()


def test_eval_predict_export_refuse_it(last: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil, marker = _evil(last, tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="Python object `exec`"):
        evaluate(_compose("eval", [f"ckpt_path={evil}", "device=cpu"]))
    with pytest.raises(UnsafeCheckpointError, match="Python object `exec`"):
        predict(_compose("predict", [f"ckpt_path={evil}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(evil), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and "--trust-checkpoint" in err
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.onnx").exists()


def test_cli_train_refuses_it_with_one_line(last: Path, run: Path, tmp_path: Path) -> None:
    """Through Lightning's own loading (`trainer.fit(ckpt_path=...)`, i.e. SafeCheckpointIO)."""
    evil, marker = _evil(last, tmp_path)
    args = [*tiny_overrides(run.parent), *tiny_model_overrides(), f"hydra.run.dir={tmp_path / 'resumed'}",
            f"ckpt_path={evil}"]
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    _one_error_line(proc, str(evil), "`exec`", "trust_checkpoint=true")
    assert not marker.exists(), "the payload ran"


def test_cli_eval_refuses_it_with_one_line(last: Path, tmp_path: Path) -> None:
    evil, marker = _evil(last, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.eval", f"ckpt_path={evil}", "device=cpu"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    _one_error_line(proc, str(evil), "`exec`")
    assert not marker.exists(), "the payload ran"


def test_safe_checkpoint_io_is_strict_unless_trusted(last: Path, tmp_path: Path) -> None:
    evil, marker = _evil(last, tmp_path)
    with pytest.raises(UnsafeCheckpointError):
        checkpoint_io.SafeCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()
    assert "state_dict" in checkpoint_io.SafeCheckpointIO(trust=True).load_checkpoint(evil)


# ---- a stored config is data: no shape of payload runs, in either subtree, through any entry point ----------
def _touch(marker: Path) -> dict[str, Any]:
    """A config node that Hydra instantiates without complaint and that creates `marker` (a live payload)."""
    return {"_target_": "pathlib.Path.touch", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}]}


def _interpolation(marker: Path) -> str:
    return ("${oc.create:{_target_: pathlib.Path.touch, _args_: [{_target_: pathlib.Path, _args_: ['"
            f"{marker}']}}]}}}}")


SHAPES = {
    "dict": lambda m: {"extra": _touch(m)},
    "list": lambda m: {"extra": [_touch(m)]},
    "tuple": lambda m: {"extra": (_touch(m),)},
    "interpolation": lambda m: {"extra": _interpolation(m)},
    "nested": lambda m: {"extra": {"deeper": [{"deepest": (_touch(m),)}]}},
    "in_a_part": lambda m: {"attention": {"extra": (_touch(m),)}},  # inside an allowed class's node
}


def _hostile(last: Path, tmp_path: Path, where: str, shape: str) -> tuple[Path, Path]:
    """(a copy of a real checkpoint whose qin_config `where` subtree carries the payload `shape`, its marker)."""
    marker = tmp_path / f"PWNED_{where}_{shape}"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    node = ckpt["qin_config"]["model"]["net"] if where == "model.net" else ckpt["qin_config"]["data"]
    for key, value in SHAPES[shape](marker).items():
        if key == "attention" and where == "data":
            node["synthetic"]["extra"] = value["extra"]
        elif key == "attention":
            node["attention"].update(value)
        else:
            node[key] = value
    path = tmp_path / f"hostile_{where}_{shape}.ckpt"
    torch.save(ckpt, path)
    return path, marker


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("where", ["model.net", "data"])
def test_a_stored_config_payload_runs_nowhere(last: Path, tmp_path: Path, where: str, shape: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every payload shape is live (the trusted control runs it), and refused by eval, predict and export."""
    path, marker = _hostile(last, tmp_path, where, shape)
    with pytest.raises(Exception):  # the control: trusted loading instantiates the stored config with Hydra
        load_for_inference(path, None, "validate", trust_checkpoint=True)
    assert marker.exists(), "the payload is not live: this test could not fail"
    marker.unlink()

    def refused(run: Any) -> str:
        with pytest.raises(QinError) as info:
            run()
        message = str(info.value)
        assert str(path) in message and "\n" not in message and "trust_checkpoint=true" in message.replace(
            "--trust-checkpoint", "trust_checkpoint=true"), message
        return message

    message = refused(lambda: evaluate(_compose("eval", [f"ckpt_path={path}", "device=cpu"])))
    assert f"qin_config {where}" in message, message
    refused(lambda: predict(_compose("predict", [f"ckpt_path={path}", f"output={tmp_path / 'p.csv'}",
                                                 "device=cpu"])))
    refused(lambda: export_checkpoint(path, tmp_path / "m.onnx"))
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one line, exit 2
        export_main([str(path), "--out", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("error: ") == 1
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("target", ["builtins.exec", "qin_lightning.models.items.Tensor", 7, None,
                                    "qin_lightning.training.module.CTRModule", "qin_lightning.models.qin.QIN.forward"])
def test_only_our_listed_classes_may_be_named(last: Path, tmp_path: Path, target: Any) -> None:
    """A _target_ that is not the exact name of an allowed class (any type: a number is one line, not a
    TypeError) is refused naming the key, what was expected and what was found."""
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["qin_config"]["model"]["net"]["attention"]["_target_"] = target
    path = tmp_path / "other_target.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(StoredConfigError) as info:
        load_network(path)
    message = str(info.value)
    assert f"qin_config model.net.attention._target_: expected one of [" in message and repr(target) in message


@pytest.mark.parametrize("key", ["_args_", "_call_", "_convert_", "_recursive_", "_partial_"])
def test_hydra_instructions_are_refused(last: Path, tmp_path: Path, key: str) -> None:
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["qin_config"]["model"]["net"][key] = [1] if key == "_args_" else True
    path = tmp_path / "instruction.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(StoredConfigError, match=rf"qin_config model\.net\.{key}"):
        load_network(path)


def test_environment_and_hydra_interpolations_are_never_resolved(last: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`${oc.env:...}` and `${hydra:...}` stay unresolved: refused, and their values appear in no message."""
    monkeypatch.setenv("QIN_SECRET", "s3cr3t-value")
    for value in ("${oc.env:QIN_SECRET}", "${hydra:runtime.cwd}"):
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        ckpt["qin_config"]["experiment_name"] = value
        path = tmp_path / "interpolation.ckpt"
        torch.save(ckpt, path)
        with pytest.raises(StoredConfigError) as info:
            load_network(path)
        assert "qin_config experiment_name: expected a plain string, got an interpolation" in str(info.value)
        assert "s3cr3t-value" not in str(info.value) and str(Path.cwd()) not in str(info.value)


def test_sizes_in_the_stored_network_config_are_checked_before_allocation(last: Path, tmp_path: Path) -> None:
    """A stored width beyond every stored tensor is refused before the network is built; one within that
    bound is built on the meta device first, so a mismatch costs no memory."""
    import tracemalloc

    for key, value, expected in (("embedding_dim", 10**9, "an integer of at most"),
                                 ("embedding_dim", 16, "expected shape"),
                                 ("embedding_dim", 8.0, "expected an integer, got float 8.0")):
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        ckpt["qin_config"]["model"]["net"][key] = value
        path = tmp_path / "sizes.ckpt"
        torch.save(ckpt, path)
        tracemalloc.start()
        with pytest.raises(QinError, match=expected):
            load_network(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 20 * 2**20, f"{key}={value}: {peak / 2**20:.1f} MiB"


def test_a_huge_synthetic_dataset_in_a_stored_config_is_refused_before_generation(last: Path, tmp_path: Path) -> None:
    """`data.synthetic.train_rows=10**10` (as an int; 1e10 as a float is refused by type) would make eval
    generate until the machine gives out; it is refused with one line, nothing generated."""
    for value, expected in ((10**10, "expected a dataset that fits in memory"),
                            (1e10, "expected an integer, got float 10000000000.0")):
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        ckpt["qin_config"]["data"]["synthetic"]["train_rows"] = value
        ckpt["qin_config"]["data"]["root"] = str(tmp_path / "generated")
        path = tmp_path / "huge.ckpt"
        torch.save(ckpt, path)
        with pytest.raises(QinError, match=expected):
            evaluate(_compose("eval", [f"ckpt_path={path}", "device=cpu"]))
        assert not (tmp_path / "generated").exists()


def test_a_resumed_run_never_carries_a_stored_config_forward(last: Path, run: Path, tmp_path: Path) -> None:
    """Resuming from a checkpoint whose qin_config carries payloads (both subtrees, tuple and interpolation
    shapes) runs nothing, and the new run's checkpoints hold its own config: loading them runs nothing either."""
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    marker = tmp_path / "PWNED_resume"
    ckpt["qin_config"]["model"]["net"]["extra"] = (_touch(marker),)
    ckpt["qin_config"]["data"]["extra"] = _interpolation(marker)
    hostile = tmp_path / "hostile_resume.ckpt"
    torch.save(ckpt, hostile)
    run_dir = tmp_path / "resumed"
    train(compose_train(tiny_overrides(run.parent) + tiny_model_overrides() + ["trainer.max_epochs=3",
                                                                               f"ckpt_path={hostile}"], run_dir))
    written = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert written["epoch"] == 2, "not resumed"
    assert "extra" not in written["qin_config"]["model"]["net"] and "extra" not in written["qin_config"]["data"]
    for trust in (False, True):  # even a trusted load of the new file finds nothing to run
        load_for_inference(run_dir / "checkpoints" / "last.ckpt", {"root": str(run.parent / "cache" / "synthetic")},
                           "validate", trust_checkpoint=trust)
    assert not marker.exists(), "the payload ran"


# ---- property: any stored config either builds exactly our classes or is one line; nothing ever runs ---------
KEYS = ["_target_", "_args_", "_partial_", "_recursive_", "_convert_", "_call_", "extra", "activation",
        "embedding_dim", "num_layers", "synthetic", "source", "train_rows", "attention", "interaction", "fast", "root"]
TARGETS = [*NETWORKS, *NETWORK_PARTS, *DATA_MODULES, *DATA_PARTS, "pathlib.Path.touch", "builtins.exec",
           "qin_lightning.training.module.CTRModule", "sympy.sympify"]


def _stored_values(marker: Path) -> st.SearchStrategy[Any]:
    """Plain and hostile values: scalars, interpolations, payloads, class nodes, tuples, nested containers."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True), st.text(max_size=6),
        st.sampled_from(["${oc.env:HOME}", "${hydra:runtime.cwd}", "a ${b}", "relu", "softmax", "mean"]),
        st.just(_touch(marker)), st.just(_interpolation(marker)),
        st.sampled_from(TARGETS).map(lambda target: {"_target_": target}),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    ), max_leaves=6)


def _dicts_in(node: Any) -> list[dict[str, Any]]:
    found = [node] if isinstance(node, dict) else []
    for value in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else []):
        found += _dicts_in(value)
    return found


def test_property_a_stored_config_builds_our_classes_or_is_one_line(last: Path,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("property")
    marker = tmp / "PWNED"
    original = torch.load(last, map_location="cpu", weights_only=True)
    outcomes: list[str] = []

    hostile = st.tuples(st.booleans(), st.integers(0, 50), st.sampled_from(KEYS), _stored_values(marker))
    benign = st.one_of(  # valid in every dict of their subtree: some generated configs must build
        st.tuples(st.just(True), st.integers(0, 50), st.just("fast"), st.booleans()),
        st.tuples(st.just(False), st.integers(0, 50), st.just("seed"), st.integers(0, 10**6)),
    )

    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(st.lists(st.one_of(hostile, benign), max_size=3))
    def check(edits: list[tuple[bool, int, str, Any]]) -> None:
        ckpt = copy.deepcopy(original)
        for in_net, pick, key, value in edits:
            subtree = ckpt["qin_config"]["model"]["net"] if in_net else ckpt["qin_config"]["data"]
            dicts = _dicts_in(subtree)
            dicts[pick % len(dicts)][key] = value
        path = tmp / "generated.ckpt"
        torch.save(ckpt, path)
        try:
            net, cfg = load_network(path)
            dm = stored_datamodule(data_config(cfg, None, path), path, "trust_checkpoint=true")
        except QinError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            outcomes.append("refused")
        else:
            outcomes.append("built")
            assert type(net) in NETWORKS.values() and type(dm) is MMCTRDataModule
            assert dm.synthetic is None or type(dm.synthetic) is SyntheticConfig
            assert dm.source is None or type(dm.source) is MovieLensSource
        assert not marker.exists(), f"the payload ran: {edits}"

    check()
    assert outcomes.count("built") >= 5 and outcomes.count("refused") >= 5, outcomes  # both sides exercised


def test_a_moved_data_class_still_loads(last: Path, tmp_path: Path) -> None:
    """A MovieLens checkpoint written before data/movielens.py became a package names the old source class."""
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["qin_config"]["data"]["source"] = {"_target_": "qin_lightning.data.movielens.MovieLensSource", "src": "x"}
    path = tmp_path / "old_movielens.ckpt"
    torch.save(ckpt, path)
    _, cfg = load_network(path)
    assert cfg["data"]["source"]["_target_"] == "qin_lightning.data.movielens.source.MovieLensSource"

# ---- broken and foreign checkpoints: one clear line ------------------------------------------------------
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "foreign", "not_lightning", "no_qin_config"])
def test_broken_or_foreign_checkpoint_is_one_clear_line(last: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.ckpt"
    expected = {
        "truncated": "truncated or corrupt checkpoint",
        "garbage": "not a PyTorch checkpoint",
        "empty": "empty file",
        "foreign": "not a Lightning checkpoint",
        "not_lightning": "not a Lightning checkpoint",
        "no_qin_config": "has no 'qin_config'",
    }[kind]
    if kind == "truncated":
        path.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif kind == "garbage":
        path.write_text("model weights, trust me\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":  # another project's file: a bare state dict
        torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    elif kind == "not_lightning":
        torch.save([torch.zeros(2)], path)
    else:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        del ckpt["qin_config"]
        torch.save(ckpt, path)
    with pytest.raises(QinError) as info:
        load_network(path)
    assert expected in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_cli_train_resume_from_truncated_checkpoint_is_one_line(last: Path, run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(last.read_bytes()[:4096])
    args = [*tiny_overrides(run.parent), *tiny_model_overrides(), f"hydra.run.dir={tmp_path / 'r'}",
            f"ckpt_path={broken}"]
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.train", *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    _one_error_line(proc, str(broken), "truncated or corrupt checkpoint")


# ---- vocabulary sizes and memory before allocation -------------------------------------------------------
def _with_stray_tag(data_dir: Path, tmp_path: Path, row: int, value: int) -> Path:
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    path = root / layout.ITEM_INFO_FILE
    table = pq.read_table(path)
    tags = np.array(table.column(layout.ITEM_TAGS).to_pylist(), dtype=np.int64)
    mm = np.array(table.column(layout.ITEM_EMB).to_pylist(), dtype=np.float32)
    tags[row, -1] = value
    pq.write_table(layout.item_info_table(tags, mm), path)
    return root


def _data_dir(run: Path) -> Path:
    return Path(json.loads((run / "results.json").read_text())["data_dir"])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux only: VmHWM")
def test_a_stray_huge_tag_id_is_refused_before_allocation(run: Path, tmp_path: Path) -> None:
    """One stray id (10,000,000 among 20 tags) is refused before the 10M-row tag table exists: the refused read
    grows the peak RSS by < 32 MiB, while the opt-out (data.num_tags given) that builds the network allocates
    the table (>= 256 MiB more), which shows the measurement can see it. Measured in a fresh process
    (VmHWM, the peak RSS of its own address space: ru_maxrss carries the parent's peak across exec)."""
    root = _with_stray_tag(_data_dir(run), tmp_path, row=7, value=10_000_000)
    measure = f"""
import torch
from pathlib import Path
from qin_lightning.data import reader
from qin_lightning.errors import DataValidationError
from qin_lightning.models.qin import QIN
peak = lambda: int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) // 1024  # MiB
before = peak()
try:
    reader.read_item_info(Path("{root}"), emb_dim=None)
except DataValidationError as err:
    print(err)
refused = peak()
items = reader.read_item_info(Path("{root}"), emb_dim=None, num_tags=10_000_001)
net = QIN(torch.from_numpy(items.tags), torch.from_numpy(items.mm), items.num_tags, embedding_dim=8,
          mm_projection_dim=8)
print(refused - before, peak() - refused)
"""
    out = subprocess.run([sys.executable, "-c", measure], env=_env(), check=True, timeout=300, capture_output=True,
                         text=True).stdout.splitlines()
    for needle in ("item_info.parquet", "column 'item_tags'", "row 7", "10000000", "data.num_tags=10000001"):
        assert needle in out[0], out
    refused_growth, opt_out_growth = map(int, out[1].split())
    assert refused_growth < 32, f"the refused read grew the peak by {refused_growth} MiB"
    assert opt_out_growth >= 256, f"the opt-out grew the peak by only {opt_out_growth} MiB: nothing measured"


def test_the_sparse_tag_rule() -> None:
    """Largest id + 1 <= max(1000, 100 x distinct ids) is inferred silently; one more is an error."""
    path = Path("item_info.parquet")
    table = np.array([[0, 0], [1, 2], [3, 0], [4, 999]])  # 6 distinct ids (0 included): limit max(1000, 600)
    assert reader.inferred_tag_vocabulary(path, table) == 1000
    table[3, 1] = 1000
    with pytest.raises(DataValidationError, match=r"row 3 contains tag id 1000, but only 6 distinct"):
        reader.inferred_tag_vocabulary(path, table)
    dense = np.arange(40_000).reshape(-1, 4)  # many tags: the limit grows with them
    assert reader.inferred_tag_vocabulary(path, dense) == 40_000


def test_training_memory_estimate_is_exact_and_checked(run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_train(tiny_overrides(run.parent) + tiny_model_overrides(), tmp_path / "run")
    dm = build_datamodule(cfg)
    net = build_module(cfg, dm).net
    estimate = memory.estimate_training_memory(cfg.model.net, dm.item_tags, dm.item_mm, dm.num_tags)
    assert estimate.parameters == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert estimate.parameter_bytes == 16 * estimate.parameters
    assert estimate.buffer_bytes == sum(b.numel() * b.element_size() for b in net.buffers())

    monkeypatch.setattr(memory, "cpu_available", lambda: estimate.parameter_bytes - 1)
    with pytest.raises(ConfigError, match=rf"the model has {estimate.parameters:,} parameters.*needs at least"):
        build_module(cfg, dm)
    cfg.memory_check = False
    build_module(cfg, dm)


def test_counting_a_huge_network_stops_at_the_memory_there_is(run: Path, tmp_path: Path) -> None:
    """num_layers=3e6 built every layer on the meta device for minutes before any check: the count stops at the
    first tensor beyond what the memory could hold."""
    cfg = compose_train(tiny_overrides(run.parent) + tiny_model_overrides() + [
        "model.net.interaction.num_layers=3000000", "model.net.embedding_dim=512"], tmp_path / "run")
    tags, mm = torch.zeros(60, 5, dtype=torch.long), torch.zeros(60, 128)
    with pytest.raises(ConfigError, match=r"model.net: building it on the meta device.*got more \(stopped after"):
        memory.estimate_training_memory(cfg.model.net, tags, mm, 20)


def test_available_memory_readers(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable: 42 kB\n")
    assert machine.meminfo_available(meminfo) == 42 * 1024
    assert machine.meminfo_available(tmp_path / "missing") is None


def test_cgroup_limits_bound_the_available_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    monkeypatch.setattr(machine, "CGROUP_V2", tmp_path)
    assert machine.cgroup_available() == 600_000
    assert machine.cpu_available() == 600_000  # the smallest bound wins over MemAvailable
    (tmp_path / "memory.max").write_text("max\n")  # no limit: MemAvailable (or sysconf) decides
    monkeypatch.setattr(machine, "CGROUP_V1", tmp_path / "none")
    assert machine.cgroup_available() is None


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="Linux only: /proc/meminfo")
def test_available_memory_is_read_on_this_machine() -> None:
    """On Linux a number is always found, positive and at most the machine's RAM (None would switch every
    memory check off silently)."""
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    available = machine.cpu_available()
    assert available is not None and 0 < available <= total


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_check_on_a_gpu() -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    too_big = memory.TrainingMemory(parameters=total // 16 + 1, parameter_bytes=total + 16, buffer_bytes=0)
    with pytest.raises(ConfigError, match="on the GPU"):
        memory.check_training_memory(too_big, on_gpu=True)
    memory.check_training_memory(memory.TrainingMemory(1000, 16_000, 4_000), on_gpu=True)


# ---- SIGKILL at any moment: the previous complete checkpoint survives, ckpt_path=last finishes ------------
KILL_RUN = ["trainer.max_epochs=2"]  # as the `run` fixture: the resumed run must reproduce its history


def _resume_in_process(run: Path, run_dir: Path) -> dict[str, Any]:
    """`ckpt_path=last` in `run_dir`; the result is complete and equals the uninterrupted `run` (exact resume)."""
    cfg = compose_train(tiny_overrides(run.parent) + tiny_model_overrides() + KILL_RUN + ["ckpt_path=last"], run_dir)
    train(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs_trained"] == 2, results
    reference = json.loads((run / "results.json").read_text())
    assert results["val_history"] == reference["val_history"]
    return results


def _train_subprocess(cache: Path, run_dir: Path, extra: list[str], script: list[str] | None = None,
                      **popen: Any) -> subprocess.Popen[str]:
    args = [*tiny_overrides(cache), *tiny_model_overrides(), *KILL_RUN, f"hydra.run.dir={run_dir}", *extra]
    command = script or ["-m", "qin_lightning.train"]
    return subprocess.Popen([sys.executable, *command, *args], cwd=run_dir.parent, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_sigkill_while_writing_last_ckpt_keeps_the_previous_one(run: Path, tmp_path: Path) -> None:
    """SIGKILL halfway through the second write of last.ckpt (end of epoch 1): the file on disk is still the
    complete epoch-0 checkpoint, and `ckpt_path=last` resumes from it and finishes."""
    run_dir = tmp_path / "killed"
    proc = _train_subprocess(run.parent, run_dir, [], script=[str(TESTS / "sigkill_helpers.py"), "last.ckpt", "2"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    survivor = read_checkpoint(last)  # strict, complete
    assert survivor["epoch"] == 0 and len(survivor["qin_val_history"]) == 1
    assert list((run_dir / "checkpoints").glob(".last.ckpt.*.tmp")), "the kill should hit a half-written temp file"
    _resume_in_process(run, run_dir)
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "the next write removes the killed one's temp file"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "val"])
def test_sigkill_during_a_step_or_validation_then_resume(run: Path, tmp_path: Path, stage: str) -> None:
    """SIGKILL (from the process itself, at a set point) during epoch 1's 3rd training batch or 1st validation
    batch: last.ckpt is epoch 0's; `ckpt_path=last` finishes the run."""
    run_dir = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=sigkill_helpers.KillAt", "+callbacks.kill.epoch=1",
            f"+callbacks.kill.batch={2 if stage == 'train' else 0}", f"+callbacks.kill.stage={stage}"]
    proc = _train_subprocess(run.parent, run_dir, kill)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0
    _resume_in_process(run, run_dir)


@pytest.mark.slow
def test_kill_9_from_outside_mid_epoch_then_resume(run: Path, tmp_path: Path) -> None:
    """`kill -9` sent by another process in the middle of epoch 1, then `ckpt_path=last` to the end."""
    run_dir = tmp_path / "killed"
    progress = tmp_path / "progress.json"
    slow = ["+callbacks.progress._target_=sigkill_helpers.Progress", f"+callbacks.progress.path={progress}",
            "+callbacks.progress.sleep=0.3"]
    proc = _train_subprocess(run.parent, run_dir, slow)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads(progress.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {"epoch": -1, "batch": -1}
        if state["epoch"] == 1 and state["batch"] == 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the kill: " + proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0
    _resume_in_process(run, run_dir)


# ---- a full disk: clear error, previous file intact ------------------------------------------------------
def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_predictions(last: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prediction.csv"
    out.write_text("ID,Task2\n0,0.5\n")  # the previous submission
    cfg = _compose("predict", [f"ckpt_path={last}", f"output={out}", "overwrite=true", "device=cpu"])
    monkeypatch.setattr(np, "savetxt", _disk_full)
    with pytest.raises(FileWriteError) as info:
        predict(cfg)
    message = str(info.value)
    assert str(out) in message and "No space left on device" in message and "previous file is unchanged" in message
    assert out.read_text() == "ID,Task2\n0,0.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["prediction.csv"], "temporary file left behind"


def test_disk_full_while_writing_a_checkpoint(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second write of last.ckpt fails with ENOSPC: one clear error, the epoch-0 last.ckpt intact."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if obj.get("epoch") == 1:
            f.write(b"partial")
            _disk_full()
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    run_dir = tmp_path / "run"
    cfg = compose_train(tiny_overrides(run.parent) + tiny_model_overrides() + KILL_RUN, run_dir)
    with pytest.raises(FileWriteError, match=r"\.ckpt: cannot write \(No space left on device\)"):
        train(cfg)
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_export_disk_full_keeps_the_previous_model(last: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous model")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(FileWriteError, match="No space left on device"):
        export_checkpoint(last, out, overwrite=True)
    assert out.read_bytes() == b"previous model"


def test_disk_full_while_converting_keeps_the_previous_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_movielens import make_source

    from qin_lightning.data.movielens import convert as ml

    src = make_source(tmp_path, "csv")
    out = tmp_path / "data" / "out"
    ml.convert_movielens(src, out, protocol="rating", encoder="hashing", cache_dir=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(ml.pq, "write_table", _disk_full)
    with pytest.raises(FileWriteError, match=r"out: cannot write the converted data \(No space left on device\); "
                                             "the previous folder is unchanged"):
        ml.convert_movielens(src, out, overwrite=True, encoder="hashing", cache_dir=None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["out"]  # no temporary folder left


def test_damaged_bytes_never_escape_as_a_traceback(last: Path, tmp_path: Path) -> None:
    """Random byte damage anywhere in a real checkpoint: it loads (damage in tensor data) or is one QinError."""
    data = bytearray(last.read_bytes())
    rng = np.random.default_rng(0)
    for i, position in enumerate(rng.integers(0, len(data), size=40)):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        path = tmp_path / f"damaged{i}.ckpt"
        path.write_bytes(bytes(damaged))
        try:
            load_network(path)
        except QinError as err:
            assert str(path) in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("max_len", [10**9, 0, 8.0, "8"])
def test_export_refuses_a_hostile_history_length(last: Path, tmp_path: Path, max_len: Any) -> None:
    """The stored data.max_len sizes the export's trace inputs: 10**9 would allocate 16 GB before anything."""
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["qin_config"]["data"]["max_len"] = max_len
    path = tmp_path / "max_len.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(QinError, match=rf"max_len.ckpt: qin_config data.max_len: expected an integer in 1..65,536, "
                                       rf"got {max_len!r}"):
        export_checkpoint(path, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("edit", [
    {"source": "not a source", "synthetic": None},  # AttributeError inside the data module
    {"num_workers": "x"},  # out of the data bounds
    {"synthetic": None, "source": {"_target_": "qin_lightning.data.movielens.source.MovieLensSource",
                                   "src": "x", "negatives": 0}},  # out of the source's bounds
    {"synthetic": {"_target_": "qin_lightning.data.synthetic.SyntheticConfig", "seed": -1}},  # ValueError
])
def test_values_our_classes_reject_are_one_line(last: Path, tmp_path: Path, edit: dict[str, Any]) -> None:
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["qin_config"]["data"].update(edit)
    path = tmp_path / "rejected.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(QinError) as info:
        load_for_inference(path, {"root": str(tmp_path / "data")}, "validate")
    assert str(info.value).startswith(f"{path}: qin_config data") and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("module", ["qin_lightning.eval", "qin_lightning.predict"])
def test_cli_eval_and_predict_refuse_a_config_payload_with_one_line(last: Path, tmp_path: Path, module: str) -> None:
    """The issue's report: the payload in the data config ran and the command exited 0."""
    path, marker = _hostile(last, tmp_path, "data", "tuple")
    output = [f"output={tmp_path / 'p.csv'}"] if module.endswith("predict") else []
    args = [f"ckpt_path={path}", "device=cpu", *output]
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    _one_error_line(proc, str(path), "qin_config data.extra", "got tuple")
    assert not marker.exists(), "the payload ran"


# ---- issue 39: real sizes, bounded data settings, the user's own paths -------------------------------------------
def _edited(last: Path, tmp_path: Path, edit: Any, name: str = "edited.ckpt") -> Path:
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    edit(ckpt)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def _one_line(run: Any, *needles: str) -> str:
    with pytest.raises(QinError) as info:
        run()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


@pytest.mark.parametrize("kind", ["expanded", "view", "shared"])
def test_a_tensor_must_own_exactly_its_bytes(last: Path, tmp_path: Path, kind: str) -> None:
    """torch.zeros(1).expand(N, D) takes 4 bytes on disk and declared any shape (a 949 KB checkpoint peaked at
    1.4 GB): refused as it is read, as are views of a larger storage and storage shared by two weights."""
    def edit(ckpt: dict[str, Any]) -> None:
        state = ckpt["state_dict"]
        mm = state["net.items.item_mm"]
        if kind == "expanded":
            state["net.items.item_mm"] = torch.zeros(1).expand(mm.shape[0], 10**9)
        elif kind == "view":
            state["net.items.item_mm"] = torch.zeros(mm.numel() + 1)[1:].view(mm.shape)
        else:
            state["net.items.extra"] = state["net.items.item_mm"]

    path = _edited(last, tmp_path, edit)
    _one_line(lambda: load_network(path), str(path), "state_dict.net.items.", "owns exactly its bytes")
    _one_line(lambda: export_checkpoint(path, tmp_path / "m.onnx"), "owns exactly its bytes")
    load_network(last)  # Lightning's own checkpoints share scalars only: they load


def test_a_config_declaring_millions_of_layers_stops_at_once(last: Path, tmp_path: Path) -> None:
    """One junk tensor raised the integer bound; num_layers=3e6 then built for minutes on the meta device."""
    def edit(ckpt: dict[str, Any]) -> None:
        ckpt["state_dict"]["net.junk"] = torch.zeros(3_000_001, dtype=torch.int8)
        ckpt["qin_config"]["model"]["net"]["interaction"]["num_layers"] = 3_000_000

    path = _edited(last, tmp_path, edit)
    built = []
    original = torch.nn.Linear.__init__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Linear, "__init__", lambda self, *a, **k: built.append(1) or original(self, *a, **k))
        _one_line(lambda: load_network(path), str(path), "qin_config model.net", "expected at most")
    assert len(built) < 1000  # stopped within the budget, not after 3 million layers


@pytest.mark.parametrize("kind", ["tags", "levels", "nan", "inf"])
def test_tables_cover_the_data_and_weights_are_finite(last: Path, tmp_path: Path, kind: str) -> None:
    """A tag table with fewer rows than the tag ids, level tables with fewer rows than the levels (IndexError in
    eval, predict, export) and NaN / inf weights (an ONNX file predicting NaN): refused at load and at export."""
    def edit(ckpt: dict[str, Any]) -> None:
        state = ckpt["state_dict"]
        if kind == "tags":
            state["net.items.tag_embedding.weight"] = state["net.items.tag_embedding.weight"][:3].clone()
        elif kind == "levels":
            state["net.views_embedding.weight"] = state["net.views_embedding.weight"][:5].clone()
        else:
            weight = state["net.likes_embedding.weight"].clone()
            weight[3, 1] = float(kind)
            state["net.likes_embedding.weight"] = weight

    path = _edited(last, tmp_path, edit)
    needle = {"tags": "holds tag id", "levels": "expected at least 11 rows", "nan": "expected finite weights",
              "inf": "expected finite weights"}[kind]
    _one_line(lambda: load_network(path), str(path), needle)
    _one_line(lambda: load_network(path, trust=True), str(path), needle)
    _one_line(lambda: export_checkpoint(path, tmp_path / "m.onnx"), needle)
    assert not (tmp_path / "m.onnx").exists()


SYNTHETIC = "qin_lightning.data.synthetic.SyntheticConfig"
SOURCE = "qin_lightning.data.movielens.source.MovieLensSource"


@pytest.mark.parametrize("where,value,needle", [
    ("max_len", 10**7, "data.max_len: expected an integer in 1..65,536"),
    ("max_len", 10**13, "data.max_len"),
    ("batch_size", 0, "data.batch_size"),
    ("batch_size", -1, "data.batch_size"),
    ("eval_batch_size", "x", "data.eval_batch_size"),
    ("synthetic.num_topics", 4 * 10**8, "400,000,000 topics needing at least"),
    ("synthetic.mean_history_len", float("inf"), "mean_history_len=inf"),
    ("synthetic.seed", -5, "seed=-5"),
    ("synthetic.affinity_weight", 1e300, "affinity_weight"),
    ("source.negatives", 10**6, "data.source.negatives=1000000"),
    ("source.seed", -5, "data.source.seed=-5"),
    ("source.max_len", 0, "data.source.max_len=0"),
])
def test_stored_data_settings_are_bounded_before_anything_is_allocated(last: Path, tmp_path: Path, where: str,
                                                                      value: Any, needle: str) -> None:
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    data = ckpt["qin_config"]["data"]
    if where.startswith("source."):
        data["synthetic"], data["source"] = None, {"_target_": SOURCE, "src": "ml.zip", "encoder": "hashing"}
    node, key = (data, where) if "." not in where else (data[where.split(".")[0]], where.split(".")[1])
    node[key] = value
    if key == "num_topics":
        node["num_tags"] = value + 1
    path = tmp_path / "bounded.ckpt"
    _one_line(lambda: stored_datamodule(data_config(ckpt["qin_config"], {"root": str(tmp_path)}, path), path,
                                              "trust_checkpoint=true"), str(path), "qin_config data", needle)


def test_a_checkpoint_never_decides_where_data_is_read_or_written(last: Path, run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's item 10: eval of someone else's checkpoint created folders and .npy files where its stored
    data.root / cache_dir pointed and converted a release it named. Paths now come from the user only."""
    victim = tmp_path / "victim"
    (victim / "root").mkdir(parents=True)

    def synthetic(ckpt: dict[str, Any]) -> None:
        ckpt["qin_config"]["data"]["root"] = str(victim / "root")

    def movielens(ckpt: dict[str, Any]) -> None:
        data = ckpt["qin_config"]["data"]
        data["root"], data["synthetic"] = str(victim / "root"), None
        data["source"] = {"_target_": SOURCE, "src": str(victim / "ml.zip"), "encoder": "hashing",
                          "cache_dir": str(victim / "cache")}

    monkeypatch.setenv("QIN_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("QIN_DATA_DIR", str(tmp_path / "mine-data"))
    monkeypatch.setenv("QIN_MOVIELENS_SRC", str(tmp_path / "my-release.zip"))
    path = _edited(last, tmp_path, synthetic, "synthetic.ckpt")
    cfg = torch.load(path, map_location="cpu", weights_only=True)["qin_config"]
    assert data_config(cfg, None, path)["root"] == str(tmp_path / "mine" / "synthetic")  # the user's default
    given = str(run.parent / "cache" / "synthetic")
    assert data_config(cfg, {"root": given}, path)["root"] == given
    result = evaluate(_compose("eval", [f"ckpt_path={path}", "device=cpu", f"data.root={given}",
                                        f"output={tmp_path / 'e.json'}"]))
    assert result["data_dir"].startswith(given)

    path = _edited(last, tmp_path, movielens, "movielens.ckpt")
    cfg = torch.load(path, map_location="cpu", weights_only=True)["qin_config"]
    own = data_config(cfg, None, path)
    assert own["root"] == str(tmp_path / "mine-data" / "movielens")
    assert own["source"]["src"] == str(tmp_path / "my-release.zip")
    assert own["source"]["cache_dir"] == str(tmp_path / "mine" / "embeddings")
    given_root = data_config(cfg, {"root": str(tmp_path / "r"), "source": {"src": "x.zip"}}, path)
    assert given_root["source"] == {**cfg["data"]["source"], "src": "x.zip", "cache_dir": str(tmp_path / "r" /
                                                                                           "embeddings")}
    _one_line(lambda: evaluate(_compose("eval", [f"ckpt_path={path}", "device=cpu"])), "my-release.zip")
    assert [p for p in victim.rglob("*")] == [victim / "root"], "wrote where the checkpoint said"
    folder_kind = _edited(last, tmp_path, lambda c: c["qin_config"]["data"].update(synthetic=None), "folder.ckpt")
    _one_line(lambda: data_config(torch.load(folder_kind, weights_only=True)["qin_config"], None, folder_kind),
              "data.root: required")


def test_a_split_with_one_class_is_an_error_not_auc_zero(run: Path, tmp_path: Path) -> None:
    """The issue's item 9: a split without positives reported auc=0.000000 with exit 0."""
    data_dir = _data_dir(run)
    root = tmp_path / "root"
    shutil.copytree(data_dir, root / data_dir.name)
    valid = layout.split_path(root / data_dir.name, layout.VALID)
    table = pq.read_table(valid)
    table = table.set_column(table.column_names.index(layout.LABEL), layout.LABEL,
                             pa.array(np.zeros(table.num_rows, dtype=table.schema.field(layout.LABEL).type.to_pandas_dtype())))
    pq.write_table(table, valid)
    last = run / "checkpoints" / "last.ckpt"
    _one_line(lambda: evaluate(_compose("eval", [f"ckpt_path={last}", "device=cpu", f"data.root={root}",
                                                 f"output={tmp_path / 'e.json'}"])),
              "holds only negatives", "AUC is undefined")
    assert not (tmp_path / "e.json").exists()


def test_resume_checks_the_validation_history_it_carries_forward(last: Path) -> None:
    """The issue's item 7: a forged qin_val_history claiming AUC 0.9991 became best_val_auc."""
    from qin_lightning.training.resume import check_val_history

    honest = torch.load(last, map_location="cpu", weights_only=True)
    check_val_history(honest, str(last))
    cases = {
        "its best val/auc is 0.999100": lambda h: h[0].update(auc=0.9991),
        "expected 0..1": lambda h: h[0].update(auc=7.0),
        "without epoch and auc": lambda h: h.append({"x": 1}),
        "expected a finite number": lambda h: h[0].update(logloss=float("nan")),
        "after epoch": lambda h: h.append(dict(h[0])),
        "after the checkpoint's epoch": lambda h: h.append({**h[-1], "epoch": 99}),
    }
    for needle, forge in cases.items():
        ckpt = copy.deepcopy(honest)
        forge(ckpt["qin_val_history"])
        _one_line(lambda: check_val_history(ckpt, str(last)), str(last), "qin_val_history", needle)
    ckpt = copy.deepcopy(honest)
    ckpt["qin_val_history"] = "junk"
    _one_line(lambda: check_val_history(ckpt, str(last)), "got str")


def test_generating_a_synthetic_set_checks_memory_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own data.synthetic.num_topics=4e8 ended in numpy's _ArrayMemoryError: one line, nothing made."""
    from qin_lightning.data import synthetic

    monkeypatch.setattr(synthetic, "cpu_available", lambda: 1000)
    with pytest.raises(ConfigError, match=r"data.synthetic: expected a dataset that fits in memory, got 480 rows"):
        synthetic.generate(SyntheticConfig.tiny(), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
