"""The GPU suite: one command that checks and measures gradtape on a CUDA machine.

On any machine with a CUDA device, CuPy and (for the comparison columns) a CUDA build of
PyTorch, it

1. times the GPU benchmarks, every cell built from ``_workloads.py`` (the same workloads as
   ``compare.py``), its gradients checked against hand-written NumPy on the host first, then
   warmed up and timed with device events (``cupy.cuda.Event`` for gradtape and CuPy,
   ``torch.cuda.Event`` for PyTorch), in interleaved repeats, median reported:

   - ``copy``: device-to-device copy of 2^24 float32, the bandwidth floor;
   - ``chain_bwd``: the backward alone of ``sum(f(x))``, ``f`` the 8-op chain, on 2^24 float32,
     one call as a user makes it: the events bracket the host's dispatch of the backward too
     (the device waits for it between the start event and the first kernel);
   - ``chain_bwd_dev``: the same backward's device work alone, as a fraction of the copy
     bandwidth (target >= 0.7, bytes: what the backward must read, the tape's saved arrays,
     plus ``dx`` written): a spin kernel launched just before the start event keeps the device
     busy while the host dispatches the call, so the kernels then run back to back between
     the events; a call that waits for the device inside (a host synchronisation) is
     reported, not timed;
   - ``chain``: forward + backward of the same chain;
   - ``mlp_256``, ``mlp_4096``: a training step (forward, backward, Adam) of the 784-512-512-10
     tanh MLP with softmax cross-entropy on integer labels at batch 256 and 4096, eager, under
     ``gt.function`` (``gradtape[compiled]``) and
     with its device work relaunched as CUDA graphs (``gradtape[graph]``, ``cuda_graph=True``);
   - ``perop``, ``perop_mixed``: the per-op chains on tiny (16,) arrays, in microseconds per op
     (``perop_mixed`` also compiled and as CUDA graphs);
   - ``per_example``: per-example gradients of the 64-128-10 MLP, batch 128;
   - ``jacobian``: the 256x256 Jacobian of ``tanh(W @ x)``;

   each against PyTorch CUDA eager in the same process;
2. runs the ``gpu``-marked tests (``pytest -m gpu``) in a subprocess, stopped at the time
   budget;
3. prints one table with the device name (last, so the end of the output carries it) and,
   with ``--json``, writes every figure, repeat, skip and the test summary.

``--dry-run`` (any machine, no GPU needed): builds every cell of the table against NumPy on the
CPU at small sizes (PyTorch on the CPU when it imports), checks its gradients, runs the timing
code once through a host-clock stub of the device events, and collects the ``gpu`` tests; it
claims no figure. The whole suite stays within ``--budget`` seconds (default 420): the
benchmarks start no row or repeat past 60% of it, the tests get what is left and are stopped
at its end. ``--quick`` (budget 240 s): fewer columns and repeats, a shorter block, the tests
without the 880 batching-rule cases. (Its duration on a GPU has not been measured yet.)

Usage::

    python benchmarks/gpu_suite.py                     # everything, on a CUDA machine
    python benchmarks/gpu_suite.py --quick --json out.json
    python benchmarks/gpu_suite.py --dry-run           # wiring check, on the CPU
    python benchmarks/gpu_suite.py --list

Exit status: 0 when every gradtape cell ran and matched the reference and no test failed (in a
dry run: every gradtape cell built and matched, and the tests collected); 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
try:  # a checkout that is not installed (the GPU machine runs the copied tree)
    import gradtape  # noqa: F401
except ImportError:
    sys.path.insert(1, str(ROOT))

import _workloads as W  # noqa: E402
import compare  # noqa: E402  (check_grads, fmt, gpu_info, machine_info)

GRAD_TOL = 2e-3  # relative, as compare.py: float32 against hand-written float32 NumPy
BW_TARGET = 0.7


# --------------------------------------------------------------------------- sizes and rows
@dataclass(frozen=True)
class Sizes:
    chain_n: int
    mlp_batches: tuple[int, int]


FULL = Sizes(chain_n=1 << 24, mlp_batches=(256, 4096))
DRY = Sizes(chain_n=1 << 12, mlp_batches=(4, 8))  # wiring only: small and fast on a CPU


@dataclass(frozen=True)
class Row:
    """A row of the table: ``build(column, device, sizes)`` makes one cell."""

    key: str
    title: str
    build: Callable[[str, str, Sizes], W.Cell]
    columns: tuple[str, ...]
    quick: tuple[str, ...]  # the columns of --quick
    unit: str = "ms"
    per: int = 1
    ref: str | None = "numpy"  # hand-written NumPy on the host, the gradient reference
    device_only: bool = False  # time the device work alone (Timer.block's device_only)


def _chain(part: str) -> Callable[[str, str, Sizes], W.Cell]:
    def build(col: str, device: str, sz: Sizes) -> W.Cell:
        if col in ("cupy", "numpy"):  # the hand-written chain (CuPy on the device)
            fw = "numpy" if device == "cpu" else "cupy"
            return W.build_fused(fw, part, None, device, sz.chain_n)
        return W._fw_variant(col, lambda f, fu: W.build_fused(f, part, fu, device, sz.chain_n))
    return build


def _copy(col: str, device: str, sz: Sizes) -> W.Cell:
    return W.build_copy(device, sz.chain_n, fw=col)


def _mlp(i: int) -> Callable[[str, str, Sizes], W.Cell]:
    def build(col: str, device: str, sz: Sizes) -> W.Cell:
        return W.build_mlp(col, W.MLP_LARGE["sizes"], sz.mlp_batches[i], train=True,
                           device=device, loss="ce")
    return build


def _perop(mixed: bool) -> Callable[[str, str, Sizes], W.Cell]:
    def build(col: str, device: str, sz: Sizes) -> W.Cell:
        b = W.build_overhead_mixed if mixed else W.build_overhead
        return W._fw_variant(col, lambda f, fu: b(f, fu, device))
    return build


def rows(sz: Sizes) -> list[Row]:
    """The table, top to bottom."""
    n = sz.chain_n
    log2 = int(math.log2(n))
    b0, b1 = sz.mlp_batches
    return [
        Row("copy", f"device copy, 2^{log2} float32 (the bandwidth floor)", _copy,
            ("cupy", "torch"), ("cupy",), ref=None),
        Row("chain_bwd", f"8-op chain, backward only, 2^{log2} float32 (a call, host dispatch "
            "included)", _chain("bwd"),
            ("gradtape", "gradtape[nofusion]", "cupy", "torch"), ("gradtape", "torch")),
        Row("chain_bwd_dev", f"8-op chain, backward only, 2^{log2} float32 (device work alone)",
            _chain("bwd"), ("gradtape", "gradtape[nofusion]", "cupy", "torch"),
            ("gradtape", "torch"), device_only=True),
        Row("chain", f"8-op chain, forward + backward, 2^{log2} float32", _chain("fwd+bwd"),
            ("gradtape", "gradtape[nofusion]", "cupy", "torch"), ("gradtape", "torch")),
        Row("mlp_256", f"train step MLP 784-512-512-10 tanh, softmax CE, batch {b0}, Adam", _mlp(0),
            ("gradtape", "gradtape[compiled]", "gradtape[graph]", "torch"), ("gradtape", "torch")),
        Row("mlp_4096", f"train step MLP 784-512-512-10 tanh, softmax CE, batch {b1}, Adam", _mlp(1),
            ("gradtape", "gradtape[compiled]", "gradtape[graph]", "torch"), ("gradtape", "torch")),
        Row("perop", f"{W.OVERHEAD_OPS} unary ops on (16,), fwd+bwd", _perop(False),
            ("gradtape", "gradtape[nofusion]", "torch"), ("gradtape", "torch"),
            unit="us/op", per=W.OVERHEAD_OPS),
        Row("perop_mixed", f"{W.MIXED_OPS} mixed ops on (16,), fwd+bwd to x, w", _perop(True),
            ("gradtape", "gradtape[compiled]", "gradtape[graph]", "torch"), (), unit="us/op",
            per=W.MIXED_OPS),
        Row("per_example", "per-example grads, MLP 64-128-10, softmax CE, batch 128",
            lambda col, device, sz: W.build_per_example_mlp(col, device=device),
            ("gradtape", "gradtape[vmap]", "torch"), ("gradtape", "torch")),
        Row("jacobian", f"Jacobian of tanh(W @ x), W {W.JACOBIAN_N}x{W.JACOBIAN_N}",
            lambda col, device, sz: W.build_jacobian(col, device),
            ("gradtape", "torch"), ("gradtape", "torch")),
    ]


# --------------------------------------------------------------------------- device timing
class _HostEvent:
    """A stand-in for a device event in a dry run: the host clock, after the cell's own sync."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self.t = 0.0

    def record(self) -> None:
        self._sync()
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        self._sync()


#: A kernel that keeps one thread busy for ``cycles`` clock cycles (``device_only`` timing).
SPIN_SOURCE = r"""
extern "C" __global__ void gt_suite_spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""
#: Milliseconds of spin first put before a ``device_only`` call, grown 4x (to SPIN_MAX_MS at
#: most) while the device finishes it before the host has enqueued the call; SPIN_TRIES calls
#: in a row that outlast the longest spin raise :class:`HostSyncError`.
SPIN_MS, SPIN_MAX_MS, SPIN_TRIES = 2.0, 32.0, 3
#: float32 elements written before each ``device_only`` call (128 MiB, more than an H100's or
#: H200's 50-60 MB L2): the call reads its inputs from memory, as a cold call does, not from
#: what its untimed ``prepare`` left in the cache.
L2_FLUSH_ELEMENTS = 1 << 25


class HostSyncError(RuntimeError):
    """A ``device_only`` call kept the host waiting for the device: not timeable apart."""


class Timer:
    """Seconds per call of a cell, measured between two device events on the current stream
    (``kind`` "cupy": ``cupy.cuda.Event``, "torch": ``torch.cuda.Event``; "host": the dry
    run's stand-in). Cells with a ``prepare`` are timed call by call, the untimed part
    finished (synchronized) before the start event.

    ``device_only``: the device work of each call alone. The host's dispatch of a call (Python,
    argument checks, launches) would otherwise sit between the start event and the first
    kernel, the device idle: a call that is host-bound then reads as slow kernels. So a spin
    kernel (``SPIN_SOURCE``; PyTorch's ``torch.cuda._sleep``) is launched just before the
    start event, long enough for the host to enqueue the whole call behind it; the device
    then runs the call's kernels back to back between the events. Whether it did is asked of
    the device: once the end event is enqueued, the start event must not have completed yet
    (the spin still running). A call it has (the host slower than the spin: a host
    synchronisation inside the call waits for the spin, or the host stalled) is run again
    behind a 4x longer spin, and after ``SPIN_TRIES`` such calls at ``SPIN_MAX_MS`` raises
    :class:`HostSyncError`. Before each call a 128 MiB buffer is written, so the call does
    not find its inputs in the L2 cache where its ``prepare`` left them."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._spin: Callable[[float], None] | None = None
        self._flush: Callable[[], Any] = lambda: None
        self._done: Callable[[Any], bool] = lambda ev: False
        self.spin_ms = SPIN_MS
        if kind == "cupy":
            cp = W.load("cupy")
            self._new = lambda cell: (cp.cuda.Event(), cp.cuda.Event())
            self._ms = cp.cuda.get_elapsed_time
        elif kind == "torch":
            torch = W.load("torch")
            self._new = lambda cell: (torch.cuda.Event(enable_timing=True),
                                      torch.cuda.Event(enable_timing=True))
            self._ms = lambda a, b: a.elapsed_time(b)
        elif kind == "host":
            self._new = lambda cell: (_HostEvent(cell.sync), _HostEvent(cell.sync))
            self._ms = lambda a, b: (b.t - a.t) * 1e3
        else:
            raise ValueError(f"Timer kind must be 'cupy', 'torch' or 'host', got {kind!r}")

    def _spinner(self, cell: W.Cell) -> Callable[[float], None]:
        """``spin(ms)``: a kernel on the current stream that keeps the device busy ``ms``
        milliseconds (its clock calibrated once with the events, after a first launch that
        loads it); a no-op on host clocks. Sets up the L2 flush and the start-event query."""
        if self._spin is not None:
            return self._spin
        if self.kind == "host":
            self._spin = lambda ms: None
            return self._spin
        import numpy as np
        if self.kind == "cupy":
            cp = W.load("cupy")
            kernel = cp.RawKernel(SPIN_SOURCE, "gt_suite_spin")
            launch: Callable[[int], None] = lambda c: kernel((1,), (1,), (np.int64(c),))  # noqa: E731
            scratch = cp.empty((L2_FLUSH_ELEMENTS,), dtype=np.float32)
            self._flush = lambda: scratch.fill(0)
            self._done = lambda ev: bool(ev.done)
        else:
            torch = W.load("torch")
            launch = torch.cuda._sleep
            scratch = torch.empty(L2_FLUSH_ELEMENTS, device="cuda")
            self._flush = scratch.zero_
            self._done = lambda ev: bool(ev.query())
        cycles = 10_000_000
        start, end = self._new(cell)
        launch(1)  # compiled and loaded here, outside the calibration's events
        end.record()
        end.synchronize()
        start.record()
        launch(cycles)
        end.record()
        end.synchronize()
        per_ms = cycles / max(self._ms(start, end), 1e-6)
        self._spin = lambda ms: launch(int(ms * per_ms))
        return self._spin

    def block(self, cell: W.Cell, n: int, device_only: bool = False) -> float:
        start, end = self._new(cell)
        cell.enter()
        try:
            if device_only and self.kind != "host":
                spin = self._spinner(cell)
                total = 0.0
                for _ in range(n):
                    over = 0  # calls in a row that outlasted the longest spin
                    while True:
                        state = cell.prepare() if cell.prepare is not None else None
                        self._flush()
                        cell.sync()
                        h0 = time.perf_counter()
                        spin(self.spin_ms)
                        start.record()
                        if cell.prepare is not None:
                            cell.run(state)
                        else:
                            cell.run()
                        end.record()
                        covered = not self._done(start)  # the spin still running: no gap
                        host_ms = (time.perf_counter() - h0) * 1e3
                        end.synchronize()
                        del state
                        if covered:
                            break
                        if self.spin_ms < SPIN_MAX_MS:
                            self.spin_ms = min(4 * self.spin_ms, SPIN_MAX_MS)
                            continue
                        over += 1
                        if over >= SPIN_TRIES:
                            raise HostSyncError(
                                f"{over} calls in a row outlasted a {self.spin_ms:.0f} ms spin "
                                f"(the last took {host_ms:.1f} ms on the host): the call waits "
                                "for the device inside (a host synchronisation), or the host "
                                "stalls; its device work cannot be timed apart from the host")
                    total += self._ms(start, end) / 1e3
                return total / n
            if cell.prepare is None:
                run = cell.run
                cell.sync()
                start.record()
                for _ in range(n):
                    run()
                end.record()
                end.synchronize()
                return self._ms(start, end) / 1e3 / n
            total = 0.0
            for _ in range(n):
                state = cell.prepare()
                cell.sync()
                start.record()
                cell.run(state)
                end.record()
                end.synchronize()
                total += self._ms(start, end) / 1e3
                del state
            return total / n
        finally:
            cell.exit()


def timer_for(col: str, dry: bool) -> Timer:
    if dry:
        return Timer("host")
    return Timer("torch" if col.partition("[")[0] == "torch" else "cupy")


#: Calls per block of a ``device_only`` row at most: each call waits for its own spin.
DEVICE_ONLY_CALLS = 20


def calibrate(cell: W.Cell, timer: Timer, block: float, warmup: int,
              device_only: bool = False) -> int:
    """Warm up (the first calls compile the kernels), then the calls that fill one block."""
    for _ in range(warmup):
        cell.once()
    t = timer.block(cell, 1, device_only)
    if device_only:
        return max(1, min(DEVICE_ONLY_CALLS, int(round(block / max(t, 1e-9)))))
    if t < block / 20:
        t = timer.block(cell, max(1, int(block / 20 / max(t, 1e-9))))
    return max(1, min(100_000, int(round(block / max(t, 1e-9)))))


# --------------------------------------------------------------------------- benchmarks
@dataclass
class Results:
    times: dict[str, dict[str, list[float]]]
    skipped: dict[str, dict[str, str]]
    errors: dict[str, dict[str, float]]  # gradient check: max relative error vs the reference
    calls: dict[str, int]
    ok: dict[str, list[str]]  # dry run: the cells that built, ran, and (where checked) matched


def chain_bwd_bytes(device: str, n: int) -> int:
    """Bytes the chain's backward must move at least: every array the tape saved for it (read
    once) plus ``dx`` (written once); ``tape.saved_bytes()`` counts each saved array once."""
    G = W._GT(True, device)
    with G as gt:
        x = gt.tensor(W.fused_input(n))
        with gt.GradientTape() as tape:
            tape.watch(x)
            gt.sum(W._fused_chain(gt, x))
        return int(tape.saved_bytes()) + int(x.data.nbytes)


def bench(table: list[Row], cols_of: Callable[[Row], tuple[str, ...]], device: str, sz: Sizes,
          args: argparse.Namespace, deadline: float) -> Results:
    dry = args.dry_run
    res = Results({}, {}, {}, {}, {})
    cells: list[tuple[Row, str, W.Cell, Timer, int]] = []
    for row in table:
        cols = cols_of(row)
        if not cols:
            continue
        if time.perf_counter() > deadline:
            for c in cols:
                res.skipped.setdefault(row.key, {})[c] = "budget: time spent before this row"
            continue
        ref = None
        if row.ref is not None:  # hand-written NumPy on the host, gradients only
            try:
                rc = row.build(row.ref, "cpu", sz)
                ref = rc.grads(rc.once())  # type: ignore[misc]
            except Exception as exc:
                print(f"  {row.key}: no reference ({type(exc).__name__}: {exc})", file=sys.stderr)
        for col in cols:
            try:
                cell = row.build(col, device, sz)
                first = cell.once()
                if ref is not None and cell.grads is not None:
                    err = compare.check_grads(cell.grads(first), ref)
                    res.errors.setdefault(row.key, {})[col] = err
                del first
                timer = timer_for(col, dry)
                n = calibrate(cell, timer, args.block, args.warmup, row.device_only)
            except W.Unavailable as exc:
                res.skipped.setdefault(row.key, {})[col] = str(exc)
                continue
            except Exception as exc:  # a broken cell must not stop the suite
                res.skipped.setdefault(row.key, {})[col] = f"error: {type(exc).__name__}: {exc}"
                continue
            cells.append((row, col, cell, timer, n))
            res.calls[f"{row.key}/{col}"] = n
            print(f"  built {row.key}/{col} ({n} calls per block)", file=sys.stderr)
    if dry:  # one timed block each went through the timing code; no figure is claimed
        for row, col, *_ in cells:
            res.ok.setdefault(row.key, []).append(col)
        return res
    for rep in range(args.repeats):
        if rep and time.perf_counter() > deadline:
            print(f"  time budget: stopped after {rep} repeats", file=sys.stderr)
            break
        k = rep % max(1, len(cells))
        for row, col, cell, timer, n in cells[k:] + cells[:k]:
            try:
                t = timer.block(cell, n, row.device_only)
            except Exception as exc:
                res.skipped.setdefault(row.key, {})[col] = f"error: {type(exc).__name__}: {exc}"
                continue
            res.times.setdefault(row.key, {}).setdefault(col, []).append(t)
    for key, by_col in res.skipped.items():  # a column that failed mid-run has no figure
        for col in by_col:
            res.times.get(key, {}).pop(col, None)
    return res


# --------------------------------------------------------------------------- tests
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def run_tests(paths: list[str], quick: bool, collect_only: bool, timeout: float,
              workers: int = 0, log: Path | None = None) -> dict[str, Any]:
    """``pytest -m gpu`` over ``paths`` in a subprocess (the repository root as working
    directory); stopped with SIGINT at ``timeout`` seconds (pytest then reports what ran).
    ``workers`` > 0 spreads the tests over that many pytest-xdist processes sharing the device
    (where pytest-xdist imports; CuPy's first call of each kernel compiles it on the host, so
    the CPUs set the pace). ``log``: the whole output is written there. Returns the counts,
    return code, duration and the tail of the output."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", "-rfE", "--tb=short"]
    if collect_only:
        cmd.append("--collect-only")
    else:
        if workers > 0:
            try:
                import xdist  # noqa: F401  (pytest-xdist; present on the GPU image)
                cmd += ["-n", str(workers)]
            except ImportError:
                pass
        try:
            import pytest_timeout  # noqa: F401  (present on the GPU image): one hung test
            cmd.append("--timeout=120")  # must not eat the budget
        except ImportError:
            pass
    if quick:
        cmd += ["--ignore", "tests/test_batching_rules.py"]
    cmd += paths
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + pp if pp else "")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    summary: dict[str, Any] = {"command": " ".join(cmd[1:]), "rc": proc.returncode,
                               "timed_out": timed_out,
                               "seconds": round(time.perf_counter() - t0, 1)}
    lines = out.strip().splitlines()
    last = next((ln for ln in reversed(lines) if _COUNT.search(ln)
                 or re.search(r"\d+ tests? collected", ln)), "")
    counts = {}
    for num, what in _COUNT.findall(last):
        counts["errors" if what.startswith("error") else what] = int(num)
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", last)
    if m:
        counts["collected"] = int(m.group(1))
    summary["counts"] = counts
    summary["tail"] = "\n".join(lines[-40:])
    if log is not None:
        log.write_text(out)
    return summary


# --------------------------------------------------------------------------- report
def device_facts() -> dict[str, Any]:
    """Name, compute capability, memory, driver and runtime of the current CUDA device."""
    cp = W.load("cupy")
    rt = cp.cuda.runtime
    props = rt.getDeviceProperties(cp.cuda.Device().id)
    name = props.get("name", b"?")
    facts: dict[str, Any] = {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props.get('major')}.{props.get('minor')}",
        "memory_gib": round(props.get("totalGlobalMem", 0) / 2**30, 1),
        "multiprocessors": props.get("multiProcessorCount"),
    }
    for key, fn in (("driver", rt.driverGetVersion), ("runtime", rt.runtimeGetVersion)):
        try:
            v = int(fn())
            facts[f"cuda_{key}"] = f"{v // 1000}.{v % 1000 // 10}"
        except Exception:
            pass
    return facts


def targets(med: dict[str, dict[str, float]], bwd_bytes: int | None, n: int) -> list[dict]:
    """The issue's bandwidth target and the same-run ratios against PyTorch (context)."""
    out: list[dict[str, Any]] = []
    copy = med.get("copy", {}).get("cupy")
    if copy:
        out.append({"target": "copy bandwidth, GB/s (read + write)",
                    "value": 2 * 4 * n / (copy / 1e3) / 1e9, "goal": "-", "met": None})
    for key, what, goal in (("chain_bwd_dev", "device work", True),
                            ("chain_bwd", "a call, host dispatch included", False)):
        bwd = med.get(key, {}).get("gradtape")
        if not (copy and bwd and bwd_bytes):
            continue
        frac = (bwd_bytes / (bwd / 1e3)) / (2 * 4 * n / (copy / 1e3))
        out.append({"target": f"chain bwd ({what}) bandwidth / copy bandwidth (bytes: "
                              f"{bwd_bytes / 4 / n:.0f} arrays: saved + dx)", "value": frac,
                    "goal": f">= {BW_TARGET}" if goal else "(info)",
                    "met": frac >= BW_TARGET if goal else None})
    for key, by_col in med.items():
        g, t = by_col.get("gradtape"), by_col.get("torch")
        if g and t:
            out.append({"target": f"{key}: torch cuda / gradtape (> 1: gradtape faster)",
                        "value": t / g, "goal": "(info)", "met": None})
    return out


def report(table: list[Row], res: Results, tests: dict[str, Any] | None, info: dict[str, Any],
           bwd_bytes: int | None, sz: Sizes, args: argparse.Namespace) -> int:
    dry = args.dry_run
    med: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for row in table:
        scale = (1e6 if row.unit == "us/op" else 1e3) / row.per
        for col, ts in res.times.get(row.key, {}).items():
            med.setdefault(row.key, {})[col] = statistics.median(ts) * scale
            spread.setdefault(row.key, {})[col] = max(ts) / min(ts) if min(ts) > 0 else 0.0
    cols = []
    for row in table:
        for c in row.columns:
            if c not in cols:
                cols.append(c)
    bad_grads = {k: {c: e for c, e in v.items() if not e <= GRAD_TOL} for k, v in res.errors.items()}
    bad_grads = {k: v for k, v in bad_grads.items() if v}
    tg = [] if dry else targets(med, bwd_bytes, sz.chain_n)

    print()
    if tests is not None:
        c = tests["counts"]
        state = "stopped at the time budget; " if tests["timed_out"] else ""
        print(f"tests: pytest {tests['command'].split('pytest ', 1)[-1]}")
        print(f"       {state}rc {tests['rc']}, {tests['seconds']} s, "
              + (", ".join(f"{v} {k}" for k, v in c.items()) or "no summary line"))
        if tests["rc"] not in (0, 5) and not tests["timed_out"]:
            print("       " + "\n       ".join(tests["tail"].splitlines()[-15:]))
    for key, by_col in res.skipped.items():
        for col, why in by_col.items():
            print(f"skip {key}/{col}: {why}")
    dev = info.get("device", {})
    head = (f"# gradtape GPU suite{' (DRY RUN: wiring only, no figures)' if dry else ''}: "
            + (f"{dev.get('name')} (cc {dev.get('compute_capability')}, "
               f"{dev.get('memory_gib')} GiB, CUDA driver {dev.get('cuda_driver')}, "
               f"runtime {dev.get('cuda_runtime')})" if dev else info.get("gpu", "no device")))
    print(head)
    print("# " + "  ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if v)
          + f"  commit {info.get('gradtape_commit', '?')}"
          + ("+dirty" if info.get("gradtape_tree_dirty") else ""))
    line = f"{'row':13s} {'unit':6s}" + "".join(f"{c:>20s}" for c in cols) + "  what"
    print(line)
    print("-" * len(line))
    for row in table:
        text = f"{row.key:13s} {row.unit:6s}"
        for c in cols:
            if dry:
                cell = ("ok" if c in res.ok.get(row.key, []) else
                        "skip" if c in res.skipped.get(row.key, {}) and
                        not res.skipped[row.key][c].startswith("error") else
                        "ERROR" if c in res.skipped.get(row.key, {}) else "-")
            else:
                v = med.get(row.key, {}).get(c)
                cell = "-" if v is None else \
                    f"{compare.fmt(v, row.unit)} ({spread[row.key][c]:.2f})"
            text += f"{cell:>20s}"
        print(text + "  " + row.title)
    if not dry:
        print(f"(median of {args.repeats} repeats timed with device events after "
              f"{args.warmup} warm-up calls; in brackets max/min over repeats)")
    print("gradient check vs hand-written NumPy: "
          + (f"all within {GRAD_TOL:g} relative" if not bad_grads else f"MISMATCH {bad_grads}"))
    for t in tg:
        mark = {True: "MET", False: "NOT MET", None: ""}[t["met"]]
        print(f"  {t['target']:66s} {t['value']:9.3g}  {t['goal']:8s} {mark}")

    gt_failed = [f"{k}/{c}" for k, by in res.skipped.items() for c, r in by.items()
                 if c.startswith("gradtape") and not r.startswith("budget:")]
    why = []
    if gt_failed:
        why.append(f"gradtape cells did not run: {', '.join(gt_failed)}")
    if any(c.startswith("gradtape") for by in bad_grads.values() for c in by):
        why.append("gradtape's gradients differ from NumPy")
    if tests is not None:
        c = tests["counts"]
        if dry:
            if tests["rc"] != 0 or not c.get("collected"):
                why.append(f"pytest could not collect the gpu tests (rc {tests['rc']})")
        elif c.get("failed") or c.get("errors"):
            why.append("gpu tests failed")
        elif not c.get("passed"):
            why.append("no gpu test passed (all skipped: is CuPy usable in the subprocess?)")
        elif tests["rc"] != 0 and not tests["timed_out"]:
            why.append(f"pytest exited with rc {tests['rc']}")
    ok = not why
    if args.json:
        result = {"machine": info, "dry_run": dry, "quick": args.quick,
                  "settings": {"repeats": args.repeats, "block_s": args.block,
                               "warmup": args.warmup, "budget_s": args.budget},
                  "rows": {r.key: {"title": r.title, "unit": r.unit, "per": r.per}
                           for r in table},
                  "median": None if dry else med, "repeats_s": res.times,
                  "calls_per_block": res.calls, "built": res.ok, "skipped": res.skipped,
                  "grad_max_rel_err_vs_numpy": res.errors, "chain_bwd_bytes": bwd_bytes,
                  "targets": tg, "tests": tests, "ok": ok, "failures": why}
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    print("SUITE " + ("OK" if ok else "FAILED: " + "; ".join(why)))
    return 0 if ok else 1


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="check the wiring on the CPU: build and check every cell against NumPy "
                        "at small sizes, time nothing for real, collect the gpu tests")
    p.add_argument("--quick", action="store_true",
                   help="fewer columns and repeats, shorter blocks, the tests without "
                        "test_batching_rules.py")
    p.add_argument("--json", type=Path, help="write every figure, skip and the test summary here")
    p.add_argument("-w", "--rows", nargs="+", metavar="ROW", help="rows to run (default: all)")
    p.add_argument("-r", "--repeats", type=int, help="interleaved repeats (default 7; quick 3)")
    p.add_argument("--block", type=float, help="seconds per timed block (default 0.05; quick 0.02)")
    p.add_argument("--warmup", type=int, help="untimed calls per cell (default 3; dry run 1)")
    p.add_argument("--budget", type=float,
                   help="seconds for the whole suite; the benchmarks stop starting rows and "
                        "repeats past 60%% of it, the tests are stopped at its end (default "
                        "420; quick 240)")
    p.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    p.add_argument("--no-bench", action="store_true", help="skip the benchmarks")
    p.add_argument("--tests", nargs="+", default=["tests"], metavar="PATH",
                   help="what pytest -m gpu runs (default: tests)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1) // 2,
                   help="pytest-xdist processes for the tests, where it imports (0: one process; "
                        "default: half the CPUs, at most 4)")
    p.add_argument("--test-log", type=Path, help="write the whole pytest output here")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # progress (stderr) and the table in their order
        sys.stdout.reconfigure(line_buffering=True)
    q, dry = args.quick, args.dry_run
    args.repeats = args.repeats or (3 if q else 7)
    args.block = args.block or (0.02 if q else 0.05)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    args.budget = args.budget or (240.0 if q else 420.0)
    sz = DRY if dry else FULL
    table = rows(sz)
    if args.list:
        for r in table:
            print(f"{r.key:13s} {r.title}  [{', '.join(r.columns)}]")
        return 0
    known = [r.key for r in table]
    for w in args.rows or []:
        if w not in known:
            p.error(f"unknown row {w!r}; known: {', '.join(known)}")
    table = [r for r in table if not args.rows or r.key in args.rows]
    t0 = time.perf_counter()

    info = compare.machine_info(["gradtape", "cupy", "torch"])
    device = "cpu"
    if dry:
        info["gpu"] = "none used (dry run)"
    else:
        name, reason = compare.gpu_info()
        if name is None:
            print(f"no usable CUDA device: {reason}\n(use --dry-run to check the wiring on a CPU)")
            return 1
        device = "cuda"
        try:
            info["device"] = device_facts()
        except Exception as exc:  # the name is enough to go on
            info["device"] = {"name": name, "facts": f"{type(exc).__name__}: {exc}"}
        info["gpu"] = info["device"]["name"]
        torch_reason = None
        try:
            if not W.load("torch").cuda.is_available():
                torch_reason = "torch has no usable CUDA device"
        except W.Unavailable as exc:
            torch_reason = str(exc)
        if torch_reason:
            print(f"# the PyTorch columns will be skipped: {torch_reason}")
    print(f"# {info['date']}  {info['cpu']} x{info['cores']}  python {info['python']}  "
          f"gpu: {info['gpu']}", file=sys.stderr)

    res = Results({}, {}, {}, {}, {})
    bwd_bytes = None
    if not args.no_bench:
        cols_of = (lambda r: r.quick) if q else (lambda r: r.columns)
        res = bench(table, cols_of, device, sz, args, t0 + 0.6 * args.budget)
        if any(r.key in ("chain_bwd", "chain_bwd_dev") for r in table):
            try:
                bwd_bytes = chain_bwd_bytes(device, sz.chain_n)
            except Exception as exc:
                print(f"  chain_bwd bytes: {type(exc).__name__}: {exc}", file=sys.stderr)
        if device == "cuda":
            try:  # what gradtape's and CuPy's arrays hold in CuPy's pool at the end (context)
                pool = W.load("cupy").get_default_memory_pool()
                info["cupy_pool_bytes"] = {"used": pool.used_bytes(), "total": pool.total_bytes()}
            except Exception:
                pass
    tests = None
    if not args.no_tests:
        left = args.budget - (time.perf_counter() - t0) - 10.0
        print(f"  pytest -m gpu ({'collect only, ' if dry else ''}{max(left, 1):.0f} s left)",
              file=sys.stderr)
        tests = run_tests(args.tests, q, dry, left, args.workers, args.test_log)
    return report(table, res, tests, info, bwd_bytes, sz, args)


if __name__ == "__main__":
    sys.exit(main())
