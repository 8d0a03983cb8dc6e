"""Which ops run in bf16 under `trainer.precision=bf16-mixed` on the CPU: one training step of the published QIN
(fast paths: ASTA on the item vectors, packed histories; small data) and one inference batch (folded QNN,
cached item table) under torch.autocast("cpu", bfloat16), every aten op with its output dtypes counted.

    PYTHONPATH=src python experiments/bench/bf16_ops.py > experiments/bench/bf16_ops.txt
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qin_lightning.bench import compose_config
from qin_lightning.bench import BenchArgs
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.training.build import build_module


class OpDtypes(TorchDispatchMode):
    """Counts (op, output dtypes) of every aten op dispatched inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = out if isinstance(out, (tuple, list)) else [out]
        dtypes = sorted({str(t.dtype).replace("torch.", "") for t in leaves if isinstance(t, torch.Tensor)})
        self.seen[(func.overloadpacket.__name__, ",".join(dtypes))] += 1
        return out


def report(title: str, seen: collections.Counter[tuple[str, str]]) -> None:
    float_ops = {k: v for k, v in seen.items() if "float" in k[1]}
    print(f"## {title}")
    for dtype in ("bfloat16", "float32"):
        ops = sorted({op for (op, d) in float_ops if d == dtype})
        print(f"{dtype}: {', '.join(ops)}")
    mixed = sorted({f"{op} -> {d}" for (op, d) in float_ops if "," in d})
    if mixed:
        print(f"mixed outputs: {', '.join(mixed)}")
    print()


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        dm = MMCTRDataModule(str(Path(tmp) / "data"), max_len=64, batch_size=256, synthetic=SyntheticConfig.tiny())
        dm.prepare_data()
        dm.setup("fit")
        module = build_module(compose_config(BenchArgs()), dm)  # the published QIN config (fast paths on)
        optimizer = module.configure_optimizers()["optimizer"]
        batch = next(iter(dm.train_dataloader()))
        module.train()
        with OpDtypes() as forward:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = module.training_step(batch, 0)
        with OpDtypes() as backward:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
            optimizer.step()
        module.eval()
        with OpDtypes() as inference, torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            module(batch)
            probs = torch.sigmoid(module(batch).float())
    print(f"torch {torch.__version__}; loss dtype {loss.dtype}; parameter dtypes "
          f"{sorted({str(p.dtype) for p in module.parameters()})}; optimizer state dtypes "
          f"{sorted({str(v.dtype) for s in optimizer.state.values() for v in s.values()})}; "
          f"probabilities {probs.dtype}\n")
    report("training forward (training_step: network, BCE, L2 term)", forward.seen)
    report("backward, gradient clipping, Adam step", backward.seen)
    report("inference (eval mode: folded QNN, cached item table)", inference.seen)


if __name__ == "__main__":
    main()
