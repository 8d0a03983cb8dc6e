"""Dropout with a choice of mask draw: torch's own (nn.Dropout, the default) or numpy's SFC64 (CPU, in parallel).

On a CPU that is not Intel's, torch draws dropout masks in one thread, one value at a time
(`bernoulli_scalar_kernel`: its MKL path is taken on Intel CPUs only), a visible share of an fp32 training step
at the QNN's sizes. The "sfc64" draw gives each element the same chance of being kept, from other random numbers,
in parallel chunks. What each costs: experiments/bench/step_profile_avx512.txt and step_profile_avx512_sfc64.txt.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn

from qin_lightning.errors import ConfigError

DROPOUT_DRAWS = ("torch", "sfc64")
CHUNK = 1 << 20  # elements per SFC64 stream: the mask depends on torch's RNG state and the shape, not on threads
NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def check_draw(draw: str, key: str) -> str:
    """`draw` if it is one of DROPOUT_DRAWS, else a ConfigError naming the config key."""
    if draw not in DROPOUT_DRAWS:
        raise ConfigError(f"{key}: unknown value {draw!r}, expected one of {list(DROPOUT_DRAWS)}")
    return draw


def sfc64_keep_mask(shape: torch.Size, keep: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """A CPU tensor of `shape`: 1 / keep where kept (each element with probability `keep`), else 0.

    Element i is kept when the i-th 32-bit output of its chunk's SFC64 stream is below round(keep * 2^32): the
    chance is keep to within 2^-32 (torch's draw compares a 53-bit uniform with keep). The chunks' seeds come
    from one number drawn from torch's default generator, so torch.manual_seed and a restored RNG state decide
    the mask, as they do torch's own; the chunks are filled by torch.get_num_threads() threads (numpy releases
    the GIL), with the same result for any thread count.
    """
    n = math.prod(shape)
    threshold = np.uint32(min(round(keep * 2**32), 2**32 - 1))
    out = np.empty(n, NUMPY_DTYPES.get(dtype, np.float32))
    scale = out.dtype.type(1.0 / keep)
    seeds = np.random.SeedSequence(int(torch.randint(0, 2**62, ()))).generate_state(max(1, -(-n // CHUNK)), np.uint64)

    def fill(chunk: int) -> None:
        part = out[chunk * CHUNK:(chunk + 1) * CHUNK]
        bits = np.random.SFC64(int(seeds[chunk])).random_raw(-(-part.size // 2)).view(np.uint32)[:part.size]
        np.multiply(bits < threshold, scale, out=part)

    if len(seeds) == 1 or torch.get_num_threads() == 1:
        for chunk in range(len(seeds)):
            fill(chunk)
    else:
        with ThreadPoolExecutor(min(torch.get_num_threads(), len(seeds))) as pool:
            list(pool.map(fill, range(len(seeds))))
    return torch.from_numpy(out).view(shape).to(dtype)


def dropout_mask(like: Tensor, keep: float, draw: str) -> Tensor:
    """The scaled keep mask for `like` (0 or 1 / keep, `like`'s shape and dtype): torch's draw as F.dropout makes
    it (bernoulli(keep) / keep), or on a CPU tensor with draw "sfc64" `sfc64_keep_mask` (elsewhere torch's)."""
    if draw == "sfc64" and like.device.type == "cpu":
        return sfc64_keep_mask(like.shape, keep, like.dtype)
    return torch.empty_like(like).bernoulli_(keep).div_(keep)


class DrawnDropout(nn.Dropout):
    """nn.Dropout whose mask comes from `draw`: "torch" (nn.Dropout's own, the default) or "sfc64".

    sfc64 applies in training with 0 < p < 1 (elsewhere this is nn.Dropout): x * `dropout_mask` (on a CPU tensor
    kept with probability 1 - p from SFC64, scaled by 1 / (1 - p)): the distribution of nn.Dropout's output, from
    other random numbers. No parameters or buffers: state dicts are nn.Dropout's.
    """

    def __init__(self, p: float, draw: str = "torch", key: str = "dropout_draw") -> None:
        super().__init__(p)
        self.draw = check_draw(draw, key)

    def forward(self, x: Tensor) -> Tensor:
        if self.draw == "torch" or not self.training or not 0 < self.p < 1:
            return super().forward(x)
        return x * dropout_mask(x, 1.0 - self.p, self.draw)  # (...), as F.dropout: x * (mask / keep)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, draw={self.draw}"
