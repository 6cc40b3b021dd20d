"""What tracing costs: the first and second calls of a ``gt.function`` step (trace, then the
checking trace) against one eager step and one replayed step, on the issue's workloads.

Run: ``python benchmarks/function_trace.py [--rounds 5]``. Each figure is the minimum over
rounds; every round builds fresh Variables, optimizer and Function, so each first call really
traces. Prints one table; no timing is asserted anywhere (benchmarks are not tests).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads as W  # noqa: E402

import gradtape as gt  # noqa: E402


def _mlp(sizes: tuple[int, ...], batch: int, adam: bool) -> Callable[[], tuple[Callable, tuple]]:
    def make() -> tuple[Callable, tuple]:
        X0, _, P0 = W.mlp_data(sizes, batch)
        T0 = W.mlp_labels(sizes, batch)
        params = [gt.Variable(p) for p in P0]
        opt = gt.optimizers.Adam(1e-3) if adam else None

        def step(X: Any, T: Any) -> Any:
            with gt.GradientTape() as tape:
                loss = gt.nn.cross_entropy(W._mlp_logits(gt, gt.matmul, params, X), T)
            grads = tape.gradient(loss, params)
            if opt is not None:
                opt.apply_gradients(zip(grads, params))
            return loss

        return step, (gt.tensor(X0), gt.tensor(T0))
    return make


def _mixed() -> tuple[Callable, tuple]:
    x0, w0 = W.mixed_inputs()
    w = gt.Variable(w0)

    def step(x: Any) -> Any:
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = W._mixed_chain(gt, x, w)
        return tape.gradient(y, [x, w])

    return step, (gt.tensor(x0),)


def _conv() -> tuple[Callable, tuple]:
    X0, y0, P0 = W.conv_data()
    params = [gt.Variable(p) for p in P0]
    opt = gt.optimizers.Adam(1e-3)

    def step(X: Any, y: Any) -> Any:
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(W._gt_conv_logits(gt, params, X), y)
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    return step, (gt.tensor(X0), gt.tensor(y0))


ROWS: dict[str, Callable[[], tuple[Callable, tuple]]] = {
    "mlp_small_ce (32-64-64-10, batch 16, fwd+bwd)": _mlp((32, 64, 64, 10), 16, False),
    "adam_small_ce (same + Adam)": _mlp((32, 64, 64, 10), 16, True),
    "mlp_large_ce (784-512-512-10, batch 256, fwd+bwd)": _mlp((784, 512, 512, 10), 256, False),
    "conv (the CNN step, Adam)": _conv,
    "overhead_mixed (201-op mixed chain on (16,), fwd+bwd)": _mixed,
}


def measure(make: Callable[[], tuple[Callable, tuple]], rounds: int) -> dict[str, float]:
    best = {"eager": np.inf, "trace 1": np.inf, "trace 2": np.inf, "replay": np.inf}
    for _ in range(rounds):
        step, args = make()
        for _ in range(3):  # warm caches (kernels, constants) as a running program has them
            step(*args)
        t0 = time.perf_counter()
        for _ in range(5):
            step(*args)
        best["eager"] = min(best["eager"], (time.perf_counter() - t0) / 5)
        step, args = make()
        step(*args)  # the eager warm-up of a fresh model, as in a training loop's first step
        f = gt.function(step)
        t0 = time.perf_counter()
        f(*args)
        t1 = time.perf_counter()
        f(*args)
        t2 = time.perf_counter()
        for _ in range(5):
            f(*args)
        t3 = time.perf_counter()
        best["trace 1"] = min(best["trace 1"], t1 - t0)
        best["trace 2"] = min(best["trace 2"], t2 - t1)
        best["replay"] = min(best["replay"], (t3 - t2) / 5)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    gc.disable()
    print(f"{'row':52} {'eager ms':>9} {'trace 1':>9} {'trace 2':>9} {'replay':>9} "
          f"{'t1/eager':>9} {'t2/eager':>9}")
    for name, make in ROWS.items():
        b = measure(make, args.rounds)
        print(f"{name:52} {b['eager'] * 1e3:9.3f} {b['trace 1'] * 1e3:9.3f} "
              f"{b['trace 2'] * 1e3:9.3f} {b['replay'] * 1e3:9.3f} "
              f"{b['trace 1'] / b['eager']:9.2f} {b['trace 2'] / b['eager']:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
