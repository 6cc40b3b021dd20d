"""Per-op overhead: a chain of 200 elementwise ops (tanh, sin, exp, cos cycling) on float32
arrays of shape (16,), forward under the tape plus backward to the input.

``extra_info["us_per_op"]`` is the median time divided by 200. Target (issue 2): gradtape
<= 5 us/op and >= 1.4x ahead of PyTorch eager in the same run.
"""

from __future__ import annotations

import _workloads as W
import pytest
from conftest import FRAMEWORKS, cell_or_skip


@pytest.mark.benchmark(group="overhead: 200 elementwise ops on (16,), fwd+bwd")
@pytest.mark.parametrize("fw", FRAMEWORKS)
def bench_overhead_chain(measure, fw):
    cell = cell_or_skip(lambda: W._fw_variant(fw, lambda f, fu: W.build_overhead(f, fu)))
    measure(cell, per=W.OVERHEAD_OPS, unit="us/op")


@pytest.mark.benchmark(group="overhead_mixed: 40 x (t=tanh(y+w), e=exp(t)*0.05, y=t+e) + sum on (16,), fwd+bwd")
@pytest.mark.parametrize("fw", FRAMEWORKS)
def bench_overhead_mixed(measure, fw):
    """tanh, exp, a Python-scalar constant, fan-out and a second trainable input w: 201 ops."""
    cell = cell_or_skip(lambda: W._fw_variant(fw, lambda f, fu: W.build_overhead_mixed(f, fu)))
    measure(cell, per=W.MIXED_OPS, unit="us/op")
