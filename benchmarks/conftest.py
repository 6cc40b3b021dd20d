"""pytest-benchmark glue: the ``measure`` fixture times a :class:`_workloads.Cell`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _workloads as W
import pytest

# gradtape first; the peers skip with the reason when they do not import
FRAMEWORKS = ("gradtape", "gradtape[nofusion]", "numpy", "torch", "tf", "jax", "autograd")


def cell_or_skip(build: Callable[[], W.Cell]) -> W.Cell:
    """Build a cell, skipping the benchmark with the reason when it is unavailable."""
    try:
        cell = build()
        cell.once()  # warm-up, and any jit compilation, outside the timing
        return cell
    except W.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def measure(benchmark: Any) -> Callable[..., None]:
    """``measure(cell, per=1, unit="ms", rounds=None)``: time ``cell`` with pytest-benchmark and
    record the median in ``extra_info`` (``us_per_op`` when ``per`` > 1, else ``ms``)."""

    def _measure(cell: W.Cell, per: int = 1, unit: str = "ms", rounds: int | None = None) -> None:
        cell.enter()
        try:
            if cell.prepare is None:
                def run() -> Any:
                    out = cell.run()
                    cell.sync()
                    return out

                if rounds is None:
                    benchmark(run)
                else:
                    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
            else:
                def setup() -> tuple[tuple[Any], dict]:
                    state = cell.prepare()
                    cell.sync()
                    return (state,), {}

                def run_state(state: Any) -> Any:
                    out = cell.run(state)
                    cell.sync()
                    return out

                benchmark.pedantic(run_state, setup=setup, rounds=rounds or 10, warmup_rounds=1)
        finally:
            cell.exit()
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        if stats is not None:  # None under --benchmark-disable
            if unit == "us/op":
                benchmark.extra_info["us_per_op"] = round(stats.median / per * 1e6, 3)
            else:
                benchmark.extra_info["ms"] = round(stats.median * 1e3, 4)

    return _measure
