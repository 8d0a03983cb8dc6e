"""reuse_freed_memory: glibc's mallopt applied where it exists, nothing done elsewhere or when disabled."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qin_lightning import memory_reuse


def test_disabled_changes_nothing() -> None:
    assert memory_reuse.reuse_freed_memory(False) is False


def test_other_platforms_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_reuse.sys, "platform", "darwin")
    assert memory_reuse.reuse_freed_memory(True) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_applied_on_glibc_and_tensors_still_compute() -> None:
    # a fresh process: the setting lasts for the life of the process that applies it
    code = (
        "import platform, torch; from qin_lightning.memory_reuse import reuse_freed_memory\n"
        "applied = reuse_freed_memory(True)\n"
        "assert applied == (platform.libc_ver()[0] == 'glibc'), applied\n"
        "x = torch.ones(64, 1024, 1024); assert float((x * 2).sum()) == 2 * 64 * 1024 * 1024\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_config_enables_it_by_default() -> None:
    from hydra import compose, initialize_config_dir

    from qin_lightning.cli import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        assert compose(config_name="train").reuse_freed_memory is True
