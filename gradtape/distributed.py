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
(*buckets*, at most ``bucket_bytes`` each; a tensor at least that large goes alone) and reduces
each with one MPI all-reduce (or one NCCL ``allReduce``); where every rank runs on one machine,
a host bucket is summed through shared memory instead (:class:`_Shm`, :func:`shared_memory`).
On the host, the buffers are reused
from call to call (a buffer is reused once no result still refers to it) and reduced in place;
``op="mean"`` scales by ``1 / size`` while packing, so no pass over the result follows.
:class:`DistributedGradientTape` over MPI starts a bucket's reduction during the reverse pass, as
soon as the last gradient in it is final, so communication overlaps the rest of the backward
(through shared memory it reduces after the backward).

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

import bisect
import hashlib
import itertools
import math
import numbers
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ._src.autodiff.state import STATE, opaque, refuse_in_trace, tracing
from ._src.backend import NUMPY, Array, Backend, backend_by_name, backend_of, nccl_module
from ._src.frontend.custom_gradient import custom_gradient
from ._src.frontend.tape import GradientTape
from ._src.nest import flatten, leaf_paths, unflatten
from ._src.tensor import Tensor, Variable, _wrap
from .optimizers import Optimizer

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size", "barrier",
           "allreduce", "broadcast_variables", "transport", "shared_memory",
           "DistributedGradientTape", "DistributedOptimizer", "DistributedError", "BUCKET_BYTES"]

#: Default bucket size in bytes: gradients are packed into buffers of at most this size (a
#: tensor at least this large is reduced alone, in a buffer of its own). Large enough that a bucket
#: runs at MPI's full bandwidth, small enough that a model's gradients form several buckets,
#: whose reductions overlap the backward (PyTorch DDP uses 25 MB, Horovod 64 MB).
BUCKET_BYTES = 4 << 20

#: Environment variables by which MPI launchers (Open MPI, MPICH/Hydra and Intel MPI, PMIx
#: launchers such as srun --mpi=pmix, MVAPICH) tell a process it is one rank of a job.
_LAUNCH_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_OPS = ("mean", "sum")
_COMPRESSIONS = (None, "float16")


class DistributedError(RuntimeError):
    """The ranks disagree (different tensors to reduce, a gradient None on some ranks only,
    different calls) or a rank failed inside the step; raised on every rank, naming the ranks
    and what differs."""


# --------------------------------------------------------------------------- the world
class _World:
    """The job as this process sees it: MPI communicators (None in a single process without
    MPI), rank and size, and the NCCL communicator once a CuPy tensor needed one."""

    def __init__(self, comm: Any | None, shared_memory: bool = True) -> None:
        self.comm: Any = None  # the data: bucket reductions, broadcasts
        self.ctrl: Any = None  # the agreement checks: never interleaved with pending data
        self.mpi: Any = None
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self.nccl: _Nccl | None = None
        # set by a failed agreement check: the most reductions any rank had started for the
        # abandoned call (a rank re-raising its own error learns it from here)
        self.started_max = 0
        # an exception an agreement check raised whose type refuses new attributes (its
        # __setattr__; see _announce); others carry the mark themselves, so no reference
        # keeps them (and the frames of their traceback, a step's tapes among them) alive
        self.announced: BaseException | None = None
        self.calls = 0  # agreement checks made: a rank that skips a call is told so
        self._f16_op: Any = None
        self.shm: _Shm | None = None  # set when every rank runs on this machine
        self.shm_failure: str | None = None  # why this rank could not map the shared file
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
        # every rank on this machine: host buckets go through shared memory (see _Shm); the
        # ranks agree on it, as they must all take the same path for every bucket
        single_node = self.local_size == self.size > 1
        if self.ctrl.allreduce(int(shared_memory and single_node), op=MPI.MIN):
            self.shm, self.shm_failure = _Shm.open(local, self.ctrl)
        if self.shm is None:
            local.Free()

    def close(self) -> None:
        """Free what this world made (a world replaced by :func:`init`, on every rank): its two
        duplicated communicators, the float16 sum, the NCCL communicator and the shared file.
        MPI completes any operation still pending on a communicator before freeing it."""
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        if self.nccl is not None:
            destroy = getattr(self.nccl.comm, "destroy", None)
            if destroy is not None:
                destroy()
            self.nccl = None
        if self._f16_op is not None:
            self._f16_op.Free()
            self._f16_op = None
        for c in (self.comm, self.ctrl):
            if c is not None:
                c.Free()
        self.comm = self.ctrl = None

    def f16_sum(self) -> Any:
        """MPI has no float16 type: a user-defined sum over 2-byte elements (as Horovod does)."""
        if self._f16_op is None:
            def f16_sum(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
                acc = np.frombuffer(inoutbuf, np.float16)
                with np.errstate(all="ignore"):  # (inf: see _Reducer._start)
                    np.add(acc, np.frombuffer(inbuf, np.float16), out=acc)

            self._f16_op = self.mpi.Op.Create(f16_sum, commute=True)
        return self._f16_op


class _Shm:
    """Host buckets reduced through shared memory where every rank of the job runs on one
    machine, in place of ``MPI_Allreduce``: each rank packs its bucket into its own segment of
    one shared file; after a barrier, rank ``r`` sums slice ``r`` of every rank's segment (in
    rank order) into its result buffer and copies the sum back into its own segment; after a
    second barrier, every rank copies the other ranks' summed slices into its result buffer.
    Each byte is then read from a peer once, where MPI's shared-memory all-reduce copies it
    through a queue and back, so a 1 MB bucket took 0.6 to 0.7 of ``MPI_Allreduce``'s time on
    2 ranks of the test VM (``benchmarks/``), and every rank gets bit-identical results (each
    slice is summed once, in a fixed order).

    Each rank writes only its own segment. Two segments per rank alternate between calls: a
    rank packing call ``k + 1`` into one segment has passed call ``k``'s first barrier, which no
    rank reaches before it has finished copying out of call ``k - 1``'s, the other one (a
    piece counts as a call). A bucket of more than :data:`_WHOLE_BYTES` in the tensors' dtype
    goes through :data:`_PIECE_BYTES` at a time, copied from where the tensors are (each rank's
    own slice of a piece inside one tensor is summed from there; a piece across tensors is
    packed into the segment); one cast on the wire (``compression="float16"``, a non-native
    byte order) goes whole up to a segment and is packed first beyond. A job on shared memory
    starts no non-blocking reduction (those stay on MPI). The sums run with NumPy's
    floating-point errors ignored (see :meth:`_Reducer._start`). The barriers are
    ``MPI_Barrier`` on the machine's communicator, whose shared-memory implementations (Open
    MPI, MPICH) order each rank's stores before it before the other ranks' loads after it.

    The file is created by the machine's first rank in ``/dev/shm`` (else ``/tmp``; the
    environment variable ``GRADTAPE_SHM_DIR`` chooses another directory) with
    ``posix_fallocate`` (a full file system is an error there, not a crash later), mapped by
    every rank and unlinked once all have mapped it (nothing is left behind, whatever happens
    to the job later). Every step that can fail is local and followed by an agreement, so a
    rank that cannot take part makes all of them use ``MPI_Allreduce`` instead of waiting for
    each other."""

    __slots__ = ("mem", "node", "segments", "rank", "size", "parity")

    def __init__(self, mem: Any, node: Any) -> None:
        self.mem, self.node = mem, node
        self.rank, self.size = node.Get_rank(), node.Get_size()
        whole = np.frombuffer(mem, np.uint8)
        self.segments = [whole[j * 2 * _SHM_BYTES:(j + 1) * 2 * _SHM_BYTES] for j in range(self.size)]
        self.parity = 0

    @staticmethod
    def open(node: Any, ctrl: Any) -> tuple[_Shm | None, str | None]:
        """The shared file over the ranks of ``node`` (collective over ``ctrl``, whose ranks are
        ``node``'s; None on every rank where some rank could not create or map it), and why
        this rank could not (None if it could). Nothing here raises between the collective
        calls: a rank leaving early would leave the others waiting in the next one."""
        import mmap
        import tempfile

        from mpi4py import MPI

        nbytes = 2 * _SHM_BYTES * node.Get_size()
        path, why, mem = None, None, None
        if node.Get_rank() == 0:
            directory = os.environ.get("GRADTAPE_SHM_DIR") or _SHM_DIR
            try:
                fd, path = tempfile.mkstemp(prefix="gradtape-allreduce-", dir=directory)
                try:
                    os.posix_fallocate(fd, 0, nbytes)  # (AttributeError where there is none)
                finally:
                    os.close(fd)
            except Exception as exc:
                why = (f"cannot create {nbytes >> 20} MiB in {directory!r} ({exc}); set "
                       f"GRADTAPE_SHM_DIR to a directory with room")
                _unlink(path)
                path = None
        path = node.bcast(path, root=0)
        if path is not None:
            try:
                fd = os.open(path, os.O_RDWR)
                try:
                    mem = mmap.mmap(fd, nbytes)
                finally:
                    os.close(fd)
            except Exception as exc:
                why = f"cannot map {path!r} ({exc})"
        ok = ctrl.allreduce(int(mem is not None), op=MPI.MIN)  # (every rank has tried to map)
        if node.Get_rank() == 0:
            _unlink(path)
        if why is not None:
            why = (f"gt.distributed.init(): rank {ctrl.Get_rank()} {why}; host buckets go "
                   "through MPI_Allreduce (init(..., shared_memory=False) chooses that)")
        if not ok:
            if mem is not None:
                mem.close()
            return None, why
        return _Shm(mem, node), why

    def close(self) -> None:
        """Unmap the file and free the machine's communicator (a world replaced by ``init``)."""
        self.segments = []
        try:
            self.mem.close()
        except BufferError:  # a view still alive (a traceback's frame): unmapped when collected
            pass
        self.node.Free()

    def fits(self, total: int, dtype: np.dtype) -> bool:
        """Whether ``total`` elements of ``dtype`` fit one segment (packed into it directly)."""
        return total * dtype.itemsize <= _SHM_BYTES

    def segment(self, total: int, dtype: np.dtype) -> np.ndarray:
        """This rank's segment of this call, as ``total`` elements of ``dtype`` (to pack into)."""
        start = self.parity * _SHM_BYTES
        return self.segments[self.rank][start:start + total * dtype.itemsize].view(dtype)

    def pack(self, srcs: list[Array]) -> bool:
        """Copy ``srcs`` (host arrays of the dtype on the wire, together no larger than a
        segment) one after the other into this rank's segment of this call, as bytes; False
        (the segment's contents undefined) where one is not C-contiguous, for the caller to
        pack them with NumPy instead. The mapping's ``write`` copies an array for about half
        of what ``np.concatenate`` spends per array (256 arrays of 4 KB: 32 against 44 us on
        the 2-vCPU VM), which is most of a 1 MB bucket of small tensors' packing."""
        mem = self.mem
        mem.seek((2 * self.rank + self.parity) * _SHM_BYTES)
        try:
            for _ in map(mem.write, srcs):
                pass
        except (ValueError, BufferError, TypeError):
            return False
        return True

    def _sync(self) -> None:
        self.node.Barrier()

    def reduce_pieces(self, members: list[np.ndarray], out: np.ndarray, scale: Any = None) -> None:
        """Sum every rank's bucket of ``members`` (arrays of ``out``'s dtype, together ``out``'s
        size, taken flat in C order; each rank's share times ``scale`` unless None) into
        ``out``, :data:`_PIECE_BYTES` at a time, in rank order as :meth:`reduce`. A piece inside
        one member is read where it is: only the slices the other ranks sum go through this
        rank's segment, its own slice is summed from the member (on 2 ranks a 64 MB set took 0.6
        of the time of copying the whole piece in). A piece across several members is packed
        into the segment whole, as :meth:`reduce` takes a bucket. A piece at a time, the phases
        find their bytes still in the core's cache (2 ranks, a 16 MB model-shaped set of 4 MiB
        buckets: 1.85-2.40 ms against 2.61-3.08 a bucket at a time). ``members`` may be ``[out]``:
        a bucket packed into ``out``, reduced in place."""
        dtype = out.dtype
        n, r = self.size, self.rank
        step = _PIECE_BYTES // dtype.itemsize
        inplace = members[0] is out
        ends = list(itertools.accumulate(map(_SIZE, members)))
        flat: dict[int, np.ndarray] = {}  # members taken flat (a copy where not contiguous)

        def member(i: int) -> np.ndarray:
            f = flat.get(i)
            if f is None:
                flat.clear()  # (the pieces go forward: an earlier member is done)
                f = flat[i] = np.ravel(members[i])
            return f

        j = 0  # the first member that ends after this piece's start
        for lo in range(0, out.size, step):
            m = min(out.size - lo, step)
            hi = lo + m
            while ends[j] <= lo:
                j += 1
            views = self._views(m, dtype)
            mine = views[r]
            a, b = m * r // n, m * (r + 1) // n
            first = ends[j] - members[j].size
            piece_scale = scale
            if ends[j] >= hi:  # inside one member: the other ranks' slices into the segment
                src = member(j)[lo - first:hi - first]
                for x, y in ((0, a), (b, m)):
                    if y > x:
                        mine[x:y] = src[x:y]
                        if scale is not None:
                            np.multiply(mine[x:y], scale, out=mine[x:y])
                own = src[a:b]
                if r >= 2 and inplace:  # (a packed bucket reduced in place: the first sum
                    # would overwrite this rank's operand before its turn)
                    own = own.copy()
            else:  # across members: the whole piece into the segment, scaled there
                k = bisect.bisect_left(ends, hi, j)  # the last member it reaches
                parts = members[j:k + 1]
                parts[0] = member(j)[lo - first:]
                parts[-1] = member(k)[:hi - (ends[k] - members[k].size)]
                np.concatenate(parts, axis=None, out=mine)
                if scale is not None:
                    np.multiply(mine, scale, out=mine)
                    piece_scale = None
                own = mine[a:b]
            self._exchange(views, own, out[lo:lo + m], piece_scale)

    def _exchange(self, views: list[np.ndarray], own: np.ndarray, out: np.ndarray,
                  scale: Any = None) -> None:
        """The rest of a call once this rank has written into its segment (``views[rank]``, of
        ``out``'s length) the slices the other ranks sum: after a barrier, sum this rank's
        slice in rank order into ``out`` (its own share ``own``, scaled by ``scale`` unless
        None: the others' were scaled as written), publish it in its segment, and after a
        second barrier copy the other ranks' sums into ``out``."""
        n, r, m = self.size, self.rank, out.size
        a, b = m * r // n, m * (r + 1) // n
        acc = out[a:b]  # (summed here, not in this rank's segment, which may be an operand)
        self._sync()
        if scale is None:
            ops = [own if q == r else view[a:b] for q, view in enumerate(views)]
            np.add(ops[0], ops[1], out=acc)
            rest = ops[2:]
        elif r < 2:  # (a sum of two is the same in either order)
            np.multiply(own, scale, out=acc)
            np.add(acc, views[1 - r][a:b], out=acc)
            rest = [view[a:b] for view in views[2:]]
        else:
            np.add(views[0][a:b], views[1][a:b], out=acc)
            # (each share rounded to the dtype, as the others are: float16 times a float32
            # scale is float32)
            rest = [np.multiply(own, scale, out=np.empty_like(own)) if q == r else views[q][a:b]
                    for q in range(2, n)]
        for op in rest:
            np.add(acc, op, out=acc)
        views[r][a:b] = acc  # for the others to copy
        self._sync()
        for q, view in enumerate(views):
            if q != r:
                x, y = m * q // n, m * (q + 1) // n
                out[x:y] = view[x:y]

    def _views(self, total: int, dtype: np.dtype) -> list[np.ndarray]:
        """Every rank's segment of this call as ``total`` elements of ``dtype`` (the next call
        takes the other segments)."""
        start, nbytes = self.parity * _SHM_BYTES, total * dtype.itemsize
        self.parity ^= 1
        return [seg[start:start + nbytes].view(dtype) for seg in self.segments]

    def reduce(self, total: int, dtype: np.dtype, out: np.ndarray) -> None:
        """Sum every rank's packed segment (:meth:`segment`) into ``out`` (``total`` elements)."""
        views = self._views(total, dtype)
        n, r = self.size, self.rank
        self._exchange(views, views[r][total * r // n:total * (r + 1) // n], out)


def _unlink(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:  # (removed by someone else already: nothing is left either way)
            pass


#: Bytes of one segment of the shared file (:class:`_Shm`; each rank has two): the default
#: bucket size, so the default buckets all go through it.
_SHM_BYTES = BUCKET_BYTES

#: A bucket larger than a segment goes through it this many bytes at a time: a piece copied in
#: is still in the core's cache (1 MiB of L2 on the test VM's cores) when it is summed (the 64 MB
#: model-shaped set on 2 ranks, one run: 2.0 times raw MPI's speed with these pieces, 1.6 with
#: 4 MiB ones).
_PIECE_BYTES = 1 << 20

#: Host buckets sent in the tensors' own dtype of at most this many bytes are packed into the
#: shared segment whole and reduced in one go (:meth:`_Shm.reduce`); larger ones a piece at a
#: time (:meth:`_Shm.reduce_pieces`). Two ranks of the 2-vCPU VM, alternating jobs: the pieces
#: took 0.63-1.1 of the whole bucket's time at 4 MB (0.7 in most jobs) and 0.67-0.87 at 16 MB
#: model-shaped, but 1.0 (model-shaped) to 1.1 (256 tensors) at 2 MB.
_WHOLE_BYTES = 2 << 20

#: Where the machine's first rank creates the shared file (:class:`_Shm`; it is unlinked as soon
#: as every rank has mapped it). The environment variable ``GRADTAPE_SHM_DIR`` overrides it, for
#: example where ``/dev/shm`` is small (a container's default 64 MB: ``docker run --shm-size``).
_SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"


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
    mpi = world.mpi

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        previous(kind, value, tb)
        sys.stderr.flush()
        time.sleep(0.5)  # the other ranks may be raising too: let their messages out first
        now = _WORLD  # (the world of the latest init: an earlier one's communicators are freed)
        (now.comm if now is not None and now.comm is not None else mpi.COMM_WORLD).Abort(1)

    sys.excepthook = hook


def init(comm: Any = None, *, shared_memory: bool = True) -> None:
    """Join the job: under an MPI launcher (``mpirun``/``mpiexec``/``srun``) every rank calls
    this first; in a plain process without MPI the world has size 1 and mpi4py is not imported.

    Calling it again is harmless (the first world stays, unless ``comm`` is given: then
    every rank calls it, and the previous world's communicators and shared file are freed).

    Args:
        comm: an ``mpi4py`` communicator to run on (default ``MPI.COMM_WORLD`` when launched by
            MPI); gradtape duplicates it, so its own messages never mix with yours.
        shared_memory: where every rank runs on one machine, reduce host buckets through a
            shared file (2 x :data:`BUCKET_BYTES` per rank in ``/dev/shm``, or
            ``$GRADTAPE_SHM_DIR``), whole up to 2 MiB (sent in the tensors' dtype; 4 MiB cast
            on the wire) and 1 MiB at a time beyond (each rank sums a slice of every rank's
            bucket; 1.4 to 1.7 times an out-of-place ``MPI_Allreduce``'s speed for 1 MB on 2
            ranks of the test VM, 1.15 to 1.96 times an in-place one's), rather than with
            ``MPI_Allreduce``; False: always ``MPI_Allreduce``. The ranks agree on it: if any
            rank says False, or cannot create or map the file (a ``RuntimeWarning`` says why),
            none uses it. A second ``init()`` without ``comm`` keeps the first world (and its
            ``shared_memory``): pass ``comm`` to make a new one.

    Raises:
        RuntimeError: launched by MPI but mpi4py is not installed.
        TypeError: ``comm`` is not an mpi4py communicator.

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
    elif not all(hasattr(comm, m) for m in ("Dup", "Get_rank", "Get_size", "Allreduce")):
        raise TypeError(f"gt.distributed.init(): comm must be an mpi4py communicator (such as "
                        f"MPI.COMM_WORLD or one made by its Split), got {type(comm).__name__}")
    if _WORLD is not None:  # (every rank calls init: the old world's collectives free)
        old, _WORLD = _WORLD, None
        old.close()
    _WORLD = _World(comm, shared_memory)
    _abort_on_uncaught(_WORLD)
    if _WORLD.shm_failure is not None:  # (after the world is whole on every rank: a warning
        # filter that raises then ends this rank's init only, or the job, never in a collective)
        import warnings

        warnings.warn(_WORLD.shm_failure, RuntimeWarning, stacklevel=2)


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
    if world.ctrl is not None:  # an agreement check waits for every rank, as a barrier does,
        _agree(world, "barrier()", ("barrier",))  # and tells a rank in another call


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


def shared_memory() -> bool:
    """Whether this job reduces host (NumPy) buckets through shared memory rather than
    ``MPI_Allreduce``: every rank runs on one machine, :func:`init` was not told
    ``shared_memory=False``, and every rank could map the shared file (buckets of more than
    2 MiB in the tensors' dtype, or 4 MiB cast on the wire, then pass through it 1 MiB at a
    time; a job on shared memory starts no reduction during a backward). False in a single
    process.

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> gt.distributed.shared_memory()  # a plain process
        False
    """
    return _world("shared_memory()").shm is not None


def _transport_of(backend_name: str) -> str:
    """The one routing rule: CuPy arrays over NCCL, everything else over MPI."""
    return "nccl" if backend_name == "cupy" else "mpi"


# --------------------------------------------------------------------------- agreement
def _hash(signature: object) -> int:
    digest = hashlib.blake2b(repr(signature).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2  # non-negative, negation fits in int64


def _agree(world: _World, who: str, signature: object, failure: BaseException | None = None,
           digest: int | None = None, started: int = 0) -> None:
    """One small collective on the control communicator: every rank learns whether all ranks
    are well (``failure`` None) and about to do the same thing (equal ``signature``, or equal
    ``digest`` where the caller has the signature's hash already), the count of checks made
    so far part of the digest. (The ranks' checks pair in the order they are made, so that
    count agrees whenever the checks pair: a rank that skipped a call pairs its next call with
    the others' skipped one, and is told only where the two differ in what they reduce, as in
    MPI.) If not, the ranks exchange
    details and every rank raises :class:`DistributedError` (a rank whose ``failure`` it is
    re-raises that). ``started``: how many reductions this rank had started for the call (in
    plan order, so equal counts are the same reductions); ``world.started_max`` is then the
    most any rank had, which the caller brings every rank to (:meth:`_Reducer.abandon`), so
    the started reductions complete and the job goes on."""
    world.calls += 1
    world.started_max = 0
    h = _hash((world.calls, signature if digest is None else digest))
    mine = np.array([0 if failure is None else 1, h, -h], np.int64)
    out = np.empty_like(mine)
    world.ctrl.Allreduce(mine, out, op=world.mpi.MAX)
    if out[0] == 0 and out[1] == h and -out[2] == h:
        return
    note = None if failure is None else f"{type(failure).__name__}: {failure}"
    everyone = world.ctrl.allgather((note, _describe(signature), world.calls, int(started)))
    world.started_max = max(st for *_, st in everyone)
    if failure is not None:
        _announce(world, failure)
        raise failure  # this rank's own error; the others raise DistributedError naming it
    failed = [(r, n) for r, (n, *_) in enumerate(everyone) if n is not None]
    if failed:
        msg = "; ".join(f"rank {r} raised {n}" for r, n in failed)
        raise _error(world, f"gt.distributed.{who}: {msg} (the step is abandoned on every rank)")
    mine_s = everyone[world.rank][1]
    diff = [f"rank {r}: {s}" for r, (_, s, *_) in enumerate(everyone) if s != mine_s]
    if not diff:  # the same call, but not at the same count: a rank skipped a call
        counts = ", ".join(f"rank {r}: {c}" for r, (_, _, c, _) in enumerate(everyone))
        raise _error(world, f"gt.distributed.{who}: the ranks are at different collective "
                     f"calls (checks made so far, {counts}): a rank skipped a call the others "
                     f"made, or made one more (every rank must make the same calls in the same "
                     f"order)")
    raise _error(world, f"gt.distributed.{who}: the ranks do not agree on what to reduce "
                 f"(rank {world.rank}: {mine_s}; {'; '.join(diff)})")


def _error(world: _World, msg: str) -> DistributedError:
    err = DistributedError(msg)
    _announce(world, err)
    return err


_ANNOUNCED = "_gt_announced_at"


def _announce(world: _World, exc: BaseException) -> None:
    """Mark ``exc`` as told to every rank by the latest agreement check, so that
    DistributedGradientTape.__exit__ does not tell them again (one check more than the other
    ranks make). The mark is the check's count, kept on the exception itself: a reference
    held here would keep its traceback's frames alive until the next failure, and with them
    a failed step's tape and every array it saved."""
    try:
        setattr(exc, _ANNOUNCED, world.calls)
        world.announced = None
    except (AttributeError, TypeError):  # a type whose __setattr__ refuses
        world.announced = exc


def _was_announced(world: _World, exc: BaseException) -> bool:
    """Whether the latest agreement check raised ``exc`` (see :func:`_announce`)."""
    return exc is world.announced or getattr(exc, _ANNOUNCED, None) == world.calls


def _shape_of(spec: Any) -> Any:
    """A nest's structure from :func:`flatten`'s spec, in a form equal on every rank for equal
    structures: container kinds and dict keys, not the leaves (a dict's insertion order left
    out: its values pair by key)."""
    if spec is None:
        return 0
    kind, typ, keys, children = spec[:4]
    keys = None if keys is None else tuple(map(repr, keys))
    if type(children) is int or not any(children):  # leaves only: their count (computed
        # each call, so not a pass over every leaf)
        return (typ.__name__, keys, children if type(children) is int else len(children))
    return (typ.__name__, keys, tuple(_shape_of(c) for c in children))


def _describe(signature: object) -> str:
    if isinstance(signature, tuple) and len(signature) in (2, 3) and isinstance(signature[1], tuple):
        kind, items = signature[:2]
        parts = [("None" if it is None else f"{np.dtype(it[1]).name}{list(it[0])} on {it[2]}")
                 if isinstance(it, tuple) else repr(it) for it in items]
        where = ""
        if len(signature) == 3:
            extra = signature[2]
            if type(extra) is tuple and all(type(x) is bool for x in extra):  # None gradients
                nones = [i for i, x in enumerate(extra) if x]
                where = f", None gradients at {nones}" if nones else ", no None gradient"
            else:  # a nest's structure
                where = f" in {_render(extra)}"
        return f"{kind} of {len(items)} [{', '.join(parts)}]{where}"
    return repr(signature)


def _render(spec: Any) -> str:
    """A nest's structure, leaves as ``*``: ``{'a': *, 'b': [*, *]}``."""
    if spec is None:
        return "*"
    kind, typ, keys, children = spec[:4]
    if type(children) is int:
        children = [None] * children
    if keys is not None:
        return "{" + ", ".join(f"{k!r}: {_render(c)}" for k, c in zip(keys, children)) + "}"
    inner = ", ".join(_render(c) for c in children)
    return f"({inner}{',' if len(children) == 1 else ''})" if typ is tuple else f"[{inner}]"


def _spec(t: Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.data.shape), t.data.dtype, t._backend.name)


def _kind(what: str, op: str, compression: str | None, bucket_bytes: int) -> str:
    """The call's parameters that must agree across ranks (ranks with different bucket sizes
    would pair up different buffers)."""
    return f"{what}(op={op!r}, compression={compression!r}, bucket_bytes={bucket_bytes})"


# --------------------------------------------------------------------------- buckets
class _Bucket:
    """Members (indices into the tensors of one call) reduced together in one buffer: their
    element counts, shapes and offsets in it, its dtype and backend; ``solo``: one tensor at
    least ``bucket_bytes`` large; ``host``: reduced over MPI from a reused host buffer
    (:class:`_HostPool`). After the last :meth:`add`, :meth:`seal` sets ``span``, the slice
    of the call's list that holds the members where they are consecutive (else None),
    ``runs``, the members as runs of equal shape (position of the first, count, elements each,
    shape, slice of the call's list or None; a run unpacks with one reshape), and ``fused``:
    few large members, so the mean's scaling goes into each member's copy (many small
    members: one concatenation, then one pass over the buffer)."""

    __slots__ = ("members", "sizes", "shapes", "offsets", "total", "dtype", "backend", "solo",
                 "host", "span", "runs", "fused")

    def __init__(self, dtype: np.dtype, backend: Backend, solo: bool) -> None:
        self.members: list[int] = []
        self.sizes: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self.offsets: list[int] = []
        self.total = 0
        self.dtype = dtype
        self.backend = backend
        self.solo = solo
        self.host = _transport_of(backend.name) == "mpi"
        self.span: slice | None = None
        self.runs: list[tuple[int, int, int, tuple[int, ...], slice | None]] = []
        self.fused = True

    def add(self, i: int, n: int, shape: tuple[int, ...]) -> None:
        self.members.append(i)
        self.sizes.append(n)
        self.shapes.append(shape)
        self.offsets.append(self.total)
        self.total += n

    def seal(self) -> None:
        runs: list[tuple[int, int, int, tuple[int, ...]]] = []
        for j, (n, shape) in enumerate(zip(self.sizes, self.shapes)):
            if runs and shape and runs[-1][3] == shape:
                first, count, _, _ = runs[-1]
                runs[-1] = (first, count + 1, n, shape)
            else:
                runs.append((j, 1, n, shape))
        self.span = _span(self.members)
        self.runs = [(j, count, n, shape, _span(self.members[j:j + count]))
                     for j, count, n, shape in runs]
        self.fused = self.total * self.dtype.itemsize >= _FUSE_BYTES * len(self.members)


def _span(ids: list[int]) -> slice | None:
    """The slice that selects ``ids`` (consecutive, ascending or descending) from a list."""
    if not ids:
        return None
    first, last = ids[0], ids[-1]
    if ids == list(range(first, last + 1)):
        return slice(first, last + 1)
    if ids == list(range(first, last - 1, -1)):
        return slice(first, last - 1 if last else None, -1)
    return None


#: Average member size in bytes from which a bucket scales each member as it copies it in (one
#: NumPy call per member, about a microsecond each) rather than concatenating all members
#: (one call) and scaling the whole buffer after (a second pass over its bytes).
_FUSE_BYTES = 32 << 10


class _Plan:
    """The buckets of one signature (see :func:`_plan`), member -> bucket index, and a digest
    of the specs for the agreement check (hashing a long signature costs more than reducing
    a small bucket, so it is done once per plan)."""

    __slots__ = ("specs", "buckets", "where", "digest", "dtypes", "full", "host_bytes", "_signed")

    def __init__(self, specs: tuple, buckets: list[_Bucket]) -> None:
        self.specs = specs
        self.buckets = buckets
        self.where = {i: k for k, b in enumerate(buckets) for i in b.members}
        self.digest = _hash(specs)
        self.dtypes = {s[1] for s in specs if s is not None}
        self.full = None not in specs
        self.host_bytes = sum(b.total * b.dtype.itemsize for b in buckets if b.host)
        self._signed: dict[str, int] = {}

    def signed(self, kind: str) -> int:
        """The agreement digest of a call of ``kind`` (see :func:`_kind`) with these specs."""
        h = self._signed.get(kind)
        if h is None:
            h = self._signed[kind] = _hash((kind, self.digest))
        return h


def _plan(specs: Sequence[tuple | None], bucket_bytes: int, order: Iterable[int]) -> list[_Bucket]:
    """Buckets for tensors of ``specs`` ((shape, dtype, backend name); None: no tensor),
    filled in ``order``: per backend and dtype, consecutive tensors up to ``bucket_bytes``;
    a tensor of at least ``bucket_bytes`` alone."""
    buckets: list[_Bucket] = []
    open_: dict[tuple[str, np.dtype], _Bucket] = {}
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
            b.add(i, n, tuple(shape))
            buckets.append(b)
            continue
        key = (bname, dtype)
        cur = open_.get(key)
        if cur is None or (cur.total + n) * dtype.itemsize > bucket_bytes:
            cur = open_[key] = _Bucket(dtype, backend_by_name(bname), False)
            buckets.append(cur)
        cur.add(i, n, tuple(shape))
    for b in buckets:
        b.seal()
    return buckets


_PLANS: dict[tuple, _Plan] = {}


def _cached_plan(specs: tuple, bucket_bytes: int, reverse: bool) -> _Plan:
    """:func:`_plan` (in reverse order: a backward's order), cached per signature: a training
    loop plans once."""
    key = (specs, bucket_bytes, reverse)
    hit = _PLANS.get(key)
    if hit is None:
        order = range(len(specs) - 1, -1, -1) if reverse else range(len(specs))
        if len(_PLANS) > 64:
            _PLANS.clear()
        hit = _PLANS[key] = _Plan(specs, _plan(specs, bucket_bytes, order))
    return hit


_BACKEND = operator.attrgetter("_backend")
_DATA = operator.attrgetter("data")
_SHAPE = operator.attrgetter("shape")
_SIZE = operator.attrgetter("size")
_DTYPE = operator.attrgetter("dtype")
_SHAPE_DTYPE = operator.attrgetter("shape", "dtype")
_ARRAY_PLANS: dict[tuple, _Plan] = {}


def _array_plan(arrays: Sequence[Array], backend_name: str, bucket_bytes: int, reverse: bool) -> _Plan:
    """:func:`_cached_plan` for ``arrays`` (none None, all of backend ``backend_name``),
    looked up by their shapes and dtypes, as a training loop calls this every step: arrays of
    one dtype (the common case, checked by identity, without hashing a dtype per array, which
    costs as much as the rest of the key) are keyed by their shapes and that dtype, others by
    their (shape, dtype) pairs."""
    dtypes = list(map(_DTYPE, arrays))
    first = dtypes[0] if dtypes else None
    if dtypes.count(first) == len(dtypes):  # (list.count compares by identity first)
        key: tuple = (tuple(map(_SHAPE, arrays)), first, backend_name, bucket_bytes, reverse)
    else:
        key = (tuple(map(_SHAPE_DTYPE, arrays)), None, backend_name, bucket_bytes, reverse)
    hit = _ARRAY_PLANS.get(key)
    if hit is None:
        pairs = key[0] if key[1] is None else [(shape, first) for shape in key[0]]
        specs = tuple([(tuple(shape), dtype, backend_name) for shape, dtype in pairs])
        if len(_ARRAY_PLANS) > 64:
            _ARRAY_PLANS.clear()
        hit = _ARRAY_PLANS[key] = _cached_plan(specs, bucket_bytes, reverse)
    return hit


def _refcounts(bufs: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(b) for b in bufs]


#: What :func:`_refcounts` says of a buffer that only its pool's list holds.
_UNUSED = _refcounts([np.empty(0, np.float32)])[0]


class _HostPool:
    """Host buffers reused from one reduction to the next, by length and dtype: each bucket is
    packed into a buffer of this pool and reduced there in place, so a step allocates nothing
    and the bucket needs no second buffer (MPI is several times slower on memory freshly
    mapped for each call: Open MPI on one machine, up to 5x for 1 MB).

    The results handed out are views of these buffers; a buffer is taken again only once no
    array refers to it any more (its reference count, which every view holds through its
    ``base``, is back to the pool's own), so results kept across steps are never overwritten:
    a loop that keeps the previous step's gradients while it reduces the next alternates
    between two sets of buffers. Kept: per length and dtype, at most ``2 d + 1`` buffers where
    one call has used ``d`` at once; in all, at most three times the largest call's bytes (at
    least :data:`_POOL_MIN_BYTES`); beyond that, buffers are allocated and not kept."""

    def __init__(self) -> None:
        self.kept: dict[tuple[int, np.dtype], list[np.ndarray]] = {}
        self.demand: dict[tuple[int, np.dtype], int] = {}
        self.bytes = 0
        self.limit = _POOL_MIN_BYTES

    def expect(self, nbytes: int) -> None:
        """A call is about to take buffers of ``nbytes`` bytes in all."""
        if 3 * nbytes > self.limit:
            self.limit = 3 * nbytes

    def take(self, length: int, dtype: np.dtype, nth: int) -> np.ndarray:
        """A 1-D buffer of ``length`` elements of ``dtype`` that nothing else refers to, the
        ``nth`` of this length and dtype that the current call takes."""
        key = (length, dtype)
        bufs = self.kept.get(key)
        if bufs is None:
            bufs = self.kept[key] = []
        else:
            for buf, refs in zip(bufs, _refcounts(bufs)):
                if refs <= _UNUSED:
                    return buf
        demand = self.demand[key] = max(self.demand.get(key, 0), nth)
        nbytes = length * dtype.itemsize
        if len(bufs) <= 2 * demand:
            if self.bytes + nbytes > self.limit:
                self._drop_unused()
            if self.bytes + nbytes <= self.limit:
                buf = np.empty(length, dtype)
                self.kept.setdefault(key, bufs).append(buf)
                self.bytes += nbytes
                return buf
        return np.empty(length, dtype)

    def _drop_unused(self) -> None:
        for key, bufs in list(self.kept.items()):
            keep = [b for b, refs in zip(bufs, _refcounts(bufs)) if refs > _UNUSED]
            self.bytes -= sum(b.nbytes for b in bufs) - sum(b.nbytes for b in keep)
            if keep:
                self.kept[key] = keep
            else:
                del self.kept[key]


#: The pool may keep this many bytes whatever the calls' sizes.
_POOL_MIN_BYTES = 64 << 20
_POOL = _HostPool()


class _Reducer:
    """The all-reduce of one call: its buckets, started one by one as their members become
    available (:meth:`ready`, during a backward) or all at the end (:meth:`finish`).

    ``op="mean"`` scales each member by ``1 / size`` as it is packed (exact for a power-of-two
    number of ranks, barring subnormal values; the sum cannot overflow where the mean does not),
    so the reduced buffer is the result and no pass over it follows."""

    __slots__ = ("world", "specs", "scale", "compression", "buckets", "where", "arrays",
                 "missing", "buffers", "started", "next", "taken", "overlap")

    def __init__(self, world: _World, plan: _Plan, op: str, compression: str | None) -> None:
        self.buckets, self.where, self.specs = plan.buckets, plan.where, plan.specs
        self.taken: dict[tuple[int, np.dtype], int] = {}  # pool buffers taken, by kind
        _POOL.expect(plan.host_bytes)
        self.world, self.compression = world, compression
        self.scale = 1.0 / world.size if op == "mean" else None
        self.arrays: list[Any] | None = None  # set by the first ready()
        self.missing: list[int] = []
        self.buffers: list[Any] = [None] * len(self.buckets)  # (send or None, recv, members)
        self.started: list[Any] = []  # MPI requests in flight
        # overlap mode: every bucket is reduced with the non-blocking call, also the ones no
        # gradient announced early, since MPI does not match a blocking collective on one rank
        # with a non-blocking one on another (ranks whose backward differ would hang)
        self.overlap = False
        # buckets start in plan order, the same on every rank (MPI matches collectives by
        # order): a bucket complete before an earlier one waits for it
        self.next = 0

    def ready(self, i: int, array: Array) -> None:
        """Member ``i``'s final value: start its bucket when it is the last one missing."""
        arrays = self.arrays
        if arrays is None:
            arrays = self.arrays = [None] * len(self.specs)
            self.missing = [len(b.members) for b in self.buckets]
        if arrays[i] is not None:
            return
        arrays[i] = array
        k = self.where.get(i)
        if k is None:
            return
        self.missing[k] -= 1
        if self.missing[k] == 0 and k == self.next:
            missing, count = self.missing, len(self.buckets)
            while self.next < count and missing[self.next] == 0:
                b = self.buckets[self.next]
                self._start(self.next, [arrays[i] for i in b.members], None, True)
                self.next += 1
        elif self.started:  # MPI progresses non-blocking collectives inside MPI calls only
            self.world.mpi.Request.Testall(self.started)

    def abandon(self, upto: int) -> None:
        """An abandoned call whose first ``upto`` buckets (plan order) some rank had started
        during its backward: start the ones this rank had not, on zeros (non-blocking, as
        there: MPI pairs collectives by order and kind), complete them all and drop the
        results, so every rank leaves the call with nothing in flight."""
        for k in range(self.next, upto):
            b = self.buckets[k]
            xp = b.backend.xp
            self._start(k, [xp.zeros(shape, b.dtype) for shape in b.shapes], None, True)
        self.next = max(self.next, upto)
        if self.started:
            self.world.mpi.Request.Waitall(self.started)
            self.started = []

    def finish(self, arrays: Sequence[Array | None], complete: bool = False) -> list[Array | None]:
        """Start every bucket not started yet (members whose array is None are left out: the
        ranks agreed they are None everywhere; ``complete``: the caller knows none is), wait
        for all, return the reduced arrays (views of the buckets' buffers where the dtype on
        the wire is the tensors')."""
        mine: Sequence[Array | None] = arrays  # as they are when ready() announced nothing
        known = self.arrays
        if known is not None:
            for i, a in enumerate(arrays):
                if known[i] is None:
                    known[i] = a
            mine = known
        for k in range(self.next, len(self.buckets)):  # in plan order, blocking: the rest
            b = self.buckets[k]
            srcs = list(mine[b.span]) if b.span is not None else [mine[i] for i in b.members]
            present = None
            if not complete and not all([a is not None for a in srcs]):
                present = [j for j, a in enumerate(srcs) if a is not None]
                srcs = [srcs[j] for j in present]
            if srcs:
                self._start(k, srcs, present, self.overlap)
        if self.started:
            self.world.mpi.Request.Waitall(self.started)
        out: list[Array | None] = [None] * len(self.specs)
        for k, b in enumerate(self.buckets):
            held = self.buffers[k]
            if held is None:
                continue
            _, buf, present = held
            members = b.members
            cast = buf.dtype != b.dtype
            if present is None and not cast:
                for j, count, n, shape, span in b.runs:
                    off = b.offsets[j]
                    if count == 1:
                        view = buf[off:off + n]
                        out[members[j]] = view if len(shape) == 1 else view.reshape(shape)
                        continue
                    # one reshape, then its rows: equal shapes side by side
                    views = list(buf[off:off + count * n].reshape((count, *shape)))
                    if span is not None:
                        out[span] = views
                    else:
                        for i, view in zip(members[j:j + count], views):
                            out[i] = view
                continue
            off = 0
            for j in range(len(members)) if present is None else present:
                i, n = members[j], b.sizes[j]
                a = buf[off:off + n]
                if cast:
                    a = a.astype(b.dtype)
                out[i] = a.reshape(b.shapes[j])
                off += n
        return out

    def _start(self, k: int, srcs: list[Array], present: list[int] | None, nonblocking: bool) -> None:
        """:meth:`_pack_and_reduce`, NumPy's floating-point errors all ignored: an overflow (a
        float16 cast or sum past 65504, a sum past the dtype's range) gives ``inf`` as
        documented and an underflow (a mean's ``1 / size`` scale, a float16 cast of a tiny
        value) 0 or a subnormal, where ``np.seterr(..., "raise")`` or a warnings filter that
        raises would end this rank's part of a collective the other ranks are in, and leave
        them waiting."""
        with np.errstate(all="ignore"):
            self._pack_and_reduce(k, srcs, present, nonblocking)

    def _pack_and_reduce(self, k: int, srcs: list[Array], present: list[int] | None,
                         nonblocking: bool) -> None:
        """Pack bucket ``k`` (its members' arrays ``srcs``; ``present``: their positions in it
        where some are missing, else None) and reduce it: start the reduction
        (``nonblocking``, during a backward), or run it (MPI's blocking ``Allreduce`` is faster
        than its non-blocking one when nothing is left to overlap)."""
        b = self.buckets[k]
        wire = b.dtype
        if not wire.isnative:  # ('>f4': MPI's types are the host's byte order; the result is
            # cast back to the tensors' dtype in finish)
            wire = wire.newbyteorder("=")
        if self.compression == "float16" and wire.kind == "f" and wire.itemsize > 2:
            wire = np.dtype(np.float16)
        total = b.total if present is None else sum(b.sizes[j] for j in present)
        scale: Any = self.scale
        if scale is not None:  # a NumPy scalar: cheaper per call than a Python float
            scale = (np.float64 if b.dtype.itemsize >= 8 else np.float32)(scale)
        send: Any = None
        shm = self.world.shm
        if shm is not None and (nonblocking or total == 0):
            shm = None
        direct = shm is not None and shm.fits(total, wire)
        if b.host:  # one reused buffer, reduced in place (or packed into shared memory, and
            # the sums copied into it)
            key = (total, wire)
            nth = self.taken[key] = self.taken.get(key, 0) + 1
            buf = _POOL.take(total, wire, nth)
            if shm is not None and wire == b.dtype and total * wire.itemsize > _WHOLE_BYTES:
                # a piece at a time, each copied from where the tensors are (packing the whole
                # bucket first would be one more pass over its bytes)
                self.buffers[k] = (None, buf, present)
                shm.reduce_pieces(srcs, buf, scale)
                return
            dst = shm.segment(total, wire) if shm is not None and direct else buf
            # (into shared memory, a copy then a scaling pass: a scaled copy per member into
            # the shared pages took twice as long on the 2-vCPU VM)
            if scale is not None and ((b.fused and not direct) or wire != b.dtype):
                # scaled as copied (float16 on the wire: scaled before the cast, no overflow)
                off = 0
                for a in srcs:
                    n = a.size
                    np.multiply(a, scale, out=dst[off:off + n].reshape(a.shape))
                    off += n
            else:
                if not (direct and shm is not None and wire == b.dtype and shm.pack(srcs)):
                    np.concatenate(srcs, axis=None, out=dst, casting="unsafe")
                if scale is not None:
                    np.multiply(dst, scale, out=dst)
            if shm is not None:
                self.buffers[k] = (None, buf, present)
                if direct:
                    shm.reduce(total, wire, buf)
                else:  # larger than a segment: through it a piece at a time
                    shm.reduce_pieces([buf], buf)
                return
        else:
            xp = b.backend.xp
            if b.solo and wire == b.dtype and scale is None:  # NCCL reads the array as it is
                send = xp.ascontiguousarray(srcs[0], dtype=b.dtype).reshape(-1)
                buf = xp.empty_like(send)
            else:
                buf = xp.empty(total, wire)
                off = 0
                for a in srcs:
                    n = a.size
                    view = buf[off:off + n].reshape(a.shape)
                    if scale is not None:
                        xp.multiply(a, scale, out=view)
                    else:
                        view[...] = a
                    off += n
        self.buffers[k] = (send, buf, present)
        if not b.host:
            _nccl(self.world).allreduce(send, buf, b.backend.xp)  # ordered on the CUDA stream
            return
        world = self.world
        mpi = world.mpi
        assert mpi is not None and world.comm is not None
        if wire == np.float16:
            dtype, op = mpi.UINT16_T, world.f16_sum()
        else:
            dtype, op = _mpi_type(mpi, wire), mpi.SUM
        if nonblocking:
            self.started.append(world.comm.Iallreduce(mpi.IN_PLACE, [buf, dtype], op))
        else:
            world.comm.Allreduce(mpi.IN_PLACE, [buf, dtype], op)


_MPI_TYPES = {"f": {4: "FLOAT", 8: "DOUBLE"}, "i": {1: "INT8_T", 2: "INT16_T", 4: "INT32_T", 8: "INT64_T"},
              "u": {1: "UINT8_T", 2: "UINT16_T", 4: "UINT32_T", 8: "UINT64_T"},
              "c": {8: "C_FLOAT_COMPLEX", 16: "C_DOUBLE_COMPLEX"}}


def _mpi_type(mpi: Any, dtype: np.dtype) -> Any:
    return getattr(mpi, _MPI_TYPES[dtype.kind][dtype.itemsize])


def _dtype_error(dt: np.dtype, op: str) -> str | None:
    """Why tensors of dtype ``dt`` cannot be reduced with ``op`` (None: they can)."""
    if not (dt.kind == "f" and dt.itemsize == 2) and dt.itemsize not in _MPI_TYPES.get(dt.kind, {}):
        return f"has dtype {dt}, which cannot be reduced (floating, integer or complex tensors can)"
    if op == "mean" and dt.kind not in "fc":
        return f"has dtype {dt}; op='mean' needs floating tensors (use op='sum' for integers)"
    return None


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
                      bucket_bytes: int | None = None, plan: _Plan | None = None,
                      agree: tuple | None = None) -> list[Array | None]:
    """The one path by which arrays are reduced across ranks: bucketed, each bucket one
    reduction over MPI or NCCL. ``None`` entries (agreed on by the ranks beforehand) stay
    None; the result arrays are new (views of the buckets' buffers, which are reused only once
    no result refers to them). ``plan``: the caller's plan for these arrays (else looked up
    from their shapes and dtypes). ``agree``: inside a ``gt.function`` trace, the caller's
    agreement check ``(who, signature, digest)``, made by the program step at each call (so a
    rank tracing the step and one replaying it make the same checks). In a single process
    without MPI the arrays come back as they are."""
    world = _world("allreduce()")
    if world.comm is None:
        return list(arrays)
    if tracing() and any(a is not None for a in arrays):  # inside gt.function: one step of
        # the program, run at each call
        present = [i for i, a in enumerate(arrays) if a is not None]
        def reduce(*arrs: Array) -> tuple:
            if agree is not None:  # (the world of this call: a later init(comm) replaces
                # and frees the one the step was traced in)
                _agree(_world(agree[0]), agree[0], agree[1], None, agree[2])
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
    if plan is None:
        kinds = set(map(type, arrays))
        if len(kinds) == 1 and kinds.pop() is np.ndarray:  # the common case
            plan = _array_plan(arrays, NUMPY.name, bucket_bytes or BUCKET_BYTES, False)
        else:
            specs = tuple([None if a is None else
                           (tuple(a.shape), a.dtype, NUMPY.name if isinstance(a, (np.ndarray, np.generic))
                            else "cupy") for a in arrays])
            plan = _cached_plan(specs, bucket_bytes or BUCKET_BYTES, False)
    return _Reducer(world, plan, op, compression).finish(arrays, complete=plan.full)


def _linked(inputs: list[Any], outputs: list[Any], op: str, compression: str | None,
            bucket_bytes: int | None) -> list[Any]:
    """``outputs`` (the reduced ``inputs``, None where an input is None) made differentiable
    for the tapes recording now (a gradient penalty on all-reduced gradients, a tape around
    :func:`allreduce`): one record linking the inputs to fresh outputs, whose VJP is the same
    all-reduce of the cotangents (Horovod's rule: the gradient of the ranks' summed objective;
    one process without MPI returns the inputs themselves, and the two agree at size 1). The
    backward then reduces across ranks too, so every rank must run it, as every rank runs the
    forward. Without a recording tape (the usual step) the outputs come back unchanged."""
    if not STATE.recording:
        return outputs
    at = [i for i, (x, y) in enumerate(zip(inputs, outputs)) if x is not None and y is not None]
    if not at:
        return outputs
    ys = [outputs[i] for i in at]

    @custom_gradient
    def allreduce_(*xs: Tensor) -> tuple[list[Tensor], Any]:
        def grad(*dys: Tensor) -> Any:
            out = _allreduce(list(dys), op, compression, bucket_bytes)
            return out[0] if len(out) == 1 else out
        return ys, grad

    linked = list(outputs)
    for i, y in zip(at, allreduce_(*[inputs[i] for i in at])):
        linked[i] = y
    return linked


def _check_op(op: str, compression: str | None, who: str) -> None:
    if op not in _OPS:
        raise ValueError(f"gt.distributed.{who}: op must be 'mean' or 'sum', got {op!r}")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"gt.distributed.{who}: compression must be None or 'float16', got "
                         f"{compression!r}")


def _check_bucket(bucket_bytes: int | None, who: str) -> int | None:
    """``bucket_bytes`` checked (None, or an integer >= 1: a NumPy integer too) and as an int."""
    if bucket_bytes is not None and (not isinstance(bucket_bytes, numbers.Integral) or isinstance(
            bucket_bytes, (bool, np.bool_)) or bucket_bytes < 1):
        raise ValueError(f"gt.distributed.{who}: bucket_bytes must be a positive int, got "
                         f"{bucket_bytes!r}")
    return None if bucket_bytes is None else int(bucket_bytes)


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
    return _allreduce(tensors, op, compression, bucket_bytes)


def _allreduce(tensors: Any, op: str, compression: str | None, bucket_bytes: int | None,
               failure: BaseException | None = None, who: str = "allreduce()") -> Any:
    """:func:`allreduce`; ``failure``: an error the caller found on this rank (raised here
    after the other ranks are told, so they raise too instead of waiting); ``who``: the call
    the messages name."""
    world = _world(who)
    leaves: list[Any] = []
    spec: Any = None
    bucket = BUCKET_BYTES
    try:  # (a bad argument on one rank is told to the others, which would wait or mis-sum)
        leaves, spec = flatten(tensors)  # (a dict whose keys do not sort raises)
        _check_op(op, compression, who)
        bucket_bytes = _check_bucket(bucket_bytes, who)
        bucket = bucket_bytes or BUCKET_BYTES
        plan, arrays, backend = _tensor_plan(leaves, op, who, bucket,
                                             len(leaves) > 1 or isinstance(tensors, (list, tuple, dict)))
    except Exception as exc:
        failure = failure or exc
    if world.comm is None:
        if failure is not None:
            raise failure
        # one process: the tensors as they are; a Variable as a Tensor of its value (as more
        # ranks give: the result never changes with the Variable)
        return unflatten(spec, [t.value() if isinstance(t, Variable) else t for t in leaves])
    kind = _kind("allreduce", op, compression, bucket)
    if failure is not None:
        _agree(world, who, (kind, tuple(_spec(t) if isinstance(t, Tensor) or t is None
                                        else repr(type(t)) for t in leaves)), failure)
        raise failure  # (_agree raised it already: for the type checker)
    # (the nest's structure too: two ranks' dicts with other keys must not be summed)
    check = (who, (kind, plan.specs, spec), _hash((plan.signed(kind), _shape_of(spec))))
    if tracing() and any(a is not None for a in arrays):  # checked by the program's step
        out = _allreduce_arrays(arrays, op, compression, bucket, plan, agree=check)
    else:
        _agree(world, *check[:2], None, check[2])
        out = _allreduce_arrays(arrays, op, compression, bucket, plan)
    results: list[Any]  # (Tensor or None)
    if backend is not None:  # no None, one backend
        results = [_wrap(a, backend) for a in out]
    else:
        results = [None if a is None else _wrap(a, t._backend) for a, t in zip(out, leaves)]
    return unflatten(spec, _linked(leaves, results, op, compression, bucket_bytes))


def _tensor_plan(leaves: list[Any], op: str, who: str, bucket_bytes: int, indexed: bool
                 ) -> tuple[_Plan, list[Array | None], Backend | None]:
    """The plan for ``leaves`` (Tensors or None), their arrays, and their backend where there
    are no None and one backend; checked: a TypeError naming the first entry that is not a
    Tensor or cannot be reduced with ``op`` (each type and dtype is checked once, not each
    tensor)."""
    kinds = set(map(type, leaves))
    if not all(k is type(None) or issubclass(k, Tensor) for k in kinds):
        i, t = next((i, t) for i, t in enumerate(leaves) if t is not None and not isinstance(t, Tensor))
        where = f"tensors[{i}]" if indexed else "tensors"
        raise TypeError(f"gt.distributed.{who}: {where} must be a gradtape Tensor or None, got "
                        f"{type(t).__name__}")
    backends = set(map(_BACKEND, leaves)) if type(None) not in kinds else set()
    backend = backends.pop() if len(backends) == 1 else None
    if backend is not None:
        arrays: list[Array | None] = list(map(_DATA, leaves))
        plan = _array_plan(arrays, backend.name, bucket_bytes, False)
    else:
        plan = _cached_plan(tuple([_spec(t) for t in leaves]), bucket_bytes, False)
        arrays = [None if t is None else t.data for t in leaves]
    bad = {dt for dt in plan.dtypes if _dtype_error(dt, op)}
    if bad:
        i, dt = next((i, s[1]) for i, s in enumerate(plan.specs) if s is not None and s[1] in bad)
        where = f"tensors[{i}]" if indexed else "tensors"
        raise TypeError(f"gt.distributed.{who}: {where} {_dtype_error(dt, op)}")
    return plan, arrays, backend


# --------------------------------------------------------------------------- broadcast
def broadcast_variables(variables: Any, root: int = 0, optimizer: Optimizer | None = None) -> None:
    """Overwrite every rank's Variables with rank ``root``'s values (call it after building
    the model, or after rank ``root`` restored a checkpoint), so all ranks start equal.

    Args:
        variables: a Variable, a Module (its ``variables``), or a nested list/tuple/dict of
            them (``[generator, discriminator]``); the same structure, shapes and dtypes on
            every rank.
        root: the rank whose values everyone takes.
        optimizer: also send ``root``'s state of this optimizer for these variables (step
            count, moments, hyper-parameters); the other ranks load it
            (``Optimizer.load_state_dict``). A learning-rate schedule is code and is not
            sent: each rank keeps its own (give every rank the same one).

    Raises:
        DistributedError: the ranks pass different variables (count, shapes, dtypes).
        TracingError: called inside a ``gt.function`` step, on every rank before any
            collective (a broadcast recorded there would run at the traces only; the root's
            optimizer state cannot be read while tracing): call it before the training loop.

    Example:
        >>> import gradtape as gt
        >>> gt.distributed.init()
        >>> w = gt.Variable([1.0, 2.0])
        >>> gt.distributed.broadcast_variables([w], root=0)
        >>> w.numpy()
        array([1., 2.], dtype=float32)
    """
    who = "broadcast_variables()"
    # (every rank traces its step alike, so every rank refuses here, before any collective;
    # with fallback="eager" the step runs eagerly and the broadcast runs at each call)
    refuse_in_trace(f"gt.distributed.{who}", "a broadcast recorded in the program would run at "
                    "the traces only, not at later calls, and only the root reads its optimizer's "
                    "state")
    world = _world(who)
    failure: BaseException | None = None  # (told to the other ranks, which would wait)
    if isinstance(root, np.integer):
        root = int(root)
    if not isinstance(root, int) or isinstance(root, bool) or not 0 <= root < world.size:
        failure = ValueError(f"gt.distributed.{who}: root must be a rank in [0, {world.size}), "
                             f"got {root!r}")
    elif optimizer is not None and not isinstance(optimizer, Optimizer):
        failure = TypeError(f"gt.distributed.{who}: optimizer must be a gradtape optimizer or "
                            f"None, got {type(optimizer).__name__}")
    # a Module stands for its variables, alone or in a nest ([generator, discriminator])
    given, spec = flatten(variables)
    leaves: list[Any] = []
    for k, v in enumerate(given):
        module = hasattr(v, "variables") and not isinstance(v, Tensor)
        if failure is None and not module and not isinstance(v, Variable):
            failure = TypeError(f"gt.distributed.{who}: variables{leaf_paths(spec)[k]} must be a "
                                f"gt.Variable or a Module, got {type(v).__name__}")
        leaves.extend(v.variables if module else (v,))
    if world.comm is None:
        if failure is not None:
            raise failure
        return
    # the optimizer's class and slots too: other ranks load root's state into theirs
    opt = None if optimizer is None else (type(optimizer).__name__,
                                          tuple(getattr(optimizer, "slot_names", ())))
    signature = (f"broadcast_variables(root={root!r}, optimizer={opt})",
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
    become final). Where the job reduces through shared memory (every rank on one machine, see
    :func:`shared_memory`) every bucket is reduced after the backward instead: that reduction
    is memory traffic done by the ranks' own cores, and MPI's non-blocking one progresses only
    inside MPI calls, so there is nothing to overlap (on 2 ranks of the 2-vCPU VM overlap gained
    nothing reliable: the 784-512-512-10 step took 6.3-7.0 ms over MPI with overlap, 6.0-6.5
    without, 5.9-6.7 through shared memory after the backward). Everything else (``watch``,
    ``jacobian``, ...) is the wrapped tape's.

    Args:
        tape: the GradientTape that recorded the step (wrap it after its ``with`` block, or use
            ``with DistributedGradientTape(gt.GradientTape()) as tape:``; then an exception
            inside the block on one rank makes every rank raise instead of waiting).
        op: ``"mean"`` (default) or ``"sum"`` across ranks.
        compression: None or ``"float16"`` (see :func:`allreduce`).
        bucket_bytes: bucket size in bytes (default :data:`BUCKET_BYTES`).
        overlap: start reductions during the backward (False: all after it; also what a job
            reducing through shared memory does).

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
        # a setting refused on one rank of several is raised by gradient(), where the other
        # ranks learn of it and raise too (raised here, the others would wait in gradient())
        self._invalid: Exception | None = None
        try:
            _check_op(op, compression, who)
            bucket_bytes = _check_bucket(bucket_bytes, who)
        except ValueError as exc:
            if _WORLD is None or _WORLD.size < 2:
                raise
            self._invalid = exc
            op, compression, bucket_bytes = "mean", None, None
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
        # (an exception a check already raised, on every rank: telling the others again would
        # be one check more than they make)
        # (any BaseException: a KeyboardInterrupt or a custom BaseException the rank catches
        # would leave the others waiting in gradient() as surely as an Exception)
        if exc is not None and _WORLD is not None \
                and _WORLD.comm is not None and not _was_announced(_WORLD, exc):
            try:
                _agree(_WORLD, "DistributedGradientTape.gradient()", None, exc)
            except BaseException as again:  # _agree re-raises exc: it goes on as it is
                if again is not exc:
                    raise
            # the re-raise added this frame and _agree's to its traceback; this frame holds
            # exc, a cycle that would keep the step's tape and its arrays alive until a
            # garbage collection
            exc.__traceback__ = tb

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
        traced = tracing()
        # (overlap too: a rank reducing during its backward, with MPI's non-blocking call,
        # and one reducing after it, with the blocking one, would never match; a compiled
        # step always reduces after its backward, and so does a job on one machine, whose
        # reductions through shared memory are work for the same cores, which nothing would
        # progress beside the backward: the ranks agree on shared memory at init)
        overlapping = self._overlap and not traced and world.shm is None
        kind = _kind("gradient with overlap" if overlapping else "gradient",
                     self._op, self._compression, self._bucket_bytes)
        if failure is None:
            failure = self._invalid
        if failure is not None:
            _agree(world, who, (kind, tuple([_spec(s) if isinstance(s, Tensor) else None
                                             for s in leaves])), failure)
            raise failure
        backends = {s._backend for s in leaves}
        if len(backends) == 1:
            plan = _array_plan([s.data for s in leaves], backends.pop().name, self._bucket_bytes, True)
        else:
            plan = _cached_plan(tuple([_spec(s) for s in leaves]), self._bucket_bytes, True)
        # Reducing during the backward, the ranks agree before it (a bucket starts as soon as
        # its gradients are final). Reducing after it (a compiled step, shared memory,
        # overlap=False), they agree once, after it, on the sources and the None gradients
        # together: the same calls eagerly as in a compiled step (in a gt.function trace the
        # program's step checks, at each call), so a rank that runs the step eagerly (its
        # gt.function fell back) pairs with ranks that replay it.
        red: _Reducer | None = None
        hook = None
        if overlapping:
            _agree(world, who, (kind, plan.specs), None, plan.signed(kind))
            red = _Reducer(world, plan, self._op, self._compression)
            red.overlap = True
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
        nones = tuple(g is None for g in flat)
        if not overlapping:  # one check at each call: these sources, these None gradients (a
            # rank that traces, one that replays and one that runs eagerly make the same checks)
            check = (who, (kind, plan.specs, nones), _hash((plan.signed(kind), nones)))
            if failure is None and not all(nones):
                arrays = [None if g is None else g.data for g in flat]
                if not traced:  # (traced, the program's reduction step checks first)
                    _agree(world, *check[:2], None, check[2])
                return self._linked(spec, leaves, flat, _allreduce_arrays(
                    arrays, self._op, self._compression, self._bucket_bytes, agree=check))
            _agree(world, *check[:2], failure, check[2])  # now: a failure, or nothing to reduce
            if failure is not None:
                raise failure
            return unflatten(spec, [None] * len(leaves))
        assert red is not None  # (overlapping)
        try:
            _agree(world, who, ("gradients (True: None)", nones), failure, started=red.next)
        except Exception:  # (every rank raises: a DistributedError, or its own error)
            red.abandon(world.started_max)  # the reductions any rank started, on every rank
            raise
        if failure is not None:
            raise failure
        return self._linked(spec, leaves, flat,
                            red.finish([None if g is None else g.data for g in flat]))

    def _linked(self, spec: Any, leaves: list[Any], grads: list[Any], out: list[Array | None]) -> Any:
        """The reduced arrays as Tensors of their sources' dtypes and backends, in ``spec``'s
        structure (None stays None), differentiable where a tape records the gradients
        (:func:`_linked`)."""
        results = [None if a is None else _wrap(a if a.dtype == s.dtype else a.astype(s.dtype),
                                                s._backend)
                   for a, s in zip(out, leaves)]
        return unflatten(spec, _linked(grads, results, self._op, self._compression,
                                       self._bucket_bytes))


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

    # this wrapper's own settings: a slot, not the shared __dict__ (two wrappers of one
    # optimizer keep their own op)
    __slots__ = ("_distributed", "_reduced")
    _distributed: tuple[str, str | None, int | None]
    _reduced: bool  # minimize reached the reduction (which tells the other ranks itself)

    def __new__(cls, optimizer: Optimizer, op: str = "mean", compression: str | None = None,
                bucket_bytes: int | None = None) -> DistributedOptimizer:
        who = "DistributedOptimizer()"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"gt.distributed.{who}: optimizer must be a gradtape optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError(f"gt.distributed.{who}: the optimizer is already distributed")
        _check_op(op, compression, who)
        bucket_bytes = _check_bucket(bucket_bytes, who)
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

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Copy and pickle as the wrapped optimizer (its class, sharing this state) wrapped
        again with these settings."""
        base = next(c for c in type(self).__mro__
                    if issubclass(c, Optimizer) and not issubclass(c, DistributedOptimizer))
        plain = object.__new__(base)
        plain.__dict__ = self.__dict__
        return (DistributedOptimizer, (plain, *self._distributed))

    def minimize(self, loss_fn: Callable[[], Tensor],
                 var_list: Sequence[Variable] | Callable[[], Sequence[Variable]]) -> Tensor:
        """The wrapped optimizer's ``minimize`` (its class's own, when it overrides it) with the
        gradients averaged over all ranks. An exception on one rank before the reduction (in
        ``loss_fn``, the gradient, the checks) is told to the others, which raise
        :class:`DistributedError` naming it instead of pairing this step's reduction with the
        failed rank's next one."""
        self._reduced = False  # set by _apply, which reduces (and tells a failure) itself
        try:
            return super().minimize(loss_fn, var_list)
        except Exception as exc:
            world = _WORLD
            if not self._reduced and world is not None and world.comm is not None \
                    and not _was_announced(world, exc):
                op, compression, bucket_bytes = self._distributed
                tb = exc.__traceback__
                try:  # the others are in this step's reduction: they learn of it there
                    _allreduce([], op, compression, bucket_bytes, exc,
                               f"{type(self).__name__}.minimize()")
                except Exception:  # noqa: S110 - _allreduce re-raises exc: it goes on as it is
                    pass
                exc.__traceback__ = tb  # (without the frames of the re-raise)
            raise

    def _apply(self, grads_and_vars: Iterable[tuple[Tensor | Array | None, Variable]], what: str,
               stacklevel: int = 3) -> None:
        self._reduced = True
        op, compression, bucket_bytes = self._distributed
        failure: Exception | None = None
        pairs: list[tuple[Any, Any]] = []
        try:  # the update's own checks, before the reduction: a pair refused on one rank
            # is told to the others (which would otherwise update with gradients reduced
            # without it, or pair this reduction with the refusing rank's next one)
            given: Any = grads_and_vars
            if given is not None and hasattr(given, "__iter__") and not isinstance(
                    given, (str, bytes, Tensor)):
                given = list(given)  # (anything else: the checks name what came)
            self._check_pairs(given, f"{type(self).__name__}.{what}")
            pairs = [(g, v) for g, v in given]
        except Exception as exc:
            failure = exc
        grads = [g if g is None or isinstance(g, Tensor) else _wrap(g, backend_of(g))
                 for g, _ in pairs]
        reduced = _allreduce(grads, op, compression, bucket_bytes, failure,
                             f"{type(self).__name__}.{what}()")
        super()._apply(zip(reduced, [v for _, v in pairs]), what, stacklevel + 1)


_SUBCLASSES: dict[type, type] = {}
