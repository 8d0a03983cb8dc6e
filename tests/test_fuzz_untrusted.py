"""Fuzzing the untrusted inputs (docs/security.md): a real checkpoint and a real data folder, mutated by hypothesis
(tensor shapes, strides, dtypes and values, stored sizes and paths; row counts, list lengths, values and metadata of
the parquet files), are evaluated under an address-space limit (``resource.setrlimit(RLIMIT_AS)``). Every case
either works or ends in one line (a ``QinError``), never a traceback, a ``MemoryError`` or a crash, and nothing is
written outside the run's own folders (the mutated configs point at a folder that must stay empty).

The cases run in one child process (the limit must not bind pytest itself): this file is also its script,
``python tests/test_fuzz_untrusted.py <work folder> <examples> <address-space bytes over the imports>``.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

HEADROOM = 2 * 2**30  # address space the child may map beyond what its imports mapped
SPLITS = ("valid", "test")


# ---- the real files the cases start from ------------------------------------------------------------------------
def make_base(work: Path) -> None:
    """A tiny QIN checkpoint (built, not trained: the files are what matter) and its synthetic data folder."""
    from conftest import compose_train, tiny_model_overrides, tiny_overrides
    from omegaconf import OmegaConf

    from qin_lightning.training.build import build_datamodule, build_module

    cfg = compose_train(tiny_overrides(work / "base") + tiny_model_overrides(), work / "base" / "run")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    ckpt = {"state_dict": module.state_dict(), "qin_config": OmegaConf.to_container(cfg, resolve=True),
            "epoch": 0, "global_step": 0}
    torch.save(ckpt, work / "base.ckpt")
    (work / "base_data.txt").write_text(str(dm.data_dir))


# ---- mutations (drawn by hypothesis in the child) ---------------------------------------------------------------
def mutate_checkpoint(ckpt: dict[str, Any], draw: Any, st: Any, outside: Path) -> str:
    """One hostile change to a checkpoint dict (in place); returns what it did."""
    state = ckpt["state_dict"]
    key = draw(st.sampled_from(sorted(state)))
    kind = draw(st.sampled_from(["expand", "view", "dtype", "shape", "nonfinite", "int", "path", "data",
                                 "synthetic", "tags", "levels", "drop"]))
    tensor = state[key]
    if kind == "expand":
        width = draw(st.integers(1, 10**9))
        state[key] = torch.zeros(1, dtype=tensor.dtype).expand(max(1, tensor.shape[0] if tensor.dim() else 1), width)
    elif kind == "view":
        big = torch.zeros(tensor.numel() + draw(st.integers(1, 64)), dtype=tensor.dtype)
        state[key] = big[1 : 1 + tensor.numel()].view(tensor.shape)
    elif kind == "dtype":
        state[key] = tensor.to(draw(st.sampled_from([torch.int64, torch.int8, torch.float16, torch.bool,
                                                     torch.float64])))
    elif kind == "shape":
        dims = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
        state[key] = torch.zeros(dims, dtype=tensor.dtype)
    elif kind == "nonfinite" and tensor.is_floating_point() and tensor.numel():
        tensor = tensor.clone()
        tensor.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = draw(st.sampled_from([float("nan"),
                                                                                         float("inf")]))
        state[key] = tensor
    elif kind == "int":
        net = ckpt["qin_config"]["model"]["net"]
        ints = sorted(k for k, v in net.items() if type(v) is int)
        if ints:
            net[draw(st.sampled_from(ints))] = draw(st.one_of(st.integers(-5, 64), st.integers(10**6, 10**12)))
    elif kind == "path":
        data = ckpt["qin_config"]["data"]
        data["root"] = str(outside / "root")
        data["source"] = {"_target_": "qin_lightning.data.movielens.source.MovieLensSource",
                          "src": draw(st.sampled_from(["/", str(outside), str(outside / "ml.zip")])),
                          "cache_dir": str(outside / "cache"), "encoder": "hashing"}
        data["synthetic"] = None
    elif kind == "data":
        data = ckpt["qin_config"]["data"]
        name = draw(st.sampled_from(["max_len", "batch_size", "eval_batch_size", "num_workers", "seed", "num_tags"]))
        data[name] = draw(st.one_of(st.integers(-10, 10**13), st.floats(allow_nan=True), st.none(), st.text(max_size=3)))
    elif kind == "synthetic":
        synthetic = ckpt["qin_config"]["data"]["synthetic"]
        name = draw(st.sampled_from(sorted(k for k in synthetic if k not in ("_target_", "name"))))
        synthetic[name] = draw(st.one_of(st.integers(-5, 10**13), st.floats(allow_nan=True, allow_infinity=True)))
    elif kind == "tags":
        tags = state["net.items.item_tags"].clone()
        tags.view(-1)[draw(st.integers(0, tags.numel() - 1))] = draw(st.integers(-3, 10**6))
        state["net.items.item_tags"] = tags
        if draw(st.booleans()):
            table = state["net.items.tag_embedding.weight"]
            state["net.items.tag_embedding.weight"] = table[: draw(st.integers(0, table.shape[0]))].clone()
    elif kind == "levels":
        name = draw(st.sampled_from(["net.likes_embedding.weight", "net.views_embedding.weight"]))
        state[name] = state[name][: draw(st.integers(0, 10))].clone()
    elif kind == "drop":
        del state[key]
    return f"{kind} {key}"


def mutate_data(folder: Path, draw: Any, st: Any) -> str:
    """One hostile change to a copy of a data folder (in place); returns what it did."""
    name = draw(st.sampled_from(["valid.parquet", "test.parquet", "item_info.parquet"]))
    path = folder / name
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError):  # an earlier mutation already broke it
        return f"broken {name}"
    kind = draw(st.sampled_from(["rows", "list", "long_row", "value", "type", "metadata", "row_groups", "truncate",
                                 "one_class"]))
    column = draw(st.sampled_from(table.column_names))
    row_group_size = None
    if table.num_rows == 0 and kind in ("list", "long_row", "value"):
        kind = "rows"
    if kind == "rows":
        n = draw(st.integers(0, 2 * table.num_rows))
        table = table.take(np.arange(n) % table.num_rows) if table.num_rows else table
    elif kind in ("list", "long_row") and pa.types.is_list(table.schema.field(column).type):
        values = table.column(column).to_pylist()
        row = draw(st.integers(0, len(values) - 1))
        length = draw(st.integers(0, 64)) if kind == "list" else draw(st.integers(10**5, 5 * 10**6))
        item = values[row][0] if values[row] else 0
        values[row] = [item] * length
        table = table.set_column(table.column_names.index(column), column,
                                 pa.array(values, type=table.schema.field(column).type))
    elif kind == "value":
        values = table.column(column).to_pylist()
        row = draw(st.integers(0, len(values) - 1))
        bad = draw(st.sampled_from([-1, 2**31, 10**6, float("nan"), float("inf"), None]))
        try:
            values[row] = [bad] * len(values[row]) if isinstance(values[row], list) else bad
            array = pa.array(values, type=table.schema.field(column).type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            array = pa.array(values)
        table = table.set_column(table.column_names.index(column), column, array)
    elif kind == "type":
        table = table.set_column(table.column_names.index(column), column,
                                 pa.array([str(v)[:5] for v in table.column(column).to_pylist()]))
    elif kind == "metadata":
        table = table.replace_schema_metadata({b"pandas": draw(st.binary(max_size=40)),
                                               b"ARROW:schema": draw(st.binary(max_size=40))})
    elif kind == "row_groups":
        row_group_size = draw(st.integers(1, 64))
    elif kind == "one_class" and "label" in table.column_names:
        table = table.set_column(table.column_names.index("label"), "label",
                                 pa.array(np.full(table.num_rows, draw(st.sampled_from([0, 1])), dtype=np.int64)))
    pq.write_table(table, path, row_group_size=row_group_size)
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: draw(st.integers(0, len(data) - 1))])
    return f"{kind} {name}:{column}"


# ---- the child: every case works or is one line ------------------------------------------------------------------
def run_cases(work: Path, examples: int) -> None:
    import shutil

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from omegaconf import OmegaConf

    from qin_lightning.errors import QinError
    from qin_lightning.eval import evaluate

    base = torch.load(work / "base.ckpt", weights_only=True)
    data_dir = Path((work / "base_data.txt").read_text())
    outside = work / "outside"  # what hostile paths name: must stay empty
    counter = iter(range(10**9))
    outcomes: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=(Phase.generate,))  # no shrinking: a failure names its mutations
    @given(st.data())
    def case(data: Any) -> None:
        run = work / f"case{next(counter)}"
        run.mkdir()
        ckpt = copy.deepcopy(base)
        folder = run / "data"
        shutil.copytree(data_dir, folder)
        what = []
        for _ in range(data.draw(st.integers(1, 2))):
            if data.draw(st.booleans()):
                what.append(mutate_checkpoint(ckpt, data.draw, st, outside))
            else:
                what.append(mutate_data(folder, data.draw, st))
        path = run / "hostile.ckpt"
        torch.save(ckpt, path)
        root = data.draw(st.sampled_from([str(folder.parent), None]))
        cfg = OmegaConf.create({
            "ckpt_path": str(path), "split": data.draw(st.sampled_from(SPLITS)), "output": str(run / "eval.json"),
            "onnx": None, "data": {"root": root, "eval_batch_size": None}, "device": "cpu", "threads": 1,
            "trust_checkpoint": False, "debug": False, "traceback": False,
        })
        os.chdir(run)  # relative default paths resolve inside the case's own folder
        if root is not None:  # data.root=<folder's parent>: the synthetic data lives in <root>/<fingerprint>
            shutil.move(str(folder), str(folder.parent / data_dir.name))
        try:
            evaluate(cfg)
            outcome = "works"
        except QinError as err:
            assert "\n" not in str(err), f"{what}: a QinError of several lines: {err!r}"
            outcome = "one line"
        except BaseException as err:  # noqa: BLE001 - the property: nothing else may come out
            raise AssertionError(f"{what}: {type(err).__name__}: {str(err)[:300]}") from err
        finally:
            os.chdir(work)
        leaked = [str(p) for p in outside.rglob("*")] if outside.exists() else []
        assert not leaked, f"{what}: wrote outside the run's folders: {leaked[:3]}"
        outcomes.append(f"{outcome}: {what}")
        shutil.rmtree(run, ignore_errors=True)

    case()
    (work / "outcomes.json").write_text(json.dumps(outcomes, indent=1))


def limit_address_space(headroom: int) -> None:
    """RLIMIT_AS = what the process maps now (its imports) + `headroom`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            mapped = int(line.split()[1]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
            return


# ---- the tests -------------------------------------------------------------------------------------------------
def _fuzz(tmp_path: Path, examples: int) -> list[str]:
    work = tmp_path / "fuzz"
    (work / "home").mkdir(parents=True)
    make_base(work)
    env = {**os.environ, "HOME": str(work / "home"), "QIN_CACHE_DIR": str(work / "cache"),
           "QIN_DATA_DIR": str(work / "data"), "TMPDIR": str(work), "MALLOC_ARENA_MAX": "2",
           "OMP_NUM_THREADS": "1", "QIN_MOVIELENS_SRC": str(work / "no-such-release.zip")}
    proc = subprocess.run([sys.executable, __file__, str(work), str(examples), str(HEADROOM)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    outcomes = json.loads((work / "outcomes.json").read_text())
    assert len(outcomes) >= examples // 2
    return outcomes


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux only: VmSize and RLIMIT_AS")
def test_fuzz_hostile_checkpoints_and_data_work_or_end_in_one_line(tmp_path: Path) -> None:
    outcomes = _fuzz(tmp_path, examples=10)
    assert any(o.startswith("one line") for o in outcomes), outcomes


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux only: VmSize and RLIMIT_AS")
def test_fuzz_many_hostile_cases(tmp_path: Path) -> None:
    outcomes = _fuzz(tmp_path, examples=300)
    assert any(o.startswith("works") for o in outcomes) and any(o.startswith("one line") for o in outcomes)


if __name__ == "__main__":  # the child process
    work_dir, count, headroom = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    import qin_lightning.eval  # noqa: F401  (imported before the limit: the limit bounds what the cases map)

    limit_address_space(headroom)
    run_cases(work_dir, count)
