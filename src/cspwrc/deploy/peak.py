"""The machine's attainable GFLOP/s: a large matmul in the precision a row's convolutions compute in.

The benchmark reports each configuration's achieved GFLOP/s as a percentage of this peak, measured in the same
run, at the same thread count and (:func:`cspwrc.deploy.benchmark.bench_group`) under the same load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cspwrc.deploy.modes import HALF, row_precision
from cspwrc.deploy.timing import round_robin_times, synchronize, warmed_up

__all__ = ["SgemmProbe", "base_precisions", "matmul_peak_gflops"]


class SgemmProbe:
    """An ``[n, n] @ [n, n]`` matmul (2 n^3 FLOPs): the machine's attainable GFLOP/s at this thread count.

    ``precision``: fp32 (default), tf32 (fp32 tensors, TF32 tensor cores: what cuDNN convs use on CUDA by
    default), fp16 or bf16.
    """

    def __init__(self, device: str | torch.device = "cpu", n: int = 2048, precision: str = "fp32") -> None:
        self.device, self.precision = torch.device(device), precision
        dtype = HALF.get(precision, torch.float32)
        self.a = torch.randn(n, n, device=self.device, dtype=dtype)
        self.b = torch.randn(n, n, device=self.device, dtype=dtype)
        self.out = torch.empty(n, n, device=self.device, dtype=dtype)
        self.flops = 2 * n**3

    def __call__(self) -> None:
        # The global matmul switch is set around the call only: the models' own TF32 use is cuDNN's setting.
        tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, self.precision == "tf32"
        try:
            torch.mm(self.a, self.b, out=self.out)
            synchronize(self.device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def gflops(self, times: Sequence[float]) -> float:
        """GFLOP/s of the fastest of ``times`` (seconds per call)."""
        return self.flops / min(times) / 1e9


def matmul_peak_gflops(device: str | torch.device = "cpu", n: int = 2048, repeats: int = 5,
                       precision: str = "fp32") -> float:
    """Best-of-``repeats`` matmul GFLOP/s in ``precision`` at the current thread count (after one warm-up call)."""
    probe = SgemmProbe(device, n, precision)
    return probe.gflops(round_robin_times([warmed_up(probe, 1)], repeats, math.inf, repeats)[0])


def base_precisions(modes: Sequence[str], device: torch.device) -> list[str]:
    """The precisions to probe: those of ``modes`` on ``device``, the fp32/tf32 one always first."""
    found = [row_precision("eager", device)]
    for mode in modes:
        precision = row_precision(mode, device)
        if precision not in found and (device.type == "cuda" or precision not in HALF):
            found.append(precision)
    return found
