"""What a tape keeps alive: only ops touching watched tensors are recorded, each record keeps
only what its VJP reads, a non-persistent tape frees as its backward pass goes, and a dropped
or reset tape frees everything by reference counting alone (no cycles: checked with the
garbage collector disabled). Checked through the public API: ``tape.recorded_ops()``,
``tape.saved_bytes()``, weak references to the arrays, and ``tracemalloc`` (which traces
NumPy's buffers) where the kept arrays are the backward pass's own intermediates."""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from contextlib import contextmanager

import numpy as np
import pytest

import gradtape as gt

N = 1000


def vec(value: float = 0.5) -> gt.Tensor:
    return gt.tensor(np.full(N, value))  # float64: N * 8 bytes


@contextmanager
def gc_disabled():
    """Prove freeing happens by reference counting: no collector runs inside."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextmanager
def traced_bytes():
    """``held()`` gives the bytes allocated inside the block and still alive (NumPy buffers
    included: NumPy reports them to tracemalloc)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(params=[True, False], ids=["fusion", "nofusion"])
def fusion(request):
    old = gt.config.fusion
    gt.config.fusion = request.param
    yield request.param
    gt.config.fusion = old


def test_ops_on_unwatched_tensors_are_not_recorded():
    a, b = vec(), vec()
    with gt.GradientTape() as tape:
        y = gt.tanh(a) * b + gt.exp(b)
        z = gt.sum(y)
    assert tape.recorded_ops() == ()
    assert tape.saved_bytes() == 0
    assert tape.gradient(z, a) is None


def test_tanh_saves_only_its_output():
    x = vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.tanh(x)
    assert tape.recorded_ops() == ("tanh",)
    assert tape.saved_bytes() == y.data.nbytes == N * 8
    # the one saved array is the output: it outlives the user's y, the input does not
    refs = {"x": weakref.ref(x.data), "y": weakref.ref(y.data)}
    del x, y
    assert [name for name, r in refs.items() if r() is not None] == ["y"]


def test_add_saves_nothing():
    x, c = vec(), vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        x + c
        x + 1.0
    assert tape.recorded_ops() == ("add", "add")
    assert tape.saved_bytes() == 0


def test_mul_saves_only_the_other_operand():
    x, c = vec(), vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * c   # d/dx needs c only
    assert tape.recorded_ops() == ("mul",)
    assert tape.saved_bytes() == c.data.nbytes
    # the one saved array is c: neither x nor the output outlives the user's references
    refs = {"x": weakref.ref(x.data), "c": weakref.ref(c.data), "y": weakref.ref(y.data)}
    del x, c, y
    assert [name for name, r in refs.items() if r() is not None] == ["c"]


def test_saved_arrays_counted_once():
    x = vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.sin(x)      # saves x
        z = gt.cos(x)      # saves x again: the same array
    assert tape.saved_bytes() == N * 8
    del y, z


def test_sum_saves_no_array():
    x = vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        gt.sum(x)
    assert tape.saved_bytes() == 0


def test_non_persistent_tape_releases_during_backward(fusion):
    """A record's saved arrays are dropped once its VJP has run: by the time the VJP of the
    first op runs (last in the reverse pass), the later intermediates are already freed."""
    seen = {}
    refs = {}

    @gt.custom_gradient
    def probe(x):
        def grad(dy):
            seen["alive_during_backward"] = [name for name, r in refs.items() if r() is not None]
            return dy

        return x * 1.0, grad

    x = vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        h = probe(x)
        a = gt.tanh(h)       # record keeps a (its output)
        b = gt.sin(a)        # record keeps a (its input)
        c = gt.exp(b)        # record keeps c (its output)
        loss = gt.sum(c)
    refs["a"] = weakref.ref(a.data)
    refs["c"] = weakref.ref(c.data)
    assert tape.saved_bytes() == 2 * N * 8
    del h, a, b, c
    assert all(r() is not None for r in refs.values())  # the tape keeps them alive
    g = tape.gradient(loss, x)
    assert seen["alive_during_backward"] == []
    assert all(r() is None for r in refs.values())
    assert tape.recorded_ops() == () and tape.saved_bytes() == 0
    s = np.sin(np.tanh(0.5))
    np.testing.assert_allclose(g.numpy(), np.exp(s) * np.cos(np.tanh(0.5)) * (1 - np.tanh(0.5) ** 2))


def test_persistent_tape_keeps_records_after_gradient():
    x = vec()
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = gt.sum(gt.tanh(x))
    before = tape.saved_bytes()
    tape.gradient(y, x)
    assert before == N * 8 and tape.saved_bytes() == before


def _saved_refs(tape, saved):
    """Weak references to the arrays of ``saved``, the tensors whose arrays the tape's records
    keep: checked to be all of them against ``tape.saved_bytes()``."""
    arrays = list({id(t.data): t.data for t in saved}.values())
    assert arrays and tape.saved_bytes() == sum(a.nbytes for a in arrays)
    return [weakref.ref(a) for a in arrays]


def _build(tape, x):
    """Record ``sum(sin(sq(tanh(x))) * tanh(x))`` on ``tape`` (``sq`` has a custom gradient).
    Returns the tensors whose arrays the records keep (tanh's output, sin's input, mul's
    operands: ``a, b, s``), the loss, and a weak reference to ``sq``'s gradient closure."""
    closures = []

    @gt.custom_gradient
    def sq(v):
        def grad(dy):
            return dy * 2.0 * v

        closures.append(weakref.ref(grad))
        return v * v, grad

    with tape:
        tape.watch(x)
        a = gt.tanh(x)
        b = sq(a)
        s = gt.sin(b)
        loss = gt.sum(s * a)
    assert tape.recorded_ops() == ("tanh", "sq", "sin", "mul", "sum")
    return (a, b, s), loss, closures[0]


def test_dropped_persistent_tape_frees_everything_without_gc(fusion):
    x = vec()
    with gc_disabled():
        tape = gt.GradientTape(persistent=True)
        (a, b, s), loss, grad_ref = _build(tape, x)
        tape.gradient(loss, x)
        tape.gradient(loss, [x, a])
        refs = [weakref.ref(tape), weakref.ref(a), grad_ref, *_saved_refs(tape, [a, b, s])]
        del a, b, s, loss
        assert all(r() is not None for r in refs)
        del tape
        alive = [i for i, r in enumerate(refs) if r() is not None]
        assert alive == []


def test_dropped_persistent_tape_with_recorded_backward_frees_without_gc():
    """The records of the recorded backward keep its own intermediates, which the user never
    sees: that they are freed is measured with tracemalloc."""
    x = gt.tensor(np.full(1 << 14, 0.5))
    nbytes = x.data.nbytes

    def run(tape):
        with tape:
            tape.watch(x)
            y = gt.sum(gt.tanh(x) * x)
            g = tape.gradient(y, x)   # recorded: the backward's ops are on the tape too
        tape.gradient(g, x)
        return y, g

    run(gt.GradientTape(persistent=True))  # warm up: caches filled before measuring
    with gc_disabled(), traced_bytes() as held:
        tape = gt.GradientTape(persistent=True)
        y, g = run(tape)
        ops = tape.recorded_ops()
        assert ops[:3] == ("tanh", "mul", "sum") and len(ops) > 3  # the backward's ops too
        saved = tape.saved_bytes()
        assert saved >= 3 * nbytes and held() >= saved - nbytes  # all but x allocated here
        refs = [weakref.ref(tape), weakref.ref(g)]
        del tape, y, g
        assert [i for i, r in enumerate(refs) if r() is not None] == []
        assert held() < nbytes // 2  # not one of the saved arrays is left


def test_reset_frees_records_without_gc():
    x = vec()
    with gc_disabled():
        with gt.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a = gt.tanh(x)
            b = gt.sin(a)
            assert tape.recorded_ops() == ("tanh", "sin")
            refs = _saved_refs(tape, [a])  # tanh's output is sin's input
            del a, b
            assert all(r() is not None for r in refs)
            tape.reset()
            assert tape.recorded_ops() == () and tape.saved_bytes() == 0
            assert [i for i, r in enumerate(refs) if r() is not None] == []


def test_non_persistent_tape_frees_without_gc():
    x = vec()
    with gc_disabled():
        tape = gt.GradientTape()
        (a, b, s), loss, grad_ref = _build(tape, x)
        refs = [grad_ref, *_saved_refs(tape, [a, b, s])]
        del a, b, s
        assert all(r() is not None for r in refs)  # the tape keeps them until its backward
        tape.gradient(loss, x)
        assert [i for i, r in enumerate(refs) if r() is not None] == []
        ref_tape = weakref.ref(tape)
        del tape
        assert ref_tape() is None


def test_a_compiled_steps_traces_free_their_arrays_when_done():
    # every array a step makes stays alive while it is traced; the first trace (kept to
    # compare with the second) held them until a full garbage collection, so the second call
    # peaked at twice the first and the memory outlived the calls
    rng = np.random.default_rng(0)
    m = gt.nn.Sequential([gt.nn.Dense(32, 256, activation="gelu", seed=0), gt.nn.Dense(256, 10, seed=1)])
    opt = gt.optimizers.SGD(0.1)
    x = gt.tensor(rng.standard_normal((64, 32)).astype(np.float32))
    y = gt.tensor(rng.integers(0, 10, 64))

    @gt.function
    def step(x, y):
        with gt.GradientTape() as t:
            loss = gt.nn.cross_entropy(m(x), y)
        opt.apply_gradients(zip(t.gradient(loss, m.trainable_variables), m.trainable_variables))
        return loss

    def array_bytes():  # the arrays alone (NumPy's tracemalloc domain): the garbage cycles
        # Python's own calls leave (inspect's, while tracing) wait for the collector
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
        return sum(stat.size for stat in snap.statistics("filename"))

    enabled = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    try:
        base = array_bytes()
        peaks, after = [], []
        for _ in range(3):
            tracemalloc.reset_peak()
            step(x, y)
            peaks.append(tracemalloc.get_traced_memory()[1])
            after.append(array_bytes() - base)
    finally:
        tracemalloc.stop()
        if enabled:
            gc.enable()
    assert step.trace_count == 2
    assert peaks[1] < 1.5 * peaks[0], peaks
    assert max(after) < 0.25 * peaks[0], (after, peaks)


def test_a_compiled_steps_temporaries_are_freed_as_eagerly():
    # a trace kept every array the step made until it ended, and the replayed program kept
    # each of its variables until it returned: a chain of 40 products peaked at 40 of its
    # arrays in both, where the eager step holds two or three at a time
    if gt.backend_name() != "numpy":
        pytest.skip("host arrays only: a trace keeps the device arrays it makes (its cut into "
                    "CUDA graphs inspects them)")
    rng = np.random.default_rng(0)
    m = gt.tensor((rng.standard_normal((256, 256)) / 16).astype(np.float32))
    x = gt.tensor(rng.standard_normal((256, 256)).astype(np.float32))
    one = x.numpy().nbytes

    def chain(x):
        for _ in range(40):
            x = gt.tanh(x @ m)
        return gt.sum(x)

    f = gt.function(chain)
    peaks = []
    with gc_disabled():
        tracemalloc.start()
        try:
            for call in (chain, f, f, f, f):  # eager, two traces, two replays
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                out = call(x)
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
                np.testing.assert_allclose(out.numpy(), chain(x).numpy(), rtol=1e-5)
        finally:
            tracemalloc.stop()
    assert f.trace_count == 2
    assert peaks[0] < 4 * one, peaks
    assert max(peaks[1:]) < 6 * one, [p / one for p in peaks]


def test_a_fused_runs_intermediates_share_scratch_buffers():
    # a fused elementwise run gave each of its intermediates a block-sized scratch buffer per
    # thread: 120 steps on 327680 float32 peaked at 48 times the array when split over two
    # threads, where the eager step holds 3 arrays at a time
    if gt.backend_name() != "numpy":
        pytest.skip("the blocked NumPy programs of host arrays")
    x = gt.tensor(np.random.default_rng(0).standard_normal((1024, 320)).astype(np.float32))
    one = x.numpy().nbytes

    def chain(x):
        y = x
        for _ in range(40):
            y = gt.tanh(y * 1.01 + 0.01)
        return y

    f = gt.function(chain)
    for _ in range(3):
        f(x)  # two traces, a replay
    assert "fused_120" in f.program_source(x)
    with gc_disabled():
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = f(x)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(out.numpy(), chain(x).numpy())
    assert peak < 3 * one, peak / one


def test_a_fused_backward_sums_a_shared_inputs_gradient_as_it_goes(peak_bytes, monkeypatch):
    # a weight read at every step of a fused run (``tanh(y + w)`` 40 times) gets 40
    # contributions; the run's program kept each in a scratch buffer of its own until one sum
    # at the end (41 arrays alive), where adding each as it comes needs three
    if gt.backend_name() != "numpy":
        pytest.skip("the NumPy programs of host arrays")
    rng = np.random.default_rng(1)
    n = 1 << 16  # one block: the program's scratch buffers are whole arrays
    x = gt.tensor(rng.standard_normal(n).astype(np.float32))
    w = gt.Variable(rng.standard_normal(n).astype(np.float32) * 0.1)

    def grads(fusion):
        monkeypatch.setattr(gt.config, "fusion", fusion)
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = x
            for _ in range(40):
                t = gt.tanh(y + w)
                y = t + gt.exp(t) * 0.05
            loss = gt.sum(y)
        out: list = []
        used = peak_bytes(lambda: out.extend(tape.gradient(loss, [x, w])))
        return used, [g.numpy() for g in out]

    fused_peak, fused = grads(True)
    _, plain = grads(False)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    one = n * 4
    assert fused_peak < 10 * one, fused_peak / one  # (43 before, 5.7 after)
