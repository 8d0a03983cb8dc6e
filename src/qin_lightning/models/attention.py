"""Target attention over the user history: ASTA (paper eq. 3) and its ablations, plus mean pooling.

ASTA (eq. 3): o = ReLU((W_q x_t)(W_k X_b)^T / sqrt(d_a) * mask) (W_v X_b) W_o + x_t, single head, no softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qin_lightning.errors import ConfigError
from qin_lightning.models.ragged import Ragged, row_dot, row_sum

ACTIVATIONS = ("relu", "softmax", "silu", "relu2")


def attention_weights(scores: Tensor, mask: Tensor, activation: str) -> Tensor:
    """Attention weights from masked scores (B, S); padding positions always get weight exactly 0.

    relu / silu / relu2 follow the reference: scores * mask, then the activation (act(0) = 0 for all three).
    softmax is a masked softmax over non-padding positions; an all-padding row gets all-zero weights (no NaN
    in the output or in gradients: padding is filled with the dtype's min, not -inf, then zeroed).
    """
    m = mask.to(scores.dtype)
    if activation == "softmax":
        filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(filled, dim=-1) * m
    scores = scores * m
    if activation == "relu":
        return F.relu(scores)
    if activation == "silu":
        return F.silu(scores)
    return F.relu(scores).square()  # relu2


class TargetAttention(nn.Module):
    """Single-head target attention, ASTA by default (eq. 3), W_o without bias (the published model).

    `fast=True` is the exact algebraic form: never project the S history items to attention_dim.
      scores = X_b (W_k^T W_q x_t) / sqrt(d_a)    (W_q^T W_k is a d x d matrix)
      o = (W_o W_v)(weights X_b) + x_t             (W_o W_v is a d x d matrix)
    The two d x d products are recomputed (differentiably) each forward, or, once prepared (models.inference),
    read from the prepared pair in eval mode.
    `fast=False` is the literal paper form (Q, K, V projections). Both agree to rounding, in training too
    (attention-weight dropout acts on the (B, S) weights in both).
    """

    def __init__(
        self,
        input_dim: int,
        activation: str = "relu",
        attention_dim: int | None = None,
        dropout: float = 0.0,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"model.net.attention.activation: unknown value {activation!r}, expected one of {list(ACTIVATIONS)}"
            )
        self.input_dim = input_dim
        self.attention_dim = attention_dim if attention_dim is not None else 2 * input_dim
        self.activation = activation
        self.fast = fast
        self.scale = 1.0 / math.sqrt(self.attention_dim)
        self.W_q = nn.Linear(input_dim, self.attention_dim, bias=False)
        self.W_k = nn.Linear(input_dim, self.attention_dim, bias=False)
        self.W_v = nn.Linear(input_dim, self.attention_dim, bias=False)
        self.W_o = nn.Linear(self.attention_dim, input_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.W_q, self.W_k, self.W_v, self.W_o):
            nn.init.xavier_normal_(layer.weight)
        self.prepared: tuple[Tensor, Tensor] | None = None  # (qk, vo) once prepared

    def products(self) -> tuple[Tensor, Tensor]:
        """(W_q^T W_k, W_v^T W_o^T), both (d, d), for right-multiplying row vectors (prepared ones in eval)."""
        if self.prepared is not None and not self.training:
            return self.prepared
        qk = self.W_q.weight.t() @ self.W_k.weight  # (d, d): x_t @ qk = (W_k^T W_q x_t)^T
        vo = self.W_v.weight.t() @ self.W_o.weight.t()  # (d, d): p @ vo = (W_o W_v p)^T
        return qk, vo

    def prepare_inference(self) -> None:
        self.prepared = None  # so that `products()` computes from the current weights
        self.prepared = self.products() if self.fast else None

    def release_inference(self) -> None:
        self.prepared = None

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, d), history (B, S, d), mask (B, S) bool -> (B, d)
        if self.fast:
            qk, vo = self.products()
            query = target @ qk  # (B, d)
            scores = torch.bmm(history, query.unsqueeze(-1)).squeeze(-1) * self.scale  # (B, S)
            weights = self.dropout(attention_weights(scores, mask, self.activation))  # (B, S)
            pooled = torch.bmm(weights.unsqueeze(1), history).squeeze(1)  # (B, d)
            return pooled @ vo + target
        query = self.W_q(target)  # (B, da)
        key = self.W_k(history)  # (B, S, da)
        value = self.W_v(history)  # (B, S, da)
        scores = torch.bmm(key, query.unsqueeze(-1)).squeeze(-1) * self.scale  # (B, S)
        weights = self.dropout(attention_weights(scores, mask, self.activation))  # (B, S)
        pooled = torch.bmm(weights.unsqueeze(1), value).squeeze(1)  # (B, da)
        return self.W_o(pooled) + target  # (B, d)

    def forward_packed(self, target: Tensor, values: Tensor, ragged: Ragged, mask: Tensor) -> Tensor:
        """Same function as `forward`, with the history given only at its non-padding positions.

        values (P, d): history vectors at the True positions of mask (B, S), row-major (`ragged`).
        Padding items are zero vectors with weight exactly 0, so leaving them out drops only exact-zero terms
        (scores and weights are still formed on the dense (B, S) grid: same activation, same dropout mask).
        """
        if self.fast:
            qk, vo = self.products()
            keys, query = values, target @ qk  # (P, d), (B, d)
        else:
            keys, query = self.W_k(values), self.W_q(target)  # (P, da), (B, da)
        score = row_dot(query, keys, ragged) * self.scale  # (P,)
        scores = score.new_zeros(mask.numel()).scatter(0, ragged.flat, score).view(mask.shape)  # (B, S)
        weights = self.dropout(attention_weights(scores, mask, self.activation))  # (B, S)
        weight = weights.reshape(-1).index_select(0, ragged.flat)  # (P,)
        pooled = row_sum(weight, values if self.fast else self.W_v(values), ragged)  # (B, d | da)
        return (pooled @ vo if self.fast else self.W_o(pooled)) + target  # (B, d)


class MeanPooling(nn.Module):
    """"QIN w/o ASTA": masked mean of the history vectors (zero for an empty history), no parameters.

    The authors' public code (salmon1802/QIN, src/QIN_variety_v9.py and v12) contains no mean-pooling
    variant; the paper only says the ablation "uses mean pooling instead of ASTA". We therefore replace the
    whole ASTA output by the plain masked mean (FuxiCTR MaskedAveragePooling semantics: sum / count of
    non-padding items): no x_t residual is added (x_t already enters the QNN as its own field) and there are
    no parameters. `input_dim` is accepted for the common attention-factory signature.
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, d) unused, history (B, S, d), mask (B, S) bool -> (B, d)
        m = mask.to(history.dtype).unsqueeze(-1)  # (B, S, 1)
        return (history * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward_packed(self, target: Tensor, values: Tensor, ragged: Ragged, mask: Tensor) -> Tensor:
        """`forward` with the history given at its non-padding positions only (values (P, d), `ragged`)."""
        total = row_sum(values.new_ones(values.shape[0]), values, ragged)  # (B, d)
        return total / mask.sum(1, keepdim=True).to(values.dtype).clamp(min=1.0)
