"""experiments/peer/trajectory.py without the authors' code: its key maps reach every parameter and buffer of our
networks (built on the meta device with every dropout rate 0, as the trajectory builds them), and its comparisons
have the record's format; the trajectories themselves are run by hand (see its docstring)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "experiments" / "peer" / "trajectory.py"


@pytest.fixture(scope="module")
def trajectory() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trajectory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["trajectory"] = module
    spec.loader.exec_module(module)
    return module


def our_state_shapes(trajectory: ModuleType, model: str) -> dict[str, torch.Size]:
    """Our network of `model` as trajectory.py configures it (dropout 0), on the meta device."""
    from hydra import compose, initialize_config_dir

    from qin_lightning.config import CONFIG_DIR
    from qin_lightning.models.build import build_network

    experiment = trajectory.sbs.MODELS[model].experiment
    overrides = [*([f"+experiment={experiment}"] if experiment else []), *trajectory.OUR_DROPOUT[model]]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    with torch.device("meta"):
        net = build_network(cfg.model.net, torch.zeros(30, 5, dtype=torch.long), torch.zeros(30, 128), 7)
    return {key: value.shape for key, value in net.state_dict().items()}


@pytest.mark.parametrize("model", ["transformer_dcn", "qin", "qnn_alpha", "din"])
def test_key_map_reaches_every_key_of_ours_once(trajectory: ModuleType, model: str) -> None:
    ours = our_state_shapes(trajectory, model)
    reached: dict[str, int] = {}
    for key in ours:
        if key in trajectory.DATA_BUFFERS:
            continue
        rules = [(theirs, our) for theirs, our in trajectory.KEY_MAPS[model] if key.startswith(our)]
        assert len(rules) == 1, f"{key}: {len(rules)} rules reach it, expected 1"
        reached[rules[0][1]] = reached.get(rules[0][1], 0) + 1
    unused = [our for _, our in trajectory.KEY_MAPS[model] if our not in reached]
    assert not unused, f"rules that reach no key of ours: {unused}"
    # their keys as the rules name them, mapped back: the same keys and shapes, nothing left over on either side
    inverse = {}
    for key, shape in ours.items():
        if key not in trajectory.DATA_BUFFERS:
            theirs, our = next((t, o) for t, o in trajectory.KEY_MAPS[model] if key.startswith(o))
            inverse[theirs + key[len(our):]] = torch.empty(shape, device="meta")
    mapped = trajectory.map_state(model, inverse, {k: torch.empty(s, device="meta") for k, s in ours.items()})
    assert set(mapped) == set(ours) - set(trajectory.DATA_BUFFERS)
    with pytest.raises(AssertionError, match="ours without theirs"):
        trajectory.map_state(model, dict(list(inverse.items())[1:]),
                             {k: torch.empty(s, device="meta") for k, s in ours.items()})


def test_comparisons_have_the_record_format(trajectory: ModuleType) -> None:
    steps = trajectory.compare_steps([1.0, 2.0, 3.0], [1.0, 2.0 + 1e-7, 3.1])
    assert steps["first_step_rel_over_1e-5"] == 3 and steps["max_abs_diff"] == pytest.approx(0.1)
    initial = {"w": torch.zeros(4), "b": torch.zeros(2)}
    theirs = {"w": torch.tensor([1e-3, -1e-3, 1e-3, 1e-9]), "b": torch.tensor([1e-3, 1e-3])}
    ours = {"w": torch.tensor([1e-3, -1e-3, 1e-3, -1e-9]), "b": torch.tensor([1e-3, 1e-3])}
    weights = trajectory.compare_weights(initial, theirs, ours)
    assert weights["top"][0]["key"] == "w" and weights["max_abs_diff"] == pytest.approx(2e-9)
    assert weights["every_key"][-1] == {"key": "b", "max_abs_diff": 0.0, "rel_to_update": 0.0,
                                        "their_update_norm": pytest.approx(np.sqrt(2) * 1e-3)}
    adam = trajectory.adam_first_step(initial, theirs, ours, lr=1e-3)
    assert adam["entries_with_gradient_below_adam_eps"] == 1 and adam["share_of_squared_difference_there"] == 1.0
    rows = trajectory.saturation([[torch.tensor([1.0, 1e-13, 0.5])]], [torch.tensor([0.0, 1.0, 1.0])])
    assert rows == {"confidently_wrong_without_gradient": [2], "saturated": [2]}
    labels = np.array([0.0, 1.0, 1.0, 0.0])
    valid = trajectory.predictions(labels, np.array([0.1, 0.9, 0.8, 0.0]), np.array([0.1, 0.9, 0.8, 0.2]))
    assert valid["theirs"]["auc"] == valid["ours"]["auc"] == 1.0 and valid["max_abs_diff"] == pytest.approx(0.2)
    assert valid["theirs"]["logloss_eps_float64"] < valid["ours"]["logloss_eps_1e-7"]
    record = {"loss": steps, "weights_after_last_step": weights, "training_rows_by_side": {"theirs": {
        "confidently_wrong_without_gradient": [0, 1, 0]}}, "validation": {**valid, "at_their_final_weights": valid},
        "teacher_forced": {"steps": [{"loss_rel_diff": d, "rel_to_update_all": d} for d in (1e-7, 0.3, 2e-7)]}}
    found = trajectory.summary(record)
    assert found["free_steps_loss_within_1e-5"] == 2
    assert found["teacher_forced_clean_steps"] == {"steps": 2, "max_loss_rel_diff": 2e-7,
                                                   "max_weights_rel_to_update": 2e-7}
    assert found["teacher_forced_steps_with_such_rows"]["max_loss_rel_diff"] == 0.3


def test_steps_must_be_positive(trajectory: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        trajectory.main(["--model", "din", "--winner-repo", str(tmp_path), "--steps", "0",
                         "--out", str(tmp_path / "out.json"), "--venv", str(tmp_path / "venv")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --steps: 0, expected a positive integer"
    assert not (tmp_path / "venv").exists()
