"""What a wandb run shows: the resolved config and tags, and a summary that holds the best epoch, not the last.

wandb's summary keeps the last logged value of every metric by default, so a run that early-stopped 8 epochs
after its best one would be ranked by its last epoch. ``start_wandb`` makes the summary of ``val/auc`` its
maximum; ``finish_wandb`` writes ``best/val_auc``, ``best/val_logloss`` (the logloss of the best-AUC epoch),
``best/epoch``, the stop reason and any test metrics, the same values as ``results.json``, then closes the run.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

# results.json key -> wandb summary key
SUMMARY_KEYS = {
    "best_val_auc": "best/val_auc",
    "best_val_logloss": "best/val_logloss",
    "best_epoch": "best/epoch",
    "epochs_trained": "epochs_trained",
    "stop_reason": "stop_reason",
    "stopped_epoch": "stopped_epoch",
    "test_auc": "test/auc",
    "test_logloss": "test/logloss",
    "n_params": "n_params",
}


def wandb_loggers(loggers: list[Logger]) -> list[WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def wandb_run_id(loggers: list[Logger]) -> str | None:
    """The wandb run's id (its offline folder is ``<run folder>/wandb/offline-run-<time>-<id>``), None without
    ``logger=wandb``."""
    found = wandb_loggers(loggers)
    return str(found[0].version) if found and found[0].version is not None else None


def start_wandb(loggers: list[Logger]) -> None:
    """Start the run and summarise ``val/auc`` by its maximum (the resolved config and tags are logged by
    ``train`` after this). Lightning passes wandb ``anonymous=None``, which wandb answers with a warning that the
    setting has no effect: it is left out."""
    for lg in wandb_loggers(loggers):
        lg._wandb_init.pop("anonymous", None)  # before lg.experiment starts the run
        if rank_zero_only.rank == 0:
            # same x axis as every other metric (WandbLogger defines `*` against trainer/global_step)
            lg.experiment.define_metric("val/auc", step_metric="trainer/global_step", summary="max")


def finish_wandb(loggers: list[Logger], results: dict[str, Any]) -> None:
    """Write the results.json values into the summary and finish the run (each job of a sweep its own run)."""
    if not wandb_loggers(loggers):
        return
    import wandb

    if rank_zero_only.rank == 0:
        summary = {key: results[name] for name, key in SUMMARY_KEYS.items() if results.get(name) is not None}
        for lg in wandb_loggers(loggers):
            lg.experiment.summary.update(summary)
    wandb.finish()
