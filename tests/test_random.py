"""gt.random (docs/api.md "gradtape.random"): reproducibility, dtypes, shapes, backends,
statistics, argument errors, and seeding initializers and dropout with a gt.random.Generator."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import gradtape as gt
from gradtape.nn import init

F32 = np.dtype(np.float32)


def draws(g: gt.random.Generator) -> list[np.ndarray]:
    """One of each kind of draw, as host arrays."""
    return [g.normal((3, 2)).numpy(), g.uniform(4).numpy(), g.integers(0, 100, shape=(5,)).numpy(),
            g.permutation(6).numpy(), g.bernoulli(0.3, shape=(7,)).numpy(),
            g.normal(3, dtype="float64").numpy()]


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_same_numbers_different_seeds_differ(backend):
    a, b, c = draws(gt.random.Generator(7)), draws(gt.random.Generator(7)), draws(gt.random.Generator(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))
    assert not np.array_equal(a[0], c[0])


def test_the_stream_is_numpys_default_rng():
    """Generator(seed) draws what numpy.random.default_rng(seed) draws (PCG64)."""
    ref = np.random.default_rng(3)
    g = gt.random.Generator(3)
    np.testing.assert_array_equal(g.normal((4,), dtype="float64").numpy(), ref.standard_normal(4))
    np.testing.assert_array_equal(g.uniform((4,), dtype="float64").numpy(), ref.random(4))
    np.testing.assert_array_equal(g.integers(0, 9, shape=(4,)).numpy(), ref.integers(0, 9, size=4))


def test_same_numbers_on_every_backend(backend):
    """Drawn on the host: the seed decides the values, not the backend."""
    with gt.use_backend("numpy"):
        host = draws(gt.random.Generator(11))
    dev = draws(gt.random.Generator(11))
    for x, y in zip(host, dev):
        np.testing.assert_array_equal(x, y)


def test_each_draw_advances_the_generator():
    g = gt.random.Generator(0)
    assert not np.array_equal(g.normal(5).numpy(), g.normal(5).numpy())


def test_module_level_functions_use_the_default_generator():
    gt.random.seed(123)
    a = [gt.random.normal((2,)).numpy(), gt.random.uniform(2).numpy(),
         gt.random.integers(5, shape=3).numpy(), gt.random.permutation(4).numpy(),
         gt.random.bernoulli(0.5, shape=(4,)).numpy()]
    gt.random.seed(123)
    b = [gt.random.normal((2,)).numpy(), gt.random.uniform(2).numpy(),
         gt.random.integers(5, shape=3).numpy(), gt.random.permutation(4).numpy(),
         gt.random.bernoulli(0.5, shape=(4,)).numpy()]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[0], gt.random.Generator(123).normal((2,)).numpy())
    gt.random.seed(None)


def test_spawn_gives_independent_reproducible_children():
    kids = gt.random.Generator(5).spawn(3)
    again = gt.random.Generator(5).spawn(3)
    values = [k.normal(4).numpy() for k in kids]
    for k, v in zip(again, values):
        np.testing.assert_array_equal(k.normal(4).numpy(), v)
    assert len({v.tobytes() for v in values}) == 3
    parent = gt.random.Generator(5)
    first, second = parent.spawn(1)[0], parent.spawn(1)[0]
    assert not np.array_equal(first.normal(4).numpy(), second.normal(4).numpy())
    assert parent.spawn(0) == []


def test_copy_and_pickle_keep_the_state():
    g = gt.random.Generator(9)
    g.normal(3)
    snap, pickled = copy.deepcopy(g), pickle.loads(pickle.dumps(g))
    expected = g.normal(4).numpy()
    np.testing.assert_array_equal(snap.normal(4).numpy(), expected)
    np.testing.assert_array_equal(pickled.normal(4).numpy(), expected)


# --------------------------------------------------------------------------- dtypes, shapes, backends
def test_dtypes_shapes_backends(backend):
    g = gt.random.Generator(0)
    cases = [(g.normal((2, 3)), (2, 3), F32), (g.normal(4, dtype="float64"), (4,), np.float64),
             (g.normal((), dtype="float16"), (), np.float16), (g.uniform([0, 2]), (0, 2), F32),
             (g.integers(10), (), np.int64), (g.integers(-3, 3, shape=(2, 2), dtype="int8"), (2, 2), np.int8),
             (g.permutation(5), (5,), np.int64), (g.bernoulli(0.5), (), np.bool_),
             (g.bernoulli(gt.tensor([0.1, 0.9])), (2,), np.bool_)]
    for t, shape, dtype in cases:
        assert (t.shape, t.dtype, t.backend) == (shape, np.dtype(dtype), backend)


def test_values_in_range():
    g = gt.random.Generator(1)
    u = g.uniform((10_000,), -2.0, 3.0).numpy()
    assert u.min() >= -2.0 and u.max() < 3.0
    u01 = g.uniform(10_000).numpy()
    assert u01.min() >= 0.0 and u01.max() < 1.0
    k = g.integers(-5, 5, shape=(10_000,)).numpy()
    assert set(k.tolist()) == set(range(-5, 5))
    assert set(g.integers(3, shape=(1000,)).numpy().tolist()) == {0, 1, 2}
    assert g.uniform(5, 2.0, 2.0).numpy().tolist() == [2.0] * 5
    assert g.normal(5, mean=4.0, std=0.0).numpy().tolist() == [4.0] * 5


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_mean_and_std(dtype):
    x = gt.random.Generator(2).normal((100_000,), mean=1.5, std=0.5, dtype=dtype).numpy()
    # standard errors: 0.5 / sqrt(1e5) = 0.0016 for the mean, about 0.0011 for the std
    assert abs(x.mean() - 1.5) < 0.01
    assert abs(x.std() - 0.5) < 0.01


def test_uniform_mean_and_variance():
    x = gt.random.Generator(3).uniform((100_000,), -1.0, 1.0).numpy().astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1 / 3) < 0.01


def test_bernoulli_rate():
    g = gt.random.Generator(4)
    m = g.bernoulli(0.3, shape=(100_000,)).numpy()
    assert abs(m.mean() - 0.3) < 0.01  # standard error 0.0014
    p = gt.tensor(np.array([0.0, 1.0, 0.5], np.float32))
    hits = g.bernoulli(p, shape=(20_000, 3)).numpy()
    assert hits[:, 0].sum() == 0 and hits[:, 1].all()
    assert abs(hits[:, 2].mean() - 0.5) < 0.02
    assert not g.bernoulli(0.0, shape=(1000,)).numpy().any()
    assert g.bernoulli(1, shape=(1000,)).numpy().all()


# --------------------------------------------------------------------------- permutation
def test_permutation_is_a_permutation(backend):
    g = gt.random.Generator(6)
    p = g.permutation(1000).numpy()
    assert sorted(p.tolist()) == list(range(1000)) and not np.array_equal(p, np.arange(1000))
    assert g.permutation(0).shape == (0,)
    x = gt.tensor(np.arange(12.0).reshape(6, 2))
    y = g.permutation(x)
    assert y.shape == (6, 2) and y.backend == backend
    rows = sorted(map(tuple, y.numpy().tolist()))
    assert rows == sorted(map(tuple, x.numpy().tolist()))
    assert sorted(g.permutation([3, 1, 2]).numpy().tolist()) == [1, 2, 3]


def test_permutation_of_a_tensor_is_differentiable():
    x = gt.Variable(np.arange(4.0))
    with gt.GradientTape() as tape:
        y = gt.random.Generator(0).permutation(x)
        loss = gt.sum(y * gt.tensor(np.arange(4.0)))
    g = tape.gradient(loss, x).numpy()
    perm = np.asarray(y.numpy(), dtype=np.int64)  # y[i] = x[perm[i]], and x[j] = j
    expected = np.zeros(4)
    expected[perm] = np.arange(4.0)
    np.testing.assert_array_equal(g, expected)


# --------------------------------------------------------------------------- errors
def test_argument_errors():
    g = gt.random.Generator(0)
    cases = [
        (lambda: gt.random.Generator(-1), ValueError, "gt.random.Generator: seed must be >= 0, got -1"),
        (lambda: gt.random.Generator(1.5), TypeError, "gt.random.Generator: seed must be an int"),
        (lambda: gt.random.seed("x"), TypeError, "gt.random.seed: seed must be an int"),
        (lambda: g.normal((2, -1)), ValueError, "normal: shape entries must be >= 0"),
        (lambda: g.normal((2.5,)), TypeError, "normal: shape must hold ints"),
        (lambda: g.normal(2, std=-1.0), ValueError, "normal: std must be >= 0, got -1.0"),
        (lambda: g.normal(2, mean=float("nan")), ValueError, "normal: mean must be finite"),
        (lambda: g.normal(2, dtype="int32"), TypeError, "normal: dtype must be a floating-point dtype"),
        (lambda: g.uniform(2, 1.0, 0.0), ValueError, "uniform: low must be <= high"),
        (lambda: g.uniform(2, high="1"), TypeError, "uniform: high must be a real number"),
        (lambda: g.integers(5, 5), ValueError, r"integers: the range \[low, high\) is empty"),
        (lambda: g.integers(0), ValueError, r"integers: the range \[low, high\) is empty"),
        (lambda: g.integers(0.5, 3), TypeError, "integers: low must be an int"),
        (lambda: g.integers(0, 300, dtype="uint8"), ValueError, r"integers: \[0, 300\) does not fit uint8"),
        (lambda: g.integers(0, 3, dtype="float32"), TypeError, "integers: dtype must be an integer dtype"),
        (lambda: g.permutation(-2), ValueError, "permutation: n must be >= 0"),
        (lambda: g.permutation(gt.tensor(3.0)), ValueError, "permutation: a tensor argument must have rank >= 1"),
        (lambda: g.permutation("abc"), TypeError, "permutation: expected an int or a tensor"),
        (lambda: g.bernoulli(1.5), ValueError, r"bernoulli: p must be in \[0, 1\], got 1.5"),
        (lambda: g.bernoulli(gt.tensor([0.5, -0.1])), ValueError, r"bernoulli: p must hold probabilities"),
        (lambda: g.bernoulli(gt.tensor([0.5, float("nan")])), ValueError, "bernoulli: p must hold"),
        (lambda: g.bernoulli(gt.tensor([0.5, 0.5]), shape=(3,)), ValueError,
         r"bernoulli: p of shape \(2,\) does not broadcast to shape \(3,\)"),
        (lambda: g.bernoulli("x"), TypeError, "bernoulli: p must be a probability"),
        (lambda: g.spawn(-1), ValueError, "spawn: n must be >= 0"),
        (lambda: g.normal((2**40, 2**40)), ValueError, "normal: .*too large to allocate"),
        (lambda: g.permutation(2**62), ValueError, "permutation: .*too large to allocate"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()


# --------------------------------------------------------------------------- initializers, dropout
def test_initializers_take_a_generator(backend):
    for fn in (init.glorot_uniform, init.glorot_normal, init.he_uniform, init.he_normal):
        a = fn((4, 3), seed=gt.random.Generator(1))
        b = fn((4, 3), seed=gt.random.Generator(1))
        c = fn((4, 3), seed=gt.random.Generator(2))
        ha, hb, hc = (gt.tensor(v).numpy() for v in (a, b, c))
        np.testing.assert_array_equal(ha, hb)
        assert not np.array_equal(ha, hc)
        # an int seed still works, and gives the stream Generator(seed) gives
        np.testing.assert_array_equal(gt.tensor(fn((4, 3), seed=1)).numpy(), ha)


def test_a_shared_generator_advances_across_layers():
    g = gt.random.Generator(0)
    m1 = gt.nn.Sequential([gt.nn.Dense(3, 4, seed=g), gt.nn.Dense(4, 2, seed=g)])
    g = gt.random.Generator(0)
    m2 = gt.nn.Sequential([gt.nn.Dense(3, 4, seed=g), gt.nn.Dense(4, 2, seed=g)])
    for v1, v2 in zip(m1.variables, m2.variables):
        np.testing.assert_array_equal(v1.numpy(), v2.numpy())
    assert not np.array_equal(m1.layers[0].kernel.numpy()[:2, :2], m1.layers[1].kernel.numpy()[:2, :2])
    conv = [gt.nn.Conv2D(1, 2, 3, seed=gt.random.Generator(4)).kernel.numpy() for _ in range(2)]
    np.testing.assert_array_equal(*conv)


def test_gt_random_seed_makes_unseeded_initialization_reproducible():
    gt.random.seed(10)
    a = gt.nn.Dense(3, 3).kernel.numpy()
    gt.random.seed(10)
    b = gt.nn.Dense(3, 3).kernel.numpy()
    np.testing.assert_array_equal(a, b)
    gt.random.seed(None)


def test_dropout_with_a_generator_is_reproducible(backend):
    x = gt.ones((1000,))
    a = gt.nn.dropout(x, 0.5, generator=gt.random.Generator(3)).numpy()
    b = gt.nn.dropout(x, 0.5, seed=gt.random.Generator(3)).numpy()  # seed= takes one too
    c = gt.nn.dropout(x, 0.5, generator=gt.random.Generator(4)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a).tolist()) == {0.0, 2.0} and 0.4 < (a == 0).mean() < 0.6
    with gt.use_backend("numpy"):  # drawn on the host: the same mask on every backend
        host = gt.nn.dropout(gt.ones((1000,)), 0.5, generator=gt.random.Generator(3)).numpy()
    np.testing.assert_array_equal(a, host)


def test_dropout_layer_with_a_generator(backend):
    x = gt.ones((2, 50))
    runs = []
    for _ in range(2):
        layer = gt.nn.Dropout(0.3, seed=gt.random.Generator(8))
        runs.append([layer(x).numpy() for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[0][1])  # the generator advances per call
    assert gt.nn.Dropout(0.3, seed=gt.random.Generator(8)).eval()(x).numpy().tolist() == x.numpy().tolist()


def test_unseeded_dropout_follows_gt_random_seed_on_numpy():
    with gt.use_backend("numpy"):
        x = gt.ones((200,))
        gt.random.seed(1)
        a, la = gt.nn.dropout(x, 0.5).numpy(), gt.nn.Dropout(0.5)(x).numpy()
        gt.random.seed(1)
        b, lb = gt.nn.dropout(x, 0.5).numpy(), gt.nn.Dropout(0.5)(x).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    gt.random.seed(None)


def test_old_seed_forms_still_work():
    x = gt.ones((100,))
    np.testing.assert_array_equal(gt.nn.dropout(x, 0.5, seed=0).numpy(), gt.nn.dropout(x, 0.5, seed=0).numpy())
    a = gt.nn.dropout(x, 0.5, generator=np.random.default_rng(0)).numpy()
    np.testing.assert_array_equal(a, gt.nn.dropout(x, 0.5, generator=np.random.default_rng(0)).numpy())
    k = init.he_normal((3, 3), seed=np.random.default_rng(5))
    np.testing.assert_array_equal(k, init.he_normal((3, 3), seed=np.random.default_rng(5)))
    with pytest.raises(TypeError, match="initializer: seed must be an int, a gt.random.Generator"):
        init.glorot_uniform((2, 2), seed="zero")
    with pytest.raises(TypeError, match="dropout: generator must be a gt.random.Generator"):
        gt.nn.dropout(x, 0.5, generator=object())


def test_bernoulli_with_a_vmapped_p_raises_a_clear_error():
    g = gt.random.Generator(0)
    p = gt.tensor(np.full((3, 2), 0.5, np.float32))
    with pytest.raises(ValueError, match="randomness="):  # (vmap's default: no draws)
        gt.vmap(lambda q: g.bernoulli(q))(p)
    for randomness in ("different", "same"):
        with pytest.raises(ValueError, match="batched by gt.vmap"):
            gt.vmap(lambda q: g.bernoulli(q), randomness=randomness)(p)
    assert g.bernoulli(p).shape == (3, 2)


def test_seed_makes_unseeded_dropout_reproducible_on_every_backend(backend):
    """``gt.random.seed`` reseeds the generator unseeded dropout draws from, the host one on
    NumPy and the device-side one on CuPy (torch.manual_seed's promise): the same masks after
    the same seed, new ones after none."""
    def masks():
        return [gt.nn.dropout(gt.ones((4, 16)), 0.5).numpy() for _ in range(2)]

    gt.random.seed(7)
    first = masks()
    gt.random.seed(7)
    again = masks()
    later = masks()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # the stream advances between calls
    assert not np.array_equal(again[0], later[0])


def test_float16_uniform_stays_below_one():
    u = gt.random.Generator(0).uniform((200_000,), dtype="float16").numpy()
    assert u.dtype == np.float16 and u.max() < 1.0 and u.min() >= 0.0
    assert abs(float(u.astype(np.float64).mean()) - 0.5) < 5e-3


@pytest.mark.parametrize("low, high, dtype", [(100.0, 100.01, "float16"), (1.0, 1.0001, "float16"),
                                              (1.0, 1.00000001, "float32"), (-100.01, -100.0, "float16"),
                                              (0.10015, 0.2, "float16"), (0.10015, 0.1002, "float16")])
def test_uniform_stays_within_the_bounds_the_dtype_holds(low, high, dtype):
    # bounds that round to one value gave every draw one step below low (100 -> 99.94 in
    # float16); a low that rounds up could be undercut by the round-down of the draws
    u = gt.random.Generator(0).uniform((20000,), low, high, dtype=dtype).numpy()
    lo, hi = np.array(low, dtype), np.array(high, dtype)
    assert (u >= lo).all()
    assert ((u < hi) | (u == lo)).all()
    if lo == hi:
        assert (u == lo).all()


def test_a_seed_array_gets_the_seed_message():
    # an integer array (JAX's key habit) failed inside NumPy ("only integer scalar arrays ...")
    with pytest.raises(TypeError, match=r"gt.random.Generator: seed must be an int >= 0 or None, "
                                        r"got array\(\[0, 1\]"):
        gt.random.Generator(np.array([0, 1], np.uint32))
    assert gt.random.Generator(np.array(3)).normal((2,)).shape == (2,)  # a 0-d one is an int


@pytest.mark.parametrize("kwargs, dtype", [({"mean": 1e39}, "float32"), ({"std": 1e6}, "float16"),
                                           ({"mean": 6e4, "std": 1e3}, "float16"),
                                           ({"mean": -1e308, "std": 1e307}, "float64")])
def test_normal_parameters_that_would_give_inf_are_refused(kwargs, dtype):
    """normal(mean=1e39) in float32 returned inf where uniform and full refuse such values."""
    with pytest.raises(ValueError, match=rf"normal: mean and std must keep the samples within "
                                         rf"{dtype} \(\|mean\| \+ 10 std"):
        gt.random.Generator(0).normal((3,), dtype=dtype, **kwargs)
    out = gt.random.Generator(0).normal((1000,), mean=6e4, std=500.0, dtype="float16").numpy()
    assert np.isfinite(out).all()  # within the rule: 65000 <= 65504


def test_init_normal_refuses_a_stddev_that_would_give_inf():
    with pytest.raises(ValueError, match="init.normal: mean and std must keep the samples within float16"):
        gt.nn.init.normal((3,), seed=0, dtype=np.float16, stddev=1e4)
