"""Data-parallel training over processes and machines (``gt.distributed``), in Horovod's idiom.

Every process (a *rank*) runs the same training script on its shard of the batch; gradients are
averaged across ranks and every rank applies the same update. gradtape does not invent a
transport: NumPy arrays travel over MPI (``mpi4py``, the ``distributed`` extra), CuPy arrays over
NCCL (CuPy's ``cupy.cuda.nccl``, the NCCL unique id exchanged over MPI), chosen from each
tensor's backend (:func:`transport`).

Launch with ``mpirun -np 2 python train.py`` (Open MPI as root in a container also needs
``--allow-run-as-root``; ``--oversubscribe`` runs more ranks than cores). A plain ``python
train.py`` works too: :func:`init` then gives a world of size 1 and never imports mpi4py.

The canonical loop::

    import gradtape as gt
    gt.distributed.init()
    model = ...; opt = gt.optimizers.Adam(1e-3)
    gt.distributed.broadcast_variables(model.variables, root=0)
    for xb, yb in shard_of_each_batch:
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(model(xb), yb)
        tape = gt.distributed.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)   # averaged over the ranks
        opt.apply_gradients(zip(grads, model.trainable_variables))

What crosses the wire: :func:`allreduce` packs many small gradients into a few large buffers
(*buckets*, at most ``bucket_bytes`` each; a tensor at least that large goes alone, without a
copy) and reduces each with one MPI all-reduce (or one NCCL ``allReduce``).
:class:`DistributedGradientTape` starts a bucket's reduction during the reverse pass, as soon
as the last gradient in it is final, so communication overlaps the rest of the backward.

Failures: before any data moves, the ranks compare a hash of what each is about to reduce
(count, shapes, dtypes, backends; and which gradients are None) in one small collective on a
separate communicator; a mismatch, or a rank that raised inside a
``with DistributedGradientTape(...)`` block or during the backward, makes every rank raise
:class:`DistributedError` saying which rank differs and how. An exception that escapes the
script on one rank calls ``MPI_Abort`` (installed by :func:`init`), so ``mpirun`` ends the
whole job at once instead of leaving the others waiting in a collective; a rank killed by a
signal ends the job the same way (Open MPI's default; ``mpirun --timeout SECONDS`` bounds any
hang).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._src.autodiff.state import opaque, tracing
from ._src.backend import NUMPY, Array, Backend, backend_by_name, backend_of, nccl_module
from ._src.frontend.tape import GradientTape
from ._src.nest import flatten, unflatten
from ._src.tensor import Tensor, Variable, _wrap
from .optimizers import Optimizer

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size", "barrier",
           "allreduce", "broadcast_variables", "transport", "DistributedGradientTape",
           "DistributedOptimizer", "DistributedError", "BUCKET_BYTES"]

#: Default bucket size in bytes: gradients are packed into buffers of at most this size (a
#: tensor at least this large is reduced alone, without a copy). Large enough that a bucket
#: runs at MPI's full bandwidth, small enough that a model's gradients form several buckets,
#: whose reductions overlap the backward (PyTorch DDP uses 25 MB, Horovod 64 MB).
BUCKET_BYTES = 4 << 20

#: Environment variables by which MPI launchers (Open MPI, MPICH/Hydra and Intel MPI, PMIx
#: launchers such as srun --mpi=pmix, MVAPICH) tell a process it is one rank of a job.
_LAUNCH_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_OPS = ("mean", "sum")
_COMPRESSIONS = (None, "float16")


class DistributedError(RuntimeError):
    """The ranks disagree (different tensors to reduce, a gradient None on some ranks only) or a
    rank failed inside the step; raised on every rank, naming the ranks and what differs."""


# --------------------------------------------------------------------------- the world
class _World:
    """The job as this process sees it: MPI communicators (None in a single process without
    MPI), rank and size, and the NCCL communicator once a CuPy tensor needed one."""

    def __init__(self, comm: Any | None) -> None:
        self.comm: Any = None  # the data: bucket reductions, broadcasts
        self.ctrl: Any = None  # the agreement checks: never interleaved with pending data
        self.mpi: Any = None
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self.nccl: _Nccl | None = None
        self.broken: str | None = None  # set when data collectives were left unfinished
        self._f16_op: Any = None
        if comm is None:
            return
        # mpi4py is an optional dependency (the "distributed" extra): imported only when this
        # process was launched by MPI or given a communicator
        from mpi4py import MPI

        self.mpi = MPI
        self.comm = comm.Dup()
        self.ctrl = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def f16_sum(self) -> Any:
        """MPI has no float16 type: a user-defined sum over 2-byte elements (as Horovod does)."""
        if self._f16_op is None:
            def f16_sum(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
                acc = np.frombuffer(inoutbuf, np.float16)
                np.add(acc, np.frombuffer(inbuf, np.float16), out=acc)

            self._f16_op = self.mpi.Op.Create(f16_sum, commute=True)
        return self._f16_op


_WORLD: _World | None = None
_HOOKED = False


def _abort_on_uncaught(world: _World) -> None:
    """An exception escaping the script on one rank aborts the job (``MPI_Abort``): otherwise
    the exiting rank waits in ``MPI_Finalize`` and the others in their next collective, forever
    (``python -m mpi4py`` does the same)."""
    global _HOOKED
    if _HOOKED or world.size < 2:
        return
    _HOOKED = True
    previous = sys.excepthook
    comm = world.comm

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        previous(kind, value, tb)
        sys.stderr.flush()
        time.sleep(0.5)  # the other ranks may be raising too: let their messages out first
        comm.Abort(1)

    sys.excepthook = hook


def init(comm: Any = None) -> None:
    """Join the job: under an MPI launcher (``mpirun``/``mpiexec``/``srun``) every rank calls
    this first; in a plain process without MPI the world has size 1 and mpi4py is not imported.

    Calling it again is harmless (the first world stays, unless ``comm`` is given).

    Args:
        comm: an ``mpi4py`` communicator to run on (default ``MPI.COMM_WORLD`` when launched by
            MPI); gradtape duplicates it, so its own messages never mix with yours.

    Raises:
        RuntimeError: launched by MPI but mpi4py is not installed.

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.rank(), gt.distributed.size()  # a plain process: one rank
        (0, 1)
    """
    global _WORLD
    if comm is None and _WORLD is not None:
        return
    if comm is None:
        launched = [v for v in _LAUNCH_ENV if v in os.environ]
        if launched:
            try:
                # optional dependency, imported only under an MPI launcher (see _World)
                from mpi4py import MPI
            except ImportError as exc:
                raise RuntimeError(
                    f"gt.distributed.init(): this process was launched by MPI ({launched[0]} is "
                    f"set) but mpi4py cannot be imported ({exc}); install it with "
                    "pip install 'gradtape[distributed]'") from None
            comm = MPI.COMM_WORLD
    _WORLD = _World(comm)
    _abort_on_uncaught(_WORLD)


def is_initialized() -> bool:
    """Whether :func:`init` has run in this process.

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.is_initialized()
        True
    """
    return _WORLD is not None


def _world(who: str) -> _World:
    if _WORLD is None:
        raise RuntimeError(f"gt.distributed.{who}: call gt.distributed.init() first")
    if _WORLD.broken is not None:
        raise DistributedError(f"gt.distributed.{who}: an earlier failure left the ranks out of "
                               f"step ({_WORLD.broken}); restart the job")
    return _WORLD


def rank() -> int:
    """This process's rank, ``0 <= rank() < size()`` (0 in a single process).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.rank()
        0
    """
    return _world("rank()").rank


def size() -> int:
    """The number of ranks in the job (1 in a plain process).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.size()
        1
    """
    return _world("size()").size


def local_rank() -> int:
    """This process's rank among the ranks on its machine (pick the GPU with it, e.g.
    ``cupy.cuda.Device(gt.distributed.local_rank()).use()``).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.local_rank()
        0
    """
    return _world("local_rank()").local_rank


def local_size() -> int:
    """The number of ranks on this process's machine.

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.local_size()
        1
    """
    return _world("local_size()").local_size


def barrier() -> None:
    """Wait until every rank has reached its ``barrier()`` (nothing to wait for in one process).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.barrier()
    """
    world = _world("barrier()")
    if world.ctrl is not None:
        world.ctrl.Barrier()


def transport(of: Tensor | str) -> str:
    """Which transport carries tensors of this backend in this job: ``"nccl"`` for CuPy
    (``"cupy"``), ``"mpi"`` for NumPy (``"numpy"``), ``"none"`` in a single process without
    MPI (nothing leaves the process).

    Args:
        of: a Tensor, or a backend name (``"numpy"``/``"cupy"``).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.transport(gt.tensor([1.0]))  # a plain process
        'none'
    """
    if isinstance(of, Tensor):
        name = of._backend.name
    elif isinstance(of, str) and of in ("numpy", "cupy"):
        name = of
    else:
        raise TypeError(f"gt.distributed.transport(): expected a Tensor or a backend name "
                        f"('numpy' or 'cupy'), got {of!r}")
    if _world("transport()").comm is None:
        return "none"
    return _transport_of(name)


def _transport_of(backend_name: str) -> str:
    """The one routing rule: CuPy arrays over NCCL, everything else over MPI."""
    return "nccl" if backend_name == "cupy" else "mpi"


# --------------------------------------------------------------------------- agreement
def _hash(signature: object) -> int:
    digest = hashlib.blake2b(repr(signature).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2  # non-negative, negation fits in int64


def _agree(world: _World, who: str, signature: object, failure: BaseException | None = None) -> None:
    """One small collective on the control communicator: every rank learns whether all ranks
    are well (``failure`` None) and about to do the same thing (equal ``signature``). If not,
    the ranks exchange details and every rank raises :class:`DistributedError`."""
    h = _hash(signature)
    mine = np.array([0 if failure is None else 1, h, -h], np.int64)
    out = np.empty_like(mine)
    world.ctrl.Allreduce(mine, out, op=world.mpi.MAX)
    if out[0] == 0 and out[1] == h and -out[2] == h:
        return
    note = None if failure is None else f"{type(failure).__name__}: {failure}"
    everyone = world.ctrl.allgather((note, _describe(signature)))
    if failure is not None:
        raise failure  # this rank's own error; the others raise DistributedError naming it
    failed = [(r, n) for r, (n, _) in enumerate(everyone) if n is not None]
    if failed:
        msg = "; ".join(f"rank {r} raised {n}" for r, n in failed)
        raise DistributedError(f"gt.distributed.{who}: {msg} (the step is abandoned on every rank)")
    mine_s = everyone[world.rank][1]
    diff = [f"rank {r}: {s}" for r, (_, s) in enumerate(everyone) if s != mine_s]
    raise DistributedError(f"gt.distributed.{who}: the ranks do not agree on what to reduce "
                           f"(rank {world.rank}: {mine_s}; {'; '.join(diff)})")


def _describe(signature: object) -> str:
    if isinstance(signature, tuple) and len(signature) == 2 and isinstance(signature[1], tuple):
        kind, items = signature
        parts = [("None" if it is None else f"{np.dtype(it[1]).name}{list(it[0])} on {it[2]}")
                 if isinstance(it, tuple) else repr(it) for it in items]
        return f"{kind} of {len(items)} [{', '.join(parts)}]"
    return repr(signature)


def _spec(t: Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.dtype.str, t._backend.name)


# --------------------------------------------------------------------------- buckets
class _Bucket:
    """Members (indices into the tensors of one call) reduced together in one buffer: their
    element counts and offsets in it, its dtype and backend; ``solo``: one tensor at least
    ``bucket_bytes`` large, reduced from its own array without a copy."""

    __slots__ = ("members", "sizes", "offsets", "total", "dtype", "backend", "solo")

    def __init__(self, dtype: np.dtype, backend: Backend, solo: bool) -> None:
        self.members: list[int] = []
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.total = 0
        self.dtype = dtype
        self.backend = backend
        self.solo = solo

    def add(self, i: int, n: int) -> None:
        self.members.append(i)
        self.sizes.append(n)
        self.offsets.append(self.total)
        self.total += n


def _plan(specs: Sequence[tuple | None], bucket_bytes: int, order: Iterable[int]) -> list[_Bucket]:
    """Buckets for tensors of ``specs`` ((shape, dtype str, backend name); None: no tensor),
    filled in ``order``: per backend and dtype, consecutive tensors up to ``bucket_bytes``;
    a tensor of at least ``bucket_bytes`` alone."""
    buckets: list[_Bucket] = []
    open_: dict[tuple[str, str], _Bucket] = {}
    for i in order:
        spec = specs[i]
        if spec is None:
            continue
        shape, dt, bname = spec
        dtype = np.dtype(dt)
        n = math.prod(shape)
        nbytes = n * dtype.itemsize
        if nbytes >= bucket_bytes:
            b = _Bucket(dtype, backend_by_name(bname), True)
            b.add(i, n)
            buckets.append(b)
            continue
        key = (bname, dt)
        cur = open_.get(key)
        if cur is None or (cur.total + n) * dtype.itemsize > bucket_bytes:
            cur = open_[key] = _Bucket(dtype, backend_by_name(bname), False)
            buckets.append(cur)
        cur.add(i, n)
    return buckets


_PLANS: dict[tuple, tuple[list[_Bucket], dict[int, int]]] = {}


def _cached_plan(specs: tuple, bucket_bytes: int, reverse: bool) -> tuple[list[_Bucket], dict[int, int]]:
    """:func:`_plan` (in reverse order: a backward's order) and member -> bucket index, cached
    per signature: a training loop plans once."""
    key = (specs, bucket_bytes, reverse)
    hit = _PLANS.get(key)
    if hit is None:
        order = range(len(specs) - 1, -1, -1) if reverse else range(len(specs))
        buckets = _plan(specs, bucket_bytes, order)
        where = {i: k for k, b in enumerate(buckets) for i in b.members}
        if len(_PLANS) > 64:
            _PLANS.clear()
        hit = _PLANS[key] = (buckets, where)
    return hit


class _Reducer:
    """The all-reduce of one call: its buckets, started one by one as their members become
    available (:meth:`ready`, during a backward) or all at the end (:meth:`finish`)."""

    __slots__ = ("world", "specs", "op", "compression", "buckets", "where", "arrays", "missing",
                 "buffers", "started", "next")

    def __init__(self, world: _World, specs: tuple, op: str, compression: str | None,
                 bucket_bytes: int, reverse: bool) -> None:
        self.buckets, self.where = _cached_plan(specs, bucket_bytes, reverse)
        self.world, self.specs, self.op, self.compression = world, specs, op, compression
        self.arrays: list[Any] = [None] * len(specs)
        self.missing = [len(b.members) for b in self.buckets]
        self.buffers: list[Any] = [None] * len(self.buckets)  # (send or None, recv, members)
        self.started: list[Any] = []  # MPI requests in flight
        # buckets start in plan order, the same on every rank (MPI matches collectives by
        # order): a bucket complete before an earlier one waits for it
        self.next = 0

    def ready(self, i: int, array: Array) -> None:
        """Member ``i``'s final value: start its bucket when it is the last one missing."""
        if self.arrays[i] is not None:
            return
        self.arrays[i] = array
        k = self.where.get(i)
        if k is None:
            return
        self.missing[k] -= 1
        if self.missing[k] == 0 and k == self.next:
            missing, count = self.missing, len(self.buckets)
            while self.next < count and missing[self.next] == 0:
                self._start(self.next, None, True)
                self.next += 1
        elif self.started:  # MPI progresses non-blocking collectives inside MPI calls only
            self.world.mpi.Request.Testall(self.started)

    def finish(self, arrays: Sequence[Array | None]) -> list[Array | None]:
        """Start every bucket not started yet (members whose array is None are left out: the
        ranks agreed they are None everywhere), wait for all, return the reduced arrays."""
        mine = self.arrays
        for i, a in enumerate(arrays):
            if mine[i] is None:
                mine[i] = a
        for k in range(self.next, len(self.buckets)):  # in plan order, blocking: the rest
            b = self.buckets[k]
            present = [j for j, i in enumerate(b.members) if mine[i] is not None]
            if present:
                self._start(k, None if len(present) == len(b.members) else present, False)
        if self.started:
            self.world.mpi.Request.Waitall(self.started)
        out: list[Array | None] = [None] * len(self.specs)
        size = self.world.size
        mean = self.op == "mean"
        for k, b in enumerate(self.buckets):
            held = self.buffers[k]
            if held is None:
                continue
            _, buf, present = held
            if mean and buf.dtype == b.dtype:
                buf /= size
            if b.solo:
                out[b.members[0]] = buf.reshape(self.specs[b.members[0]][0])
                continue
            off = 0
            for j in present:
                i, n = b.members[j], b.sizes[j]
                a = buf[off:off + n]
                if a.dtype != b.dtype:
                    a = a.astype(b.dtype)
                out[i] = a.reshape(self.specs[i][0])
                off += n
        return out

    def _start(self, k: int, present: list[int] | None, nonblocking: bool) -> None:
        """Pack bucket ``k`` (its members ``present``, positions in it; None: all) and reduce
        it: start the reduction (``nonblocking``, during a backward), or run it (MPI's
        blocking ``Allreduce`` is faster than its non-blocking one when nothing is left to
        overlap)."""
        b = self.buckets[k]
        xp = b.backend.xp
        wire = b.dtype
        if self.compression == "float16" and wire.kind == "f" and wire.itemsize > 2:
            wire = np.dtype(np.float16)
        arrays = self.arrays
        if present is None:
            present = list(range(len(b.members)))
        send: Any = None
        if b.solo and wire == b.dtype:
            send = xp.ascontiguousarray(arrays[b.members[0]], dtype=b.dtype).reshape(-1)
            buf = xp.empty_like(send)
        else:
            prescale = wire != b.dtype and self.op == "mean"  # float16 on the wire: no overflow
            total = b.total if len(present) == len(b.members) else sum(b.sizes[j] for j in present)
            buf = xp.empty(total, wire)
            off = 0
            for j in present:
                n = b.sizes[j]
                a = xp.asarray(arrays[b.members[j]]).reshape(-1)
                if prescale:
                    xp.divide(a, self.world.size, out=buf[off:off + n])
                else:
                    buf[off:off + n] = a
                off += n
        self.buffers[k] = (send, buf, present)
        if _transport_of(b.backend.name) == "nccl":
            _nccl(self.world).allreduce(send, buf, xp)  # ordered on the current CUDA stream
            return
        world = self.world
        mpi = world.mpi
        assert mpi is not None and world.comm is not None
        if wire == np.float16:
            dtype, op = mpi.UINT16_T, world.f16_sum()
        else:
            dtype, op = _mpi_type(mpi, wire), mpi.SUM
        sendbuf = mpi.IN_PLACE if send is None else [send, dtype]
        if nonblocking:
            self.started.append(world.comm.Iallreduce(sendbuf, [buf, dtype], op))
        else:
            world.comm.Allreduce(sendbuf, [buf, dtype], op)


_MPI_TYPES = {"f": {4: "FLOAT", 8: "DOUBLE"}, "i": {1: "INT8_T", 2: "INT16_T", 4: "INT32_T", 8: "INT64_T"},
              "u": {1: "UINT8_T", 2: "UINT16_T", 4: "UINT32_T", 8: "UINT64_T"},
              "c": {8: "C_FLOAT_COMPLEX", 16: "C_DOUBLE_COMPLEX"}}


def _mpi_type(mpi: Any, dtype: np.dtype) -> Any:
    return getattr(mpi, _MPI_TYPES[dtype.kind][dtype.itemsize])


def _check_dtype(t: Tensor, op: str, where: str, who: str) -> None:
    dt = t.dtype
    if not (dt.kind == "f" and dt.itemsize == 2) and dt.itemsize not in _MPI_TYPES.get(dt.kind, {}):
        raise TypeError(f"gt.distributed.{who}: {where} has dtype {dt}, which cannot be "
                        "reduced (floating, integer or complex tensors can)")
    if op == "mean" and dt.kind not in "fc":
        raise TypeError(f"gt.distributed.{who}: {where} has dtype {dt}; op='mean' needs floating "
                        "tensors (use op='sum' for integers)")


# --------------------------------------------------------------------------- NCCL
_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
               "uint32": "NCCL_UINT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64"}


class _Nccl:
    """One NCCL communicator over the ranks (created on the current CUDA device; the unique id
    made by rank 0 and sent over MPI). Reductions are enqueued on the current CUDA stream, so
    later work on that stream sees the result without a host-side wait.

    Not run on hardware in gradtape's CI (no GPU there); the benchmark script exercises it."""

    def __init__(self, world: _World) -> None:
        nccl: Any
        nccl, why = nccl_module()
        ok = world.ctrl.allreduce(1 if nccl is not None else 0, op=world.mpi.MIN)
        if not ok:
            raise DistributedError("gt.distributed: CuPy tensors are reduced over NCCL, which is "
                                   f"unavailable on some rank ({why or 'see that rank'})")
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.ctrl.bcast(uid, root=0)
        self.lib = nccl
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)

    def allreduce(self, send: Any, recv: Any, xp: Any) -> None:
        name = _NCCL_TYPES.get(recv.dtype.name)
        if name is None:
            raise TypeError(f"gt.distributed: NCCL cannot reduce dtype {recv.dtype}")
        stream = xp.cuda.get_current_stream().ptr
        src = recv if send is None else send  # NCCL reduces in place when both are the same
        self.comm.allReduce(src.data.ptr, recv.data.ptr, recv.size, getattr(self.lib, name),
                            self.lib.NCCL_SUM, stream)


def _nccl(world: _World) -> _Nccl:
    if world.nccl is None:
        world.nccl = _Nccl(world)
    return world.nccl


# --------------------------------------------------------------------------- all-reduce
def _allreduce_arrays(arrays: Sequence[Array | None], op: str = "mean", compression: str | None = None,
                      bucket_bytes: int | None = None) -> list[Array | None]:
    """The one path by which arrays are reduced across ranks: bucketed, each bucket one
    non-blocking reduction over MPI or NCCL, then a wait for all. ``None`` entries (agreed on
    by the ranks beforehand) stay None; the result arrays are new (views of the buckets).
    In a single process without MPI the arrays come back as they are."""
    world = _world("allreduce()")
    if world.comm is None:
        return list(arrays)
    present = [i for i, a in enumerate(arrays) if a is not None]
    if present and tracing():  # inside gt.function: one step of the program, run at each call
        def reduce(*arrs: Array) -> tuple:
            full: list[Array | None] = [None] * len(arrays)
            for i, a in zip(present, arrs):
                full[i] = a
            out = _allreduce_arrays(full, op, compression, bucket_bytes)
            return tuple(out[i] for i in present)

        shapes = tuple((tuple(a.shape), a.dtype.str) for a in arrays if a is not None)
        res = opaque(reduce, *[arrays[i] for i in present],
                     key=("allreduce", op, compression, bucket_bytes, shapes))
        out: list[Array | None] = [None] * len(arrays)
        for i, a in zip(present, res):
            out[i] = a
        return out
    specs = tuple(None if a is None else (tuple(a.shape), a.dtype.str,
                                          NUMPY.name if isinstance(a, (np.ndarray, np.generic))
                                          else "cupy") for a in arrays)
    red = _Reducer(world, specs, op, compression, bucket_bytes or BUCKET_BYTES, reverse=False)
    return red.finish(list(arrays))


def _check_op(op: str, compression: str | None, who: str) -> None:
    if op not in _OPS:
        raise ValueError(f"gt.distributed.{who}: op must be 'mean' or 'sum', got {op!r}")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"gt.distributed.{who}: compression must be None or 'float16', got "
                         f"{compression!r}")


def _check_bucket(bucket_bytes: int | None, who: str) -> None:
    if bucket_bytes is not None and (not isinstance(bucket_bytes, int) or bucket_bytes < 1):
        raise ValueError(f"gt.distributed.{who}: bucket_bytes must be a positive int, got "
                         f"{bucket_bytes!r}")


def allreduce(tensors: Any, op: str = "mean", compression: str | None = None,
              bucket_bytes: int | None = None) -> Any:
    """Reduce tensors across all ranks: each result is the element-wise mean (``op="mean"``)
    or sum (``op="sum"``) of that tensor over the ranks, with its shape and dtype.

    Many tensors travel together: they are packed into buckets of at most ``bucket_bytes``
    (default :data:`BUCKET_BYTES`), each reduced by one MPI ``Allreduce`` (NumPy tensors) or
    NCCL ``allReduce`` (CuPy tensors). Every rank must pass the same structure of shapes and
    dtypes; a ``None`` entry must be None on every rank (it stays None). Otherwise every rank
    raises :class:`DistributedError` instead of mis-summing.

    Args:
        tensors: a Tensor or a nested list/tuple/dict of Tensors (or None entries).
        op: ``"mean"`` or ``"sum"`` (integer tensors: ``"sum"`` only).
        compression: ``"float16"`` sends float32/float64 tensors as float16 (half the bytes,
            float16 precision and range; the mean is scaled before the sum so it does not
            overflow); None sends them as they are.
        bucket_bytes: the bucket size in bytes (default :data:`BUCKET_BYTES`).

    Returns:
        The reduced tensors, in the structure of ``tensors``.

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> g = gt.distributed.allreduce([gt.tensor([1.0, 3.0])])  # one rank: unchanged
        >>> g[0].numpy()
        array([1., 3.], dtype=float32)
    """
    who = "allreduce()"
    world = _world(who)
    _check_op(op, compression, who)
    _check_bucket(bucket_bytes, who)
    leaves, spec = flatten(tensors)
    failure: BaseException | None = None
    try:
        for i, t in enumerate(leaves):
            where = f"tensors[{i}]" if len(leaves) > 1 or isinstance(tensors, (list, tuple, dict)) \
                else "tensors"
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"gt.distributed.{who}: {where} must be a gradtape Tensor or None, "
                                f"got {type(t).__name__}")
            _check_dtype(t, op, where, who)
    except Exception as exc:
        failure = exc
    if world.comm is None:
        if failure is not None:
            raise failure
        return unflatten(spec, list(leaves))
    signature = (f"allreduce(op={op!r}, compression={compression!r})",
                 tuple(_spec(t) if isinstance(t, Tensor) or t is None else repr(type(t)) for t in leaves))
    _agree(world, who, signature, failure)
    if failure is not None:
        raise failure
    out = _allreduce_arrays([None if t is None else t.data for t in leaves], op, compression,
                            bucket_bytes)
    return unflatten(spec, [None if a is None else _wrap(a, t._backend)
                            for a, t in zip(out, leaves)])


# --------------------------------------------------------------------------- broadcast
def broadcast_variables(variables: Any, root: int = 0, optimizer: Optimizer | None = None) -> None:
    """Overwrite every rank's Variables with rank ``root``'s values (call it after building
    the model, or after rank ``root`` restored a checkpoint), so all ranks start equal.

    Args:
        variables: a Variable, a nested list/tuple/dict of Variables, or a Module (its
            ``variables``); the same structure, shapes and dtypes on every rank.
        root: the rank whose values everyone takes.
        optimizer: also send ``root``'s state of this optimizer for these variables (step
            count, moments); the other ranks load it (``Optimizer.load_state_dict``).

    Raises:
        DistributedError: the ranks pass different variables (count, shapes, dtypes).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> w = gt.Variable([1.0, 2.0])
        >>> gt.distributed.broadcast_variables([w], root=0)
        >>> w.numpy()
        array([1., 2.], dtype=float32)
    """
    who = "broadcast_variables()"
    world = _world(who)
    if not isinstance(root, int) or isinstance(root, bool) or not 0 <= root < world.size:
        raise ValueError(f"gt.distributed.{who}: root must be a rank in [0, {world.size}), got {root!r}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"gt.distributed.{who}: optimizer must be a gradtape optimizer or None, "
                        f"got {type(optimizer).__name__}")
    if hasattr(variables, "variables") and not isinstance(variables, (Tensor, list, tuple, dict)):
        variables = list(variables.variables)
    leaves, _ = flatten(variables)
    failure: BaseException | None = None
    for i, v in enumerate(leaves):
        if not isinstance(v, Variable):
            failure = TypeError(f"gt.distributed.{who}: variables[{i}] must be a gt.Variable, got "
                                f"{type(v).__name__}")
            break
    if world.comm is None:
        if failure is not None:
            raise failure
        return
    signature = (f"broadcast_variables(root={root}, optimizer={optimizer is not None})",
                 tuple(_spec(v) if isinstance(v, Variable) else None for v in leaves))
    _agree(world, who, signature, failure)
    mpi = world.mpi
    assert mpi is not None
    for v in leaves:
        host = np.ascontiguousarray(v._backend.to_host(v.data)) if world.rank == root \
            else np.empty(v.shape, v.dtype)
        if host.size:
            dt = mpi.UINT16_T if host.dtype == np.float16 else (
                mpi.C_BOOL if host.dtype.kind == "b" else _mpi_type(mpi, host.dtype))
            world.comm.Bcast([host, dt], root=root)
        if world.rank != root:
            v.assign(host)
    if optimizer is not None:
        named = [(f"v{i}", v) for i, v in enumerate(leaves)]
        state = optimizer.state_dict(named) if world.rank == root else None
        state = world.ctrl.bcast(state, root=root)
        if world.rank != root:
            optimizer.load_state_dict(state, named)


# --------------------------------------------------------------------------- tape and optimizer
class DistributedGradientTape:
    """Wrap a GradientTape so that its ``gradient()`` returns gradients averaged (or summed)
    over all ranks (Horovod's ``hvd.DistributedGradientTape``).

    With ``overlap`` (the default), a bucket's reduction starts during the reverse pass as soon
    as the last gradient in it is final, so communication hides behind the rest of the
    backward; buckets fill from the last sources first (the order in which a model's gradients
    become final). Everything else (``watch``, ``jacobian``, ...) is the wrapped tape's.

    Args:
        tape: the GradientTape that recorded the step (wrap it after its ``with`` block, or use
            ``with DistributedGradientTape(gt.GradientTape()) as tape:``; then an exception
            inside the block on one rank makes every rank raise instead of waiting).
        op: ``"mean"`` (default) or ``"sum"`` across ranks.
        compression: None or ``"float16"`` (see :func:`allreduce`).
        bucket_bytes: bucket size in bytes (default :data:`BUCKET_BYTES`).
        overlap: start reductions during the backward (False: all after it).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> w = gt.Variable([1.0, 2.0])
        >>> with gt.GradientTape() as tape:
        ...     loss = gt.sum(w * w)
        >>> tape = gt.distributed.DistributedGradientTape(tape)
        >>> tape.gradient(loss, [w])[0].numpy()
        array([2., 4.], dtype=float32)
    """

    def __init__(self, tape: GradientTape, op: str = "mean", compression: str | None = None,
                 bucket_bytes: int | None = None, overlap: bool = True) -> None:
        who = "DistributedGradientTape()"
        if not isinstance(tape, GradientTape):
            raise TypeError(f"gt.distributed.{who}: tape must be a gt.GradientTape, got "
                            f"{type(tape).__name__}")
        _check_op(op, compression, who)
        _check_bucket(bucket_bytes, who)
        self._tape = tape
        self._op, self._compression = op, compression
        self._bucket_bytes = bucket_bytes or BUCKET_BYTES
        self._overlap = bool(overlap)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tape, name)

    def __enter__(self) -> DistributedGradientTape:
        """Enter the wrapped tape; returns this object."""
        self._tape.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        """Leave the wrapped tape; if the block raised, tell the other ranks (they raise
        :class:`DistributedError` in their ``gradient()``) before the exception goes on."""
        self._tape.__exit__(kind, exc, tb)
        if exc is not None and isinstance(exc, Exception) and _WORLD is not None \
                and _WORLD.comm is not None and _WORLD.broken is None:
            try:
                _agree(_WORLD, "DistributedGradientTape.gradient()", None, exc)
            except Exception:  # noqa: S110 - _agree re-raises exc: it goes on as it is
                pass

    def gradient(self, target: Any, sources: Any, output_gradients: Any = None,
                 unconnected_gradients: str = "none") -> Any:
        """The wrapped tape's ``gradient()``, reduced over all ranks (same arguments, same
        structure of results; a source unconnected on every rank stays None).

        Raises:
            DistributedError: the ranks differ in the sources (count, shapes, dtypes), a
                gradient is None on some ranks only, or another rank raised in this step.
        """
        who = "DistributedGradientTape.gradient()"
        world = _world(who)
        tape = self._tape
        if world.comm is None:
            return tape.gradient(target, sources, output_gradients, unconnected_gradients)
        failure: BaseException | None = None
        leaves: list[Any] = []
        try:
            leaves, spec = flatten(sources)
            for i, s in enumerate(leaves):
                if not isinstance(s, Tensor):
                    raise TypeError(f"gt.distributed.{who}: sources[{i}] must be a gradtape Tensor "
                                    f"or Variable, got {type(s).__name__}")
        except Exception as exc:
            failure = exc
        specs = tuple(_spec(s) if isinstance(s, Tensor) else None for s in leaves)
        _agree(world, who, (f"gradient(op={self._op!r}, compression={self._compression!r})", specs),
               failure)
        if failure is not None:
            raise failure
        red = _Reducer(world, specs, self._op, self._compression, self._bucket_bytes, reverse=True)
        hook = None
        if self._overlap and not tracing():  # (a gt.function step reduces after the backward)
            positions: dict[int, list[int]] = {}
            for i, s in enumerate(leaves):
                positions.setdefault(s._id, []).append(i)

            def hook(sid: int, array: Array) -> None:
                for i in positions.get(sid, ()):
                    red.ready(i, array)
        try:
            grads = tape.gradient(target, sources, output_gradients, unconnected_gradients,
                                  _ready=hook)
            flat, _ = flatten(grads)
        except Exception as exc:
            failure = exc
            flat = [None] * len(leaves)
        try:
            _agree(world, who, ("gradients (True: None)", tuple(g is None for g in flat)), failure)
        except DistributedError:
            if red.started:
                world.broken = "a gradient reduction was started on some ranks only"
            raise
        if failure is not None:
            raise failure
        arrays = [None if g is None else g.data for g in flat]
        if tracing():  # inside gt.function: the reduction is one step of the program
            out = _allreduce_arrays(arrays, self._op, self._compression, self._bucket_bytes)
        else:
            out = red.finish(arrays)
        return unflatten(spec, [None if a is None else _wrap(a if a.dtype == s.dtype else a.astype(s.dtype),
                                                             s._backend)
                                for a, s in zip(out, leaves)])


class DistributedOptimizer(Optimizer):
    """Wrap an optimizer so that :meth:`apply_gradients` (and ``minimize``) first averages the
    gradients over all ranks (Horovod's ``hvd.DistributedOptimizer``).

    The result is an instance of the wrapped optimizer's class (``isinstance(d, gt.optimizers.Adam)``
    holds, checkpoints work) that shares its state: the original optimizer sees every update.
    Use it or :class:`DistributedGradientTape`, not both (the gradients would be reduced twice;
    the values would not change, the cost would).

    Args:
        optimizer: a gradtape optimizer (``SGD``, ``Adam``, ``AdamW``, ...).
        op: ``"mean"`` (default) or ``"sum"``.
        compression: None or ``"float16"`` (see :func:`allreduce`).
        bucket_bytes: bucket size in bytes (default :data:`BUCKET_BYTES`).

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> w = gt.Variable([1.0, 2.0])
        >>> opt = gt.distributed.DistributedOptimizer(gt.optimizers.SGD(0.5))
        >>> opt.apply_gradients([(gt.tensor([1.0, 1.0]), w)])
        >>> w.numpy()
        array([0.5, 1.5], dtype=float32)
    """

    _distributed: tuple[str, str | None, int | None]

    def __new__(cls, optimizer: Optimizer, op: str = "mean", compression: str | None = None,
                bucket_bytes: int | None = None) -> DistributedOptimizer:
        who = "DistributedOptimizer()"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"gt.distributed.{who}: optimizer must be a gradtape optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError(f"gt.distributed.{who}: the optimizer is already distributed")
        _check_op(op, compression, who)
        _check_bucket(bucket_bytes, who)
        base = type(optimizer)
        sub = _SUBCLASSES.get(base)
        if sub is None:
            sub = _SUBCLASSES[base] = type(f"Distributed{base.__name__}", (cls, base),
                                           {"__module__": __name__})
        obj: DistributedOptimizer = object.__new__(sub)
        obj.__dict__ = optimizer.__dict__  # the same state: hyper-parameters, slots, step count
        return obj

    def __init__(self, optimizer: Optimizer, op: str = "mean", compression: str | None = None,
                 bucket_bytes: int | None = None) -> None:
        # the state is the wrapped optimizer's (shared in __new__, not re-initialized here)
        self._distributed = (op, compression, bucket_bytes)

    def _apply(self, grads_and_vars: Iterable[tuple[Tensor | Array | None, Variable]], what: str,
               stacklevel: int = 3) -> None:
        op, compression, bucket_bytes = self._distributed
        pairs = list(grads_and_vars)
        grads = [g if g is None or isinstance(g, Tensor) else _wrap(g, backend_of(g))
                 for g, _ in pairs]
        reduced = allreduce(grads, op=op, compression=compression, bucket_bytes=bucket_bytes)
        super()._apply(zip(reduced, [v for _, v in pairs]), what, stacklevel + 1)


_SUBCLASSES: dict[type, type] = {}
