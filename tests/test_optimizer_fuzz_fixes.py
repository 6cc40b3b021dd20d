"""Found by fuzzing the optimizers against torch.optim: float16 clipping scaled by a scale
rounded to float16, integer global norms that wrapped, copies of Fortran-ordered Variables,
hyper-parameters of other optimizers set as inert attributes, bool and masked gradients,
and array-like checkpoint entries."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import gradtape as gt


@pytest.mark.parametrize("clip", [0.01, 0.001])
def test_float16_gradients_are_clipped_with_a_float32_scale(clip):
    g = gt.tensor(np.full(10_000, 1000.0, np.float16))  # norm 1e5
    (clipped,), norm = gt.optimizers.clip_by_global_norm([g], clip)
    expected = np.float16(1000.0 * clip / 1e5)
    assert clipped.dtype == np.float16 and norm == pytest.approx(1e5, rel=1e-3)
    np.testing.assert_array_equal(clipped.numpy(), np.full(10_000, expected, np.float16))
    w = gt.Variable(np.zeros(10_000, np.float16))
    gt.optimizers.SGD(1.0, global_clipnorm=clip).apply_gradients([(g, w)])
    np.testing.assert_array_equal(w.numpy(), -np.full(10_000, expected, np.float16))


def test_float16_clipping_in_a_compiled_step_equals_eager():
    g0 = np.full(1000, 1000.0, np.float16)

    def step(g):
        (c,), _ = gt.optimizers.clip_by_global_norm([g], 0.001)
        return c

    f = gt.function(step)
    for _ in range(3):
        np.testing.assert_array_equal(f(gt.tensor(g0)).numpy(), step(gt.tensor(g0)).numpy())
    assert (f(gt.tensor(g0)).numpy() > 0).all()


@pytest.mark.parametrize("values, dtype", [([16], np.int8), ([16, 3], np.uint8), ([100000], np.int32),
                                           ([3_100_000_000], np.int64)])
def test_the_global_norm_of_integer_gradients_does_not_wrap(values, dtype):
    a = np.array(values, dtype)
    expected = float(np.sqrt((a.astype(np.float64) ** 2).sum()))
    assert gt.optimizers.global_norm([a]) == pytest.approx(expected, rel=1e-12)
    assert gt.optimizers.global_norm([gt.tensor(a)]) == pytest.approx(expected, rel=1e-12)


def test_copies_of_a_fortran_ordered_variable_keep_its_layout():
    v = gt.Variable(np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    for c in (copy.copy(v), copy.deepcopy(v)):
        assert c.data.flags.f_contiguous == v.data.flags.f_contiguous
        assert np.array_equal(c.numpy(), v.numpy())
    t = gt.tensor(np.asfortranarray(np.ones((3, 4))))
    assert copy.deepcopy(t).data.flags.f_contiguous == t.data.flags.f_contiguous


@pytest.mark.parametrize("make, name", [
    (lambda: gt.optimizers.Adam(0.1), "amsgrad"), (lambda: gt.optimizers.Adam(0.1), "momentum"),
    (lambda: gt.optimizers.SGD(0.1, momentum=0.9), "dampening"),
    (lambda: gt.optimizers.SGD(0.1), "clipvalue"), (lambda: gt.optimizers.SGD(0.1), "beta1"),
])
def test_a_hyper_parameter_the_optimizer_lacks_cannot_be_set(make, name):
    opt = make()
    with pytest.raises(AttributeError, match=rf"{type(opt).__name__}: {name!r} is not one of its "
                                             r"hyper-parameters \(they are .*\); setting it would "
                                             r"change nothing"):
        setattr(opt, name, 0.5)
    opt.my_note = "kept"  # (other attributes are the user's)
    assert opt.my_note == "kept"


def test_bool_and_masked_gradients_are_refused():
    with gt.use_backend("numpy"):
        w = gt.Variable(np.zeros(3), name="w")
        with pytest.raises(TypeError, match=r"gradient for variable w has dtype bool"):
            gt.optimizers.SGD(1.0).apply_gradients([(np.array([True, False, True]), w)])
        masked = np.ma.masked_array([1.0, 1000.0, 1.0], mask=[False, True, False])
        with pytest.raises(TypeError, match=r"is a masked array, whose mask the update would ignore"):
            gt.optimizers.SGD(1.0).apply_gradients([(masked, w)])
    np.testing.assert_array_equal(w.numpy(), np.zeros(3))


def test_a_state_entry_that_is_array_like_is_read_through_numpy():
    class Like:  # (a PyTorch tensor has a dtype and a shape NumPy does not know)
        dtype = "torch.float64"
        shape = (3,)

        def __array__(self, dtype=None, copy=None):
            return np.full(3, 2.0)

    w = gt.Variable(np.zeros(3), name="w")
    opt = gt.optimizers.Adam(0.1)
    opt.apply_gradients([(gt.tensor(np.ones(3)), w)])
    state = opt.state_dict()
    state["w/m"] = Like()
    other = gt.optimizers.Adam(0.1)
    other.load_state_dict(state, [("w", w)])
    np.testing.assert_array_equal(other.state_dict()["w/m"], np.full(3, 2.0))


def test_a_distributed_optimizer_refuses_the_same_attributes():
    gt.distributed.init()
    opt = gt.distributed.DistributedOptimizer(gt.optimizers.Adam(0.1))
    for name in ("amsgrad", "momentum", "lr"):
        with pytest.raises(AttributeError, match=rf"DistributedAdam: {name!r} is not one of its "
                                                 r"hyper-parameters"):
            setattr(opt, name, 0.5)


def test_a_users_optimizer_subclass_keeps_its_attributes_when_distributed():
    class MySGD(gt.optimizers.SGD):
        pass

    gt.distributed.init()
    plain = MySGD(0.1)
    plain.rho = 0.7  # (its own attribute: the names are refused on gradtape's classes only)
    wrapped = gt.distributed.DistributedOptimizer(MySGD(0.1))
    wrapped.rho = 0.3
    assert plain.rho == 0.7 and wrapped.rho == 0.3
