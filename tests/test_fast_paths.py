"""Exact fast paths agree with the literal forms (fast attention, folded QNN, item table), and the inference
form lives exactly between prepare_inference and release_inference (models.inference)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from probes import forward_calls, path_taken, prepared, projections

from qin_lightning.models.attention import TargetAttention
from qin_lightning.models.inference import inference_form, prepare_inference, release_inference
from qin_lightning.models.interaction import QuadraticLayer, QuadraticNetwork
from qin_lightning.models.items import ItemEncoder
from qin_lightning.models.qin import QIN

ACTIVATIONS = ["relu", "softmax", "silu", "relu2"]
TIGHT = dict(rtol=1e-10, atol=1e-12)


def tiny_tables(num_items: int = 30, num_tags: int = 12, mm_dim: int = 8):
    g = torch.Generator().manual_seed(0)
    tags = torch.randint(0, num_tags, (num_items, 5), generator=g)
    tags[:, :2], tags[0] = 0, 0
    mm = torch.randn(num_items, mm_dim, generator=g)
    mm[0] = 0.0
    return tags, mm, num_tags


def tiny_batch(batch: int = 6, seq: int = 7, num_items: int = 30):
    g = torch.Generator().manual_seed(1)
    item_seq = torch.randint(1, num_items, (batch, seq), generator=g)
    for i, n in enumerate([seq, 3, 1, 0, 5, 2][:batch]):  # left padded; row 3 has an empty history
        item_seq[i, : seq - n] = 0
    levels = torch.randint(0, 11, (2, batch), generator=g)
    return item_seq, torch.randint(1, num_items, (batch,), generator=g), levels[0], levels[1]


def attention_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1], [0] * 6 + [1], [0] * 7, [0, 1, 1, 1, 1, 1, 1]]).bool()
    history = (torch.randn(5, 7, 6, generator=g, dtype=torch.float64) * mask.unsqueeze(-1)).requires_grad_()
    return target, history, mask


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fast_attention_matches_plain_outputs_and_gradients(activation, training):
    torch.manual_seed(0)
    plain = TargetAttention(6, activation=activation, dropout=0.3 if training else 0.0, fast=False).double()
    fast = copy.deepcopy(plain)
    fast.fast = True
    results = []
    for module in (plain, fast):
        module.train(training)
        target, history, mask = attention_inputs()
        torch.manual_seed(123)  # same attention-weight dropout mask in both
        with forward_calls(*projections(module)) as calls:
            out = module(target, history, mask)
        assert bool(calls) == (module is plain), "the fast form never projects; the literal form does"
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads = [target.grad, history.grad] + [p.grad for p in module.parameters()]
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], **TIGHT)
    assert len(results[1][1]) == len(results[0][1]) == 6  # target, history, W_q, W_k, W_v, W_o
    for g_fast, g_plain in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_fast, g_plain, **TIGHT)


def test_fast_attention_prepared_products_follow_the_lifecycle():
    torch.manual_seed(0)
    attn = TargetAttention(6).double()
    target, history, mask = (t.detach() for t in attention_inputs())
    opt = torch.optim.SGD(attn.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad(), inference_form(attn), forward_calls(*projections(attn)) as calls:
            assert prepared(attn) and not attn.training
            products = attn.prepared
            fast = attn(target, history, mask)
            assert attn.products() is products and not calls  # the prepared pair, no projection
            attn.fast = False
            literal = attn(target, history, mask)
            assert len(calls) == 4  # the literal form: W_q, W_k, W_v, W_o
            attn.fast = True
        torch.testing.assert_close(fast, literal, **TIGHT)
        assert not prepared(attn)  # released on leaving the block
        attn.train()  # an optimizer step in between changes the weights in place
        attn(target, history, mask).pow(2).sum().backward()
        opt.step()


def test_training_mode_never_uses_a_prepared_form():
    torch.manual_seed(0)
    tags, mm, num_tags = tiny_tables()
    net = QIN(tags, mm, num_tags, embedding_dim=4,
              interaction=functools.partial(QuadraticNetwork, num_layers=2, num_row=3, dropout=0.0)).double()
    batch = tiny_batch()
    prepare_inference(net)
    with torch.no_grad():
        for p in net.parameters():  # the prepared tensors are now stale
            p.add_(0.01)
    net.train()
    with path_taken(net) as taken:
        out = net(*batch)
    assert not taken["item_table"] and not taken["folded_qnn"]
    release_inference(net)
    torch.testing.assert_close(out, net(*batch), rtol=0, atol=0)


def run_layers(qnn: QuadraticNetwork, x: torch.Tensor, fold: bool, expect_fold: bool | None = None) -> torch.Tensor:
    """qnn(x) with every layer's fold switch set to `fold`; asserts the folded form ran iff `expect_fold`
    (default: `fold`, i.e. the switch really switches). A folded layer never calls its (D, D*R) `linear`."""
    for layer in qnn.layers:
        layer.fast = fold
    with forward_calls(*(layer.linear for layer in qnn.layers)) as calls:
        out = qnn(x)
    folded = fold if expect_fold is None else expect_fold
    assert len(calls) == (0 if folded else len(qnn.layers)), f"expected the {'folded' if folded else 'per-row'} form"
    return out


@pytest.mark.parametrize("activation", ["prelu", "relu", "none"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_folded_qnn_matches_per_row_in_eval(activation, batch_norm):
    torch.manual_seed(0)
    qnn = QuadraticNetwork(8, num_layers=3, num_row=4, dropout=0.2, batch_norm=batch_norm,
                           activation=activation).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    opt = torch.optim.Adam(qnn.parameters(), lr=1e-2)
    for _ in range(3):  # non-trivial weights and BatchNorm running statistics
        qnn(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    qnn.eval()
    x_eval = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad(), inference_form(qnn):
        folded = run_layers(qnn, x_eval, fold=True)
        assert qnn.layers[0].can_fold() and all(prepared(layer) for layer in qnn.layers)
        per_row = run_layers(qnn, x_eval, fold=False)
    torch.testing.assert_close(folded, per_row, **TIGHT)
    # unprepared (eval mode, autograd on) the fold is computed from the weights and differentiable: same gradients
    grads = []
    for fold in (True, False):
        qnn.zero_grad()
        x_eval.grad = None
        run_layers(qnn, x_eval, fold=fold).sum().backward()
        grads.append([x_eval.grad.clone()] + [p.grad.clone() for p in qnn.parameters()])
    assert len(grads[0]) == len(grads[1]) == 1 + len(list(qnn.parameters()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TIGHT)


def test_prepared_fold_follows_the_lifecycle_and_load():
    torch.manual_seed(0)
    qnn = QuadraticNetwork(8, num_layers=2, num_row=3).double()
    other = QuadraticNetwork(8, num_layers=2, num_row=3).double()
    x = torch.randn(12, 8, dtype=torch.float64)
    opt = torch.optim.SGD(qnn.parameters(), lr=0.1)
    for step in range(3):
        with torch.no_grad(), inference_form(qnn):
            assert all(prepared(layer) for layer in qnn.layers)
            torch.testing.assert_close(run_layers(qnn, x, True), run_layers(qnn, x, False), **TIGHT)
        assert not any(prepared(layer) for layer in qnn.layers)
        if step == 1:
            qnn.load_state_dict(other.state_dict())
            with torch.no_grad(), inference_form(qnn):
                torch.testing.assert_close(run_layers(qnn, x, True), run_layers(other.eval(), x, False), **TIGHT)
        qnn.train()
        run_layers(qnn, x, True, expect_fold=False).pow(2).mean().backward()  # also updates BatchNorm running stats
        opt.step()
        opt.zero_grad()


def test_training_mode_uses_per_row_dropout_masks():
    torch.manual_seed(0)
    layer = QuadraticLayer(6, num_row=3, dropout=0.5, batch_norm=False, activation="none", placement="post",
                           fast=True).double()
    layer.train()
    assert not layer.can_fold()
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)  # reference: each of the R rows gets its own dropout mask
    h = torch.nn.functional.dropout(layer.linear(x), 0.5, training=True).view(4, 3, 6)
    y = torch.nn.functional.dropout(x * h.sum(1), 0.5, training=True)
    torch.testing.assert_close(out, y + x, **TIGHT)
    w, b = layer.linear.weight.view(3, 6, 6).sum(0), layer.linear.bias.view(3, 6).sum(0)
    assert not torch.allclose(out, x * (x @ w.t() + b) + x)  # i.e. the folded form is not what trains


def test_mid_placement_is_never_folded():
    torch.manual_seed(0)
    qnn = QuadraticNetwork(6, num_layers=2, num_row=2, placement="mid").double().eval()
    assert not qnn.layers[0].can_fold()
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(run_layers(qnn, x, True, expect_fold=False), run_layers(qnn, x, False), **TIGHT)


def test_prepared_item_table_matches_and_follows_the_lifecycle():
    tags, mm, num_tags = tiny_tables()
    enc = ItemEncoder(tags, mm, num_tags, embedding_dim=4)
    ids = torch.randint(0, 30, (3, 9))
    opt = torch.optim.SGD(enc.parameters(), lr=10.0)
    for _ in range(2):
        with torch.no_grad(), forward_calls(enc.id_embedding) as lookups, inference_form(enc):
            assert prepared(enc)
            table = enc(ids)
            enc(ids)  # the table is prepared once, then only gathered from
            assert [shapes[0] for shapes in lookups] == [(30,)], "the (N, 3E) table, not the requested ids"
            torch.testing.assert_close(table, enc.encode(ids), rtol=0, atol=0)
        assert not prepared(enc)  # released on leaving the block
        enc.train()
        enc(ids).pow(2).sum().backward()
        opt.step()  # weights change in place: the next block prepares from the new ones
    # load_state_dict, then prepare
    fresh = ItemEncoder(tags, mm, num_tags, embedding_dim=4)
    enc.load_state_dict(fresh.state_dict())
    with torch.no_grad(), inference_form(enc):
        torch.testing.assert_close(enc(ids), fresh.encode(ids), rtol=0, atol=0)
    # fast=False prepares nothing
    enc.fast = False
    with inference_form(enc):
        assert not prepared(enc)


def test_unprepared_item_encoder_encodes_with_grad():
    tags, mm, num_tags = tiny_tables()
    enc = ItemEncoder(tags, mm, num_tags, embedding_dim=4).eval()
    enc(torch.tensor([1, 2])).sum().backward()
    assert enc.id_embedding.weight.grad is not None and not prepared(enc)


def test_item_table_prepared_in_inference_mode_usable_in_no_grad():
    tags, mm, num_tags = tiny_tables()
    enc = ItemEncoder(tags, mm, num_tags, embedding_dim=4).eval()
    ids = torch.tensor([[0, 5, 7]])
    with torch.inference_mode():
        prepare_inference(enc)
        a = enc(ids)
    with torch.no_grad():
        torch.testing.assert_close(enc(ids), a, rtol=0, atol=0)
    release_inference(enc)


def test_qin_fast_and_cached_inference_matches_literal_model():
    tags, mm, num_tags = tiny_tables()
    torch.manual_seed(0)
    fast = QIN(tags, mm, num_tags, embedding_dim=4,
               interaction=functools.partial(QuadraticNetwork, num_layers=2, num_row=3)).double()
    literal = copy.deepcopy(fast)
    literal.attention.fast = False
    literal.items.fast = False
    for layer in literal.interaction.layers:
        layer.fast = False
    batch = tiny_batch()
    opt = torch.optim.Adam(fast.parameters(), lr=1e-2)
    for _ in range(2):  # train the fast model a little, then copy its weights
        fast.train()
        fast(*batch).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    literal.load_state_dict(fast.state_dict())
    literal.eval()
    with torch.no_grad(), inference_form(fast):
        with path_taken(fast) as fast_path:
            fast_out = fast(*batch)
        with path_taken(literal) as literal_path:
            literal_out = literal(*batch)
        torch.testing.assert_close(fast_out, literal_out, **TIGHT)
    # literal.fast (packed histories) stays on: the packed / dense pair is tests/test_packed_history.py's
    assert fast_path == {"fast_attention": True, "folded_qnn": True, "packed": True, "item_table": True}
    assert literal_path == {"fast_attention": False, "folded_qnn": False, "packed": True, "item_table": False}


def test_fast_paths_of_the_new_networks():
    """QIN + QNN-alpha: ASTA's algebra, the item cache and packed histories apply; the QNN-alpha layers have no
    fold (ReLU inside the branch). The winner: the item table and its transformer over each row's span
    (tests/test_transformer_dcn.py compares that with the dense grid); nothing to fold."""
    from qin_lightning.models.interaction import QuadraticAlphaNetwork
    from qin_lightning.models.inference import fast_path_state, set_fast_paths
    from qin_lightning.models.transformer_dcn import TransformerDCN

    tags, mm, num_tags = tiny_tables()
    torch.manual_seed(0)
    alpha = QIN(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4,
                interaction=functools.partial(QuadraticAlphaNetwork, field_dim=4, num_heads=2)).double()
    winner = TransformerDCN(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4, feedforward_dim=8,
                            first_k_cols=3, dnn_units=[8], head_units=[4], cross_rank=4,
                            history_mask="history").double()  # the span form exists for this mask only
    assert fast_path_state(alpha) == {"fast": True, "items.fast": True, "attention.fast": True}
    assert fast_path_state(winner) == {"items.fast": True, "transformer.fast": True}
    batch = tiny_batch()  # history spans 7, 3, 1, 0 (keeps 1), 5, 2: three span buckets
    paths = {  # (fast, literal) path of each net, as the probes see it
        "alpha": ({"fast_attention": True, "folded_qnn": False, "packed": True, "item_table": True},
                  {"fast_attention": False, "folded_qnn": False, "packed": False, "item_table": False}),
        "winner": ({"by_span": True, "item_table": True}, {"by_span": False, "item_table": False}),
    }
    for name, net in (("alpha", alpha), ("winner", winner)):
        with torch.no_grad(), inference_form(net):
            assert prepared(net.items)
            with path_taken(net) as fast_path:
                fast = net(*batch)
            set_fast_paths(net, False)
            with path_taken(net) as literal_path:
                literal = net(*batch)
            set_fast_paths(net, True)
        assert (fast_path, literal_path) == paths[name], name  # the switch reaches every part
        torch.testing.assert_close(fast, literal, rtol=1e-9, atol=1e-10)
