"""The official DIN baseline of the challenge: the same inputs and item representation as QIN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qin_lightning.models.dropout import check_draw, dropout_mask
from qin_lightning.models.history import DistinctItems, attend, can_pack, lookup_items
from qin_lightning.models.interaction import MLP, init_linear, logit_head
from qin_lightning.models.items import ItemEncoder, level_embeddings
from qin_lightning.models.ragged import Ragged, row_sum


def relu_dropout(h: Tensor, dropout: nn.Dropout, draw: str = "torch") -> Tensor:
    """dropout(relu(h)) as one product h * mask, for 0 < p < 1 in training ("sfc64" draws on the CPU).

    torch: the mask is the noise nn.Dropout draws for relu(h) on the CPU (bernoulli(1 - p) over h's shape, divided
    by 1 - p) times (h > 0): the same draws, values and gradients as the two modules.
    sfc64: on a CPU tensor the mask is `models.dropout.sfc64_keep_mask` instead (seeded from torch's default
    generator, kept with the same probability, other draws).
    """
    mask = dropout_mask(h, 1.0 - dropout.p, draw)  # (..., H), as F.dropout draws it for relu(h) with "torch"
    positive = torch.gt(h, 0, out=torch.empty_like(h))  # (..., H) 1.0 where h > 0: written as floats, no bool copy
    return h * mask.mul_(positive)


class DINAttention(nn.Module):
    """DIN attention (FuxiCTR DIN_Attention): MLP on [t, x, t - x, t * x] -> one score per history item.

    Hidden layers Linear -> ReLU -> Dropout (no BatchNorm, no output activation); scores are multiplied by the
    mask (no softmax) and weight a plain sum of the history vectors.
    """

    def __init__(self, input_dim: int, hidden_units: list[int], dropout: float, dropout_draw: str = "torch") -> None:
        super().__init__()
        # the mask generator of the packed (CPU) form's relu_dropout
        self.dropout_draw = check_draw(dropout_draw, "model.net.attention_dropout_draw")
        self.mlp = MLP(4 * input_dim, hidden_units, dropout=dropout, batch_norm=False, activation="relu")
        self.score = nn.Linear(self.mlp.out_dim, 1)
        init_linear(self.score)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, d), history (B, S, d), mask (B, S) bool -> (B, d)
        b, s, d = history.shape
        t = target.unsqueeze(1).expand(-1, s, -1)  # (B, S, d)
        features = torch.cat([t, history, t - history, t * history], dim=-1).reshape(b * s, 4 * d)
        weights = self.score(self.mlp(features)).view(b, s) * mask.to(history.dtype)  # (B, S)
        return torch.bmm(weights.unsqueeze(1), history).squeeze(1)  # (B, d)

    def forward_packed(
        self, target: Tensor, values: Tensor, ragged: Ragged, mask: Tensor, distinct: DistinctItems | None = None
    ) -> Tensor:
        """`forward` with the history given at its non-padding positions only: values (P, d), `ragged`;
        `distinct`: the same values as U distinct items (U, d) and their inverse (P,), if the caller has them.

        Padding positions have weight score * 0 = 0 and zero vectors, so they add exact zeros in `forward`.
        In eval mode (or without dropout) the output is the same function; in training the attention-MLP
        dropout draws masks for the P real positions only (same distribution, different random stream). The
        first layer is split (`first_layer`): half the multiply-adds per position, or a quarter with `distinct`.
        """
        t = target.index_select(0, ragged.rows)  # (P, d)
        hidden = self.hidden_layers(self.first_layer(target, t, values, ragged, distinct))  # (P, H_last)
        weights = self.score(hidden).squeeze(-1)  # (P,)
        return row_sum(weights, values, ragged)  # (B, d)

    def hidden_layers(self, x: Tensor) -> Tensor:
        """The attention MLP after its first Linear (`mlp.net[1:]`, the literal reference), each ReLU -> Dropout
        pair run as `relu_dropout` in training (the same function; the same draws with dropout_draw "torch")."""
        layers = list(self.mlp.net)[1:]
        index = 0
        while index < len(layers):
            layer, after = layers[index], layers[index + 1] if index + 1 < len(layers) else None
            if self.training and isinstance(layer, nn.ReLU) and isinstance(after, nn.Dropout) and 0 < after.p < 1:
                x, index = relu_dropout(x, after, self.dropout_draw), index + 2
            else:
                x, index = layer(x), index + 1
        return x

    def first_layer(
        self, target: Tensor, t: Tensor, values: Tensor, ragged: Ragged, distinct: DistinctItems | None = None
    ) -> Tensor:
        """The MLP's first Linear on [t, x, t - x, t * x] without the (P, 4d) features (exact algebra):
        W [t; x; t - x; t * x] + b = ((W_t + W_d) t + b) + (W_x - W_d) x + W_p (t * x),
        the t-term once per row (B), the x-term once per item, only the (t * x)-term per history position.
        The x-term depends on the item alone: with `distinct` it is computed for the U distinct items and
        gathered to the P positions (U << P on real batches); without, once per position."""
        linear = self.mlp.net[0]
        w_t, w_x, w_d, w_p = linear.weight.split(values.shape[1], dim=1)  # 4 x (H, d)
        per_row = F.linear(target, w_t + w_d, linear.bias).index_select(0, ragged.rows)  # (P, H)
        if distinct is None:
            per_item = F.linear(values, w_x - w_d)  # (P, H)
        else:
            per_item = F.linear(distinct.values, w_x - w_d).index_select(0, distinct.inverse)  # (U, H) -> (P, H)
        return torch.addmm(per_row + per_item, t * values, w_p.t())  # (P, H) + (P, d) @ (d, H)


class DIN(nn.Module):
    """Deep Interest Network baseline; `forward` returns logits (B,).

    Facts (from the challenge's DIN_default template and its MicroLens tuner config, checked against FuxiCTR
    DIN / DIN_Attention / MLP_Block): ids, tags and levels embedded in 64 dimensions, the multimodal projection
    in 128 (items 64 + 64 + 128 = 256-d); attention MLP [512, 256] with ReLU and dropout 0.1 on
    [t, x, t - x, t * x] (1024 in); DNN [1024, 512, 256] on [likes | views | target | pooled] (640 in) with
    Linear -> BN -> ReLU -> Dropout, then Linear -> logit. 8,611,842 parameters with the MicroLens vocabulary.
    The challenge's template uses Dice in the attention MLP; the QIN paper's DIN baseline uses ReLU, which we
    follow. `dnn_dropout` 0.1 is the tuner's net_dropout (the template's is 0). `fast` (exact): the prepared
    item table, and packed histories (see models.history): only the non-padding items are attended, each distinct
    history item of the batch encoded once, with the attention MLP's first layer split so that the target's part is
    computed once per row and the item's part once per distinct item (`DINAttention.first_layer`), and each ReLU ->
    Dropout pair of it as one product. `attention_dropout_draw` (that packed form's dropout masks): "torch" (the
    draws nn.Dropout makes) or "sfc64" (`models.dropout.sfc64_keep_mask`: the same distribution, other draws, a
    faster CPU step; see `relu_dropout`).
    """

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 64,
        num_levels: int = 11,
        mm_projection_dim: int = 128,
        attention_units: list[int] = [512, 256],  # noqa: B006
        attention_dropout: float = 0.1,
        dnn_units: list[int] = [1024, 512, 256],  # noqa: B006
        dnn_dropout: float = 0.1,
        batch_norm: bool = True,
        fast: bool = True,
        attention_dropout_draw: str = "torch",
    ) -> None:
        super().__init__()
        self.fast = fast
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim, mm_projection_dim, fast)
        self.likes_embedding, self.views_embedding = level_embeddings(num_levels, embedding_dim)
        item_dim = self.items.out_dim  # I = 2E + P (256)
        self.attention = DINAttention(item_dim, list(attention_units), attention_dropout, attention_dropout_draw)
        self.dnn = MLP(2 * embedding_dim + 2 * item_dim, list(dnn_units), dnn_dropout, batch_norm, "relu")
        self.head = nn.Linear(self.dnn.out_dim, 1)
        init_linear(self.head)

    def forward(self, item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> Tensor:
        # item_seq (B, S), item_id / likes_level / views_level (B,) -> logits (B,)
        pack = self.fast and can_pack(self.attention, item_seq)
        # (B, I), and (B, S, I) or packed with its distinct items
        target, history = lookup_items(self.items, item_seq, item_id, pack, distinct=pack)
        pooled = attend(self.attention, target, history, item_seq > 0)  # (B, I)
        levels = [self.likes_embedding(likes_level), self.views_embedding(views_level)]  # 2 x (B, E)
        x = torch.cat([*levels, target, pooled], dim=-1)  # (B, 2E + 2I) = (B, 640)
        return logit_head(self.head, self.dnn(x))  # (B,), fp32 logits
