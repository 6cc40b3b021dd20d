"""Fixes from a review of the round's own changes and a fuzz of compiled steps: arrays a
compiled step reads by reference, per-example constants made from Variables, writes into a
Variable's buffer while tracing, det at NaN, normalization dtypes, fill values, and the NaN
that clipping makes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradtape as gt


def test_a_compiled_step_reads_an_outside_array_at_each_call():
    """An op operand that is an array from outside the step (a closure's, a reused batch
    buffer) is held by reference by the program, as before the operand copy (eager ops copy
    it; a trace must not, or the copy would be a constant of the program)."""
    with gt.use_backend("numpy"):
        buf = np.ones(3)
        w = gt.Variable([1.0, 2.0, 3.0])

        @gt.function
        def step():
            return gt.sum(w * buf), gt.sum(gt.matmul(buf[None, :], gt.reshape(w, (3, 1))))

        for k in range(5):
            buf[:] = k + 1.0
            a, b = step()
            assert float(a) == float(b) == 6.0 * (k + 1)


def _matches_a_loop(losses, x: np.ndarray, source: gt.Variable) -> None:
    """``per_example_gradients`` of ``losses(x)`` equal the gradients of each example alone."""
    with gt.GradientTape() as tape:
        lv = losses(x)
    got = tape.per_example_gradients(lv, [source])[0].numpy()
    for b in range(x.shape[0]):
        with gt.GradientTape() as t1:
            lb = gt.sum(losses(x[b:b + 1]))
        np.testing.assert_allclose(got[b], t1.gradient(lb, source).numpy(), rtol=1e-5, atol=1e-5)


def test_per_example_constants_made_from_a_variable_that_is_not_a_source():
    """gt.astype(W0, W0.dtype) of a watched Variable with B rows is a constant, not
    per-example data (a no-op op now gives a Tensor, not the Variable)."""
    rng = np.random.default_rng(0)
    B = 4
    W0 = gt.Variable(rng.standard_normal((B, 3)).astype(np.float32))
    A = gt.Variable(rng.standard_normal((B, 3)).astype(np.float32))
    x = rng.standard_normal((B, B)).astype(np.float32)

    def losses(xb):
        y = gt.tensor(xb) @ (gt.astype(W0, np.float32) * A + gt.transpose(gt.transpose(W0)))
        return gt.sum(y * y, axis=1)

    _matches_a_loop(losses, x, A)


def test_a_numpy_write_into_a_variable_buffer_while_tracing_is_refused():
    W = gt.Variable(np.zeros(3), name="W")

    def step(x):
        np.copyto(W.data, x.data)
        return gt.sum(W * 1.0)

    with pytest.raises(gt.TracingError, match=r"copyto at .* writes into the buffer of Variable W"):
        gt.function(step)(gt.tensor(np.ones(3)))
    f = gt.function(step, fallback="eager")  # runs eagerly, so W follows every call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(4):
            f(gt.tensor(np.full(3, k + 1.0)))
    np.testing.assert_array_equal(W.numpy(), [4.0, 4.0, 4.0])


def test_det_gradient_of_a_matrix_holding_nan_is_nan():
    a = gt.Variable(np.array([[[1.0, np.nan], [2.0, 3.0]], [[1.0, 2.0], [2.0, 4.0]]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (NumPy's det warns on the NaN)
        with gt.GradientTape() as tape:
            d = gt.sum(gt.det(a))
        g = tape.gradient(d, a).numpy()
    assert np.isnan(g[0]).all()
    np.testing.assert_allclose(g[1], [[4.0, -2.0], [-2.0, 1.0]], atol=1e-12)


def test_normalization_dtypes_follow_the_parameters():
    h = gt.ones((2, 4), dtype=np.float16)
    assert gt.nn.layer_norm(h).dtype == np.float16
    assert gt.nn.layer_norm(h, gamma=gt.ones(4, dtype=np.float16)).dtype == np.float16
    assert gt.nn.layer_norm(h, gamma=gt.ones(4)).dtype == np.float32  # float16 x float32
    assert gt.nn.layer_norm(gt.ones((2, 4)), gamma=gt.tensor(np.ones(4))).dtype == np.float64
    x = gt.ones((2, 3, 4))
    assert gt.nn.layer_norm(x, gamma=gt.ones((1, 4))).shape == (2, 3, 4)  # a keepdims form


def test_fill_values_near_the_float_limits():
    assert gt.full(1, 65510.0, dtype="float16").numpy().tolist() == [65504.0]  # rounds down
    with pytest.raises(ValueError, match=r"cannot be represented as float64"):
        gt.full(1, 10**400, dtype="float64")
    assert np.isinf(gt.full(1, float("inf"), dtype="float32").numpy()).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_clipping_an_infinite_norm_makes_the_same_nan_eagerly_and_compiled():
    g = np.array([1.0, -2.0, np.inf, -np.inf, 0.0], np.float32)
    eager = gt.optimizers.clip_by_global_norm([gt.tensor(g)], 1.0)[0][0].numpy()
    f = gt.function(lambda t: gt.optimizers.clip_by_global_norm([t], 1.0)[0][0])
    for _ in range(3):
        assert f(gt.tensor(g)).numpy().tobytes() == eager.tobytes()


def test_gt_tensor_of_a_batched_tensor_says_what_to_do():
    with pytest.raises(TypeError, match=r"gt.tensor\(\) of a batched tensor inside gt.vmap: .* "
                                        r"gt.stop_gradient"):
        gt.vmap(lambda a: gt.tensor(a) * 2)(gt.tensor([[1.0, 2.0]]))


def test_global_norm_of_tiny_float32_gradients_does_not_underflow():
    g = np.full(4, 1e-25, np.float32)
    assert gt.optimizers.global_norm([gt.tensor(g)]) == pytest.approx(2e-25, rel=1e-6)
    f = gt.function(lambda t: gt.optimizers.global_norm([t]))
    for k in (1.0, 2.0, 3.0):
        assert float(f(gt.tensor(g * k))) == pytest.approx(2e-25 * k, rel=1e-6)
    assert gt.optimizers.global_norm([gt.zeros(3)]) == 0.0


def test_index_and_label_arrays_are_copied_as_operands_are():
    """A caller's index or label buffer written after the forward does not change the
    gradient (getitem, take, segment_sum, cross_entropy)."""
    with gt.use_backend("numpy"):
        w = gt.Variable([[1.0, 2.0], [3.0, 4.0]])
        idx = np.array([0, 0])
        with gt.GradientTape() as tape:
            loss = gt.sum(w[idx] ** 2) + gt.sum(gt.take(w, idx, axis=0))
        idx[:] = 1
        np.testing.assert_array_equal(tape.gradient(loss, w).numpy(), [[6.0, 10.0], [0.0, 0.0]])
        seg = np.array([0, 0])
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.segment_sum(w, seg, 2)[0] ** 2)
        seg[:] = 1
        np.testing.assert_array_equal(tape.gradient(loss, w).numpy(), [[8.0, 12.0], [8.0, 12.0]])
        labels = np.array([0, 1])
        logits = gt.Variable([[2.0, 0.0], [0.0, 2.0]])
        with gt.GradientTape() as tape:
            ce = gt.nn.cross_entropy(logits, labels)
        labels[:] = 0
        g = tape.gradient(ce, logits).numpy()
        assert g[0, 0] < 0 < g[1, 0]  # each row's own label kept


def test_copied_and_unpickled_variables_refuse_buffer_writes_in_a_trace():
    import copy
    import pickle

    for W in (copy.copy(gt.Variable(np.zeros(3))), copy.deepcopy(gt.Variable(np.zeros(3))),
              pickle.loads(pickle.dumps(gt.Variable(np.zeros(3))))):
        def step(x, W=W):
            np.copyto(W.data, x.data)
            return gt.sum(W * 1.0)

        with pytest.raises(gt.TracingError, match=r"writes into the buffer of Variable"):
            gt.function(step)(gt.tensor(np.ones(3)))


def test_global_norm_refuses_complex_gradients():
    with pytest.raises(TypeError, match=r"global_norm: gradients must hold real numbers"):
        gt.optimizers.global_norm([gt.tensor([1 + 1j])])


def test_a_complex_fill_value_past_the_dtype_is_refused():
    with pytest.raises(ValueError, match=r"cannot be represented as complex64"):
        gt.full(2, 1e40 + 0j, dtype="complex64")
    with pytest.raises(ValueError, match=r"\(401 characters\)"):
        gt.full(2, 10**400, dtype="float64")


def test_per_example_takes_an_unwatched_variable_for_a_constant():
    """A trainable=False Variable with B rows (not watched, so untracked) is a constant, as
    every Variable that is not a source is."""
    rng = np.random.default_rng(1)
    B = 4
    W0 = gt.Variable(rng.standard_normal((B, 3)).astype(np.float32), trainable=False)
    A = gt.Variable(rng.standard_normal((B, 3)).astype(np.float32))
    x = rng.standard_normal((B, B)).astype(np.float32)

    def losses(xb):
        y = gt.tensor(xb) @ (W0 * A)
        return gt.sum(y * y, axis=1)

    _matches_a_loop(losses, x, A)
