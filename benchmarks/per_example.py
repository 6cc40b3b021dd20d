"""Per-example gradients and DP-SGD clipping (``tape.per_example_gradients``) against gradtape's
own plain batch gradient of the same net, in the same run.

Not a test and not collected by pytest; run it directly::

    .venv/bin/python benchmarks/per_example.py            # about a minute on 2 cores
    .venv/bin/python benchmarks/per_example.py -r 9 --block 0.3 --blas-threads 1

Rows (float32, forward under the tape + backward, the same for every cell of a workload):

* ``mlp``: 64-128-10 tanh MLP, batch 128, softmax cross-entropy on integer labels.
  ``batch`` = ``tape.gradient`` of the mean loss; ``per-example`` = ``per_example_gradients``
  (``[B, *shape]`` per parameter); ``dp-sgd`` = clipped sum (``max_norm=1``, ``reduce="sum"``,
  ghost norms); ``loop`` = one ``tape.gradient`` per example (128 forward + backward passes),
  the naive way to get the same per-example gradients.
* ``cnn``: conv 3x3 1->8 (padding 1), relu, max pool 2, conv 3x3 8->16 (padding 1), relu, max
  pool 2, dense 784->10, batch 32 of 1x28x28 digits-like inputs (random), cross-entropy;
  ``batch``, ``per-example`` and ``dp-sgd`` as above.

How it measures: every cell is checked against the loop of single-example gradients once,
calibrated so that one timed block lasts about ``--block`` seconds, then all cells are timed
once per round in a rotating order (slow drift of a shared machine hits every cell alike).
A figure is the median over rounds of the time per call, with [min, max] over rounds; a
ratio is the median over rounds of (cell / batch) within the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

import gradtape as gt


def mlp_workload(seed: int = 0) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    rng = np.random.default_rng(seed)
    l1 = gt.nn.Dense(64, 128, activation="tanh", seed=1)
    l2 = gt.nn.Dense(128, 10, seed=2)
    params = [l1.kernel, l1.bias, l2.kernel, l2.bias]
    X = rng.normal(size=(128, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=128)

    def losses(xb: np.ndarray, yb: np.ndarray) -> gt.Tensor:
        return gt.nn.cross_entropy(l2(l1(gt.tensor(xb))), yb, reduction="none")

    return _cells(losses, params, X, y, loop=True), lambda: _check(losses, params, X, y)


def cnn_workload(seed: int = 0) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    rng = np.random.default_rng(seed)
    c1 = gt.nn.Conv2D(1, 8, 3, padding=1, activation="relu", seed=1)
    c2 = gt.nn.Conv2D(8, 16, 3, padding=1, activation="relu", seed=2)
    d = gt.nn.Dense(16 * 7 * 7, 10, seed=3)
    params = [c1.kernel, c1.bias, c2.kernel, c2.bias, d.kernel, d.bias]
    X = rng.normal(size=(32, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=32)

    def losses(xb: np.ndarray, yb: np.ndarray) -> gt.Tensor:
        h = gt.nn.max_pool2d(c1(gt.tensor(xb)), 2)
        h = gt.nn.max_pool2d(c2(h), 2)
        return gt.nn.cross_entropy(d(gt.reshape(h, (h.shape[0], -1))), yb, reduction="none")

    return _cells(losses, params, X, y, loop=False), lambda: _check(losses, params, X[:8], y[:8])


def _cells(losses: Callable, params: list, X: np.ndarray, y: np.ndarray,
           loop: bool) -> dict[str, Callable[[], object]]:
    def batch() -> object:
        with gt.GradientTape() as tape:
            loss = gt.mean(losses(X, y))
        return tape.gradient(loss, params)

    def per_example() -> object:
        with gt.GradientTape() as tape:
            loss = losses(X, y)
        return tape.per_example_gradients(loss, params)

    def dp_sgd() -> object:
        with gt.GradientTape() as tape:
            loss = losses(X, y)
        return tape.per_example_gradients(loss, params, max_norm=1.0, reduce="sum")

    def looped() -> object:
        out = []
        for b in range(len(X)):
            with gt.GradientTape() as tape:
                loss = gt.sum(losses(X[b:b + 1], y[b:b + 1]))
            out.append(tape.gradient(loss, params))
        return out

    cells: dict[str, Callable[[], object]] = {"batch": batch, "per-example": per_example, "dp-sgd": dp_sgd}
    if loop:
        cells["loop"] = looped
    return cells


def _check(losses: Callable, params: list, X: np.ndarray, y: np.ndarray) -> None:
    """per_example_gradients and the clipped sum against the loop of single-example gradients."""
    ref = []
    for b in range(len(X)):
        with gt.GradientTape() as tape:
            loss = gt.sum(losses(X[b:b + 1], y[b:b + 1]))
        ref.append([g.numpy() for g in tape.gradient(loss, params)])
    ref_s = [np.stack([r[k] for r in ref]) for k in range(len(params))]
    with gt.GradientTape() as tape:
        loss = losses(X, y)
    got = tape.per_example_gradients(loss, params)
    for g, r in zip(got, ref_s):
        np.testing.assert_allclose(g.numpy(), r, rtol=2e-3, atol=2e-5)
    norms = np.sqrt(sum((r.reshape(len(X), -1).astype(np.float64) ** 2).sum(1) for r in ref_s))
    c = np.minimum(1.0, 1.0 / norms)
    with gt.GradientTape() as tape:
        loss = losses(X, y)
    got = tape.per_example_gradients(loss, params, max_norm=1.0, reduce="sum")
    for g, r in zip(got, ref_s):
        np.testing.assert_allclose(g.numpy(), np.tensordot(c, r, axes=1), rtol=2e-3, atol=2e-5)


def _calibrate(fn: Callable[[], object], block: float) -> int:
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    return max(1, int(block / one))


def _time(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def run(rounds: int, block: float, settle: float) -> None:
    workloads = {"mlp": mlp_workload(), "cnn": cnn_workload()}
    for name, (_, check) in workloads.items():
        check()
        print(f"{name}: per-example gradients and the clipped sum match the loop of single-example "
              "gradients")
    cells = [(w, c, fn) for w, (cs, _) in workloads.items() for c, fn in cs.items()]
    reps = {(w, c): _calibrate(fn, block) for w, c, fn in cells}
    times: dict[tuple[str, str], list[float]] = {(w, c): [] for w, c, _ in cells}
    for r in range(rounds):
        k = r % len(cells)
        for w, c, fn in cells[k:] + cells[:k]:
            time.sleep(settle)  # let BLAS worker threads of the previous block go to sleep
            times[(w, c)].append(_time(fn, reps[(w, c)]))
    print(f"\n{rounds} interleaved rounds, blocks of ~{block} s; ms per call: median [min, max]; "
          "ratio: median over rounds of cell / batch")
    print(f"{'workload':10s} {'cell':12s} {'ms':>9s} {'[min, max]':>20s} {'x batch':>9s}")
    for w, c, _ in cells:
        ts = times[(w, c)]
        ratio = statistics.median(a / b for a, b in zip(ts, times[(w, "batch")]))
        print(f"{w:10s} {c:12s} {1e3 * statistics.median(ts):9.3f} "
              f"[{1e3 * min(ts):8.3f}, {1e3 * max(ts):8.3f}] {ratio:9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", "--rounds", type=int, default=7)
    ap.add_argument("--block", type=float, default=0.2, help="seconds per timed block")
    ap.add_argument("--settle", type=float, default=0.1, help="idle seconds before each block")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="restart with OPENBLAS/OMP/MKL_NUM_THREADS set to this (default: as is)")
    args = ap.parse_args()
    if args.blas_threads is not None and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.blas_threads):
        n = str(args.blas_threads)  # BLAS reads these at load time: start over with them set
        env = dict(os.environ, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"gradtape {gt.__version__}, numpy {np.__version__}, backend {gt.backend_name()}, "
          f"{os.cpu_count()} cores, load average {load:.2f}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    run(args.rounds, args.block, args.settle)


if __name__ == "__main__":
    main()
