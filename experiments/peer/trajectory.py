"""Do ours and the authors' code TRAIN the same? One model of our tables, both sides from the same initial weights
on the same batches with every dropout rate 0, N optimiser steps each; per-step training loss, the weights after the
first and the last step and the validation predictions compared, into one JSON record.

    python experiments/peer/trajectory.py --model transformer_dcn --winner-repo ../WWW2025_MMCTR \\
        --steps 20 --out experiments/peer/trajectory_transformer_dcn.json
    python experiments/peer/trajectory.py --model qnn_alpha --qin-repo ../QIN --fuxictr-repo ../FuxiCTR \\
        --steps 20 --out experiments/peer/trajectory_qnn_alpha.json

Theirs (experiments/peer/their_run.py --trajectory, in their environment, as side_by_side.py runs it): their model
built exactly as their fit builds it (their config with the dropout rates 0), STEPS steps of their train_step on the
training rows in row order; it dumps the initial state_dict, the raw batches, per-step losses, the weights after
step 1 and after step STEPS, and the validation probabilities.
Ours (this process): `+experiment=<model>` with our dropout rates 0 on the same generated data, its network and
CTRModule from the config, THEIR initial weights loaded through an explicit key map (KEY_MAPS: every parameter and
buffer of both sides mapped, nothing left over), then Lightning's Trainer from our trainer config (fp32, our
gradient clipping) for the same STEPS batches in the same order (each checked against their dumped batch) with our
optimiser (configure_optimizers) and our loss (training_step, regularisation included).
Also: the validation predictions of both evaluation paths at the same weights (their final weights loaded into
ours); `--teacher-forced`: each step alone, ours from their weights and Adam moments before it (their_run.py
--every-step), against their weights after it, so that a step's own difference is seen without the trajectory's
amplification; `--our-loss probability|logit` (alias fuxictr|ours): our `model.bce_input` (logit by default here, the form the
records compared first; probability is their form and our default now);
`--keep DIR` keeps the work folder, `--keep DIR --reuse` takes their side from it.
float32 on both sides: their FeatureEmbeddingDict casts the multimodal vector with `.float()` (fuxictr
pytorch/layers/embeddings/feature_embedding.py), so their model does not run in float64.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "experiments" / "peer"
sys.path.insert(0, str(PEER))

import side_by_side as sbs  # noqa: E402  (puts src/ and experiments/bench on the path)

# every dropout rate 0: their config keys, our overrides
THEIR_DROPOUT = {"qin": ("net_dropout",), "qnn_alpha": ("net_dropout",),
                 "din": ("net_dropout", "attention_dropout"),
                 "transformer_dcn": ("net_dropout", "transformer_dropout")}
OUR_DROPOUT = {"qin": ("model.net.interaction.dropout=0",), "qnn_alpha": ("model.net.interaction.dropout=0",),
               "din": ("model.net.attention_dropout=0", "model.net.dnn_dropout=0"),
               "transformer_dcn": ("model.net.transformer_dropout=0", "model.net.dnn_dropout=0")}
# our buffers that hold the data (the item tables), not weights: checked against their loader's item columns
DATA_BUFFERS = ("items.item_tags", "items.item_mm")
FUXI_EMBEDDING = "embedding_layer.embedding_layer."  # FuxiCTR's FeatureEmbedding -> FeatureEmbeddingDict
EMBEDDING_RULES = [  # the same in every model of theirs (FeatureEmbedding of the same feature map)
    (FUXI_EMBEDDING + "embedding_layers.likes_level.", "likes_embedding."),
    (FUXI_EMBEDDING + "embedding_layers.views_level.", "views_embedding."),
    (FUXI_EMBEDDING + "embedding_layers.item_id.", "items.id_embedding."),
    (FUXI_EMBEDDING + "embedding_layers.item_tags.", "items.tag_embedding."),
    (FUXI_EMBEDDING + "feature_encoders.item_emb_d128.", "items.mm_projection."),  # Linear(128, 128, no bias)
]
# their state_dict key prefix -> ours (the rest of the key is the same); no transposes. With every dropout rate 0
# neither side has Dropout modules, so FuxiCTR's MLP_Block (Linear, ReLU) and our MLP number their layers alike.
KEY_MAPS: dict[str, list[tuple[str, str]]] = {
    "transformer_dcn": [
        *EMBEDDING_RULES,
        ("transformer_encoder.transformer_encoder.layers.", "transformer.encoder.layers."),  # nn.TransformerEncoder
        ("transformer_encoder.out_linear.", "transformer.pool_projection."),  # Linear(2I, 2I) after the max-pool
        ("crossnet.cross_layers.", "cross.layers."),  # CrossNetV2: 3 full-rank Linear(9088, 9088)
        ("parallel_dnn.mlp.", "dnn.net."),  # MLP [1024, 512, 256]: Linear at 0, 2, 4
        ("mlp.mlp.0.", "head_mlp.net.0."),  # head MLP [64, 32]
        ("mlp.mlp.2.", "head_mlp.net.2."),
        ("mlp.mlp.4.", "head."),  # Linear(32, 1), then their sigmoid (output_activation)
    ],
    "qin": [  # QIN_variety_v9 (salmon1802/QIN src/QIN_variety_v9.py)
        *EMBEDDING_RULES,
        ("attention_layers.", "attention."),  # MultiHeadTargetAttention: W_q, W_k, W_v, W_o (no bias)
        *[rule for i in range(4) for rule in (  # QuadraticNeuralNetworks, 4 layers
            (f"qnn.layer.{i}.linear.0.", f"interaction.layers.{i}.linear."),  # Sequential(Linear, Dropout)
            (f"qnn.norm.{i}.", f"interaction.layers.{i}.norm."),  # BatchNorm1d(D), buffers included
            (f"qnn.activation.{i}.", f"interaction.layers.{i}.activation."))],  # PReLU
        ("qnn.fc.", "head."),
    ],
    "qnn_alpha": [  # that QIN with QNN_alpha.QuadraticNeuralNetworks (their_run.py's composition)
        *EMBEDDING_RULES,
        ("attention_layers.", "attention."),
        *[rule for i in range(4) for rule in (
            (f"qnn.layer.{i}.linear.0.", f"interaction.layers.{i}.linear."),  # Sequential(Linear, BN, ReLU)
            (f"qnn.layer.{i}.linear.1.", f"interaction.layers.{i}.norm."))],  # BatchNorm1d(R D)
        ("qnn.fc.", "head."),
    ],
    "din": [  # DIN (pinskyrobin/WWW2025_MMCTR src/DIN.py, the challenge's)
        *EMBEDDING_RULES,
        # DIN_Attention's MLP_Block [512, 256] -> 1: Linear at 0, 2 (ReLU between), the score Linear at 4
        ("attention_layers.attention_layer.mlp.0.", "attention.mlp.net.0."),
        ("attention_layers.attention_layer.mlp.2.", "attention.mlp.net.2."),
        ("attention_layers.attention_layer.mlp.4.", "attention.score."),
        # MLP_Block [1024, 512, 256] -> 1 with BatchNorm: (Linear, BN, ReLU) x 3, the output Linear at 9, sigmoid
        *[(f"dnn.mlp.{i}.", f"dnn.net.{i}.") for i in (0, 1, 3, 4, 6, 7)],
        ("dnn.mlp.9.", "head."),
    ],
}


def map_key(model: str, their_key: str) -> str:
    """Our state_dict key of `their_key` by the model's KEY_MAPS rule; KeyError when no rule matches."""
    matches = [(theirs, ours) for theirs, ours in KEY_MAPS[model] if their_key.startswith(theirs)]
    if len(matches) != 1:
        raise KeyError(f"{their_key}: {len(matches)} rules of KEY_MAPS[{model!r}] match, expected 1")
    theirs, ours = matches[0]
    return ours + their_key[len(theirs):]


def map_state(model: str, their_state: dict[str, Any], our_state: dict[str, Any]) -> dict[str, Any]:
    """Their state_dict under our keys; asserts that the map is one-to-one and covers both sides (our data
    buffers aside) with equal shapes."""
    mapped = {map_key(model, key): value for key, value in their_state.items()}
    if len(mapped) != len(their_state):
        raise AssertionError(f"KEY_MAPS[{model!r}] maps two of their keys to one of ours")
    ours = {key for key in our_state if key not in DATA_BUFFERS}
    if set(mapped) != ours:
        raise AssertionError(f"KEY_MAPS[{model!r}]: ours without theirs {sorted(ours - set(mapped))}, theirs "
                             f"mapped to no key of ours {sorted(set(mapped) - ours)}")
    shapes = {k: (tuple(v.shape), tuple(our_state[k].shape)) for k, v in mapped.items()
              if tuple(v.shape) != tuple(our_state[k].shape)}
    if shapes:
        raise AssertionError(f"KEY_MAPS[{model!r}]: shapes differ (theirs, ours): {shapes}")
    return mapped


# --our-loss: our model.bce_input for the run; "ours" and "fuxictr" are the names the committed records' commands
# use (made before the option existed, when ours was the logit form)
LOSS_FORMS = {"logit": "logit", "probability": "probability", "ours": "logit", "fuxictr": "probability"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(KEY_MAPS), required=True)
    p.add_argument("--qin-repo", type=Path, default=None, help="a checkout of github.com/salmon1802/QIN")
    p.add_argument("--winner-repo", type=Path, default=None, help="a checkout of github.com/pinskyrobin/WWW2025_MMCTR")
    p.add_argument("--fuxictr-repo", type=Path, default=None, help="a checkout of github.com/reczoo/FuxiCTR")
    p.add_argument("--venv", type=Path, default=None,
                   help="their virtual environment (side_by_side.py's; default $QIN_CACHE_DIR/peer-venv)")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps on each side")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-rows", type=int, default=None, help="default: steps x batch size")
    p.add_argument("--valid-rows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="the JSON record (written atomically)")
    p.add_argument("--our-loss", choices=tuple(LOSS_FORMS), default="logit",
                   help="our model.bce_input: logit (BCE on the logits, the form before 2026-12-08; alias ours) or "
                        "probability (their form, BCE on the sigmoid's output, our default now; alias fuxictr)")
    p.add_argument("--keep", type=Path, default=None,
                   help="work in this folder and keep it (their dump, the data) instead of a temporary one")
    p.add_argument("--teacher-forced", action="store_true",
                   help="also each step alone from their state before it (their_run.py --every-step dumps the "
                        "weights and Adam moments of every step: 3 x the weights per step; not for the winner)")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: take their side from that folder, left by an earlier --keep run of the same "
                        "model, steps and sizes (to rerun only ours, e.g. with --our-loss fuxictr)")
    args = p.parse_args(argv)
    args.train_rows = args.steps * args.batch_size if args.train_rows is None else args.train_rows
    # side_by_side.py's names for the settings its helpers read
    args.epochs, args.their_workers, args.precision, args.draws = 1, 0, "32", "torch"
    return args


def check_args(args: argparse.Namespace) -> None:
    from qin_lightning.errors import ConfigError

    if args.steps < 1:
        raise ConfigError(f"--steps: {args.steps}, expected a positive integer")
    sbs.check_args(args)
    if args.reuse and (args.keep is None or not (args.keep / "dump" / "trajectory.pt").is_file()):
        raise ConfigError(f"--reuse: --keep {args.keep} holds no earlier run (dump/trajectory.pt)")
    if args.train_rows < args.steps * args.batch_size:
        raise ConfigError(f"--train-rows: {args.train_rows}, expected at least steps x batch size = "
                          f"{args.steps * args.batch_size}")


def our_config(args: argparse.Namespace, cache: Path) -> tuple[Any, list[str]]:
    """Our training config of `--model` at this data and batch, every dropout rate 0, fp32 on the CPU, and its
    overrides."""
    from hydra import compose, initialize_config_dir

    from qin_lightning.config import CONFIG_DIR

    experiment = sbs.MODELS[args.model].experiment
    overrides = [*([f"+experiment={experiment}"] if experiment else []), *sbs.size_overrides(args, cache),
                 *OUR_DROPOUT[args.model], "trainer=cpu", f"model.bce_input={LOSS_FORMS[args.our_loss]}"]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="train", overrides=overrides), overrides


def check_batches(their_batches: list[Any], ours: Any, batch_size: int,
                  item_tags: Any, item_mm: Any) -> None:
    """Our batch i is their batch i (the same rows: labels, levels, history, target), and our item tables hold
    their loader's item columns at every item of those batches."""
    import torch

    for index, (batch_dict, item_dict, mask) in enumerate(their_batches):
        rows = torch.arange(index * batch_size, (index + 1) * batch_size)
        batch = ours[rows]
        ids = item_dict["item_id"].view(len(rows), -1)  # (B, S + 1): history, then the target
        same = {"label": torch.equal(batch_dict["label"].float(), batch.label.float()),
                "likes_level": torch.equal(batch_dict["likes_level"], batch.likes_level),
                "views_level": torch.equal(batch_dict["views_level"], batch.views_level),
                "item_seq": torch.equal(ids[:, :-1], batch.item_seq),
                "item_id": torch.equal(ids[:, -1], batch.item_id),
                "mask": torch.equal(mask.bool(), batch.item_seq > 0),
                "item_tags": torch.equal(item_dict["item_tags"], item_tags[item_dict["item_id"]]),
                "item_mm": torch.equal(item_dict["item_emb_d128"].float(), item_mm[item_dict["item_id"]])}
        if not all(same.values()):
            raise SystemExit(f"error: batch {index}: ours and theirs differ in {[k for k, v in same.items() if not v]}")


def train_ours(cfg: Any, module: Any, dm: Any, steps: int, batch_size: int) -> dict[str, Any]:
    """Lightning's Trainer from our trainer config for `steps` batches of the training rows in row order (one
    epoch), then our validation; per-step loss and pre-clipping gradient norm, the weights after step 1."""
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader

    from qin_lightning.data.datamodule import ShardedBatchSampler

    class Recorder(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.grad_norms: list[float] = []
            self.first_step_state: dict[str, Any] | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            outputs.append([])

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # before Lightning's clipping
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self.grad_norms.append(float(torch.nn.utils.get_total_norm(grads)))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))
            if batch_idx == 0:
                self.first_step_state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    train = dm.dataset("train")
    rows = steps * batch_size
    train_loader = DataLoader(train, batch_size=None,
                              sampler=ShardedBatchSampler(rows, batch_size, False, rank=0, world_size=1))
    recorder = Recorder()
    outputs: list[list[Any]] = []  # each step's training forwards: probabilities (B,), as their dump has them
    forward = module.forward

    def recorded_forward(batch: Any) -> Any:
        logits = forward(batch)
        if module.training:
            outputs[-1].append(torch.sigmoid(logits.detach().float()))
        return logits

    module.forward = recorded_forward
    trainer = instantiate(cfg.trainer, max_epochs=1, logger=False, callbacks=[recorder], enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                          default_root_dir=None)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=dm.val_dataloader())
    module.forward = forward
    if len(recorder.losses) != steps:
        raise SystemExit(f"error: our run took {len(recorder.losses)} steps, expected {steps}")
    valid = dm.dataset("valid")
    return {"loss": recorder.losses, "grad_norm": recorder.grad_norms, "train_outputs": outputs,
            "first_step_state": recorder.first_step_state,
            "valid_probabilities": predict_valid(module, dm, batch_size), "valid_labels": valid.label.double(),
            "metrics": {"auc": module.val_history[-1]["auc"], "logloss": module.val_history[-1]["logloss"]},
            "gradient_clip_val": cfg.trainer.gradient_clip_val,
            "gradient_clip_algorithm": cfg.trainer.gradient_clip_algorithm}


def predict_valid(module: Any, dm: Any, batch_size: int) -> Any:
    """Our validation probabilities (float64 of the float32 sigmoid) in row order, by our evaluation path (eval
    mode, the network's prepared inference form)."""
    import torch

    from qin_lightning.models.inference import prepare_inference, release_inference

    module.eval()
    prepare_inference(module.net)
    valid = dm.dataset("valid")
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(module(valid[chunk]).float())
                           for chunk in torch.arange(len(valid)).split(batch_size)]).double()
    release_inference(module.net)
    return probs


def teacher_forced(model: str, cfg: Any, module: Any, dm: Any, dump: Path, steps: int, batch_size: int,
                   our_state: dict[str, Any]) -> dict[str, Any]:
    """Each step alone, from THEIR weights and Adam moments before it (step_K.pt of `--every-step`): one step of
    ours (training_step with its regularisation, backward, clip_grad_norm_ at trainer.gradient_clip_val as
    Lightning does, our optimizer's step) on batch K, against their weights after it. Free of the trajectory's
    amplification: each step starts from the same state on both sides, so a difference is that step's own."""
    import torch

    train = dm.dataset("train")
    names = dict(module.net.named_parameters())
    optimizer = module.configure_optimizers()["optimizer"]
    rows = []
    before = torch.load(dump / "step_0.pt", weights_only=True)
    for k in range(steps):
        after = torch.load(dump / f"step_{k + 1}.pt", weights_only=True)
        start = map_state(model, before["state_dict"], our_state)
        module.net.load_state_dict({**start, **{key: our_state[key] for key in DATA_BUFFERS}}, strict=True)
        optimizer.state.clear()
        for their_name, state in before["optimizer"].items():
            optimizer.state[names[map_key(model, their_name)]] = {
                key: value.clone() for key, value in state.items()}
        module.train()
        optimizer.zero_grad()
        batch = train[torch.arange(k * batch_size, (k + 1) * batch_size)]
        loss = module.training_step(batch, k)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val))
        optimizer.step()
        theirs = map_state(model, after["state_dict"], our_state)
        weights = compare_weights(start, theirs, {key: v for key, v in module.net.state_dict().items()}, top=3)
        rows.append({"step": k + 1, "loss": float(loss), "grad_norm": norm,
                     "rel_to_update_all": weights["rel_to_update_all"], "max_abs_diff": weights["max_abs_diff"],
                     "top": weights["top"]})
        before = after
    return {"steps": rows, "max_rel_to_update_all": max(row["rel_to_update_all"] for row in rows)}


def compare_steps(theirs: list[float], ours: list[float]) -> dict[str, Any]:
    """Per-step values of both sides: absolute and relative differences, their maxima, the first step (1-based)
    whose relative difference exceeds 1e-5 (None: none does)."""
    absolute = [abs(o - t) for t, o in zip(theirs, ours, strict=True)]
    relative = [a / max(abs(t), 1e-30) for a, t in zip(absolute, theirs)]
    first = next((i + 1 for i, r in enumerate(relative) if r > 1e-5), None)
    return {"theirs": theirs, "ours": ours, "abs_diff": absolute, "rel_diff": relative,
            "max_abs_diff": max(absolute), "max_rel_diff": max(relative), "first_step_rel_over_1e-5": first}


def compare_weights(initial: dict[str, Any], theirs: dict[str, Any], ours: dict[str, Any],
                    top: int = 5) -> dict[str, Any]:
    """Weights after some steps, both sides, per key of ours: max |ours - theirs|, and the difference relative to
    their update ||ours - theirs|| / ||theirs - initial||; the keys with the largest relative difference and the
    whole network's (all keys together)."""
    rows, diff_sq, update_sq = [], 0.0, 0.0
    for key, value in theirs.items():
        t, o, i = value.double(), ours[key].double(), initial[key].double()
        diff, update = float((o - t).norm()), float((t - i).norm())
        diff_sq, update_sq = diff_sq + diff ** 2, update_sq + update ** 2
        rows.append({"key": key, "max_abs_diff": float((o - t).abs().max()) if t.numel() else 0.0,
                     "rel_to_update": diff / update if update > 0 else (0.0 if diff == 0 else math.inf),
                     "their_update_norm": update})
    rows.sort(key=lambda row: (-row["rel_to_update"], -row["max_abs_diff"]))
    return {"max_abs_diff": max(row["max_abs_diff"] for row in rows),
            "rel_to_update_all": math.sqrt(diff_sq) / math.sqrt(update_sq) if update_sq > 0 else None,
            "keys": len(rows), "top": rows[:top], "every_key": rows}


def adam_first_step(initial: dict[str, Any], theirs: dict[str, Any], ours: dict[str, Any], lr: float) -> dict[str, Any]:
    """Where the weights after the first step differ. Adam's first update of an entry is lr g / (|g| + eps) with
    eps 1e-8 (m = g, v = g^2 after bias correction), about lr in size wherever |g| >> 1e-8: there an entry moves by
    about lr whatever the rounding of g. Where |g| (after clipping) is below eps (their update under lr / 2), the
    update is proportional to g itself, so float32 rounding noise in a near-zero gradient moves the weight. The
    share of the squared difference in those entries says whether the two sides differ only there."""
    small_sq = total_sq = 0.0
    small_entries = entries = 0
    for key, value in theirs.items():
        if not value.is_floating_point() or key not in ours:
            continue
        update = (value.double() - initial[key].double()).abs()
        diff_sq = (ours[key].double() - value.double()) ** 2
        small = update < 0.5 * lr
        small_sq += float(diff_sq[small].sum())
        total_sq += float(diff_sq.sum())
        small_entries += int(small.sum())
        entries += value.numel()
    return {"lr": lr, "entries": entries, "entries_with_gradient_below_adam_eps": small_entries,
            "share_of_squared_difference_there": small_sq / total_sq if total_sq > 0 else None}


def saturation(outputs: list[list[Any]], labels: list[Any]) -> dict[str, list[int]]:
    """Per step, over the training forwards of that step: rows whose float32 probability sits where FuxiCTR's loss
    (binary_cross_entropy on the sigmoid's output) loses its gradient: p == 1.0 with label 0 (loss clamped at
    100, gradient 0) or p < 1e-12 with label 1 (torch clamps p (1 - p) at 1e-12 in its backward, so the gradient
    is p * 1e12 instead of -1); and rows outside [1e-7, 1 - 1e-7]."""
    wrong, saturated = [], []
    for step_outputs, label in zip(outputs, labels, strict=True):
        positive = label.reshape(-1) > 0.5
        wrong.append(sum(int(((p >= 1.0) & ~positive).sum() + ((p < 1e-12) & positive).sum()) for p in step_outputs))
        saturated.append(sum(int(((p < 1e-7) | (p > 1 - 1e-7)).sum()) for p in step_outputs))
    return {"confidently_wrong_without_gradient": wrong, "saturated": saturated}


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half), the Mann-Whitney form."""
    from scipy.stats import rankdata

    ranks = rankdata(probs)
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def predictions(labels: np.ndarray, theirs: np.ndarray, ours: np.ndarray) -> dict[str, Any]:
    """Both sides' validation probabilities under the same metrics: AUC, and logloss with FuxiCTR 2.3.10's
    clipping (sklearn's log_loss without eps: float64 machine epsilon) and with ours (1e-7); how far they are
    apart and how many are saturated (outside [1e-7, 1 - 1e-7])."""
    eps64 = float(np.finfo(np.float64).eps)
    side = {name: {"auc": auc(labels, p), "logloss_eps_float64": logloss(labels, p, eps64),
                   "logloss_eps_1e-7": logloss(labels, p, 1e-7),
                   "saturated": int(((p < 1e-7) | (p > 1 - 1e-7)).sum())}
            for name, p in (("theirs", theirs), ("ours", ours))}
    return {**side, "rows": len(labels), "max_abs_diff": float(np.abs(theirs - ours).max())}


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record's findings in a few numbers: how many steps from the start the free trajectories' losses agree
    within 1e-5 (relative), the rows of theirs whose loss has no gradient, each step alone (teacher-forced: the
    largest loss and weight differences over the steps without such rows and over those with them), and the
    validation predictions of the two evaluation paths at the same weights."""
    loss = record["loss"]
    first = loss["first_step_rel_over_1e-5"]
    wrong = record["training_rows_by_side"]["theirs"]["confidently_wrong_without_gradient"]
    result: dict[str, Any] = {
        "free_steps_loss_within_1e-5": len(loss["rel_diff"]) if first is None else first - 1,
        "free_max_loss_rel_diff": loss["max_rel_diff"],
        "free_final_weights_rel_to_update": record["weights_after_last_step"]["rel_to_update_all"],
        "their_rows_without_gradient_per_step": wrong,
    }
    if "teacher_forced" in record:
        steps = record["teacher_forced"]["steps"]
        for name, rows in (("clean_steps", [r for r, w in zip(steps, wrong) if w == 0]),
                           ("steps_with_such_rows", [r for r, w in zip(steps, wrong) if w > 0])):
            result[f"teacher_forced_{name}"] = {
                "steps": len(rows),
                "max_loss_rel_diff": max((r["loss_rel_diff"] for r in rows), default=None),
                "max_weights_rel_to_update": max((r["rel_to_update_all"] for r in rows), default=None)}
    same = record["validation"].get("at_their_final_weights")
    if same is not None:
        result["same_weights_validation"] = {"max_abs_diff": same["max_abs_diff"], "auc_theirs": same["theirs"]["auc"],
                                             "auc_ours": same["ours"]["auc"]}
    result["validation_auc_after_free_run"] = {"theirs": record["validation"]["theirs"]["auc"],
                                               "ours": record["validation"]["ours"]["auc"]}
    return result


def main(argv: list[str] | None = None) -> int:
    import torch

    from qin_lightning.errors import run_reporting_errors
    from qin_lightning.files import atomic_write_json
    from qin_lightning.machine import machine
    from qin_lightning.training.build import build_datamodule, build_module

    args = parse_args(argv)
    run_reporting_errors(lambda: check_args(args))
    torch.set_num_threads(args.threads)
    spec = sbs.MODELS[args.model]
    venv = args.venv or Path(os.environ.get("QIN_CACHE_DIR", REPO / ".cache" / "qin")) / "peer-venv"
    env_info = sbs.ensure_venv(venv)
    record: dict[str, Any] = {
        "model": args.model,
        "command": "python experiments/peer/trajectory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {**machine(), "cpu_count": os.cpu_count()},
        "their_model": spec.their_model, "their_checkouts": sbs.their_checkouts(args),
        "their_environment": {k: v for k, v in env_info.items() if k != "python"},
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
                     "dtype": "float32", "dropout": 0.0, "data_order": "row order, no shuffling",
                     "our_loss": args.our_loss, "their_side_reused": args.reuse,
                     "teacher_forced": args.teacher_forced},
    }
    if args.keep is not None and not args.reuse:
        args.keep.mkdir(parents=True, exist_ok=False)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else
          tempfile.TemporaryDirectory(prefix="qin_trajectory_")) as tmp:
        folder = Path(tmp).resolve()
        overrides = sbs.size_overrides(args, folder / "cache")
        data_dir, record["data"] = sbs.generate_data(overrides)
        hyper = {**sbs.their_hyperparameters(args, record["data"]), **dict.fromkeys(THEIR_DROPOUT[args.model], 0)}
        record["their_hyperparameters"] = hyper
        dump = folder / "dump"
        if args.reuse:  # their side as an earlier --keep run of the same command left it
            record["theirs_run"] = {**json.loads((folder / "their_report.json").read_text()),
                                    "reused_from_an_earlier_run": True}
        else:
            config_dir = sbs.their_configs(folder, data_dir, record["data"], args, hyper)
            dump.mkdir()
            every = ("--every-step",) if args.teacher_forced else ()
            record["theirs_run"] = sbs.run_theirs(env_info, args, config_dir, folder,
                                                  ("--trajectory", str(args.steps), "--dump", str(dump), *every))
        print(f"theirs: {record['theirs_run'].get('wall_s', 'reused')} s", flush=True)

        t0 = time.perf_counter()
        cfg, our_overrides = our_config(args, folder / "cache")
        record["ours_overrides"] = our_overrides
        dm = build_datamodule(cfg)
        if Path(dm.data_dir) != data_dir:
            raise SystemExit(f"error: our data folder {dm.data_dir} is not the generated {data_dir}")
        module = build_module(cfg, dm)
        our_state = module.net.state_dict()
        initial = map_state(args.model, torch.load(dump / "initial_state.pt", weights_only=True, mmap=True),
                            our_state)
        batches = torch.load(dump / "batches.pt", weights_only=True)
        check_batches(batches, dm.dataset("train"), args.batch_size, our_state["items.item_tags"],
                      our_state["items.item_mm"])
        module.net.load_state_dict({**initial, **{k: our_state[k] for k in DATA_BUFFERS}}, strict=True)
        initial = {k: v.detach().clone() for k, v in initial.items()}
        ours = train_ours(cfg, module, dm, args.steps, args.batch_size)
        record["ours_run"] = {"wall_s": round(time.perf_counter() - t0, 1),
                              "n_params": sum(p.numel() for p in module.net.parameters()),
                              "gradient_clip_val": ours["gradient_clip_val"],
                              "gradient_clip_algorithm": ours["gradient_clip_algorithm"]}
        theirs = torch.load(dump / "trajectory.pt", weights_only=True)
        record["loss"] = compare_steps(theirs["loss"].tolist(), ours["loss"])
        record["grad_norm_before_clipping"] = compare_steps(theirs["grad_norm"].tolist(), ours["grad_norm"])
        state_now = module.net.state_dict()
        record["weights_after_step_1"] = compare_weights(
            initial, map_state(args.model, torch.load(dump / "first_step_state.pt", weights_only=True, mmap=True),
                               our_state), ours["first_step_state"])
        record["weights_after_last_step"] = compare_weights(
            initial, map_state(args.model, torch.load(dump / "final_state.pt", weights_only=True, mmap=True),
                               our_state), state_now)
        record["weights_after_step_1"]["adam_first_step"] = adam_first_step(
            initial, map_state(args.model, torch.load(dump / "first_step_state.pt", weights_only=True, mmap=True),
                               our_state), ours["first_step_state"], float(hyper["learning_rate"]))
        their_outputs = [list(step.values()) for step in theirs["train_outputs"]]
        train_labels = [batch_dict["label"].float() for batch_dict, _, _ in batches]
        record["training_rows_by_side"] = {"theirs": saturation(their_outputs, train_labels),
                                           "ours": saturation(ours["train_outputs"], train_labels)}
        if args.teacher_forced:
            forced = teacher_forced(args.model, cfg, build_module(cfg, dm), dm, dump, args.steps,
                                    args.batch_size, our_state)
            for row, their_loss in zip(forced["steps"], record["loss"]["theirs"], strict=True):
                row["their_loss"] = their_loss
                row["loss_rel_diff"] = abs(row["loss"] - their_loss) / abs(their_loss)
            forced["max_loss_rel_diff"] = max(row["loss_rel_diff"] for row in forced["steps"])
            record["teacher_forced"] = forced
        labels = ours["valid_labels"].numpy()
        # the evaluation paths alone: their final weights in our network, our validation predictions against theirs
        final = map_state(args.model, torch.load(dump / "final_state.pt", weights_only=True, mmap=True), our_state)
        module.net.load_state_dict({**final, **{k: our_state[k] for k in DATA_BUFFERS}}, strict=True)
        same_weights = predictions(labels, theirs["valid_probabilities"].numpy(),
                                   predict_valid(module, dm, args.batch_size).numpy())
        record["validation"] = {"their_metrics_fuxictr": theirs["metrics"], "our_metrics": ours["metrics"],
                                **predictions(labels, theirs["valid_probabilities"].numpy(),
                                              ours["valid_probabilities"].numpy()),
                                "at_their_final_weights": same_weights}
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["summary"] = summary(record)
    atomic_write_json(args.out, record)
    loss = record["loss"]
    print(f"loss: max rel diff {loss['max_rel_diff']:.3g} over {args.steps} steps (first over 1e-5: "
          f"{loss['first_step_rel_over_1e-5']}); final weights rel to update "
          f"{record['weights_after_last_step']['rel_to_update_all']:.3g}; valid AUC theirs "
          f"{record['validation']['theirs']['auc']:.4f} ours {record['validation']['ours']['auc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
