"""The challenge winner (1st place, valid AUC 0.9766): a Transformer over [history item | target] + DCNv2.

The winners' Transformer_DCN on FuxiCTR 2.3.7 (tech report arXiv 2505.03543):

    item i (I = 2E + P = 256)   = id (64) | masked-mean tags (64) | Linear(128, 128, no bias)(multimodal)
    s_j = [x_j | x_t]           (B, S, 2I)  every history item next to the target, no positional encoding
    z = TransformerEncoder(s, key_padding_mask)          2 post-norm layers, 1 head, feed-forward 256, dropout 0.2
    z = 0 at padding;  seq = [z_{S-k+1} ... z_S (flattened) | Linear(2I, 2I)(max over unpadded z_j)]  (k + 1) 2I
    x_0 = [likes | views | x_t | seq]                    (B, 9088)
    cross: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (3 layers)  ||  MLP [1024, 512, 256] (ReLU, dropout 0.2)
    logit = MLP [64, 32] (ReLU) -> Linear(32, 1) on [cross | MLP]            (B, 9344) -> (B,)

An all-padding history keeps its last position unmasked (the published code does this so attention has a
key): that position's output is kept, not zeroed. 267,898,881 parameters with the MicroLens vocabulary.
Shrink options (faithful defaults): `first_k_cols`, `cross_rank` (DCN-V2's low-rank U (V^T x) form),
`transformer_layers` / `feedforward_dim` / `num_heads` (the width d_model = 2I follows embedding_dim and
mm_projection_dim). `fast` (exact, on by default): the item encoder's prepared item table at inference
(models.inference), and on the CPU the transformer run on each row's span of the grid instead of all S positions
(`SequenceTransformer.encode_by_span`; the dense grid on a GPU, in an ONNX export and under torch.compile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qin_lightning.errors import ConfigError
from qin_lightning.models.interaction import MLP, init_linear
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
    ) -> None:
        super().__init__()
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
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pool_projection = nn.Linear(width, width)
        for module in self.modules():  # FuxiCTR's init: exact nn.Linear only (not MHA's out_proj subclass)
            if type(module) is nn.Linear:
                init_linear(module)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        # target (B, I), history (B, S, I), mask (B, S) bool -> (B, (k + 1) 2I)
        s = history.shape[1]
        sequence = torch.cat([history, target.unsqueeze(1).expand(-1, s, -1)], dim=-1)  # (B, S, 2I)
        last = torch.arange(s, device=mask.device) == s - 1  # (S,)
        padding = ~mask & ~(last & ~mask.any(1, keepdim=True))  # (B, S): an empty history keeps its last position
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # ONNX export traces: the dense grid
        if self.fast and not history.is_cuda and not tracing:
            z = self.encode_by_span(sequence, padding)  # (B, S, 2I), zeros before each row's first kept position
        else:
            z = self.encoder(sequence, src_key_padding_mask=padding)  # (B, S, 2I)
        z = z.masked_fill(padding.unsqueeze(-1), 0.0)
        recent = F.pad(z, (0, 0, self.first_k_cols, 0))[:, -self.first_k_cols :]  # (B, k, 2I), zeros if S < k
        pooled = z.masked_fill(padding.unsqueeze(-1), -1e9).amax(1)  # (B, 2I)
        return torch.cat([recent.flatten(1), self.pool_projection(pooled)], dim=-1)  # (B, (k + 1) 2I)

    def encode_by_span(self, sequence: Tensor, padding: Tensor) -> Tensor:
        """The encoder over the dense grid, computed exactly on less of it. A position before a row's first kept
        position is padding: masked as a key in every layer, so it never reaches a kept position, and its own
        output is zeroed. Dropping those leading columns therefore changes no kept output. Rows are grouped by
        span (S - first kept position) into buckets (S/2, S], (S/4, S/2], ..., (0, 1]; each bucket runs on its
        last `upper` columns only, so a row costs at most twice its span instead of S positions. In training,
        dropout then draws masks over fewer positions: the same distribution, other draws."""
        # sequence (B, S, W), padding (B, S) bool -> (B, S, W)
        s = sequence.shape[1]
        first_kept = (~padding).to(torch.int8).argmax(1)  # (B,); every row keeps at least one position
        span = s - first_kept  # (B,) in 1..S
        z = sequence.new_zeros(sequence.shape)
        upper = s
        while upper >= 1:
            lower = upper // 2 if upper > 1 else 0
            rows = ((span > lower) & (span <= upper)).nonzero().squeeze(1)  # (b_k,)
            if rows.numel():
                part = self.encoder(sequence[rows, s - upper :], src_key_padding_mask=padding[rows, s - upper :])
                z = z.index_put((rows.unsqueeze(1), torch.arange(s - upper, s, device=z.device)), part)
            upper = lower
        return z


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
    ) -> None:
        super().__init__()
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim, mm_projection_dim, fast)
        self.likes_embedding, self.views_embedding = level_embeddings(num_levels, embedding_dim)
        item_dim = self.items.out_dim  # I = 2E + P (256)
        self.transformer = SequenceTransformer(
            item_dim, transformer_layers, num_heads, feedforward_dim, transformer_dropout, first_k_cols, fast
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
        return self.head(self.head_mlp(both)).squeeze(-1)  # (B,)
