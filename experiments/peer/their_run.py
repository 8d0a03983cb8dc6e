"""Runs inside the authors' environment (made by side_by_side.py): their QIN from a checkout of salmon1802/QIN on
fuxictr 2.3.10, on the CPU, with FuxiCTR's own pipeline (config -> feature map -> their MMCTRDataLoader -> fit);
writes the fit time, the per-epoch validation metrics and the versions to `--report`. Their run_expid.py does the
same steps but asserts fuxictr 2.3.7 and also predicts the test split; nothing here is copied from it.

    <venv>/bin/python experiments/peer/their_run.py --qin-repo QIN --config CONFIG_DIR --expid QIN_variety_v9 \
        --threads 2 --report report.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qin-repo", type=Path, required=True)
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

    sys.path.insert(0, str(args.qin_repo))
    import src as their_models  # the checkout's model zoo: QIN_variety_v9, MMCTRDataLoader
    from src.mmctr_dataloader import MMCTRDataLoader

    torch.set_num_threads(args.threads)
    params = load_config(str(args.config), args.expid)
    params["gpu"] = -1
    set_logger(params)
    seed_everything(seed=params["seed"])
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(encoder, **params)
    feature_map = FeatureMap(params["dataset_id"], encoder.data_dir)
    feature_map.load(str(Path(encoder.data_dir) / "feature_map.json"), params)
    model = getattr(their_models, params["model"])(feature_map, **params)
    params["data_loader"] = MMCTRDataLoader
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)  # 2.3.10: the pair itself

    history: list[dict[str, float]] = []
    evaluate = model.evaluate

    def recorded_evaluate(data_generator, metrics=None):  # FuxiCTR's per-epoch validation, values kept
        logs = evaluate(data_generator, metrics=metrics)
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
