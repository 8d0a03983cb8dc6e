"""qin-report on hostile files (issue 39 item 6): it reads only inside the folder it is given, and parses YAML and
JSON with bounded size and depth. Each hostile file below ends in one `error:` line with exit status 2 (the
sweep holds only the hostile run, so nothing is left to report), under a 1 GiB address-space limit; a record
whose `data_dir` names another folder does not make the report open anything there."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qin_lightning.predictions import write_predictions
from qin_lightning.report import write_report
from qin_lightning.training.metrics import split_metrics

LIMIT = 1 << 30  # bytes of address space for the report process

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))


def _record(seed: int = 1, **extra: object) -> dict:
    return {"status": "completed", "experiment": "qin", "seed": seed, "best_val_auc": 0.8, "best_val_logloss": 0.4,
            "best_epoch": 1, "overrides": ["+experiment=qin", f"seed={seed}"], **extra}


def _sweep(root: Path, name: str, files: dict[str, str]) -> Path:
    """A sweep folder of one run whose files are ``files`` (relative to the run folder or, for multirun.yaml,
    the sweep folder) over sane defaults."""
    sweep = root / name
    run = sweep / "0_qin_seed1"
    defaults = {"0_qin_seed1/.hydra/config.yaml": "trainer: {max_epochs: 3}\n",
                "0_qin_seed1/.hydra/overrides.yaml": "- +experiment=qin\n- seed=1\n",
                "0_qin_seed1/results.json": json.dumps(_record())}
    for relative, text in {**defaults, **files}.items():
        path = sweep / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert run.is_dir()
    return sweep


HOSTILE = {
    "yaml_alias_bomb": ({"0_qin_seed1/.hydra/overrides.yaml": ALIAS_BOMB}, "aliases (*name) are not accepted"),
    "deep_yaml": ({"0_qin_seed1/.hydra/config.yaml": "a: " + "[" * 20000 + "]" * 20000 + "\n"},
                  "nested deeper than 32 levels"),
    "deep_json": ({"0_qin_seed1/results.json": "[" * 200000 + "]" * 200000}, "nested deeper than"),
    "5000_digit_integer": ({"0_qin_seed1/results.json": json.dumps(_record())[:-1] + ', "n_params": ' + "9" * 5000
                            + "}"}, "not JSON the report accepts"),
    "max_epochs_abc": ({"0_qin_seed1/.hydra/overrides.yaml": "- seed=1\n- trainer.max_epochs=abc\n"},
                       "override trainer.max_epochs=abc: expected an integer"),
    "hydra_5": ({"multirun.yaml": "hydra: 5\n"}, "multirun.yaml: key 'hydra': expected a mapping, got int 5"),
    "overrides_not_a_list": ({"0_qin_seed1/.hydra/overrides.yaml": "a: 1\n"}, "expected a list of override"),
}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.mark.parametrize("case", ["yaml_alias_bomb", "hydra_5"])
def test_the_real_command_ends_in_one_line(tmp_path: Path, case: str) -> None:
    files, expected = HOSTILE[case]
    sweep = _sweep(tmp_path, case, files)
    proc = subprocess.run([sys.executable, "-m", "qin_lightning.report", str(sweep)], capture_output=True, text=True,
                          timeout=120, preexec_fn=_limited)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and expected in proc.stderr


def test_every_hostile_file_ends_in_one_line_under_1_gib(tmp_path: Path) -> None:
    """All the cases in one limited process (one interpreter start): main() per sweep folder, its exit status
    and stderr recorded."""
    folders = {case: str(_sweep(tmp_path, case, files)) for case, (files, _) in HOSTILE.items()}
    driver = (
        "import contextlib, io, json, sys\n"
        "from qin_lightning.report import main\n"
        "out = {}\n"
        "for case, folder in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([folder]); code = 0\n"
        "        except SystemExit as exit:\n"
        "            code = exit.code\n"
        "    out[case] = [code, err.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", driver, json.dumps(folders)], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    for case, (_, expected) in HOSTILE.items():
        code, stderr = results[case]
        assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: "), (case, code, stderr[:500])
        assert expected in stderr, (case, stderr)


def test_a_hostile_run_beside_good_ones_is_listed_in_one_line(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "mixed", {"0_qin_seed1/.hydra/overrides.yaml": ALIAS_BOMB})
    good = sweep / "1_qin_seed2"
    (good / ".hydra").mkdir(parents=True)
    (good / "results.json").write_text(json.dumps(_record(seed=2)))
    collected = write_report(sweep)
    ((run, problem),) = collected.problems
    assert run == "0_qin_seed1" and problem.startswith("unreadable: ") and "\n" not in problem
    assert "aliases (*name) are not accepted" in (sweep / "report.md").read_text()


def test_the_report_reads_no_folder_a_record_names(tmp_path: Path) -> None:
    """Records whose data_dir (and qin-eval's test_eval.data_dir) name a folder holding a test.parquet with other
    labels: the report opens nothing there from Python (an audit hook records every open) and computes the paired
    bootstrap from the kept predictions alone (reading that split would have given other AUCs than the records'
    and no bootstrap)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(1)
    users, labels = np.repeat(np.arange(50), 4), rng.random(200) < 0.4
    pq.write_table(pa.table({"user_id": users, "label": (~labels).astype(np.int8)}), elsewhere / "test.parquet")
    for job, (experiment, seed) in enumerate([(e, s) for e in ("qin", "ablation_softmax") for s in (1, 2, 3)]):
        probs = (1 / (1 + np.exp(-(labels + rng.normal(size=200))))).astype(np.float32)
        auc = split_metrics(probs, labels.astype(np.float32), users)["auc"]
        run = sweep / f"{job}_{experiment}_seed{seed}"
        (run / ".hydra").mkdir(parents=True)
        record = {**_record(seed), "experiment": experiment, "test_auc": auc, "data_dir": str(elsewhere),
                  "test_eval": {"auc": auc, "logloss": 0.5, "gauc": 0.5, "data_dir": str(elsewhere)},
                  "overrides": [f"+experiment={experiment}", f"seed={seed}"]}
        (run / "results.json").write_text(json.dumps(record))
        write_predictions(run / "test.preds.parquet", probs, users, labels, "x/test")
    opened: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    try:
        write_report(sweep)
    finally:
        active[0] = False
    assert not [p for p in opened if str(elsewhere) in p]
    assert any(p.endswith("results.json") for p in opened)  # the hook sees the report's own reads
    assert "Significance: paired bootstrap" in (sweep / "report.md").read_text()
