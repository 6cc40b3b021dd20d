"""Fused backward kernels: y = sum(f(x)), f a chain of 8 elementwise ops (sin, *0.5, exp, +1,
cos, *2, tanh, square) on 4,194,304 float32, forward + backward, and the backward alone, with
``gt.config.fusion`` on (``gradtape``) and off (``gradtape[nofusion]``).

Targets (issue 3): backward with fusion >= 2x faster than without; forward + backward faster
than PyTorch eager; aim for within 1.3x of jax.jit. The NumPy copy is the bandwidth reference.
"""

from __future__ import annotations

import _workloads as W
import pytest
from conftest import FRAMEWORKS, cell_or_skip


@pytest.mark.benchmark(group="fused chain 2^22 float32: fwd+bwd")
@pytest.mark.parametrize("fw", FRAMEWORKS)
def bench_fused_fwd_bwd(measure, fw):
    cell = cell_or_skip(lambda: W._fw_variant(fw, lambda f, fu: W.build_fused(f, "fwd+bwd", fu)))
    measure(cell)


@pytest.mark.benchmark(group="fused chain 2^22 float32: backward only")
@pytest.mark.parametrize("fw", ["gradtape", "gradtape[nofusion]", "numpy", "torch", "tf"])
def bench_fused_bwd(measure, fw):
    cell = cell_or_skip(lambda: W._fw_variant(fw, lambda f, fu: W.build_fused(f, "bwd", fu)))
    measure(cell, rounds=15)


@pytest.mark.benchmark(group="fused chain 2^22 float32: fwd+bwd")
def bench_numpy_copy(measure):
    measure(cell_or_skip(W.build_copy))


@pytest.mark.benchmark(group="GPU fused chain 2^22 float32")
@pytest.mark.parametrize("what", ["copy", "gradtape fwd+bwd", "gradtape bwd",
                                  "gradtape[nofusion] bwd", "torch fwd+bwd", "torch bwd"])
def bench_gpu_fused(measure, what):
    """On a CUDA device (CuPy); skipped with the reason elsewhere."""
    if what == "copy":
        measure(cell_or_skip(lambda: W.build_copy("cuda")))
        return
    fw, part = what.split(" ")
    cell = cell_or_skip(lambda: W._fw_variant(
        fw, lambda f, fu: W.build_fused(f, part, fu, device="cuda")))
    measure(cell, rounds=30 if part == "bwd" else None)
