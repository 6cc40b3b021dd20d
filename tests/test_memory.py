"""What a tape keeps alive: only ops touching watched tensors are recorded, each record keeps
only what its VJP reads, a non-persistent tape frees as its backward pass goes, and a dropped
or reset tape frees everything by reference counting alone (no cycles: checked with the
garbage collector disabled)."""

from __future__ import annotations

import gc
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
    assert tape._records == []
    assert tape.saved_bytes() == 0
    assert tape.gradient(z, a) is None


def test_tanh_saves_only_its_output():
    x = vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.tanh(x)
    rec, = tape._records
    assert rec.inputs == (None,) and rec.output is y
    assert tape.saved_bytes() == y.data.nbytes == N * 8


def test_add_saves_nothing():
    x, c = vec(), vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        x + c
        x + 1.0
    assert len(tape._records) == 2
    assert tape.saved_bytes() == 0


def test_mul_saves_only_the_other_operand():
    x, c = vec(), vec()
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * c   # d/dx needs c only
    rec, = tape._records
    assert rec.inputs[0] is None and rec.inputs[1] is c and rec.output is None
    assert tape.saved_bytes() == c.data.nbytes
    del y


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
    assert tape._records == [] and tape.saved_bytes() == 0
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


def _record_refs(tape, keep=()):
    """Weak references to what the records keep: saved arrays (but the user's own ``keep``
    tensors), custom-gradient closures."""
    kept = {id(t.data) for t in keep}
    refs = [weakref.ref(arr) for r in tape._records for arr in r.saved_arrays() if id(arr) not in kept]
    refs += [weakref.ref(r.prim) for r in tape._records if r.prim.name == "sq"]
    assert refs
    return refs


def _build(tape, x):
    @gt.custom_gradient
    def sq(v):
        def grad(dy):
            return dy * 2.0 * v

        return v * v, grad

    with tape:
        tape.watch(x)
        a = gt.tanh(x)
        b = sq(a)
        loss = gt.sum(gt.sin(b) * a)
    return a, b, loss


def test_dropped_persistent_tape_frees_everything_without_gc(fusion):
    x = vec()
    with gc_disabled():
        tape = gt.GradientTape(persistent=True)
        a, b, loss = _build(tape, x)
        tape.gradient(loss, x)
        tape.gradient(loss, [x, a])
        refs = [weakref.ref(tape), weakref.ref(a.data), weakref.ref(b.data), weakref.ref(a),
                *_record_refs(tape, keep=[x])]
        del a, b, loss
        assert all(r() is not None for r in refs)
        del tape
        alive = [i for i, r in enumerate(refs) if r() is not None]
        assert alive == []


def test_dropped_persistent_tape_with_recorded_backward_frees_without_gc():
    x = gt.tensor(np.full(4, 0.5))
    with gc_disabled():
        tape = gt.GradientTape(persistent=True)
        with tape:
            tape.watch(x)
            y = gt.sum(gt.tanh(x) * x)
            g = tape.gradient(y, x)   # recorded: the backward's ops are on the tape too
        tape.gradient(g, x)
        refs = [weakref.ref(tape), weakref.ref(g), *_record_refs(tape, keep=[x])]
        del tape, y, g
        assert [i for i, r in enumerate(refs) if r() is not None] == []


def test_reset_frees_records_without_gc():
    x = vec()
    with gc_disabled():
        with gt.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a = gt.tanh(x)
            b = gt.sin(a)
            refs = [weakref.ref(a.data), *_record_refs(tape, keep=[x])]
            del a, b
            assert all(r() is not None for r in refs)
            tape.reset()
            assert tape._records == [] and tape.saved_bytes() == 0
            assert [i for i, r in enumerate(refs) if r() is not None] == []


def test_non_persistent_tape_frees_without_gc():
    x = vec()
    with gc_disabled():
        tape = gt.GradientTape()
        a, b, loss = _build(tape, x)
        refs = [weakref.ref(a.data), weakref.ref(b.data), *_record_refs(tape, keep=[x])]
        del a, b
        tape.gradient(loss, x)
        assert [i for i, r in enumerate(refs) if r() is not None] == []
        ref_tape = weakref.ref(tape)
        del tape
        assert ref_tape() is None
