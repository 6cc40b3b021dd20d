"""gt.distributed on one machine: all-reduce bandwidth against MPI's own Allreduce, and the
784-512-512-10 MLP training step on 2 ranks against 1 rank, with and without overlap.

Run from the repository root (needs the ``distributed`` extra; prints a table)::

    python benchmarks/distributed.py            # launches the parts below with mpirun
    python benchmarks/distributed.py --quick    # fewer sizes and repetitions

Parts (each also runnable alone under mpirun: ``mpirun -np 2 python benchmarks/distributed.py
--part allreduce``):

* ``allreduce`` (2 ranks): gradient sets of 1 MB to 256 MB (float32), shaped as a model's (8
  layers of a square weight and a bias: a few large tensors) and as 256 equal small tensors;
  gradtape's bucketed path (``_allreduce_arrays``, op sum, as the job runs it: on one machine
  through shared memory, see ``gt.distributed.shared_memory``; the same path with
  ``MPI_Allreduce`` instead; and the public ``allreduce``, op mean) against
  ``MPI.COMM_WORLD.Allreduce`` of one NumPy buffer of the same total size, in the same run,
  interleaved, both out of place (the contract gradtape's all-reduce keeps: inputs unchanged,
  results in new arrays; the ratios are to it) and in place (``MPI.IN_PLACE``, faster on Open
  MPI 5 on one machine, shown beside it). Bandwidth = set bytes / seconds (the minimum over
  repetitions). Two passes: warm (the calls in turn, their order rotated each round) and cold
  (every rank writes 64 MiB before each call, so nothing starts in a cache).
* ``step`` (1 or 2 ranks): one training step (forward, backward, all-reduce, Adam) of the
  784-512-512-10 ReLU MLP on a global batch of 256 (each of 2 ranks takes 128), eager, with
  ``DistributedGradientTape`` (1 MiB buckets so the ~2.7 MB of gradients form several): as the
  job runs it on one machine (through shared memory, after the backward), and over MPI with
  overlap on and off; the median over steps after warm-up.
* ``nccl`` (1 rank, only with a working CuPy): the NCCL path with one rank, checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gradtape as gt  # noqa: E402
from gradtape.distributed import _allreduce_arrays  # noqa: E402


def _model_set(total_bytes: int) -> list[np.ndarray]:
    n = total_bytes // 4 // 8  # 8 layers of w*w + w elements
    w = int((-1 + (1 + 4 * n) ** 0.5) / 2)
    return [a for _ in range(8) for a in (np.ones((w, w), np.float32), np.ones(w, np.float32))]


def _small_set(total_bytes: int) -> list[np.ndarray]:
    return [np.ones(max(1, total_bytes // 4 // 256), np.float32) for _ in range(256)]


def _over_mpi(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with the job's host buckets reduced by ``MPI_Allreduce`` even where the
    shared memory serves them (as after ``init(comm, shared_memory=False)``; toggled
    per call so both paths are timed interleaved in one job)."""
    world = gt.distributed._world("benchmark")
    shm, world.shm = world.shm, None
    try:
        return fn(*args)
    finally:
        world.shm = shm


#: Bytes every rank writes before each timed call of the cold pass: twice the test VM's 32 MiB
#: L3, so no operand, segment or MPI buffer is still in a cache when the call starts.
_FLUSH_BYTES = 64 << 20


def part_allreduce(quick: bool) -> dict:
    from mpi4py import MPI

    gt.distributed.init()
    comm = MPI.COMM_WORLD
    flush = np.ones(_FLUSH_BYTES // 4, np.float32)
    rows = []
    sizes = [1, 16, 256] if quick else [1, 4, 16, 64, 256]
    for mb in sizes:
        total = mb << 20
        # small sets take a few hundred microseconds, where a minimum over 10 calls still
        # moves by 10%: they get more calls (the large ones cost seconds)
        if mb >= 64:
            reps = 3 if mb > 64 else 5
        else:
            reps = 5 if quick else (60 if mb <= 4 else 10)
        for shape, arrays in (("model", _model_set(total)), ("256 small", _small_set(total))):
            nbytes = sum(a.nbytes for a in arrays)
            buf = np.ones(nbytes // 4, np.float32)
            out = np.empty_like(buf)
            inplace = np.ones(nbytes // 4, np.float32)
            tensors = [gt.tensor(a) for a in arrays]
            # raw MPI both ways: out of place is the contract gradtape keeps (the inputs stay,
            # the results are new arrays); in place (the result over the operand) is faster on
            # Open MPI 5 on one machine (1 MB to 256 MB on the 2-vCPU VM: 13-47% less time in
            # most runs)
            fns = [("mpi_oop", lambda b=buf, o=out: comm.Allreduce(b, o)),
                   ("mpi_inplace", lambda b=inplace: comm.Allreduce(MPI.IN_PLACE, b)),
                   ("bucketed", lambda a=arrays: _allreduce_arrays(a, "sum")),
                   ("bucketed_mpi", lambda a=arrays: _over_mpi(_allreduce_arrays, a, "sum")),
                   ("allreduce", lambda t=tensors: gt.distributed.allreduce(t, op="mean"))]
            row: dict[str, Any] = {"MB": mb, "set": shape, "tensors": len(arrays), "bytes": nbytes}
            # warm: the calls in turn, the order rotated each round, so each follows each other
            # equally often (a call leaves the caches to the next: after the MPI-path bucket, a
            # shared-memory one of 1 MB took 140 us where it took 85 after itself); cold: every
            # call after each rank has written _FLUSH_BYTES (as after a backward pass that
            # touched more than the caches hold)
            for mode in ("warm", "cold"):
                best = {name: 1e9 for name, _ in fns}
                for k in range(reps):
                    for name, fn in fns[k % len(fns):] + fns[:k % len(fns)]:
                        if mode == "cold":
                            flush.fill(k)
                        comm.Barrier()
                        t0 = time.perf_counter()
                        fn()
                        best[name] = min(best[name], time.perf_counter() - t0)
                sfx = "" if mode == "warm" else "_cold"
                row.update({f"{k}_GBps{sfx}": nbytes / v / 1e9 for k, v in best.items()})
                row.update({f"bucketed/mpi{sfx}": best["mpi_oop"] / best["bucketed"],
                            f"bucketed/mpi_inplace{sfx}": best["mpi_inplace"] / best["bucketed"],
                            f"bucketed_mpi/mpi{sfx}": best["mpi_oop"] / best["bucketed_mpi"],
                            f"allreduce/mpi{sfx}": best["mpi_oop"] / best["allreduce"]})
            rows.append(row)
    return {"allreduce": rows}


def part_step(quick: bool) -> dict:
    gt.distributed.init()
    r, n = gt.distributed.rank(), gt.distributed.size()
    rng = np.random.default_rng(0)
    model = gt.nn.Sequential([gt.nn.Dense(784, 512, activation="relu", seed=1),
                              gt.nn.Dense(512, 512, activation="relu", seed=2),
                              gt.nn.Dense(512, 10, seed=3)])
    params = model.trainable_variables
    opt = gt.optimizers.Adam(1e-3)
    batch = 256
    x = rng.normal(size=(batch, 784)).astype(np.float32)[r::n]
    y = rng.integers(0, 10, size=batch)[r::n]
    xb, yb = gt.tensor(x), gt.tensor(y)
    steps = 20 if quick else 60
    out = {}
    modes = ("local",) if n == 1 else ("local", "shared memory", "MPI, overlap", "MPI, no overlap")
    for mode in modes:
        def reduced(tape: gt.GradientTape, loss: gt.Tensor, overlap: bool) -> Any:
            return gt.distributed.DistributedGradientTape(
                tape, bucket_bytes=1 << 20, overlap=overlap).gradient(loss, params)

        def step(mode: str = mode) -> None:
            with gt.GradientTape() as tape:
                loss = gt.nn.cross_entropy(model(xb), yb)
            if mode == "local":
                grads = tape.gradient(loss, params)
            elif mode == "shared memory":  # (where the ranks share a machine: the default)
                grads = reduced(tape, loss, True)
            else:
                grads = _over_mpi(reduced, tape, loss, mode == "MPI, overlap")
            opt.apply_gradients(zip(grads, params))

        for _ in range(5):
            step()
        ts = []
        for _ in range(steps):
            gt.distributed.barrier()
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
        out[f"{n} rank{'s' if n > 1 else ''}, {mode}"] = float(np.median(ts))
    return {"step": out}


def part_nccl(quick: bool) -> dict:
    del quick
    if gt.backend_name() != "cupy":
        return {"nccl": "skipped: no CuPy backend here"}
    gt.distributed.init()
    results = {}
    with gt.use_backend("cupy"):
        xs = [gt.tensor(np.arange(n, dtype=np.float32)) for n in (0, 1, 7, 1 << 20)]
        for op in ("sum", "mean"):
            got = gt.distributed.allreduce(xs, op=op, bucket_bytes=1 << 16)
            ok = all(np.array_equal(g.numpy(), x.numpy()) for g, x in zip(got, xs))
            results[op] = "ok" if ok else "WRONG"
        got = gt.distributed.allreduce(xs, compression="float16")
        results["float16"] = "ok" if all(np.allclose(g.numpy(), x.numpy(), rtol=1e-3)
                                         for g, x in zip(got[:3], xs[:3])) else "WRONG"
        results["transport"] = gt.distributed.transport(xs[0])
    return {"nccl": results}


PARTS = {"allreduce": part_allreduce, "step": part_step, "nccl": part_nccl}


def _launch(part: str, ranks: int, quick: bool) -> dict:
    mpirun = str(Path(sys.executable).parent / "mpirun")
    if not os.path.exists(mpirun):
        mpirun = shutil.which("mpirun") or "mpirun"
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), sys.executable,
           __file__, "--part", part] + (["--quick"] if quick else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"{part} on {ranks} ranks failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=sorted(PARTS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.part:  # one rank of a launched part
        gt.distributed.init()
        result = PARTS[args.part](args.quick)
        if gt.distributed.rank() == 0:
            print(json.dumps(result), flush=True)
        return
    print(f"gradtape {gt.__version__}, {os.cpu_count()} CPUs; times are minima (all-reduce) or "
          "medians (steps)")
    ar = _launch("allreduce", 2, args.quick)["allreduce"]
    print("\nall-reduce, 2 ranks, float32 (GB/s = set bytes / seconds)")
    print("(bucketed: gradtape's path, through shared memory where the ranks share a "
          "machine; over MPI: the same with MPI_Allreduce)")
    print("(MPI oop: MPI_Allreduce(send, recv), the contract gradtape keeps: inputs unchanged, "
          "results new; the ratios are to it, and bucketed/in place to MPI_Allreduce(IN_PLACE, buf))")
    print(f"{'MB':>5} {'set':>10} {'MPI oop':>8} {'in place':>9} {'bucketed sum':>13} {'over MPI':>9} "
          f"{'allreduce mean':>15} {'bucketed/MPI':>13} {'/in place':>10} {'over MPI/MPI':>13} "
          f"{'allreduce/MPI':>14}")
    for sfx, title in (("", "warm (the calls in turn, order rotated each round)"),
                       ("_cold", f"cold (each call after every rank wrote {_FLUSH_BYTES >> 20} MiB)")):
        print(f"  {title}")
        for row in ar:
            print(f"{row['MB']:>5} {row['set']:>10} {row['mpi_oop_GBps' + sfx]:>8.2f} "
                  f"{row['mpi_inplace_GBps' + sfx]:>9.2f} {row['bucketed_GBps' + sfx]:>13.2f} "
                  f"{row['bucketed_mpi_GBps' + sfx]:>9.2f} {row['allreduce_GBps' + sfx]:>15.2f} "
                  f"{row['bucketed/mpi' + sfx]:>13.0%} {row['bucketed/mpi_inplace' + sfx]:>10.0%} "
                  f"{row['bucketed_mpi/mpi' + sfx]:>13.0%} {row['allreduce/mpi' + sfx]:>14.0%}")
    steps = {**_launch("step", 1, args.quick)["step"], **_launch("step", 2, args.quick)["step"]}
    print("\n784-512-512-10 MLP step, global batch 256 (median ms)")
    for k, v in steps.items():
        print(f"  {k:<24} {v * 1e3:8.2f}")
    print("\nNCCL, 1 rank:", _launch("nccl", 1, args.quick)["nccl"])


if __name__ == "__main__":
    main()
