"""Runs inside the authors' environment (made by side_by_side.py): one of their models from checkouts given by path,
on fuxictr 2.3.10, on the CPU, with FuxiCTR's own pipeline (config -> feature map -> their MMCTRDataLoader -> fit);
writes the fit time, the per-epoch validation metrics, the parameter count and the versions to `--report`.
Nothing here is copied from their code; their files are imported from the checkouts.

    <venv>/bin/python experiments/peer/their_run.py --model qin --qin-repo QIN --config CONFIG_DIR \
        --expid QIN_variety_v9 --threads 2 --report report.json

Models (`--model`):
- qin: QIN_variety_v9 from a checkout of salmon1802/QIN (`--qin-repo`).
- qnn_alpha: the same QIN with its QNN replaced by QNN-alpha's `QuadraticNeuralNetworks` from a checkout of
  reczoo/FuxiCTR (`--fuxictr-repo`, model_zoo/QNN/src/QNN_alpha.py) and trained with that file's self-ensemble loss
  (`QNN_alpha.add_loss`: two stochastic passes); one pass at inference, as in QNN_alpha.forward. No published code
  composes the two; this is the composition of their two published files, built at run time.
- din, transformer_dcn: src/DIN.py and src/Transformer_DCN.py from a checkout of pinskyrobin/WWW2025_MMCTR
  (`--winner-repo`; its DIN is the challenge's official baseline).
Their run_expid.py scripts do the same steps but assert fuxictr 2.3.7 and also predict the test split.

`--trajectory STEPS --dump DIR` (driven by experiments/peer/trajectory.py, with a config whose dropout rates are
0): the model built exactly as for the fit above, then STEPS steps of THEIR train_step on the training rows in row
order (no shuffling, no loader processes), and into DIR (torch.save of plain tensors): the state_dict before, after
the first step and after the last, the raw batches, each step's loss, pre-clipping gradient norm and training
probabilities, and the validation probabilities with FuxiCTR's metrics of them; `--every-step`: also the weights
and the optimizer's state before and after every step (step_K.pt).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

MODELS = ("qin", "qnn_alpha", "din", "transformer_dcn")


def load_file(name: str, path: Path) -> ModuleType:
    """One of their source files, imported by path under `name` (two checkouts both name their package `src`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def qin_with_qnn_alpha(qin_module: ModuleType, alpha_module: ModuleType, num_heads: int) -> type:
    """QIN_variety_v9 whose QNN is QNN_alpha.QuadraticNeuralNetworks (built where QIN builds its own, so the
    construction and initialisation order is QIN's) and whose training loss is QNN_alpha.add_loss plus FuxiCTR's
    regularisation; QIN's train_step otherwise (gradient clipping, accumulation)."""
    from torch import nn

    base = qin_module.QIN_variety_v9

    class QIN_QNN_alpha(base):  # noqa: N801 (their naming)
        def __init__(self, feature_map, **params: Any) -> None:
            embedding_dim = params["embedding_dim"]

            def alpha_network(input_dim: int, num_layers: int, net_dropout: float, num_row: int,
                              batch_norm: bool) -> nn.Module:
                return alpha_module.QuadraticNeuralNetworks(
                    input_dim=input_dim, num_fields=input_dim // embedding_dim, num_layers=num_layers,
                    net_dropout=net_dropout, num_heads=num_heads, num_row=num_row, batch_norm=batch_norm)

            published = qin_module.QuadraticNeuralNetworks
            qin_module.QuadraticNeuralNetworks = alpha_network
            try:
                super().__init__(feature_map, **params)
            finally:
                qin_module.QuadraticNeuralNetworks = published

        def forward(self, inputs):
            if not self.training:
                return super().forward(inputs)
            y_pred1 = super().forward(inputs)["y_pred"]  # QIN's attention has no dropout: the same pooled input
            y_pred2 = super().forward(inputs)["y_pred"]
            return {"y_pred1": y_pred1, "y_pred2": y_pred2}

        def train_step(self, batch_data):
            loss = alpha_module.QNN_alpha.add_loss(self, batch_data) + self.regularization_loss()
            loss = loss / self.accumulation_steps
            loss.backward()
            if (self._batch_index + 1) % self.accumulation_steps == 0:
                nn.utils.clip_grad_norm_(self.parameters(), self._max_gradient_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            return loss

    return QIN_QNN_alpha


def model_and_loader(args: argparse.Namespace, params: dict[str, Any]) -> tuple[type, type]:
    """Their model class and their MMCTRDataLoader for `--model`."""
    if args.model in ("qin", "qnn_alpha"):
        sys.path.insert(0, str(args.qin_repo))
        import src as their_models  # the checkout's model zoo: QIN_variety_v9, MMCTRDataLoader
        from src.mmctr_dataloader import MMCTRDataLoader

        if args.model == "qin":
            return their_models.QIN_variety_v9, MMCTRDataLoader
        alpha = load_file("fuxictr_qnn_alpha", args.fuxictr_repo / "model_zoo" / "QNN" / "src" / "QNN_alpha.py")
        qin_module = sys.modules[their_models.QIN_variety_v9.__module__]
        return qin_with_qnn_alpha(qin_module, alpha, params.get("num_heads", 1)), MMCTRDataLoader
    loader = load_file("winner_mmctr_dataloader", args.winner_repo / "src" / "mmctr_dataloader.py")
    if args.model == "din":
        return load_file("winner_din", args.winner_repo / "src" / "DIN.py").DIN, loader.MMCTRDataLoader
    module = load_file("winner_transformer_dcn", args.winner_repo / "src" / "Transformer_DCN.py")
    return module.Transformer_DCN, loader.MMCTRDataLoader


def save_step(model: Any, path: Path) -> None:
    """The model's state_dict and its optimizer's per-parameter state (Adam: step, exp_avg, exp_avg_sq) by
    parameter name."""
    import torch

    names = {id(p): name for name, p in model.named_parameters()}
    optimizer = {names[id(p)]: {k: v.detach().clone() for k, v in state.items()}
                 for p, state in model.optimizer.state.items()}
    torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer}, path)


def trajectory(model: Any, train_gen: Any, valid_gen: Any, steps: int, max_gradient_norm: float,
               dump: Path, every_step: bool = False) -> None:
    """STEPS steps of their train_step on the first batches in row order (the module docstring); writes DIR."""
    import torch
    from torch import nn

    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p != 0}
    rates |= {name: m.dropout for name, m in model.named_modules()
              if isinstance(m, nn.MultiheadAttention) and m.dropout != 0}
    if rates:
        raise SystemExit(f"error: --trajectory needs every dropout rate 0, these are not: {rates}")
    norms: list[float] = []
    clip = nn.utils.clip_grad_norm_

    def recorded_clip(parameters, max_norm, *args, **kwargs):  # their train_step's clipping, its norm kept
        norm = clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    nn.utils.clip_grad_norm_ = recorded_clip
    outputs: list[dict[str, Any]] = []  # each training forward's probabilities (y_pred, or y_pred1 / y_pred2)
    forward = model.forward

    def recorded_forward(inputs):
        result = forward(inputs)
        if model.training:
            outputs.append({k: v.detach().reshape(-1).clone() for k, v in result.items() if k.startswith("y_pred")})
        return result

    model.forward = recorded_forward
    clone = lambda state: {k: v.detach().clone() for k, v in state.items()}  # noqa: E731
    torch.save(clone(model.state_dict()), dump / "initial_state.pt")
    # FuxiCTR's fit sets these before its first train_step
    model._max_gradient_norm, model._batch_index, model._total_steps = max_gradient_norm, 0, 0
    if every_step:
        save_step(model, dump / "step_0.pt")
    model.train()
    batches, losses = [], []
    for index, batch in enumerate(train_gen):
        if index == steps:
            break
        # (batch_dict, item_dict, mask) of their MMCTRDataLoader; cloned: their Transformer edits the mask in place
        batches.append(tuple({k: v.clone() for k, v in part.items()} if isinstance(part, dict) else part.clone()
                             for part in batch))
        model._batch_index = index
        losses.append(float(model.train_step(batch)))
        if index == 0:  # where a difference starts: the weights after one step
            torch.save(clone(model.state_dict()), dump / "first_step_state.pt")
        if every_step:  # the state after each step, Adam's moments included (by parameter name)
            save_step(model, dump / f"step_{index + 1}.pt")
    model.forward = forward
    if len(losses) != steps:
        raise SystemExit(f"error: --trajectory {steps}: the training split has only {len(losses)} batches")
    torch.save(batches, dump / "batches.pt")
    torch.save(clone(model.state_dict()), dump / "final_state.pt")
    model.eval()  # their evaluate's pass (row order, no gradient), its predictions kept
    with torch.no_grad():
        batches_out = [(model.forward(batch)["y_pred"].reshape(-1), model.get_labels(batch).reshape(-1))
                       for batch in valid_gen]
    probabilities = torch.cat([p for p, _ in batches_out]).double()
    labels = torch.cat([y for _, y in batches_out]).double()
    metrics = {k: float(v) for k, v in model.evaluate_metrics(labels.numpy(), probabilities.numpy(),
                                                              ["AUC", "logloss"]).items()}
    torch.save({"loss": torch.tensor(losses, dtype=torch.float64), "train_outputs": outputs,
                "grad_norm": torch.tensor(norms, dtype=torch.float64),
                "valid_probabilities": probabilities, "metrics": metrics}, dump / "trajectory.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="qin")
    p.add_argument("--qin-repo", type=Path, default=None)
    p.add_argument("--winner-repo", type=Path, default=None)
    p.add_argument("--fuxictr-repo", type=Path, default=None)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--expid", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--trajectory", type=int, default=0,
                   help="STEPS: train STEPS steps in row order and dump them to --dump instead of fitting")
    p.add_argument("--dump", type=Path, default=None, help="the folder of --trajectory's files")
    p.add_argument("--every-step", action="store_true",
                   help="--trajectory: also dump the weights and optimizer state after every step (step_K.pt)")
    args = p.parse_args()
    t_start = time.perf_counter()
    import fuxictr
    import torch
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything
    from fuxictr.utils import load_config, set_logger

    torch.set_num_threads(args.threads)
    params = load_config(str(args.config), args.expid)
    params["gpu"] = -1
    set_logger(params)
    seed_everything(seed=params["seed"])
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(encoder, **params)
    feature_map = FeatureMap(params["dataset_id"], encoder.data_dir)
    feature_map.load(str(Path(encoder.data_dir) / "feature_map.json"), params)
    model_class, data_loader = model_and_loader(args, params)
    model = model_class(feature_map, **params)
    params["data_loader"] = data_loader
    if args.trajectory:  # the training rows in row order, read in this process
        params["shuffle"], params["num_workers"] = False, 0
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)  # 2.3.10: the pair itself
    if args.trajectory:
        t_trajectory = time.perf_counter()
        trajectory(model, train_gen, valid_gen, args.trajectory, params.get("max_gradient_norm", 10.0), args.dump,
                   args.every_step)
        args.report.write_text(json.dumps({
            "trajectory_s": round(time.perf_counter() - t_trajectory, 1), "steps": args.trajectory,
            "n_params": sum(p.numel() for p in model.parameters()), "fuxictr": fuxictr.__version__,
            "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
        return

    history: list[dict[str, float]] = []
    evaluate = model.evaluate

    def recorded_evaluate(data_generator, metrics=None):  # FuxiCTR's per-epoch validation, values kept
        # every metric of the config, not only the monitored one (DIN and the winner monitor AUC alone); the
        # monitor reads its own key of the logs, so training is unchanged
        every = list(dict.fromkeys([*(metrics or []), *params["metrics"]]))
        logs = evaluate(data_generator, metrics=every)
        history.append({k: float(v) for k, v in logs.items()})
        return logs

    model.evaluate = recorded_evaluate
    t_fit = time.perf_counter()
    model.fit(train_gen, validation_data=valid_gen, **params)
    fit = time.perf_counter() - t_fit
    report = {
        "fit_s": round(fit, 1),
        "startup_s": round(t_fit - t_start, 1),
        "epochs_run": len(history),
        "val_history": history,
        "n_params": sum(p.numel() for p in model.parameters()),
        "fit_rows_per_s": round(len(history) * train_gen.num_samples / fit, 1),  # validation included
        "fuxictr": fuxictr.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.report.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
