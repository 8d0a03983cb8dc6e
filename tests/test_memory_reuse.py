"""reuse_freed_memory: glibc's mallopt applied where it exists, nothing done elsewhere or when disabled."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from qin_lightning import machine


def test_disabled_changes_nothing() -> None:
    assert machine.reuse_freed_memory(False) is False


def test_other_platforms_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.sys, "platform", "darwin")
    assert machine.reuse_freed_memory(True) is False


# Run in a fresh process (the setting lasts for the life of the process that applies it): 64 MiB from malloc,
# then a 64 MiB tensor, before and after reuse_freed_memory(True), read through glibc's mallinfo2 (hblks: blocks
# served by mmap; arena: the heap). malloc / free with nothing in between: glibc's default would trim the heap.
EFFECT = """
import ctypes, json, torch
from qin_lightning.machine import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def allocate():
    before = libc.mallinfo2()
    block = libc.malloc(64 * 2**20)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    x = torch.ones(16 * 2**20)  # 64 MiB of float32
    tensor = libc.mallinfo2()
    assert float((x * 2).sum()) == 2 * 16 * 2**20
    return {"mmapped_blocks": during.hblks - before.hblks, "heap_growth": during.arena - before.arena,
            "heap_kept_after_free": after.arena - before.arena, "tensor_mmapped_blocks": tensor.hblks - after.hblks}

default = allocate()
applied = reuse_freed_memory(True)
print(json.dumps({"default": default, "applied": applied, "reused": allocate()}))
"""


def glibc_with_mallinfo2() -> bool:
    """glibc >= 2.33 (mallinfo2), where the setting and its effect can be read."""
    libc, version = platform.libc_ver()
    return sys.platform.startswith("linux") and libc == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 33)


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="glibc's mallopt and mallinfo2 (glibc >= 2.33)")
def test_applied_on_glibc_and_tensors_still_compute() -> None:
    out = subprocess.run([sys.executable, "-c", EFFECT], check=True, capture_output=True, text=True).stdout
    effect = json.loads(out.splitlines()[-1])
    mib = 2**20
    assert effect["applied"] is True
    # glibc's default: the 64 MiB block (and the tensor) is a fresh mmap, returned to the system on free
    default, reused = effect["default"], effect["reused"]
    assert default["mmapped_blocks"] == default["tensor_mmapped_blocks"] == 1 and default["heap_growth"] < mib, effect
    # M_MMAP_MAX = 0: the block comes from the heap (and only the block: a wrong option, M_TOP_PAD, grows it by
    # 2 GiB), the tensor too; M_TRIM_THRESHOLD = 2 GiB: the heap keeps the block after free (default: trimmed)
    assert reused["mmapped_blocks"] == reused["tensor_mmapped_blocks"] == 0, effect
    assert 60 * mib <= reused["heap_growth"] < 96 * mib and reused["heap_kept_after_free"] >= 60 * mib, effect


def test_train_config_enables_it_by_default() -> None:
    from hydra import compose, initialize_config_dir

    from qin_lightning.config import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        assert compose(config_name="train").reuse_freed_memory is True
