"""The LightningModule: the published training protocol around any CTR network (the authors' QIN run on
FuxiCTR 2.3.7: Adam 2e-3, batch 8192, clipping 10, lr halved on a plateau, early stopping, best weights kept).

loss = BCE(sigmoid(logits), label)
     + (embedding_l2 / 2) * sum of ||p||^2 over every embedding table (+ the multimodal projection), every step
     + (net_l2 / 2)       * sum of ||p||^2 over every other weight (the DIN protocol; 0 for QIN)
Each BCE is computed as ``bce_input`` says (``binary_cross_entropy``): "probability" (default, FuxiCTR's form,
which the authors' QIN, DIN and the challenge winner train with: torch's BCE of the float32 sigmoid output, log
clamped at -100, so a row whose sigmoid saturates to exactly 0 or 1 has no gradient) or "logit"
(``binary_cross_entropy_with_logits``: the same value elsewhere, numerically stable, a gradient on every row).
With ``self_ensemble`` (QNN-alpha, the authors' KDD 2025 successor, arXiv 2505.17999) the BCE term is replaced
by the self-ensemble loss of two stochastic forward passes (``CTRModule.self_ensemble_loss``); inference is always one pass.
Adam (default betas, no weight decay); lr x ``lr_factor`` whenever validation AUC does not improve by
``min_delta`` (floor ``min_lr``). Gradient clipping, early stopping and best-checkpoint reloading are Trainer
and callback settings (``conf/trainer``, ``conf/callbacks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import BinaryAUROC

from qin_lightning.errors import ConfigError, QinError
from qin_lightning.models.inference import prepare_inference, release_inference
from qin_lightning.models.parameter_groups import dense_parameters, embedding_parameters
from qin_lightning.training.metrics import BinaryLogLoss

if TYPE_CHECKING:
    from qin_lightning.data.datamodule import Batch


class NonFiniteLossError(QinError):
    """Training produced a NaN/inf loss or prediction."""


def squared_l2(params: list[nn.Parameter]) -> torch.Tensor:
    """sum_p ||p||_2^2 over ``params`` (0 when empty)."""
    if not params:
        return torch.zeros(())
    return torch.stack([p.flatten().dot(p.flatten()) for p in params]).sum()  # dot: no temporary of squares


CONSTANT_BUFFERS = ("item_tags", "item_mm")  # the item tables: inputs stored with the model, never updated

# model.bce_input: what each BCE is computed from. "probability": the authors' (FuxiCTR's `binary_crossentropy`
# on the model's sigmoid output); "logit": binary_cross_entropy_with_logits (stabler; differs on saturated rows)
BCE_INPUTS = ("probability", "logit")


def check_bce_input(bce_input: str) -> str:
    """`bce_input` if it is one of BCE_INPUTS, else a ConfigError naming `model.bce_input`."""
    if bce_input not in BCE_INPUTS:
        raise ConfigError(f"model.bce_input: unknown value {bce_input!r}, expected one of {list(BCE_INPUTS)}")
    return bce_input


def bce_of_probability(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F.binary_cross_entropy(probability, target) (B,) -> (), NaN where either has a NaN (a NaN logit; the
    self-ensemble's target is a probability too): torch's BCE refuses one (a RuntimeError on the CPU, a device-side
    assert on a GPU), so it is given 0.5 there and the NaN reaches the loss through `0 * sum`, for the non-finite
    guard to report; the same value and gradient on finite input."""
    return (F.binary_cross_entropy(probability.nan_to_num(nan=0.5), target.nan_to_num(nan=0.5))
            + 0.0 * (probability.sum() + target.sum()))


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bce_input: str) -> torch.Tensor:
    """Mean BCE of sigmoid(logits) (B,) against target (B,) in float32 with autocast off, from `bce_input`:

    "probability": F.binary_cross_entropy(sigmoid(logits), target), FuxiCTR's form: log clamped at -100, so a
        logit whose float32 sigmoid is exactly 1.0 (z >= ~17) with target 0 costs 100 and has gradient 0, and
        one of z = -30 with target 1 costs 30 with gradient -0.094 (the backward divides by max(p (1 - p), 1e-12));
    "logit": F.binary_cross_entropy_with_logits(logits, target): the same value on every unsaturated row, exact
        on the saturated ones (z = 20, target 0: loss 20, gradient 1; z = -30, target 1: loss 30, gradient -1).
    """
    with torch.autocast(logits.device.type, enabled=False):  # BCE on probabilities refuses autocast
        logits, target = logits.float(), target.float()
        if bce_input == "probability":
            return bce_of_probability(torch.sigmoid(logits), target)
        return F.binary_cross_entropy_with_logits(logits, target)


class CTRModule(LightningModule):
    """Trains a CTR network with BCE (from probabilities or logits: ``bce_input``) + L2 terms, Adam and the plateau
    schedule; logs AUC and logloss."""

    def __init__(
        self,
        net: nn.Module,
        lr: float = 2e-3,
        embedding_l2: float = 2e-4,
        net_l2: float = 0.0,
        lr_factor: float = 0.5,
        min_lr: float = 1e-6,
        min_delta: float = 1e-6,
        self_ensemble: bool = False,
        compile: bool = False,
        nonfinite_check_every_n_steps: int = 1,
        fused_adam: bool = False,
        bce_input: str = "probability",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.lr = lr
        self.embedding_l2 = embedding_l2
        self.net_l2 = net_l2
        self.lr_factor = lr_factor
        self.min_lr = min_lr
        self.min_delta = min_delta
        self.self_ensemble = self_ensemble
        self.compile_net = compile  # `model.compile`; not `self.compile`, which is nn.Module's method
        self.nonfinite_check_every_n_steps = nonfinite_check_every_n_steps
        self.fused_adam = fused_adam
        self.bce_input = check_bce_input(bce_input)
        # not a submodule (object.__setattr__): the state_dict holds the weights once, under `net.`
        object.__setattr__(self, "_forward", net)
        # DDP broadcasts every buffer from rank 0 before each training forward; the item tables (~48 MB at
        # MicroLens scale) never change and are identical on every rank, so they are left out of it
        self._ddp_params_and_buffers_to_ignore = [
            f"net.{name}" for name, _ in net.named_buffers() if name.split(".")[-1] in CONSTANT_BUFFERS
        ]
        self.val_auc = BinaryAUROC()
        self.val_logloss = BinaryLogLoss()
        self.test_auc = BinaryAUROC()
        self.test_logloss = BinaryLogLoss()
        # one entry per validation epoch: {"epoch", "auc", "logloss", "lr"}; saved in checkpoints.
        self.val_history: list[dict[str, float]] = []
        # the resolved run configuration (set by qin_lightning.train once composed), stored in checkpoints so
        # eval/predict can rebuild the run
        self.run_config: dict[str, Any] | None = None

    # ---- forward -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.compile_net and self._forward is self.net:
            object.__setattr__(self, "_forward", torch.compile(self.net))  # state_dict keeps plain `net.` keys

    def forward(self, batch: Batch) -> torch.Tensor:  # -> logits (B,)
        return self._forward(batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)

    # ---- loss ----------------------------------------------------------------------------------------------
    def regularization(self) -> torch.Tensor:
        """(embedding_l2 / 2) * sum ||emb||^2 + (net_l2 / 2) * sum ||w||^2 (FuxiCTR's L2 form)."""
        reg = torch.zeros((), device=self.device)
        if self.embedding_l2 > 0:
            reg = reg + 0.5 * self.embedding_l2 * squared_l2(embedding_parameters(self.net))
        if self.net_l2 > 0:
            reg = reg + 0.5 * self.net_l2 * squared_l2(dense_parameters(self.net))
        return reg

    @staticmethod
    def self_ensemble_loss(logits_1: torch.Tensor, logits_2: torch.Tensor, label: torch.Tensor,
                           bce_input: str = "probability") -> torch.Tensor:
        """QNN-alpha's self-ensemble loss of two stochastic passes (QNN-alpha, arXiv 2505.17999; FuxiCTR
        model_zoo/QNN/src/QNN_alpha.py's `add_loss`), all means over B:

            p = (p1 + p2) / 2;   loss = BCE(p, y) + BCE(p1, p.detach()) + BCE(p2, p.detach())

        The consistency terms follow `bce_input` (``binary_cross_entropy``: "probability", the published form,
        from p1 and p2; "logit", from the logits); the first term is always the BCE of the averaged probability.
        """
        with torch.autocast(logits_1.device.type, enabled=False):  # BCE on probabilities refuses autocast
            logits_1, logits_2, label = logits_1.float(), logits_2.float(), label.float()
            p = 0.5 * (torch.sigmoid(logits_1) + torch.sigmoid(logits_2))  # (B,) the ensemble's prediction
            target = p.detach()
            return (
                bce_of_probability(p, label)
                + binary_cross_entropy(logits_1, target, bce_input)
                + binary_cross_entropy(logits_2, target, bce_input)
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch)  # (B,)
        if self.self_ensemble:  # a second pass: other dropout masks (and BatchNorm sees the batch twice)
            data_loss = self.self_ensemble_loss(logits, self(batch), batch.label, self.bce_input)
        else:
            data_loss = binary_cross_entropy(logits, batch.label, self.bce_input)
        loss = data_loss + self.regularization()
        n = self.nonfinite_check_every_n_steps
        if n > 0 and self.global_step % n == 0 and not torch.isfinite(loss):
            self._raise_nonfinite(batch, logits, loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch.label.numel())
        # train/data_loss: the loss without the L2 terms (BCE, or the self-ensemble loss when that option is on)
        self.log("train/data_loss", data_loss, on_step=False, on_epoch=True, batch_size=batch.label.numel())
        return loss

    def _raise_nonfinite(self, batch: Batch, logits: torch.Tensor, loss: torch.Tensor) -> None:
        finite = torch.isfinite(logits)
        bad_params = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        raise NonFiniteLossError(
            f"non-finite training loss {loss.item()} at epoch {self.current_epoch}, global step {self.global_step}"
            f" (batch of {batch.label.numel()}: {int((~finite).sum())} non-finite logits, finite logits in"
            f" [{logits[finite].min().item() if finite.any() else float('nan'):.4g},"
            f" {logits[finite].max().item() if finite.any() else float('nan'):.4g}], label mean"
            f" {batch.label.float().mean().item():.4f}, non-finite parameters: {bad_params[:5] or 'none'});"
            " training stopped, the last good checkpoint is kept. Try a lower lr or check the input data."
        )

    # ---- evaluation: the network's inference form (models.inference) lives exactly as long as an epoch ------
    def _prepare_inference(self) -> None:
        # DDP broadcasts rank 0's buffers (BatchNorm running statistics) before every forward, evaluation too:
        # take them first, so that the prepared form (BatchNorm folded into the QNN) is rank 0's on every rank
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            for name, buffer in self.net.named_buffers():
                if name.split(".")[-1] not in CONSTANT_BUFFERS:
                    torch.distributed.broadcast(buffer, src=0)
        prepare_inference(self.net)

    def on_validation_epoch_start(self) -> None:
        self._prepare_inference()

    def on_test_epoch_start(self) -> None:
        self._prepare_inference()

    def on_predict_epoch_start(self) -> None:
        self._prepare_inference()

    def on_predict_epoch_end(self) -> None:
        release_inference(self.net)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        probs = torch.sigmoid(self(batch).float())
        n = self.nonfinite_check_every_n_steps
        if n > 0 and not torch.isfinite(probs).all():
            raise NonFiniteLossError(
                f"non-finite validation prediction at epoch {self.current_epoch}, validation batch {batch_idx}"
                f" ({int((~torch.isfinite(probs)).sum())} of {probs.numel()} predictions);"
                " training stopped, the last good checkpoint is kept. Try a lower lr or check the input data."
            )
        self.val_auc.update(probs, batch.label.long())
        self.val_logloss.update(probs, batch.label)

    def on_validation_epoch_end(self) -> None:
        release_inference(self.net)
        auc, logloss = self.val_auc.compute(), self.val_logloss.compute()
        self.val_auc.reset()
        self.val_logloss.reset()
        self.log("val/auc", auc, prog_bar=True, sync_dist=False)
        self.log("val/logloss", logloss, prog_bar=True, sync_dist=False)
        if not self.trainer.sanity_checking:
            lr = self.optimizers().param_groups[0]["lr"] if self.trainer.optimizers else self.lr
            self.val_history.append(
                {"epoch": self.current_epoch, "auc": float(auc), "logloss": float(logloss), "lr": float(lr)}
            )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        probs = torch.sigmoid(self(batch).float())
        self.test_auc.update(probs, batch.label.long())
        self.test_logloss.update(probs, batch.label)

    def on_test_epoch_end(self) -> None:
        release_inference(self.net)
        self.log("test/auc", self.test_auc.compute())
        self.log("test/logloss", self.test_logloss.compute())
        self.test_auc.reset()
        self.test_logloss.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch).float())

    # ---- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        # fused_adam: one kernel for all parameters (the same update, faster; off by default, see the config)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr, fused=self.fused_adam)
        # FuxiCTR semantics: every epoch without an improvement > min_delta multiplies lr by lr_factor.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=self.lr_factor,
            patience=0,
            threshold=self.min_delta,
            threshold_mode="abs",
            min_lr=self.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/auc", "interval": "epoch", "frequency": 1},
        }

    # ---- checkpoint ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["qin_val_history"] = list(self.val_history)
        if self.run_config is not None:
            checkpoint["qin_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("qin_val_history", []))
        # the stored qin_config is never carried forward: a resumed run's checkpoints hold its own (composed)
        # config, so a hostile stored config cannot be laundered into files this run writes (docs/security.md)
