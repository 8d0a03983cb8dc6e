"""Model parts: parameter counts of the published models, shapes, padding, config errors."""

from __future__ import annotations

import functools

import pytest
import torch
from probes import forward_calls, path_taken, projections
from torch import nn

from qin_lightning.errors import ConfigError
from qin_lightning.models.attention import MeanPooling, TargetAttention
from qin_lightning.models.din import DIN
from qin_lightning.models.interaction import MLP, QuadraticAlphaLayer, QuadraticAlphaNetwork, QuadraticNetwork
from qin_lightning.models.items import ItemEncoder
from qin_lightning.models.parameter_groups import dense_parameters, embedding_parameters
from qin_lightning.models.qin import QIN

ACTIVATIONS = ["relu", "softmax", "silu", "relu2"]


def count(params) -> int:
    return sum(p.numel() for p in params)


def tiny_tables(num_items: int = 30, num_tags: int = 12, mm_dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tags = torch.randint(0, num_tags, (num_items, 5), generator=g)
    tags[:, :2] = 0  # left padding of the tag lists
    tags[3] = 0  # an item without tags
    mm = torch.randn(num_items, mm_dim, generator=g)
    tags[0], mm[0] = 0, 0.0
    return tags, mm, num_tags


def tiny_batch(batch: int = 6, seq: int = 7, num_items: int = 30, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    item_seq = torch.randint(1, num_items, (batch, seq), generator=g)
    lengths = torch.tensor([seq, 3, 1, 0, 5, 2][:batch])
    for i, n in enumerate(lengths.tolist()):  # left padded, most recent last
        item_seq[i, : seq - n] = 0
    item_id = torch.randint(1, num_items, (batch,), generator=g)
    likes = torch.randint(0, 11, (batch,), generator=g)
    views = torch.randint(0, 11, (batch,), generator=g)
    return item_seq, item_id, likes, views


def tiny_qin(**overrides) -> QIN:
    tags, mm, num_tags = tiny_tables()
    kwargs = dict(
        embedding_dim=4,
        attention=functools.partial(TargetAttention),
        interaction=functools.partial(QuadraticNetwork, num_layers=2, num_row=3, dropout=0.0),
    )
    kwargs.update(overrides)
    return QIN(tags, mm, num_tags, **kwargs)


# --- parameter counts (the authors' QIN_variety_v9 and its published training log) -----------------------------

@pytest.fixture(scope="module")
def microlens_tables():
    tags = torch.zeros(91718, 5, dtype=torch.long)
    tags[1, -1] = 11739  # max tag id -> vocabulary 11,740
    return tags, torch.zeros(91718, 128)


def test_qin_parameter_count_matches_published(microlens_tables):
    tags, mm = microlens_tables
    model = QIN(tags, mm, num_tags=int(tags.max()) + 1)
    assert count(model.parameters()) == 31_244_293
    assert count(embedding_parameters(model)) == 13_261_824
    assert count(model.attention.parameters()) == 1_179_648
    assert count(model.interaction.parameters()) + count(model.head.parameters()) == 16_802_821


def test_qin_parameter_count_num_row_3(microlens_tables):
    tags, mm = microlens_tables
    model = QIN(tags, mm, 11740, interaction=functools.partial(QuadraticNetwork, num_row=3))
    assert count(model.parameters()) == 27_045_893


def test_din_parameter_count(microlens_tables):
    # the challenge's DIN config: E = 64, the multimodal projection keeps 128 -> items 64 + 64 + 128 = 256.
    # embeddings: ids 91718*64 = 5,869,952; tags 11740*64 = 751,360; mm projection 128*128 = 16,384;
    #             likes + views 2*11*64 = 1,408                                     -> 6,639,104
    # attention MLP on 4*256 = 1024: 1024*512+512 + 512*256+256 + 256*1+1            ->   656,385
    # DNN on 64+64+256+256 = 640, each layer Linear + BN (2 per unit):
    #   640*1024+1024+2048 + 1024*512+512+1024 + 512*256+256+512, head 256+1       -> 1,316,353
    tags, mm = microlens_tables
    model = DIN(tags, mm, 11740)
    assert model.items.out_dim == 256
    assert count(embedding_parameters(model)) == 6_639_104
    assert count(model.attention.parameters()) == 656_385
    assert count(model.dnn.parameters()) + count(model.head.parameters()) == 1_316_353
    assert count(model.parameters()) == 8_611_842


def test_parameter_groups_partition_all_parameters():
    for model in (tiny_qin(), DIN(*tiny_tables(), embedding_dim=4, attention_units=[8], dnn_units=[8, 4])):
        emb, dense = embedding_parameters(model), dense_parameters(model)
        assert {id(p) for p in emb}.isdisjoint({id(p) for p in dense})
        assert len(emb) + len(dense) == len(list(model.parameters()))
        assert any(p is model.items.mm_projection.weight for p in emb)


# --- item encoder ------------------------------------------------------------------------------------------

def test_item_encoder_layout_and_padding():
    tags, mm, num_tags = tiny_tables()
    enc = ItemEncoder(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4)
    with torch.no_grad():  # make everything non-zero, including the padding rows
        enc.id_embedding.weight.normal_()
        enc.tag_embedding.weight.normal_()
    ids = torch.tensor([0, 1, 3, 7])
    out = enc.encode(ids)
    assert out.shape == (4, 12)
    assert torch.equal(out[0], torch.zeros(12))  # padding item: all zero, enforced
    i = 7
    real = tags[i][tags[i] > 0]
    expected_tags = enc.tag_embedding.weight[real].mean(0) if len(real) else torch.zeros(4)
    torch.testing.assert_close(out[3, :4], enc.id_embedding.weight[i])
    torch.testing.assert_close(out[3, 4:8], expected_tags)
    torch.testing.assert_close(out[3, 8:], enc.mm_projection(mm[i]))
    assert torch.equal(out[2, 4:8], torch.zeros(4))  # item 3 has no tags -> zero tag block


def test_item_encoder_projection_width_is_its_own_setting():
    tags, mm, num_tags = tiny_tables()
    default = ItemEncoder(tags, mm, num_tags, embedding_dim=4)  # 128 for every model (the dataset config)
    assert default.mm_projection.weight.shape == (128, 8) and default.out_dim == 4 + 4 + 128
    narrow = ItemEncoder(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=6)
    assert narrow.encode(torch.tensor([1, 2])).shape == (2, 14) and narrow.out_dim == 14


def test_item_encoder_init_and_state_dict():
    tags, mm, num_tags = tiny_tables(num_items=2000)
    enc = ItemEncoder(tags, mm, num_tags, embedding_dim=16)
    w = enc.id_embedding.weight
    assert torch.equal(w[0], torch.zeros(16))
    assert 0.5e-4 < w[1:].std().item() < 2e-4
    state = enc.state_dict()
    assert torch.equal(state["item_tags"], tags) and torch.equal(state["item_mm"], mm)


def test_level_row_zero_is_padding():
    model = tiny_qin()
    assert torch.equal(model.likes_embedding.weight[0], torch.zeros(4))
    assert model.likes_embedding.padding_idx == 0 and model.views_embedding.padding_idx == 0


# --- whole models ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_qin_shapes_and_empty_history_finite(activation):
    model = tiny_qin(attention=functools.partial(TargetAttention, activation=activation))
    item_seq, item_id, likes, views = tiny_batch()
    assert (item_seq[3] == 0).all()  # one empty history
    logits = model(item_seq, item_id, likes, views)
    assert logits.shape == (6,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_din_shapes_and_empty_history():
    model = DIN(*tiny_tables(), embedding_dim=4, attention_units=[8, 4], dnn_units=[16, 8])
    logits = model(*tiny_batch())
    assert logits.shape == (6,) and torch.isfinite(logits).all()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("model_name", ["qin", "din", "mean"])
def test_padding_length_invariance(model_name, fast):
    """More left padding (longer S) must not change any output; the dense form really sees the padding."""
    if model_name == "din":
        model = DIN(*tiny_tables(), embedding_dim=4, attention_units=[8], dnn_units=[8], fast=fast)
    elif model_name == "mean":
        model = tiny_qin(attention=MeanPooling, fast=fast)
    else:
        model = tiny_qin(fast=fast)
    model.eval()
    item_seq, item_id, likes, views = tiny_batch()
    longer = torch.cat([torch.zeros(6, 9, dtype=torch.long), item_seq], dim=1)
    with torch.no_grad(), path_taken(model) as taken:
        a = model(item_seq, item_id, likes, views)
        b = model(longer, item_id, likes, views)
    assert taken["packed"] == fast
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_attention_ignores_padding_content(activation, fast):
    torch.manual_seed(0)
    attn = TargetAttention(6, activation=activation, fast=fast).double()
    target, history = torch.randn(4, 6).double(), torch.randn(4, 5, 6).double()
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]).bool()
    clean = history * mask.unsqueeze(-1)
    garbage = clean + 100.0 * torch.randn_like(history) * (~mask).unsqueeze(-1)
    with forward_calls(*projections(attn)) as calls:
        out = attn(target, clean, mask)
    assert bool(calls) != fast  # the form the switch names really ran
    torch.testing.assert_close(attn(target, garbage, mask), out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[3], target[3])  # empty history: o = W_o 0 + x_t


def test_mean_pooling():
    pool = MeanPooling(3)
    history = torch.arange(12.0).view(2, 2, 3)
    mask = torch.tensor([[True, True], [False, False]])
    out = pool(torch.zeros(2, 3), history, mask)
    torch.testing.assert_close(out[0], history[0].mean(0))
    assert torch.equal(out[1], torch.zeros(3)) and len(list(pool.parameters())) == 0


def test_qin_ablations_build_and_run():
    tags, mm, num_tags = tiny_tables()
    for attention, interaction in [
        (MeanPooling, functools.partial(QuadraticNetwork, num_layers=1, num_row=2)),
        (TargetAttention, functools.partial(MLP, hidden_units=[16, 8])),
        (TargetAttention, functools.partial(QuadraticNetwork, num_layers=2, placement="mid")),
        (functools.partial(TargetAttention, dropout=0.1), functools.partial(QuadraticNetwork, activation="relu")),
    ]:
        model = QIN(tags, mm, num_tags, embedding_dim=4, attention=attention, interaction=interaction)
        assert model(*tiny_batch()).shape == (6,)


def test_mlp_layer_order_and_out_dim():
    mlp = MLP(10, [8, 4], dropout=0.1, batch_norm=True)
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "DrawnDropout"] * 2 and mlp.out_dim == 4
    assert torch.equal(mlp.net[0].bias, torch.zeros(8))


def test_mid_placement_batch_norm_over_rows():
    qnn = QuadraticNetwork(6, num_layers=1, num_row=3, placement="mid")
    assert qnn.layers[0].norm.num_features == 18 and qnn.out_dim == 6


# --- config errors -----------------------------------------------------------------------------------------

def test_unknown_names_raise_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.net\.attention\.activation.*'gelu'.*relu"):
        TargetAttention(6, activation="gelu")
    with pytest.raises(ConfigError, match=r"model\.net\.interaction\.placement.*'pre'.*post"):
        QuadraticNetwork(6, placement="pre")
    with pytest.raises(ConfigError, match=r"model\.net\.interaction\.activation.*'tanh'"):
        QuadraticNetwork(6, activation="tanh")
    with pytest.raises(ConfigError, match=r"model\.net\.interaction\.activation"):
        MLP(6, [4], activation="tanh")


# --- QNN-alpha (FuxiCTR model_zoo/QNN) -------------------------------------------------------------------------

def qnn_alpha_transcription(layer: QuadraticAlphaLayer, x: torch.Tensor) -> torch.Tensor:
    """Section 7 written out element by element (eval mode: dropout off, BatchNorm with running stats).

    h = ReLU(BN(Linear(D, R D)(x))) viewed as (B, H, R, D/H); head k of x = chunk k (width e/H) of every field
    (width e), fields in order; y_k = sum_r x_k * h_{k, r}; flattened head-major (the published code) or put
    back at the positions head k came from (`align_heads`); out = flatten(y) + x.
    """
    b, d = x.shape
    e, heads, rows = layer.field_dim, layer.num_heads, layer.num_row
    fields, chunk, width = d // e, e // heads, d // heads
    lin = x @ layer.linear.weight.t() + layer.linear.bias  # (B, R D)
    norm = layer.norm
    if norm is not None:
        lin = (lin - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    h = torch.relu(lin)
    out = x.clone()
    for i in range(b):
        for k in range(heads):
            x_k = torch.cat([x[i, f * e + k * chunk: f * e + (k + 1) * chunk] for f in range(fields)])  # (D/H,)
            y_k = sum(x_k * h[i, (k * rows + r) * width: (k * rows + r + 1) * width] for r in range(rows))
            if layer.align_heads:
                for f in range(fields):
                    out[i, f * e + k * chunk: f * e + (k + 1) * chunk] += y_k[f * chunk: (f + 1) * chunk]
            else:
                out[i, k * width: (k + 1) * width] += y_k
    return out


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("align_heads", [False, True])
@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_qnn_alpha_matches_section_7_transcription(num_heads, align_heads, batch_norm):
    torch.manual_seed(0)
    net = QuadraticAlphaNetwork(24, field_dim=8, num_layers=2, num_row=3, num_heads=num_heads, dropout=0.1,
                                batch_norm=batch_norm, align_heads=align_heads).double().eval()
    for layer in net.layers:
        if layer.norm is not None:  # non-trivial eval statistics
            layer.norm.running_mean.normal_()
            layer.norm.running_var.uniform_(0.5, 2.0)
            layer.norm.weight.data.uniform_(0.5, 1.5)
            layer.norm.bias.data.normal_()
    x = torch.randn(5, 24, dtype=torch.float64)
    expected = x
    for layer in net.layers:
        expected = qnn_alpha_transcription(layer, expected)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)


def test_qnn_alpha_head_order_quirk_only_matters_for_several_heads():
    torch.manual_seed(0)
    x = torch.randn(4, 24, dtype=torch.float64)
    for heads, same in [(1, True), (2, False)]:
        quirk = QuadraticAlphaLayer(24, 8, 2, heads, 0.0, True, align_heads=False).double().eval()
        fixed = QuadraticAlphaLayer(24, 8, 2, heads, 0.0, True, align_heads=True).double().eval()
        fixed.load_state_dict(quirk.state_dict())
        assert torch.allclose(quirk(x), fixed(x)) is same


def test_qnn_alpha_in_qin_trains_and_rejects_bad_heads():
    model = tiny_qin(mm_projection_dim=4, interaction=functools.partial(QuadraticAlphaNetwork, field_dim=4,
                                                                         num_heads=2))
    logits = model(*tiny_batch())
    logits.sum().backward()
    assert logits.shape == (6,) and torch.isfinite(logits).all()
    assert isinstance(model.interaction.layers[0].norm, nn.BatchNorm1d)
    assert model.interaction.layers[0].norm.num_features == 4 * 8 * 2  # BN over the R D branch (D = 2E + 2I)
    with pytest.raises(ConfigError, match="num_heads 3"):
        QuadraticAlphaNetwork(24, field_dim=8, num_heads=3)
