"""Dropout's mask draws (models.dropout): "torch" is nn.Dropout itself; "sfc64" keeps each element with the same
probability from other random numbers, decided by torch's RNG state alone; the QNN's dropout on the (B, R, D) view
is the former (B, R D) form, draw for draw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_overrides
from hydra.utils import instantiate
from test_train import AUC_GAIN, LEARNABLE

from qin_lightning.errors import ConfigError
from qin_lightning.models import dropout as dropout_module
from qin_lightning.models.dropout import DrawnDropout, dropout_mask, sfc64_keep_mask
from qin_lightning.models.interaction import MLP, QuadraticAlphaNetwork, QuadraticLayer, QuadraticNetwork
from qin_lightning.train import train


def test_torch_draw_is_nn_dropout() -> None:
    x = torch.randn(64, 300, requires_grad=True)
    ours, theirs = DrawnDropout(0.2, "torch").train(), torch.nn.Dropout(0.2).train()
    torch.manual_seed(4)
    a = ours(x)
    torch.manual_seed(4)
    assert torch.equal(a, theirs(x))


def test_sfc64_keeps_with_probability_one_minus_p_and_scales_by_its_inverse() -> None:
    """Kept with probability 0.7 (within 5 standard errors over 2,000,000 draws, two chunks), kept values and
    gradients scaled by exactly 1 / 0.7 (float64), zeros elsewhere."""
    x = (torch.rand(1000, 2000, dtype=torch.float64) + 0.5).requires_grad_()
    torch.manual_seed(2)
    out = DrawnDropout(0.3, "sfc64").train()(x)
    kept = out != 0
    n = kept.numel()
    assert abs(float(kept.sum()) / n - 0.7) < 5 * (0.7 * 0.3 / n) ** 0.5
    torch.testing.assert_close(out[kept], x[kept] * (1 / 0.7), rtol=0, atol=0)
    grad, = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, kept.double() * (1 / 0.7), rtol=0, atol=0)


def test_sfc64_mask_follows_torch_seed_not_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same mask after the same torch.manual_seed at 1 and 2 threads (and with small chunks, so that several
    streams and threads take part); another after another seed; the chunks' streams differ."""
    monkeypatch.setattr(dropout_module, "CHUNK", 1000)
    shape = torch.Size([30, 200])
    threads = torch.get_num_threads()
    masks = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(7)
            masks.append(sfc64_keep_mask(shape, 0.9))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*masks)
    torch.manual_seed(8)
    assert not torch.equal(sfc64_keep_mask(shape, 0.9), masks[0])
    flat = masks[0].flatten()
    assert not torch.equal(flat[:1000], flat[1000:2000])
    assert masks[0].dtype == torch.float32
    assert masks[0].unique().tolist() == [0.0, torch.tensor(1 / 0.9, dtype=torch.float32).item()]


def test_sfc64_dropout_multiplies_by_the_sfc64_mask_not_torchs() -> None:
    """DrawnDropout("sfc64") in training is x * sfc64_keep_mask drawn from the same torch state, not nn.Dropout's output;
    off the CPU (here the meta device) the mask is torch's own."""
    x = torch.randn(40, 300)
    torch.manual_seed(5)
    out = DrawnDropout(0.2, "sfc64").train()(x)
    torch.manual_seed(5)
    assert torch.equal(out, x * sfc64_keep_mask(x.shape, 0.8))
    torch.manual_seed(5)
    assert not torch.equal(out, torch.nn.Dropout(0.2).train()(x))
    assert dropout_mask(torch.empty(3, 4, device="meta"), 0.8, "sfc64").device.type == "meta"


@pytest.mark.parametrize("interaction", ["qnn", "qnn_alpha", "mlp"])
def test_the_config_option_reaches_every_dropout_of_the_interaction(interaction: str, tmp_path: Path) -> None:
    """`model.net.interaction.dropout_draw` is torch by default and sfc64 when set, in every DrawnDropout it builds."""
    for overrides, draw in (([], "torch"), (["model.net.interaction.dropout_draw=sfc64"], "sfc64")):
        cfg = compose_train([f"model/interaction={interaction}", "model.net.embedding_dim=8", *overrides],
                            tmp_path / "run")
        network = instantiate(cfg.model.net.interaction)(16)  # D = 16: 2 fields of width 8 for QNN-alpha
        draws = [m.draw for m in network.modules() if isinstance(m, torch.nn.Dropout)]
        assert draws and set(draws) == {draw}


def test_sfc64_is_identity_outside_training_and_at_p_zero() -> None:
    x = torch.randn(8, 16)
    assert torch.equal(DrawnDropout(0.1, "sfc64").eval()(x), x)
    assert torch.equal(DrawnDropout(0.0, "sfc64").train()(x), x)


def test_unknown_draw_is_a_config_error_naming_the_key() -> None:
    key = "model.net.interaction.dropout_draw: unknown value 'numpy'"
    for build in (lambda: QuadraticNetwork(16, dropout_draw="numpy"), lambda: MLP(16, [8], dropout_draw="numpy"),
                  lambda: QuadraticAlphaNetwork(16, 4, dropout_draw="numpy")):
        with pytest.raises(ConfigError, match=key):
            build()


def test_qnn_dropout_on_the_row_view_is_the_published_form_draw_for_draw() -> None:
    """QuadraticLayer (post) in training against the published order: Dropout on the (B, R D) linear output, then
    the (B, R, D) view; the same draws, values and gradients."""
    torch.manual_seed(0)
    layer = QuadraticLayer(8, 3, dropout=0.2, batch_norm=True, activation="prelu", placement="post", fast=True)
    layer.train()
    x = torch.randn(32, 8, requires_grad=True)
    torch.manual_seed(5)
    ours = layer(x)
    torch.manual_seed(5)
    h = torch.nn.functional.dropout(layer.linear(x), 0.2, True).view(-1, 3, 8)
    published = torch.nn.functional.dropout(layer.activation(layer.norm(x * h.sum(1))), 0.2, True) + x
    assert torch.equal(ours, published)
    g = torch.randn_like(ours)
    assert torch.equal(*(torch.autograd.grad(y, x, g)[0] for y in (ours, published)))


@pytest.mark.parametrize("placement", ["post", "mid"])
def test_qnn_layer_built_with_sfc64_trains_with_the_sfc64_masks(placement: str) -> None:
    """A QuadraticLayer built with dropout_draw=sfc64, in training, multiplies by the sfc64 masks drawn from the same
    torch state (the rows' (B, R, D) mask first, then the output's (B, D) one), values and gradients: a layer that
    called F.dropout (torch's draw) instead of its switchable DrawnDropout gives other masks and fails."""
    torch.manual_seed(0)
    layer = QuadraticLayer(8, 3, dropout=0.2, batch_norm=True, activation="prelu", placement=placement,
                           fast=False, dropout_draw="sfc64").train()
    x = torch.randn(32, 8, requires_grad=True)
    torch.manual_seed(5)
    ours = layer(x)
    torch.manual_seed(5)
    keep = 1.0 - 0.2
    row_mask, out_mask = sfc64_keep_mask(torch.Size([32, 3, 8]), keep), sfc64_keep_mask(torch.Size([32, 8]), keep)
    if placement == "post":
        h = layer.linear(x).view(-1, 3, 8) * row_mask  # (B, R, D)
        reference = layer.activation(layer.norm(x * h.sum(1))) * out_mask + x
    else:
        h = layer.activation(layer.norm(layer.linear(x))).view(-1, 3, 8) * row_mask  # (B, R, D)
        reference = (x * h.sum(1) + x) * out_mask
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ours)
    grads = [torch.autograd.grad(y, (x, layer.linear.weight), g) for y in (ours, reference)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_sfc64_qnn_is_the_same_function_in_eval_mode() -> None:
    torch.manual_seed(0)
    torch_draws = QuadraticNetwork(16, num_layers=2, num_row=2)
    sfc64 = QuadraticNetwork(16, num_layers=2, num_row=2, dropout_draw="sfc64")
    sfc64.load_state_dict(torch_draws.state_dict())
    x = torch.randn(4, 16)
    assert torch.equal(torch_draws.eval()(x), sfc64.eval()(x))


def test_training_with_sfc64_draws_learns(tmp_path: Path) -> None:
    """The tiny learnable run of test_train with `model.net.interaction.dropout_draw=sfc64` learns as much from its
    first epoch to its last (its AUC floor was measured on torch's draws: other draws are another seed)."""
    overrides = [*tiny_overrides(tmp_path), *LEARNABLE, "model.net.interaction.dropout_draw=sfc64"]
    results = train(compose_train(overrides, tmp_path / "run"))
    aucs = [epoch["auc"] for epoch in results["val_history"]]
    assert len(aucs) == 3 and aucs[-1] - aucs[0] > AUC_GAIN, aucs
