"""MLPs and a small conv net, float32 on the CPU.

- MLP 784-512-512-10 tanh, batch 256, forward + backward (target, issue 4: within 1.1x of
  hand-written NumPy);
- MLP 32-64-64-10 tanh, batch 16, forward + backward (target: faster than PyTorch eager);
- a training step with Adam on both MLPs;
- a small conv net training step (gt.nn.conv2d, max_pool2d, cross_entropy; skipped when an op
  is missing).

The loss of the MLPs is 0.5 * sum((out - target)^2) / batch; gradients w.r.t. all parameters.
"""

from __future__ import annotations

import _workloads as W
import pytest
from conftest import cell_or_skip

FW = ("gradtape", "numpy", "torch", "tf", "jax", "autograd")


@pytest.mark.benchmark(group="MLP 784-512-512-10 batch 256: fwd+bwd")
@pytest.mark.parametrize("fw", FW)
def bench_mlp_large(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, **W.MLP_LARGE)))


@pytest.mark.benchmark(group="MLP 32-64-64-10 batch 16: fwd+bwd")
@pytest.mark.parametrize("fw", FW)
def bench_mlp_small(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, **W.MLP_SMALL)))


@pytest.mark.benchmark(group="train step with Adam, MLP 32-64-64-10 batch 16")
@pytest.mark.parametrize("fw", FW)
def bench_adam_small(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, train=True, **W.MLP_SMALL)))


@pytest.mark.benchmark(group="train step with Adam, MLP 784-512-512-10 batch 256")
@pytest.mark.parametrize("fw", FW)
def bench_adam_large(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, train=True, **W.MLP_LARGE)))


@pytest.mark.benchmark(group="conv net train step, batch 32 1x28x28, Adam")
@pytest.mark.parametrize("fw", ("gradtape", "numpy", "torch", "tf", "jax"))
def bench_conv_step(measure, fw):
    measure(cell_or_skip(lambda: W.build_conv(fw)))


@pytest.mark.benchmark(group="MLP 784-512-512-10 batch 256, softmax CE: fwd+bwd")
@pytest.mark.parametrize("fw", FW)
def bench_mlp_large_ce(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, loss="ce", **W.MLP_LARGE)))


@pytest.mark.benchmark(group="MLP 32-64-64-10 batch 16, softmax CE: fwd+bwd")
@pytest.mark.parametrize("fw", FW)
def bench_mlp_small_ce(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, loss="ce", **W.MLP_SMALL)))


@pytest.mark.benchmark(group="train step with Adam, MLP 32-64-64-10 batch 16, softmax CE")
@pytest.mark.parametrize("fw", FW)
def bench_adam_small_ce(measure, fw):
    measure(cell_or_skip(lambda: W.build_mlp(fw, train=True, loss="ce", **W.MLP_SMALL)))
