"""The challenge winner (1st place, valid AUC 0.9766): a Transformer over [history item | target] + DCNv2.

The winners' Transformer_DCN on FuxiCTR 2.3.7 (tech report arXiv 2505.03543):

    item i (I = 2E + P = 256)   = id (64) | masked-mean tags (64) | Linear(128, 128, no bias)(multimodal)
    s_j = [x_j | x_t]           (B, S, 2I)  every history item next to the target, no positional encoding
    z = TransformerEncoder(s, key_padding_mask)          2 post-norm layers, 1 head, feed-forward 256, dropout 0.2
    z = 0 at padding;  seq = [z_{S-k+1} ... z_S (flattened) | Linear(2I, 2I)(max over unpadded z_j)]  (k + 1) 2I
    x_0 = [likes | views | x_t | seq]                    (B, 9088)
    cross: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (3 layers)  ||  MLP [1024, 512, 256] (ReLU, dropout 0.2)
    logit = MLP [64, 32] (ReLU) -> Linear(32, 1) on [cross | MLP]            (B, 9344) -> (B,)

`history_mask` (default `published`, the winners' code): their data loader's mask is 1 at a history item and
their Transformer passes it as `src_key_padding_mask` (True = ignore), so attention masks the history items and
attends to the padding positions, the outputs at the history items are zeroed and the max-pool runs over the
padding positions; a full history keeps its last position (their `adjust_mask` unmasks the last position of a
row whose mask is all ones). The history items therefore never reach the output except the last one of a full
history; what does is the target, the padding item's vector and how many of the last `first_k_cols` positions
are padding (experiments/peer/README.md has the probe). `history`: the mask the code's comments intend (padding
masked, history attended; an all-padding history keeps its last position unmasked so attention has a key).
267,898,881 parameters with the MicroLens vocabulary (either mask).
Shrink options (faithful defaults): `first_k_cols`, `cross_rank` (DCN-V2's low-rank U (V^T x) form),
`transformer_layers` / `feedforward_dim` / `num_heads` (the width d_model = 2I follows embedding_dim and
mm_projection_dim). `fast` (exact, on by default): the item encoder's prepared item table at inference
(models.inference), and with `history_mask=history` on the CPU the transformer run on each row's span of the
grid instead of all S positions (`SequenceTransformer.encode_by_span`; the dense grid on a GPU, in an ONNX
export and under torch.compile), each span batch-first with the target's half of the first in-projection once
per row (`PairEncoder`; the same dropout draws as nn.TransformerEncoder when the spans are the whole grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qin_lightning.errors import ConfigError
from qin_lightning.models.interaction import MLP, init_linear, logit_head
from qin_lightning.models.items import ItemEncoder, level_embeddings


class CrossNetV2(nn.Module):
    """DCN-V2 cross network: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, W_l full rank (d x d) or U_l V_l^T of rank r."""

    def __init__(self, input_dim: int, num_layers: int = 3, rank: int | None = None) -> None:
        super().__init__()
        self.out_dim = input_dim
        self.layers = nn.ModuleList(self._layer(input_dim, rank) for _ in range(num_layers))

    @staticmethod
    def _layer(dim: int, rank: int | None) -> nn.Module:
        if rank is None:
            layer = nn.Linear(dim, dim)
            init_linear(layer)
            return layer
        if rank < 1:
            raise ConfigError(f"model.net.cross_rank: {rank}, expected null (full rank) or a positive rank")
        down, up = nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim)  # V^T, then U (+ b)
        init_linear(down)
        init_linear(up)
        return nn.Sequential(down, up)

    def forward(self, x0: Tensor) -> Tensor:
        # x0 (B, d) -> (B, d)
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class PairEncoder(nn.TransformerEncoder):
    """nn.TransformerEncoder (batch-first, post-norm, ReLU, no final norm) over positions [history item | target].

    Called with the target (b, T) as well, it computes the same function batch-first, without the (S, b)
    transposes and copies of nn.MultiheadAttention: one in-projection, `scaled_dot_product_attention` on
    (b, heads, S, W / heads) views, the layers' own out-projection, dropouts and norms in the same order. In the
    first layer the target's half of the in-projection is computed once per row instead of at every position:
    W [x_j; x_t] + b = W_x x_j + (W_t x_t + b). Without the target it is nn.TransformerEncoder's own forward: the
    literal reference (tests/test_transformer_dcn_fast.py holds the two to float64 rounding, logits and gradients).
    """

    def forward(self, src: Tensor, src_key_padding_mask: Tensor, target: Tensor | None = None) -> Tensor:
        # src (b, S, W) with W = I + T, src_key_padding_mask (b, S) True = padding, target (b, T) -> (b, S, W)
        if target is None:
            return super().forward(src, src_key_padding_mask=src_key_padding_mask)
        b, s, width = src.shape
        history_width = width - target.shape[1]
        keep = ~src_key_padding_mask.view(b, 1, 1, s)  # (b, 1, 1, S) True = attend to that key
        x = src
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            heads = attention.num_heads
            if index == 0:
                w_history, w_target = attention.in_proj_weight.split([history_width, target.shape[1]], dim=1)
                per_row = F.linear(target, w_target, attention.in_proj_bias)  # (b, 3W)
                qkv = F.linear(src[..., :history_width], w_history) + per_row.unsqueeze(1)  # (b, S, 3W)
            else:
                qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)  # (b, S, 3W)
            q, k, v = qkv.view(b, s, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x (b, h, S, W / h)
            dropout = attention.dropout if self.training else 0.0
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)  # (b, h, S, W/h)
            # out-projection in (S, b) order as nn.MultiheadAttention has it: dropout1 then draws the same mask
            attended = attention.out_proj(attended.permute(2, 0, 1, 3).reshape(s * b, width))  # (S b, W)
            attended = attended.view(s, b, width).transpose(0, 1)  # (b, S, W), stored (S, b, W)
            x = layer.norm1(x + layer.dropout1(attended))
            x = layer.norm2(x + layer.dropout2(layer.linear2(layer.dropout(F.relu(layer.linear1(x))))))
        return x


HISTORY_MASKS = ("published", "history")


class SequenceTransformer(nn.Module):
    """[history item | target] sequence -> last `first_k_cols` outputs flattened + projected masked max-pool."""

    def __init__(
        self,
        item_dim: int,
        num_layers: int,
        num_heads: int,
        feedforward_dim: int,
        dropout: float,
        first_k_cols: int,
        fast: bool = True,
        history_mask: str = "published",
    ) -> None:
        super().__init__()
        if history_mask not in HISTORY_MASKS:
            raise ConfigError(f"model.net.history_mask: {history_mask!r}, expected one of {', '.join(HISTORY_MASKS)}")
        self.history_mask = history_mask  # published: the winners' code masks the history items (module docstring)
        self.fast = fast  # encode rows grouped by history span (exact); False: the dense (B, S) grid
        width = 2 * item_dim
        if first_k_cols < 1 or width % num_heads:
            raise ConfigError(
                f"model.net: first_k_cols {first_k_cols} must be >= 1 and the width {width} a multiple of "
                f"num_heads {num_heads}"
            )
        self.first_k_cols = first_k_cols
        self.out_dim = (first_k_cols + 1) * width
        layer = nn.TransformerEncoderLayer(
            width, num_heads, feedforward_dim, dropout, activation="relu", batch_first=True, norm_first=False
        )
        # no nested tensors: the same dense computation in training, eval and the ONNX graph
        self.encoder = PairEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pool_projection = nn.Linear(width, width)
        for module in self.modules():  # FuxiCTR's init: exact nn.Linear only (not MHA's out_proj subclass)
            if type(module) is nn.Linear:
                init_linear(module)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, I), history (B, S, I), mask (B, S) bool -> (B, (k + 1) 2I)
        s = history.shape[1]
        sequence = torch.cat([history, target.unsqueeze(1).expand(-1, s, -1)], dim=-1)  # (B, S, 2I)
        last = torch.arange(s, device=mask.device) == s - 1  # (S,)
        if self.history_mask == "published":  # their loader's mask (True = history item) as the key-padding mask
            padding = mask & ~(last & mask.all(1, keepdim=True))  # (B, S): a full history keeps its last position
        else:
            padding = ~mask & ~(last & ~mask.any(1, keepdim=True))  # (B, S): an empty history keeps its last position
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # ONNX export traces: the dense grid
        spans = self.history_mask == "history"  # the kept positions are each row's suffix only in this form
        if self.fast and spans and not history.is_cuda and not tracing:
            z = self.encode_by_span(sequence, padding, target)  # (B, S, 2I), zeros before each row's first kept
        else:
            z = self.encoder(sequence, src_key_padding_mask=padding)  # (B, S, 2I)
        z = z.masked_fill(padding.unsqueeze(-1), 0.0)
        k = self.first_k_cols
        recent = z[:, -k:] if s >= k else F.pad(z, (0, 0, k - s, 0))  # (B, k, 2I), zeros in front if S < k
        pooled = z.masked_fill(padding.unsqueeze(-1), -1e9).amax(1)  # (B, 2I)
        return torch.cat([recent.flatten(1), self.pool_projection(pooled)], dim=-1)  # (B, (k + 1) 2I)

    def encode_by_span(self, sequence: Tensor, padding: Tensor, target: Tensor) -> Tensor:
        """The encoder over the dense grid, computed exactly on less of it. A position before a row's first kept
        position is padding: masked as a key in every layer, so it never reaches a kept position, and its own
        output is zeroed. Dropping those leading columns therefore changes no kept output. Rows are grouped by
        span (S - first kept position) into buckets (S/2, S], (S/4, S/2], ..., (0, 1]; each bucket runs on its
        last `upper` columns only, so a row costs at most twice its span instead of S positions. In training,
        dropout then draws masks over fewer positions: the same distribution, other draws. Each bucket runs the
        encoder's batch-first form (`PairEncoder`, given the rows' targets)."""
        # sequence (B, S, W), padding (B, S) bool, target (B, I) -> (B, S, W)
        s = sequence.shape[1]
        first_kept = (~padding).to(torch.int8).argmax(1)  # (B,); every row keeps at least one position
        span = s - first_kept  # (B,) in 1..S
        parts, order = [], []  # each bucket's outputs zero-padded in front to S columns, and its rows
        upper = s
        while upper >= 1:
            lower = upper // 2 if upper > 1 else 0
            rows = ((span > lower) & (span <= upper)).nonzero().squeeze(1)  # (b_k,)
            if rows.numel():
                part = self.encoder(sequence[rows, s - upper :], padding[rows, s - upper :], target[rows])
                parts.append(F.pad(part, (0, 0, s - upper, 0)) if upper < s else part)  # (b_k, S, W)
                order.append(rows)
            upper = lower
        z = torch.cat(parts) if len(parts) > 1 else parts[0]  # (B, S, W), rows in bucket order
        rows = torch.cat(order)  # (B,) the row of each entry of z
        if torch.equal(rows, torch.arange(len(rows), device=rows.device)):
            return z
        place = torch.empty_like(rows).scatter_(0, rows, torch.arange(len(rows), device=rows.device))
        return z.index_select(0, place)  # (B, S, W) in row order


class TransformerDCN(nn.Module):
    """The 1st-place model of the challenge; `forward` returns logits (B,). See the module docstring."""

    # ONNX: the traced nn.MultiheadAttention records the sequence length as a constant, so an export serves
    # exactly the history length it was traced with (qin_lightning.export reads this)
    dynamic_history = False

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 64,
        num_levels: int = 11,
        mm_projection_dim: int = 128,
        transformer_layers: int = 2,
        num_heads: int = 1,
        feedforward_dim: int = 256,
        transformer_dropout: float = 0.2,
        first_k_cols: int = 16,
        cross_layers: int = 3,
        cross_rank: int | None = None,
        dnn_units: list[int] = [1024, 512, 256],  # noqa: B006
        dnn_dropout: float = 0.2,
        head_units: list[int] = [64, 32],  # noqa: B006
        fast: bool = True,
        history_mask: str = "published",
    ) -> None:
        super().__init__()
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim, mm_projection_dim, fast)
        self.likes_embedding, self.views_embedding = level_embeddings(num_levels, embedding_dim)
        item_dim = self.items.out_dim  # I = 2E + P (256)
        self.transformer = SequenceTransformer(
            item_dim, transformer_layers, num_heads, feedforward_dim, transformer_dropout, first_k_cols, fast,
            history_mask,
        )
        dcn_dim = 2 * embedding_dim + item_dim + self.transformer.out_dim  # 9,088
        self.cross = CrossNetV2(dcn_dim, cross_layers, cross_rank)
        self.dnn = MLP(dcn_dim, list(dnn_units), dnn_dropout, batch_norm=False, activation="relu")
        self.head_mlp = MLP(dcn_dim + self.dnn.out_dim, list(head_units), 0.0, batch_norm=False, activation="relu")
        self.head = nn.Linear(self.head_mlp.out_dim, 1)
        init_linear(self.head)

    def forward(self, item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> Tensor:
        # item_seq (B, S), item_id / likes_level / views_level (B,) -> logits (B,)
        vectors = self.items(torch.cat([item_seq, item_id.unsqueeze(1)], dim=1))  # (B, S + 1, I), one lookup
        history, target = vectors[:, :-1], vectors[:, -1]  # (B, S, I), (B, I)
        sequence = self.transformer(target, history, item_seq > 0)  # (B, (k + 1) 2I)
        levels = [self.likes_embedding(likes_level), self.views_embedding(views_level)]  # 2 x (B, E)
        x0 = torch.cat([*levels, target, sequence], dim=-1)  # (B, 2E + I + (k + 1) 2I) = (B, 9088)
        both = torch.cat([self.cross(x0), self.dnn(x0)], dim=-1)  # (B, 9088 + 256)
        return logit_head(self.head, self.head_mlp(both))  # (B,), fp32 logits
