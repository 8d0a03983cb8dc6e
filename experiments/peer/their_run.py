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
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)  # 2.3.10: the pair itself

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
