"""Feature-interaction networks: the Quadratic Neural Network (paper eq. 4), QNN-alpha (the authors' successor,
FuxiCTR model_zoo/QNN) and the MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qin_lightning.errors import ConfigError
from qin_lightning.models.dropout import DrawnDropout

QNN_ACTIVATIONS = ("prelu", "relu", "none")
PLACEMENTS = ("post", "mid")
DRAW_KEY = "model.net.interaction.dropout_draw"  # "torch" (nn.Dropout's masks) | "sfc64" (models.dropout)


def make_activation(name: str, key: str) -> nn.Module:
    """prelu (one shared slope, init 0.25) | relu | none."""
    if name == "prelu":
        return nn.PReLU(num_parameters=1, init=0.25)
    if name == "relu":
        return nn.ReLU()
    if name == "none":
        return nn.Identity()
    raise ConfigError(f"{key}: unknown value {name!r}, expected one of {list(QNN_ACTIVATIONS)}")


def init_linear(layer: nn.Linear) -> None:
    """Every Linear: xavier_normal weight, zero bias."""
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def logit_head(head: nn.Linear, x: Tensor) -> Tensor:
    """The output Linear(H, 1) on x (B, H) -> logits (B,), in fp32 under autocast.

    Under bf16 autocast the Linear would return bf16 logits: 8 significant bits, so logits near 4 are multiples
    of 1/32 and nearby rows tie. The ties blunt the validation AUC that picks the best epoch and stops training,
    and the loss sees rounded logits. This one product (H multiply-adds a row)
    costs nothing in fp32; without autocast it is the plain Linear in x's own dtype (float64 tests stay float64).
    """
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return head(x.float()).squeeze(-1)  # (B,) fp32
    return head(x).squeeze(-1)  # (B,)


class QuadraticLayer(nn.Module):
    """One QNN layer (eq. 4, Khatri-Rao form with R rows), residual included.

    post (published QIN, QIN_variety_v9):
        h = Dropout(Linear(D, D*R)(x)).view(B, R, D);  y = x * sum_r h_r;  y = BN_D(y);  y = act(y);
        y = Dropout(y);  return y + x
    mid (the authors' later QNN "T26" layer, salmon1802/QNN src/QNN_T26.py, the paper's "mid-activation"):
        h = Dropout(act(BN_{D*R}(Linear(D, D*R)(x)))).view(B, R, D);  y = x * sum_r h_r + x;  return Dropout(y)
      i.e. the activation (and BatchNorm, over the D*R linear output) sit inside, before the Hadamard product,
      and the layer's dropout acts after the residual sum.

    Folding (`fast`, post only, eval mode): with dropout off, sum_r (W_r x + b_r) = (sum_r W_r) x + sum_r b_r, and
    the eval BatchNorm y*s + t is absorbed too: BN(x * (W x + b)) = x * ((s W) x + s b) + t. Exact up to rounding.
    In training the R rows have separate dropout masks, so folding is never used there. The fold is computed
    from the weights each forward, or read from the prepared one (models.inference).
    """

    def __init__(
        self,
        input_dim: int,
        num_row: int,
        dropout: float,
        batch_norm: bool,
        activation: str,
        placement: str,
        fast: bool,
        dropout_draw: str = "torch",
    ) -> None:
        super().__init__()
        self.input_dim, self.num_row, self.placement = input_dim, num_row, placement
        self.fast = fast
        self.linear = nn.Linear(input_dim, input_dim * num_row)
        init_linear(self.linear)
        norm_dim = input_dim if placement == "post" else input_dim * num_row
        self.norm = nn.BatchNorm1d(norm_dim) if batch_norm else None
        self.activation = make_activation(activation, "model.net.interaction.activation")
        self.dropout_h = DrawnDropout(dropout, dropout_draw, DRAW_KEY)
        self.dropout_y = DrawnDropout(dropout, dropout_draw, DRAW_KEY)
        self.prepared: tuple[Tensor, Tensor, Tensor | None] | None = None  # the fold, once prepared

    def fold(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(W^T (D, D), b (D,), shift (D,) or None) of the folded eval-mode layer before the activation."""
        d, r = self.input_dim, self.num_row
        weight = self.linear.weight.view(r, d, d).sum(0)  # (D, D)
        bias = self.linear.bias.view(r, d).sum(0)  # (D,)
        shift = None
        if self.norm is not None:
            scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)  # (D,)
            shift = self.norm.bias - self.norm.running_mean * scale
            weight, bias = weight * scale.unsqueeze(1), bias * scale
        return weight.t(), bias, shift

    def can_fold(self) -> bool:
        bn_ok = self.norm is None or self.norm.running_mean is not None
        return self.fast and self.placement == "post" and not self.training and bn_ok

    def prepare_inference(self) -> None:
        self.prepared = self.fold() if self.can_fold() else None

    def release_inference(self) -> None:
        self.prepared = None

    def forward(self, x: Tensor) -> Tensor:
        # x (B, D) -> (B, D)
        if self.can_fold():
            weight_t, bias, shift = self.prepared if self.prepared is not None else self.fold()
            if not (torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type)):  # in place: same ops
                y = torch.addmm(bias, x, weight_t).mul_(x)  # (B, D)
                if shift is not None:
                    y.add_(shift)
                return self.activation(y).add_(x)  # eval: dropout is the identity
            y = x * torch.addmm(bias, x, weight_t)  # (B, D)
            if shift is not None:
                y = y + shift
            return self.dropout_y(self.activation(y)) + x
        h = self.linear(x)  # (B, D*R)
        rows = (-1, self.num_row, self.input_dim)  # dropout on the (B, R, D) view: the sum's gradient needs no copy
        if self.placement == "mid":
            if self.norm is not None:
                h = self.norm(h)
            h = self.dropout_h(self.activation(h).view(rows))  # (B, R, D)
            return self.dropout_y(x * h.sum(1) + x)
        h = self.dropout_h(h.view(rows))  # (B, R, D)
        y = x * h.sum(1)  # (B, D)
        if self.norm is not None:
            y = self.norm(y)
        return self.dropout_y(self.activation(y)) + x


class QuadraticNetwork(nn.Module):
    """QNN (paper eq. 4): `num_layers` quadratic layers of width D = input_dim, R = `num_row` rows each.

    `fast`: every layer's exact folded eval form (post placement only; see QuadraticLayer)."""

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 4,
        num_row: int = 4,
        dropout: float = 0.1,
        batch_norm: bool = True,
        activation: str = "prelu",
        placement: str = "post",
        fast: bool = True,
        dropout_draw: str = "torch",
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(
                f"model.net.interaction.placement: unknown value {placement!r}, expected one of {list(PLACEMENTS)}"
            )
        if activation not in QNN_ACTIVATIONS:
            raise ConfigError(
                f"model.net.interaction.activation: unknown value {activation!r}, expected one of "
                f"{list(QNN_ACTIVATIONS)}"
            )
        self.out_dim = input_dim
        self.layers = nn.ModuleList(
            QuadraticLayer(input_dim, num_row, dropout, batch_norm, activation, placement, fast, dropout_draw)
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        # x (B, D) -> (B, D)
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(nn.Module):
    """Plain MLP ("QIN w/o QNN"): per layer Linear -> BatchNorm -> activation -> Dropout (FuxiCTR MLP_Block)."""

    def __init__(
        self,
        input_dim: int,
        hidden_units: list[int] = [1024, 512, 256],  # noqa: B006 (never mutated; Hydra-friendly default)
        dropout: float = 0.1,
        batch_norm: bool = True,
        activation: str = "relu",
        dropout_draw: str = "torch",
    ) -> None:
        super().__init__()
        if len(hidden_units) == 0:
            raise ConfigError("model.net.interaction.hidden_units: empty list, expected at least one layer width")
        layers: list[nn.Module] = []
        width = input_dim
        for units in hidden_units:
            linear = nn.Linear(width, units)
            init_linear(linear)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(make_activation(activation, "model.net.interaction.activation"))
            if dropout > 0:
                layers.append(DrawnDropout(dropout, dropout_draw, DRAW_KEY))
            width = units
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        # x (B, D) -> (B, hidden_units[-1])
        return self.net(x)


class QuadraticAlphaLayer(nn.Module):
    """One QNN-alpha layer (the authors' successor of QNN, FuxiCTR model_zoo/QNN), residual included.

    x (B, D) is F fields of width e (D = F e); each field is split into H chunks of e/H, head h holding chunk h
    of every field: x_h (B, H, D/H).
        h = Dropout(ReLU(BN_{R D}(Linear(D, R D)(x)))).view(B, H, R, D/H)   (activation inside the branch)
        y = sum_r x_h * h_r                                                   (B, H, D/H), Khatri-Rao form
        out = Dropout(flatten(y) + x)
    The published code flattens y head-major while the residual x is field-major: for H > 1 it adds chunk j
    of y to a different position of x (a quirk). `align_heads=True` flattens y back in x's field order (the
    evident intent); off by default. With H = 1 both orders are the same. No folding: the ReLU sits between
    the linear map and the product, so the R rows cannot be summed into one matrix.
    """

    def __init__(
        self,
        input_dim: int,
        field_dim: int,
        num_row: int,
        num_heads: int,
        dropout: float,
        batch_norm: bool,
        align_heads: bool,
        dropout_draw: str = "torch",
    ) -> None:
        super().__init__()
        if input_dim % field_dim or field_dim % num_heads:
            raise ConfigError(
                f"model.net.interaction: input width {input_dim} must be a multiple of field_dim {field_dim}, "
                f"and field_dim a multiple of num_heads {num_heads}"
            )
        self.input_dim, self.field_dim, self.num_row, self.num_heads = input_dim, field_dim, num_row, num_heads
        self.align_heads = align_heads
        self.linear = nn.Linear(input_dim, input_dim * num_row)
        init_linear(self.linear)
        self.norm = nn.BatchNorm1d(input_dim * num_row) if batch_norm else None
        self.dropout_h = DrawnDropout(dropout, dropout_draw, DRAW_KEY)
        self.dropout_y = DrawnDropout(dropout, dropout_draw, DRAW_KEY)

    def forward(self, x: Tensor) -> Tensor:
        # x (B, D) -> (B, D)
        b, d, hd = x.shape[0], self.input_dim, self.num_heads
        fields, chunk = d // self.field_dim, self.field_dim // hd
        heads = x.view(b, fields, hd, chunk).transpose(1, 2).reshape(b, hd, d // hd)  # (B, H, D/H)
        h = self.linear(x)  # (B, R D)
        if self.norm is not None:
            h = self.norm(h)
        h = self.dropout_h(torch.relu(h)).view(b, hd, self.num_row, d // hd)  # (B, H, R, D/H)
        y = (heads.unsqueeze(2) * h).sum(2)  # (B, H, D/H)
        if self.align_heads:  # back to x's field-major order
            y = y.view(b, hd, fields, chunk).transpose(1, 2)  # (B, F, H, e/H)
        return self.dropout_y(y.reshape(b, d) + x)


class QuadraticAlphaNetwork(nn.Module):
    """QNN-alpha's interaction part: `num_layers` QuadraticAlphaLayers of width D (the head is the model's)."""

    def __init__(
        self,
        input_dim: int,
        field_dim: int,
        num_layers: int = 3,
        num_row: int = 2,
        num_heads: int = 1,
        dropout: float = 0.1,
        batch_norm: bool = True,
        align_heads: bool = False,
        dropout_draw: str = "torch",
    ) -> None:
        super().__init__()
        self.out_dim = input_dim
        self.layers = nn.ModuleList(
            QuadraticAlphaLayer(input_dim, field_dim, num_row, num_heads, dropout, batch_norm, align_heads,
                                dropout_draw)
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        # x (B, D) -> (B, D)
        for layer in self.layers:
            x = layer(x)
        return x
