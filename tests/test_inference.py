"""The inference lifecycle (models.inference): one `fast` switch per part from the configs, the LightningModule
prepares the inference form for evaluation epochs only, and checkpoints with the switches' older names load."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from probes import prepared

from qin_lightning.serving.load import load_network
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.models.inference import fast_path_state, rename_old_switches
from qin_lightning.training.build import build_module

from conftest import compose_train, tiny_datamodule, tiny_model_overrides, tiny_overrides

SWITCHES = ["model.net.fast", "model.net.attention.fast", "model.net.interaction.fast"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> MMCTRDataModule:
    return tiny_datamodule(tmp_path_factory.mktemp("inference") / "data", max_len=8)


def test_one_fast_switch_per_part_from_the_configs(tiny_data: MMCTRDataModule, tmp_path: Path):
    default = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides(), tmp_path / "run")
    assert [default.model.net.fast, default.model.net.attention.fast, default.model.net.interaction.fast] == [
        True, True, True]  # the exact fast forms are the default (same function as the literal ones)
    assert set(fast_path_state(build_module(default, tiny_data).net).values()) == {True}
    for switch in SWITCHES:
        cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides() + [f"{switch}=false"], tmp_path / "run")
        state = fast_path_state(build_module(cfg, tiny_data).net)
        off = {"model.net.fast": {"fast", "items.fast"}, "model.net.attention.fast": {"attention.fast"},
               "model.net.interaction.fast": {"interaction.layers.0.fast"}}[switch]
        assert {name for name, on in state.items() if not on} == off, switch


class _SeesInferenceForm(pl.Callback):
    """Records, at every evaluation / training batch, whether the item table was prepared."""

    def __init__(self) -> None:
        self.seen: dict[str, list[bool]] = {"train": [], "validate": [], "test": [], "predict": []}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen["train"].append(prepared(module.net.items))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.seen["validate"].append(prepared(module.net.items))

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.seen["test"].append(prepared(module.net.items))

    def on_predict_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.seen["predict"].append(prepared(module.net.items))


def test_module_prepares_for_evaluation_epochs_only(tiny_data: MMCTRDataModule, tmp_path: Path):
    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides(), tmp_path / "run")
    module = build_module(cfg, tiny_data)
    probe = _SeesInferenceForm()
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=2, limit_test_batches=1,
                         limit_predict_batches=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=tiny_data)
    trainer.test(module, datamodule=tiny_data, verbose=False)
    trainer.predict(module, dataloaders=tiny_data.val_dataloader())
    assert probe.seen["train"] == [False] * 4  # released after every validation epoch
    assert len(probe.seen["validate"]) >= 2 and all(probe.seen["validate"])  # each of the 2 epochs
    assert probe.seen["test"] == [True] and probe.seen["predict"] == [True]
    assert not prepared(module.net.items) and not prepared(module.net.attention)


def test_checkpoint_with_older_switch_names_loads(tiny_data: MMCTRDataModule, tmp_path: Path):
    cfg = compose_train(tiny_overrides(tmp_path) + tiny_model_overrides(), tmp_path / "run")
    module = build_module(cfg, tiny_data)
    from omegaconf import OmegaConf

    run_config = OmegaConf.to_container(cfg, resolve=True)
    net_config = run_config["model"]["net"]
    del net_config["fast"]  # as written before the rename: QIN had no net-level switch in its config
    net_config["interaction"]["fold_at_inference"] = net_config["interaction"].pop("fast")
    module.run_config = run_config
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_data)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    net, _ = load_network(path)
    assert set(fast_path_state(net).values()) == {True}
    assert rename_old_switches({"pack_history": False, "x": {"fold_at_inference": True}}) == {
        "fast": False, "x": {"fast": True}}
    torch.testing.assert_close(net.head.weight, module.net.head.weight, rtol=0, atol=0)
