"""Hydra finds sweepers only in the `hydra_plugins` namespace: `hydra/sweeper=plan` (conf/hydra/sweeper/plan.yaml)
names this class; everything it does is qin_lightning.training.plan's."""

from qin_lightning.training import plan


class PlanSweeper(plan.PlanSweeper):
    """A plan's converged grid as one multirun (qin_lightning.training.plan.PlanSweeper)."""
