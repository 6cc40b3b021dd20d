"""Side-by-side comparison of gradtape with its peers on the same workloads.

Runs every workload in gradtape, hand-written NumPy (forward + manual backward), PyTorch eager,
TensorFlow eager ``GradientTape``, ``jax.jit`` and HIPS autograd, each skipped with its reason
when it does not import. Repeats are interleaved (repeat 1 of every cell, then repeat 2, ...)
because this machine kind is noisy: a single cell can vary 2x from one minute to the next.
Each repeat times a block of calls lasting about ``--block`` seconds; a cell's figure is the
median over repeats. Gradients are checked against hand-written NumPy before timing.

With a CUDA device (CuPy installed and a device usable) the GPU rows run too: the fused chain
on CuPy through gradtape, against a device-to-device copy measured in the same run and against
PyTorch CUDA eager; without one they are skipped with the reason.

Usage::

    python benchmarks/compare.py                       # everything, 5 repeats
    python benchmarks/compare.py -w overhead fused -r 7
    python benchmarks/compare.py -f gradtape torch --block 0.2 --json out.json
    python benchmarks/compare.py --isolate --rounds 2 -r 3    # each framework in its own process
    python benchmarks/compare.py --list

Writes ``benchmarks/results.json`` (machine, versions, every repeat, medians, target checks).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _workloads as W  # noqa: E402


# --------------------------------------------------------------------------- timing
def time_block(cell: W.Cell, n: int) -> float:
    """Seconds per call over a block of ``n`` calls (only ``run`` is timed when the cell has a
    ``prepare``)."""
    pc = time.perf_counter
    cell.enter()
    try:
        if cell.prepare is None:
            run = cell.run
            cell.sync()
            t0 = pc()
            for _ in range(n):
                run()
            cell.sync()
            return (pc() - t0) / n
        total = 0.0
        for _ in range(n):
            state = cell.prepare()
            cell.sync()
            t0 = pc()
            cell.run(state)
            cell.sync()
            total += pc() - t0
            del state
        return total / n
    finally:
        cell.exit()


def calibrate(cell: W.Cell, block: float, warmup: int) -> int:
    """Warm up, then pick the number of calls that makes one block last about ``block`` s."""
    for _ in range(warmup):
        cell.once()
    t = time_block(cell, 1)
    if t < block / 20:  # one call is short: measure a few for a steadier estimate
        t = time_block(cell, max(1, int(block / 20 / max(t, 1e-9))))
    return max(1, int(round(block / max(t, 1e-9))))


def check_grads(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """Largest relative difference (max |a-b| / max(|b|, tiny)) over the gradient arrays."""
    if len(got) != len(ref):
        return math.inf
    worst = 0.0
    for a, b in zip(got, ref):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            return math.inf
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale if a.size else 0.0)
    return worst


def reference(spec: W.Spec, fw: str) -> str | None:
    """The column whose gradients ``fw``'s are checked against (None: no check): hand-written
    NumPy (CuPy on the GPU rows); for a ``*[batch]`` variant (a plain batch gradient next to
    per-example ones), the hand-written ``numpy[batch]`` of the same row."""
    ref = {"copy": None, "gpu_copy": None, "gpu_mlp_large": None}.get(
        spec.key, "cupy" if spec.key.startswith("gpu") else "numpy")
    if ref and fw.endswith("[batch]") and f"{ref}[batch]" in spec.frameworks:
        return f"{ref}[batch]"
    return ref


# --------------------------------------------------------------------------- machine facts
def machine_info(frameworks: list[str] | None = None) -> dict[str, Any]:
    """Machine, software and thread facts. Versions of every framework, or (``frameworks``
    given) only of those columns' frameworks and NumPy: a framework imported only to read its
    version would still start its thread pools in this process."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        info["gradtape_commit"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        info["gradtape_tree_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    names = (*W.FRAMEWORKS, "opacus") if frameworks is None else sorted(
        {"numpy", *(f.partition("[")[0] for f in frameworks)})
    versions = {fw: W.version(fw) for fw in names}
    info["versions"] = versions
    threads: dict[str, Any] = {}
    if versions.get("torch"):
        threads["torch"] = W.load("torch").get_num_threads()
    try:
        from threadpoolctl import threadpool_info  # optional

        threads["blas"] = [(d.get("internal_api"), d.get("num_threads")) for d in threadpool_info()]
    except Exception:
        pass
    info["threads"] = threads
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def gpu_info() -> tuple[str | None, str]:
    """(device name, "") when CuPy has a usable device, else (None, reason)."""
    try:
        cp = W._cupy()
    except W.Unavailable as exc:
        return None, str(exc)
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # a name is nice to have, not essential
        name = f"CUDA device ({type(exc).__name__})"
    return name, ""


# --------------------------------------------------------------------------- targets
def targets(med: dict[str, dict[str, float]], gpu: bool) -> list[dict[str, Any]]:
    """The performance targets of the issues, evaluated on the medians of this run."""
    out: list[dict[str, Any]] = []

    def get(row: str, fw: str) -> float | None:
        return med.get(row, {}).get(fw)

    def add(name: str, value: float | None, goal: str, ok: bool | None,
            info: bool = False) -> None:
        entry = {"target": name, "value": value, "goal": goal,
                 "met": None if value is None or info else ok}
        if info:  # context only, not a target of the issues
            entry["info"] = True
        out.append(entry)

    us = get("overhead", "gradtape")
    add("overhead gradtape us/op", us, "<= 5 (aim 3)", us is not None and us <= 5.0)
    t = get("overhead", "torch")
    r = t / us if (t and us) else None
    add("overhead torch / gradtape", r, ">= 1.4", r is not None and r >= 1.4)
    g, t = get("overhead_mixed", "gradtape"), get("overhead_mixed", "torch")
    r = g / t if (g and t) else None  # issue 12 item 6: eager, binary ops with constants, fan-out
    add("overhead_mixed: gradtape / torch (eager, per op)", r, "<= 0.7", r is not None and r <= 0.7)
    on, off = get("fused_bwd", "gradtape"), get("fused_bwd", "gradtape[nofusion]")
    r = off / on if (on and off) else None
    add("fused bwd: fusion off / on", r, ">= 2", r is not None and r >= 2.0)
    g, t = get("fused", "gradtape"), get("fused", "torch")
    r = t / g if (g and t) else None
    add("fused fwd+bwd: torch / gradtape", r, "> 1", r is not None and r > 1.0)
    j = get("fused", "jax")
    r = g / j if (g and j) else None
    add("fused fwd+bwd: gradtape / jax.jit", r, "<= 1.3 (aim)", r is not None and r <= 1.3)
    g, n = get("mlp_large", "gradtape"), get("mlp_large", "numpy")
    r = g / n if (g and n) else None
    add("mlp_large: gradtape / numpy", r, "<= 1.1", r is not None and r <= 1.1)
    g, t = get("mlp_small", "gradtape"), get("mlp_small", "torch")
    r = t / g if (g and t) else None
    add("mlp_small: torch / gradtape", r, "> 1", r is not None and r > 1.0)

    # batched gradients: every value is (row, a) / (row, b) of this run
    names: dict[Any, str] = {
        "torch": "torch.func", "jax": "jax.jit", "opacus[ghost]": "opacus ghost",
        "gradtape[batch]": "gradtape batch grad", "torch[batch]": "torch batch grad",
        "jax[batch]": "jax.jit batch grad", "gradtape[jvp]": "gradtape jvp(grad)",
        "gradtape[vmap]": "gradtape vmap(grad)", "gradtape[compiled]": "gradtape compiled",
        "gradtape[hvp]": "gradtape gt.hvp",
        ("hvp", "torch"): "torch double backward",
        ("hvp", "gradtape"): "gradtape nested tapes"}

    def ratio(row: str, a: str, b: str, goal: str, limit: float | None,
              faster: bool = False) -> None:
        """``a / b`` at most ``limit``; with ``faster`` the target is ``a / b > limit``."""
        x, y = get(row, a), get(row, b)
        r = x / y if (x and y) else None
        ok = None if limit is None or r is None else (r > limit if faster else r <= limit)
        na, nb = names.get((row, a), names.get(a, a)), names.get((row, b), names.get(b, b))
        add(f"{row}: {na} / {nb}", r, goal, ok, info=limit is None)

    ratio("jacobian", "torch", "gradtape", "> 1", 1.0, faster=True)
    ratio("jacobian", "gradtape", "jax", "<= 1.2 (aim)", 1.2)
    ratio("per_example_mlp", "gradtape", "torch", "<= 0.8", 0.8)
    ratio("per_example_mlp", "gradtape", "jax", "<= 1", 1.0)
    # compiled against compiled: gt.function of the same per-example call against jax.jit
    ratio("per_example_mlp", "gradtape[compiled]", "jax", "<= 1", 1.0)
    ratio("per_example_mlp", "gradtape", "gradtape[batch]", "<= 3", 3.0)
    ratio("per_example_mlp", "gradtape[vmap]", "torch", "-", None)
    ratio("per_example_mlp", "torch", "torch[batch]", "-", None)
    ratio("per_example_mlp", "jax", "jax[batch]", "-", None)
    for peer in ("torch", "opacus", "opacus[ghost]", "jax"):
        ratio("dp_sgd", peer, "gradtape", "> 1", 1.0, faster=True)
    ratio("dp_sgd", "gradtape", "gradtape[batch]", "<= 1.5", 1.5)
    ratio("dp_sgd", "jax", "gradtape[compiled]", "> 1", 1.0, faster=True)
    ratio("dp_sgd", "numpy[ghost]", "numpy[batch]", "-", None)
    ratio("per_example_cnn", "torch", "gradtape", "> 1", 1.0, faster=True)
    ratio("per_example_cnn", "opacus", "gradtape", "> 1", 1.0, faster=True)
    ratio("per_example_cnn", "torch", "gradtape[compiled]", "> 1", 1.0, faster=True)
    ratio("per_example_cnn", "opacus", "gradtape[compiled]", "> 1", 1.0, faster=True)
    ratio("per_example_cnn", "gradtape", "gradtape[batch]", "<= 1.5", 1.5)
    ratio("per_example_cnn", "torch", "torch[batch]", "-", None)
    ratio("per_example_cnn", "jax", "jax[batch]", "-", None)
    ratio("hvp", "gradtape", "torch", "<= 1", 1.0)
    ratio("hvp", "gradtape", "jax", "<= 1.1 (aim)", 1.1)
    ratio("hvp", "gradtape[jvp]", "torch", "-", None)
    ratio("hvp", "gradtape[jvp]", "jax", "-", None)
    ratio("hvp", "gradtape[hvp]", "torch", "<= 1", 1.0)
    ratio("hvp", "gradtape[hvp]", "jax", "<= 1.1 (aim)", 1.1)
    ratio("hvp", "gradtape[compiled]", "torch", "<= 1", 1.0)
    ratio("hvp", "gradtape[compiled]", "jax", "<= 1.1 (aim)", 1.1)
    if gpu:
        c, b = get("gpu_copy", "cupy"), get("gpu_fused_bwd", "gradtape")
        r = c / b if (c and b) else None
        add("gpu fused bwd bandwidth / copy bandwidth (bytes: read x + write dx)", r, ">= 0.7",
            r is not None and r >= 0.7)
        g, t = get("gpu_fused", "gradtape"), get("gpu_fused", "torch")
        r = t / g if (g and t) else None
        add("gpu fused fwd+bwd: torch cuda / gradtape", r, "> 1", r is not None and r > 1.0)
    return out


# --------------------------------------------------------------------------- one process per framework
Times = dict[str, dict[str, list[float]]]


def run_isolated(rows: list[W.Spec], fws: list[str], args: argparse.Namespace) -> tuple[
        Times, dict[str, dict[str, str]], dict[str, dict[str, float]], dict[str, int],
        dict[str, str]]:
    """Time each framework in a process of its own (its ``[variant]`` columns with it): this
    script with ``-f <those columns>``, ``--rounds`` times in a rotating order. Thread pools
    (OpenMP, OpenBLAS, Eigen), allocator settings, JIT caches and gradtape's host memory cache
    then never leak from one framework into another's figures. Each process checks its
    gradients against the hand-written NumPy ones itself. Returns the merged repeats, skips,
    gradient errors, calls per block and versions."""
    groups: dict[str, list[str]] = {}
    for f in fws:
        groups.setdefault(f.partition("[")[0], []).append(f)
    order = list(groups)
    times: Times = {}
    skipped: dict[str, dict[str, str]] = {}
    errors: dict[str, dict[str, float]] = {}
    calls: dict[str, int] = {}
    versions: dict[str, str] = {}
    t_start = time.perf_counter()
    for rnd in range(args.rounds):
        k = rnd % max(1, len(order))
        for base in order[k:] + order[:k]:
            cols = groups[base]
            keys = [s.key for s in rows if any(f in s.frameworks for f in cols)]
            if not keys:
                continue
            out = Path(tempfile.mkstemp(prefix=f"compare-{base}-", suffix=".json")[1])
            cmd = [sys.executable, str(Path(__file__).resolve()), "-w", *keys, "-f", *cols,
                   "-r", str(args.repeats), "--block", str(args.block), "--settle",
                   str(args.settle), "--warmup", str(args.warmup), "--json", str(out)]
            if args.no_gpu:
                cmd.append("--no-gpu")
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True)
                res = json.loads(out.read_text()) if proc.returncode == 0 else None
            finally:
                out.unlink(missing_ok=True)
            if res is None:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                print(f"  process for {base} failed (rc {proc.returncode}):\n{tail}")
                for key in keys:
                    for f in cols:
                        skipped.setdefault(key, {}).setdefault(
                            f, f"error: its process exited with rc {proc.returncode}")
                continue
            for key, by_fw in res["repeats_s"].items():
                for f, ts in by_fw.items():
                    times.setdefault(key, {}).setdefault(f, []).extend(ts)
            for key, by_fw in res["skipped"].items():
                for f, why in by_fw.items():
                    skipped.setdefault(key, {}).setdefault(f, why)
            for key, by_fw in res["grad_max_rel_err_vs_numpy"].items():
                for f, e in by_fw.items():
                    prev = errors.setdefault(key, {}).get(f, 0.0)
                    errors[key][f] = e if not e <= prev else prev  # the worst; inf and nan stay
            calls.update(res["calls_per_block"])
            versions.update({n: v for n, v in res["machine"]["versions"].items() if v})
            print(f"  round {rnd + 1}/{args.rounds}: {base} ({', '.join(cols)}) done "
                  f"({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    for key in times:  # a column timed in some round was not skipped
        for f in times[key]:
            skipped.get(key, {}).pop(f, None)
    return times, {k: v for k, v in skipped.items() if v}, errors, calls, versions


# --------------------------------------------------------------------------- main
def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "us/op":
        return f"{v:.2f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    cpu_specs = {s.key: s for s in W.specs("cpu")}
    gpu_specs = {s.key: s for s in W.specs("cuda")}
    all_fw = sorted({f for s in [*cpu_specs.values(), *gpu_specs.values()] for f in s.frameworks})
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-w", "--workloads", nargs="+", metavar="W",
                   help=f"rows to run (default: all): {', '.join([*cpu_specs, *gpu_specs])}")
    p.add_argument("-f", "--frameworks", nargs="+", metavar="F",
                   help=f"columns to run (default: all): {', '.join(all_fw)}")
    p.add_argument("-r", "--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    p.add_argument("--block", type=float, default=0.15,
                   help="seconds per timed block (default 0.15)")
    p.add_argument("--settle", type=float, default=0.3,
                   help="idle seconds before each timed block, so the previous framework's "
                        "spinning worker threads go to sleep (default 0.3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per cell (default 2)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU rows")
    p.add_argument("--json", type=Path, default=HERE / "results.json",
                   help="where to write the results (default benchmarks/results.json)")
    p.add_argument("--isolate", action="store_true",
                   help="run each framework (with its [variant] columns) in a process of its "
                        "own, so thread pools, allocator settings and JIT caches do not leak "
                        "between frameworks; the table and targets merge the processes")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --isolate: how many times to run the per-framework processes, "
                        "in a rotating order, each doing --repeats (default 1)")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)

    if args.list:
        for s in [*cpu_specs.values(), *gpu_specs.values()]:
            print(f"{s.key:16s} {s.title}  [{', '.join(s.frameworks)}]")
        return 0
    known = {**cpu_specs, **gpu_specs}
    for w in args.workloads or []:
        if w not in known:
            p.error(f"unknown workload {w!r}; known: {', '.join(known)}")
    for f in args.frameworks or []:
        if f not in all_fw:
            p.error(f"unknown framework {f!r}; known: {', '.join(all_fw)}")

    gpu_name, gpu_reason = (None, "--no-gpu given") if args.no_gpu else gpu_info()
    rows = [s for s in cpu_specs.values() if not args.workloads or s.key in args.workloads]
    gpu_rows = [s for s in gpu_specs.values() if not args.workloads or s.key in args.workloads]
    if gpu_name is None:
        if gpu_rows and (args.workloads and any(w in gpu_specs for w in args.workloads)):
            print(f"GPU rows skipped: {gpu_reason}")
        gpu_rows = []
    rows += gpu_rows

    fws_run = [f for f in all_fw if (not args.frameworks or f in args.frameworks)
               and any(f in s.frameworks for s in rows)]
    info = machine_info([] if args.isolate else args.frameworks)
    info["gpu"] = gpu_name or f"none ({gpu_reason})"
    print(f"# {info['date']}  {info['cpu']} x{info['cores']}  python {info['python']}  "
          f"gpu: {info['gpu']}")
    if not args.isolate:
        print("# " + "  ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    load1 = info.get("loadavg_at_start", (0.0,))[0]
    if load1 > 0.5:
        print(f"# WARNING: load average {load1:.2f} at start: other processes share the cores, "
              "expect slower and noisier figures (PyTorch's threads suffer most)")
    missing = [k for k, v in info["versions"].items() if not v]
    if missing and not args.isolate:
        print("# not importable (skipped): " + ", ".join(missing))

    if args.isolate:
        times, skipped, errors, calls, versions = run_isolated(rows, fws_run, args)
        info["versions"] = versions
        info["isolated"] = True
        print("# " + "  ".join(f"{k} {v}" for k, v in versions.items()) +
              "  (each framework in its own process)")
        for key, by_fw in skipped.items():
            for fw, why in by_fw.items():
                print(f"skip {key}/{fw}: {why}")
    else:
        times, skipped, errors, calls = measure(rows, args)
    report(rows, all_fw, times, skipped, errors, calls, info, args)
    return 0


def measure(rows: list[W.Spec], args: argparse.Namespace) -> tuple[
        Times, dict[str, dict[str, str]], dict[str, dict[str, float]], dict[str, int]]:
    """Build, check and calibrate every cell of ``rows`` in this process, then time them in
    interleaved repeats. Returns the repeats (seconds per call), skips, gradient errors and
    calls per block."""
    # build, check and calibrate every cell
    cells: dict[tuple[str, str], tuple[W.Cell, int]] = {}
    skipped: dict[str, dict[str, str]] = {}
    errors: dict[str, dict[str, float]] = {}
    for spec in rows:
        fws = [f for f in spec.frameworks if not args.frameworks or f in args.frameworks]
        ref_fws = {reference(spec, f) for f in fws} - {None}
        refs: dict[str, list[np.ndarray] | None] = {}
        for r in sorted(ref_fws):  # references not timed in this run: gradients only
            if r not in fws and r in spec.frameworks:
                try:
                    ref_cell = spec.build(r)
                    refs[r] = ref_cell.grads(ref_cell.once())  # type: ignore[misc]
                except W.Unavailable:
                    pass
        for fw in sorted(fws, key=lambda f: f not in ref_fws):
            ref_fw = reference(spec, fw)
            try:
                cell = spec.build(fw)
                first = cell.once()
            except W.Unavailable as exc:
                skipped.setdefault(spec.key, {})[fw] = str(exc)
                continue
            except Exception as exc:  # a broken cell must not stop the comparison
                skipped.setdefault(spec.key, {})[fw] = f"error: {type(exc).__name__}: {exc}"
                continue
            if cell.grads is not None:
                got = cell.grads(first)
                if fw == ref_fw:
                    refs[fw] = got
                elif ref_fw is not None and refs.get(ref_fw) is not None:
                    errors.setdefault(spec.key, {})[fw] = check_grads(got, refs[ref_fw])
            del first
            time.sleep(args.settle)
            cells[(spec.key, fw)] = (cell, calibrate(cell, args.block, args.warmup))
            gc.collect()
    for key, fws in skipped.items():
        for fw, why in fws.items():
            print(f"skip {key}/{fw}: {why}")

    # interleaved repeats
    times: Times = {}
    order = list(cells)
    t_start = time.perf_counter()
    for rep in range(args.repeats):
        # rotate the order each repeat so no cell always runs right after the same neighbour
        k = rep % max(1, len(order))
        for key, fw in order[k:] + order[:k]:
            cell, n = cells[(key, fw)]
            if args.settle > 0:
                time.sleep(args.settle)
            times.setdefault(key, {}).setdefault(fw, []).append(time_block(cell, n))
        print(f"  repeat {rep + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)",
              file=sys.stderr)
    return times, skipped, errors, {f"{k}/{f}": n for (k, f), (_, n) in cells.items()}


def report(rows: list[W.Spec], all_fw: list[str], times: Times,
           skipped: dict[str, dict[str, str]], errors: dict[str, dict[str, float]],
           calls: dict[str, int], info: dict[str, Any], args: argparse.Namespace) -> None:
    """Medians, the table, the gradient check, the targets; writes ``args.json``."""
    # medians, in the spec's unit
    med: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, tuple[float, float]]] = {}
    for spec in rows:
        scale = (1e6 if spec.unit == "us/op" else 1e3) / spec.per
        for fw, ts in times.get(spec.key, {}).items():
            med.setdefault(spec.key, {})[fw] = statistics.median(ts) * scale
            spread.setdefault(spec.key, {})[fw] = (min(ts) * scale, max(ts) * scale)

    # table
    cols = [f for f in all_fw if any(f in med.get(s.key, {}) for s in rows)]
    first_col = ["gradtape", "gradtape[nofusion]", "gradtape[vmap]", "gradtape[jvp]",
                 "gradtape[batch]", "numpy", "numpy[ghost]", "numpy[batch]", "cupy", "torch",
                 "torch[1t]", "torch[batch]", "opacus", "opacus[ghost]", "jax", "jax[batch]",
                 "tf", "autograd"]
    cols.sort(key=lambda f: first_col.index(f) if f in first_col else 99)
    head = f"{'workload':16s} {'unit':6s}" + "".join(f"{c:>20s}" for c in cols)
    print()
    print(head)
    print("-" * len(head))
    for spec in rows:
        line = f"{spec.key:16s} {spec.unit:6s}"
        for c in cols:
            v = med.get(spec.key, {}).get(c)
            if v is None:
                line += f"{'-':>20s}"
            else:
                lo, hi = spread[spec.key][c]
                line += f"{fmt(v, spec.unit) + ' (' + format(hi / lo if lo else 0, '.2f') + ')':>20s}"
        print(line)
    print("(median over repeats; in brackets max/min over repeats)")
    bad = {k: {f: e for f, e in v.items() if not e <= 2e-3} for k, v in errors.items()}
    bad = {k: v for k, v in bad.items() if v}
    print("gradient check vs hand-written NumPy: " +
          ("all within 2e-3 relative" if not bad else f"MISMATCH {bad}"))

    tg = targets(med, any(s.key.startswith("gpu") for s in rows))
    print()
    for t in tg:
        mark = "(info)" if t.get("info") else {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        val = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"  {t['target']:58s} {val:>8s}  goal {t['goal']:14s} {mark}")

    result = {
        "machine": info,
        "settings": {"repeats": args.repeats, "block_s": args.block, "warmup": args.warmup,
                     "settle_s": args.settle, "isolate": args.isolate,
                     "rounds": args.rounds if args.isolate else None},
        "rows": {s.key: {"title": s.title, "unit": s.unit, "per": s.per} for s in rows},
        "median": med,
        "repeats_s": times,
        "calls_per_block": calls,
        "skipped": skipped,
        "grad_max_rel_err_vs_numpy": errors,
        "targets": tg,
    }
    try:
        info["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
