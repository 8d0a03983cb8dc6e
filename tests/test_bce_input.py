"""`model.bce_input`: what each BCE is computed from. "probability" (the default) is the authors' form (FuxiCTR's
`binary_crossentropy` on the sigmoid output: log clamped at -100, no gradient through a saturated sigmoid);
"logit" is `binary_cross_entropy_with_logits`. They differ only on saturated rows, pinned here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_model_overrides, tiny_overrides
from omegaconf import OmegaConf

from qin_lightning.config import instantiate_reporting
from qin_lightning.data.datamodule import Batch
from qin_lightning.errors import ConfigError, run_reporting_errors
from qin_lightning.training.module import BCE_INPUTS, CTRModule, binary_cross_entropy

# two saturated wrong rows, (logit, label): (20, 0) and (-30, 1); float32 sigmoid(20) is exactly 1.0
LOGITS, LABELS = [20.0, -30.0], [0.0, 1.0]
# per form: (per-row loss, per-row gradient d loss_i / d z_i)
PINNED = {"probability": ([100.0, 30.0], [0.0, -0.0936]),  # log(0) clamped at -100; backward over max(p(1-p), 1e-12)
          "logit": ([20.0, 30.0], [1.0, -1.0])}  # exact: loss = softplus(z) - z y, gradient = sigmoid(z) - y


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "cpu-bf16-autocast"])
@pytest.mark.parametrize("bce_input", BCE_INPUTS)
def test_both_forms_on_saturated_rows(bce_input: str, autocast: bool) -> None:
    weights = torch.tensor(LOGITS, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = torch.eye(2) @ weights  # (B,) bf16 under autocast, as a network's output is
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        loss = binary_cross_entropy(logits, torch.tensor(LABELS), bce_input)
    loss.backward()
    row_loss, row_grad = PINNED[bce_input]
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(row_loss) / 2, rel=1e-5)  # the mean over the batch
    # per row: the batch mean's gradient x B (bf16 rounds the gradient on its way back through the cast)
    torch.testing.assert_close(weights.grad * 2, torch.tensor(row_grad), rtol=5e-3, atol=1e-6)


def test_default_is_the_published_form(tmp_path: Path) -> None:
    cfg = compose_train(tiny_overrides(tmp_path), tmp_path / "run")
    assert cfg.model.bce_input == "probability"
    assert CTRModule(torch.nn.Linear(1, 1)).bce_input == "probability"


class FixedLogits(torch.nn.Module):
    """A stand-in network whose logits are its one parameter (B,), whatever the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(LOGITS))

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.logits * 1.0  # (B,)


@pytest.mark.parametrize("bce_input", BCE_INPUTS)
@pytest.mark.filterwarnings("ignore:You are trying to")
def test_training_step_follows_the_option(bce_input: str) -> None:
    module = CTRModule(FixedLogits(), embedding_l2=0.0, bce_input=bce_input)
    ids = torch.zeros(2, dtype=torch.long)
    batch = Batch(torch.zeros(2, 3, dtype=torch.long), ids, ids, ids, torch.tensor(LABELS), ids)
    loss = module.training_step(batch, 0)
    loss.backward()
    row_loss, row_grad = PINNED[bce_input]
    assert loss.item() == pytest.approx(sum(row_loss) / 2, rel=1e-5)
    torch.testing.assert_close(module.net.logits.grad * 2, torch.tensor(row_grad), rtol=5e-3, atol=1e-6)


@pytest.mark.parametrize("bce_input", BCE_INPUTS)
def test_self_ensemble_consistency_terms_follow_the_option(bce_input: str) -> None:
    """logits_1 = 20 (p1 exactly 1.0), logits_2 = 0, label 1: p = 0.75. The consistency term of pass 1 is
    BCE(1.0, 0.75) = 25 (probability; no gradient) or BCE_with_logits(20, 0.75) = 5 (logit; gradient 0.25);
    the first term, BCE(p, 1) = -log 0.75, and the second pass's, log 2, are the same in both forms."""
    first = torch.tensor([20.0], requires_grad=True)
    loss = CTRModule.self_ensemble_loss(first, torch.tensor([0.0]), torch.tensor([1.0]), bce_input)
    loss.backward()
    shared = -torch.log(torch.tensor(0.75)).item() + torch.log(torch.tensor(2.0)).item()
    consistency, gradient = {"probability": (25.0, 0.0), "logit": (5.0, 0.25)}[bce_input]
    assert loss.item() == pytest.approx(shared + consistency, rel=1e-5)
    assert first.grad.item() == pytest.approx(gradient, abs=1e-6)


def test_unknown_value_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose_train([*tiny_overrides(tmp_path), *tiny_model_overrides(), "model.bce_input=logits"],
                        tmp_path / "run")
    module_config = OmegaConf.create({k: v for k, v in cfg.model.items() if k != "net"})  # as build_module does
    expected = "model.bce_input: unknown value 'logits', expected one of ['probability', 'logit']"
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        instantiate_reporting(module_config, net=torch.nn.Linear(1, 1))
    with pytest.raises(SystemExit) as exit_info:
        run_reporting_errors(lambda: instantiate_reporting(module_config, net=torch.nn.Linear(1, 1)))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


@pytest.mark.parametrize("bce_input", BCE_INPUTS)
def test_a_nan_logit_gives_a_nan_loss_for_the_guard(bce_input: str) -> None:
    """torch's BCE on probabilities raises on a NaN input (a device-side assert on a GPU): the loss is NaN instead,
    so the non-finite guard reports it (tests/test_errors.py runs that through the command line)."""
    logits, labels = torch.tensor([0.5, float("nan")]), torch.tensor(LABELS)
    assert torch.isnan(binary_cross_entropy(logits, labels, bce_input))
    assert torch.isnan(CTRModule.self_ensemble_loss(logits, torch.zeros(2), labels, bce_input))
