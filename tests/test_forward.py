"""Forward-mode automatic differentiation: ``gt.jvp`` and ``gt.ForwardAccumulator``.

* every differentiable registry primitive (elementwise ones on inputs drawn from their
  declared domains, the others on their ``examples``), in float64: the JVP equals central
  finite differences of the function and ``J @ v`` from the reverse-mode Jacobian
  (``tape.jacobian``), for a random direction ``v``;
* composition with GradientTape in both orders (forward-over-reverse Hessian-vector products
  against the Hessian from nested tapes, reverse-over-forward), nested accumulators (higher
  derivatives), the unconnected cases, custom gradients, extension primitives without a JVP
  rule, tangent lifetimes, and the argument errors.
"""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY, MissingRuleError, Primitive

# Every gradtape module is imported by `import gradtape` except the examples: the snapshot
# below holds every built-in primitive (test files may declare theirs temporarily later).
PRIMS: dict[str, Primitive] = dict(REGISTRY)
DIFFERENTIABLE = sorted(n for n, p in PRIMS.items() if not p.nondiff)
ELEMENTWISE = sorted(n for n in DIFFERENTIABLE if PRIMS[n].is_elementwise)
WITH_EXAMPLES = sorted(n for n in DIFFERENTIABLE
                       if not PRIMS[n].is_elementwise and PRIMS[n].examples is not None)
# keyword parameters of the elementwise primitives that take some
PARAMS = {"leaky_relu": {"negative_slope": 0.1}, "elu": {"alpha": 1.3}}
SEPARATED = {"maximum", "minimum"}  # kinks where the inputs tie: draw them from disjoint grids


def _seed(*parts: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate("/".join(parts))) % (2 ** 31)


# --------------------------------------------------------------------------- helpers
def _leaves(tree) -> list:
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
    return [tree]


def _float_outputs(out) -> list:
    return [t for t in _leaves(out) if isinstance(t, gt.Tensor) and t.dtype.kind == "f"]


def _check_case(fn, args: tuple, kwargs: dict, rng: np.random.Generator, where: str) -> str:
    """JVP of ``fn`` in the float64 array leaves of ``args`` (the rest stay constant) against
    central differences and against J @ v from tape.jacobian. Returns the recorded primitive
    names (the caller checks its primitive ran)."""
    slots = []  # (position in args, position in a list argument or None)
    values = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            slots.append((i, None))
            values.append(a.astype(np.float64))
        elif isinstance(a, list):
            for j, e in enumerate(a):
                if isinstance(e, np.ndarray) and e.dtype.kind == "f":
                    slots.append((i, j))
                    values.append(e.astype(np.float64))

    def f(*xs):
        full = [list(a) if isinstance(a, list) else a for a in args]
        for (i, j), x in zip(slots, xs):
            if j is None:
                full[i] = x
            else:
                full[i][j] = x
        return _float_outputs(fn(*full, **kwargs))

    primals = tuple(gt.tensor(v) for v in values)
    dirs = [rng.standard_normal(v.shape) for v in values]
    out, tangent = gt.jvp(f, primals, tuple(gt.tensor(d) for d in dirs))
    assert len(out) == len(tangent) and out, where
    for o, t in zip(out, tangent):
        assert t.shape == o.shape and t.dtype == o.dtype == np.float64, where
    # central differences of the function itself, along v
    h = 1e-6
    plus = f(*[gt.tensor(v + h * d) for v, d in zip(values, dirs)])
    minus = f(*[gt.tensor(v - h * d) for v, d in zip(values, dirs)])
    for k, (t, p, q) in enumerate(zip(tangent, plus, minus)):
        numeric = (p.numpy() - q.numpy()) / (2 * h)
        scale = 1 + float(np.max(np.abs(numeric), initial=0))
        np.testing.assert_allclose(t.numpy(), numeric, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"{where}: output {k}, JVP vs central differences")
    # J @ v from the reverse-mode Jacobian (a loop of reverse passes)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(list(primals))
        outs = f(*primals)
    for k, (t, o) in enumerate(zip(tangent, outs)):
        jv = np.zeros(o.shape)
        for p, d in zip(primals, dirs):
            jac = tape.jacobian(o, p, unconnected_gradients="zero", experimental_use_pfor=False)
            jv += np.tensordot(jac.numpy(), d, axes=d.ndim) if d.ndim else jac.numpy() * d
        np.testing.assert_allclose(t.numpy(), jv, rtol=1e-9, atol=1e-10,
                                   err_msg=f"{where}: output {k}, JVP vs J @ v (tape.jacobian)")
    return " ".join(tape.recorded_ops())


def _sample(prim: Primitive, name: str, shapes: list[tuple], rng: np.random.Generator) -> list:
    xs = []
    for i, (dom, shape) in enumerate(zip(prim.domains, shapes)):
        if dom.kind == "bool":
            xs.append(rng.random(shape) < 0.5)
            continue
        if dom.low == dom.high:
            xs.append(np.full(shape, float(dom.low)))
            continue
        x = rng.uniform(dom.low, dom.high, shape)
        if name in SEPARATED:  # x in 0.2 Z + 0.1 i: the inputs never tie
            x = np.round(x / 0.2) * 0.2 + 0.1 * i
        for p in dom.avoid:
            close = np.abs(x - p) < dom.margin
            x = np.where(close, p + np.where(x >= p, 1.0, -1.0) * (dom.margin + np.abs(x - p)), x)
        xs.append(np.asarray(x, dtype=np.float64))
    return xs


# --------------------------------------------------------------------------- registry
def test_every_differentiable_primitive_has_a_jvp_rule():
    missing = [n for n in DIFFERENTIABLE if PRIMS[n].jvp is None]
    assert not missing, f"differentiable primitives without a JVP rule: {missing}"
    uncovered = [n for n in DIFFERENTIABLE if n not in ELEMENTWISE and n not in WITH_EXAMPLES
                 and n != "astype"]  # astype: test_astype_jvp_keeps_dtypes
    assert not uncovered, f"differentiable primitives no JVP test exercises: {uncovered}"


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_jvp(name):
    prim = PRIMS[name]
    n = len(prim.arg_names)
    params = PARAMS.get(name, {})
    rng = np.random.default_rng(_seed(name, "jvp"))
    shape_sets = [[(2, 3)] * n, [(2, 3)] + [(3,)] * (n - 1), [()] * n]
    if n > 1:
        shape_sets.append([(3,)] * (n - 1) + [(2, 1)])  # the output is larger than each input
    for shapes in shape_sets:
        xs = _sample(prim, name, shapes, rng)

        def fn(*ts, prim=prim, params=params):
            return prim(*[t if isinstance(t, gt.Tensor) else gt.tensor(t) for t in ts], **params)

        ops = _check_case(fn, tuple(xs), {}, rng, f"{name} {shapes}")
        assert name in ops.split(), f"{name}: the primitive did not run ({ops})"


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_examples_jvp(name):
    rng = np.random.default_rng(_seed(name, "jvp"))
    cases = PRIMS[name].examples(rng)
    ran = False
    for i, (fn, args, kwargs) in enumerate(cases):
        ops = _check_case(fn, tuple(args), dict(kwargs or {}), rng,
                          f"{name}, example {getattr(fn, '__name__', 'fn')}#{i}")
        ran = ran or name in ops.split()
    # (astype's example casts float64 to float64, a no-op here: test_astype_jvp_keeps_dtypes)
    assert ran or name == "astype", f"{name}: no example ran the primitive with a moving input"


def test_astype_jvp_keeps_dtypes():
    x = gt.tensor(np.array([1.5, -2.0], dtype=np.float32))
    v = gt.tensor(np.array([0.25, 4.0], dtype=np.float32))
    y, t = gt.jvp(lambda x: gt.astype(x, np.float64) * 3.0, (x,), (v,))
    assert y.dtype == t.dtype == np.float64
    np.testing.assert_array_equal(t.numpy(), [0.75, 12.0])
    y, t = gt.jvp(lambda x: gt.astype(x, np.float32), (gt.tensor(np.array([1.0])),),
                  (np.array([2.0]),))
    assert t.dtype == np.float32 and float(t[0]) == 2.0
    # a cast to an integer dtype carries no tangent
    y, t = gt.jvp(lambda x: gt.astype(x, np.int64), (x,), (v,))
    assert t.dtype == np.int64 and not t.numpy().any()


def test_float32_tangents_stay_float32():
    x = gt.tensor(np.array([[0.5, -1.0], [2.0, 0.1]], dtype=np.float32))
    v = gt.tensor(np.ones((2, 2), dtype=np.float32))
    y, t = gt.jvp(lambda x: gt.nn.softmax(x @ x) + gt.sum(gt.tanh(x) * 2.0), (x,), (v,))
    assert t.dtype == np.float32 and t.shape == (2, 2)
    x64 = gt.tensor(x.numpy().astype(np.float64))
    _, t64 = gt.jvp(lambda x: gt.nn.softmax(x @ x) + gt.sum(gt.tanh(x) * 2.0), (x64,),
                    (np.ones((2, 2)),))
    np.testing.assert_allclose(t.numpy(), t64.numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- composition
def _mlp_loss(theta):
    """A 3 -> 4 -> 2 tanh MLP with softmax cross-entropy on a fixed batch; theta is flat."""
    x = gt.tensor(np.linspace(-1.0, 1.0, 15).reshape(5, 3))
    labels = gt.tensor(np.array([0, 1, 1, 0, 1]))
    w1 = gt.reshape(theta[0:12], (3, 4))
    b1 = theta[12:16]
    w2 = gt.reshape(theta[16:24], (4, 2))
    b2 = theta[24:26]
    h = gt.tanh(x @ w1 + b1)
    return gt.nn.cross_entropy(h @ w2 + b2, labels) + 0.1 * gt.sum(theta * theta * theta)


def _hessian(f, x):
    with gt.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = f(x)
        g = inner.gradient(y, x)
    return outer.jacobian(g, x, experimental_use_pfor=False).numpy()


def test_forward_over_reverse_hvp_equals_nested_tape_hessian():
    rng = np.random.default_rng(0)
    theta = gt.tensor(rng.standard_normal(26) * 0.5)
    v = gt.tensor(rng.standard_normal(26))
    with gt.ForwardAccumulator(theta, v) as acc:
        with gt.GradientTape() as tape:
            tape.watch(theta)
            loss = _mlp_loss(theta)
        g = tape.gradient(loss, theta)
    hv = acc.jvp(g)
    assert hv is not None and hv.shape == (26,)
    np.testing.assert_allclose(hv.numpy(), _hessian(_mlp_loss, theta) @ v.numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["hvp", "im2col", "window_max", "softmax_cross_entropy",
                                  "getitem"])
def test_forward_mode_on_each_backend(backend, case):
    """The HVP and a few registry cases on the active backend (CuPy when a device is there)."""
    rng = np.random.default_rng(_seed(case, "backend"))
    if case != "hvp":
        for i, (fn, args, kwargs) in enumerate(PRIMS[case].examples(rng)):
            _check_case(fn, tuple(args), dict(kwargs or {}), rng, f"{case} #{i} on {backend}")
        return
    theta = gt.tensor(rng.standard_normal(26) * 0.5)
    v = gt.tensor(rng.standard_normal(26))
    with gt.ForwardAccumulator(theta, v) as acc:
        with gt.GradientTape() as tape:
            tape.watch(theta)
            loss = _mlp_loss(theta)
        g = tape.gradient(loss, theta)
    hv = acc.jvp(g)
    assert hv.backend == backend
    np.testing.assert_allclose(hv.numpy(), _hessian(_mlp_loss, theta) @ v.numpy(),
                               rtol=1e-10, atol=1e-12)


def test_forward_over_reverse_with_variables():
    """Variables read inside the tape (watched automatically) as the accumulator's primals,
    several of them: the Hessian-vector product per Variable."""
    rng = np.random.default_rng(1)
    w = gt.Variable(rng.standard_normal((3, 2)), name="w")
    b = gt.Variable(rng.standard_normal(2), name="b")
    x = gt.tensor(rng.standard_normal((4, 3)))
    vw, vb = rng.standard_normal((3, 2)), rng.standard_normal(2)

    def loss_of(w, b):
        return gt.sum(gt.sigmoid(x @ w + b) ** 2.0)

    with gt.ForwardAccumulator([w, b], [vw, vb]) as acc:
        with gt.GradientTape() as tape:
            loss = loss_of(w, b)
        gw, gb = tape.gradient(loss, [w, b])
    hw, hb = acc.jvp([gw, gb])

    def flat_loss(theta):
        return loss_of(gt.reshape(theta[:6], (3, 2)), theta[6:])

    theta = gt.tensor(np.concatenate([w.numpy().ravel(), b.numpy()]))
    expected = _hessian(flat_loss, theta) @ np.concatenate([vw.ravel(), vb])
    np.testing.assert_allclose(np.concatenate([hw.numpy().ravel(), hb.numpy()]), expected,
                               rtol=1e-10, atol=1e-12)


def test_reverse_over_forward():
    rng = np.random.default_rng(2)
    theta = gt.tensor(rng.standard_normal(26) * 0.5)
    v = gt.tensor(rng.standard_normal(26))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([theta, v])
        with gt.ForwardAccumulator(theta, v) as acc:
            loss = _mlp_loss(theta)
        t = acc.jvp(loss)  # grad(loss) . v, recorded by the tape
    hv, g = tape.gradient(t, [theta, v])
    np.testing.assert_allclose(hv.numpy(), _hessian(_mlp_loss, theta) @ v.numpy(),
                               rtol=1e-10, atol=1e-12)
    with gt.GradientTape() as t2:  # t is linear in v: its gradient there is grad(loss)
        t2.watch(theta)
        ref = _mlp_loss(theta)
    np.testing.assert_allclose(g.numpy(), t2.gradient(ref, theta).numpy(), rtol=1e-12)


def test_tape_records_one_input_ops_under_an_accumulator():
    """One tape and a one-input elementwise op: record()'s fast path must not skip the
    accumulator."""
    x = gt.tensor(np.array([0.5, 1.0]))
    with gt.GradientTape() as tape:
        tape.watch(x)
        with gt.ForwardAccumulator(x, np.array([1.0, 2.0])) as acc:
            y = gt.exp(x)
    np.testing.assert_allclose(acc.jvp(y).numpy(), np.exp([0.5, 1.0]) * [1.0, 2.0])
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), np.exp([0.5, 1.0]))


def test_nested_accumulators_give_higher_derivatives():
    x = gt.tensor(np.array([0.3, -1.2, 2.0]))
    one = np.ones(3)
    with gt.ForwardAccumulator(x, one) as third:
        with gt.ForwardAccumulator(x, one) as second:
            with gt.ForwardAccumulator(x, one) as first:
                y = gt.sin(x)
            d1 = first.jvp(y)
        d2 = second.jvp(d1)
        assert first.jvp(d1) is None  # an accumulator does not see its own tangents
    d3 = third.jvp(d2)
    np.testing.assert_allclose(d1.numpy(), np.cos(x.numpy()), rtol=1e-14)
    np.testing.assert_allclose(d2.numpy(), -np.sin(x.numpy()), rtol=1e-14)
    np.testing.assert_allclose(d3.numpy(), -np.cos(x.numpy()), rtol=1e-14)
    # mixed partials: d^2/dadb (a * b * b) = 2 b, with each accumulator moving one input
    a, b = gt.tensor(1.5), gt.tensor(-0.5)
    with gt.ForwardAccumulator(b, 1.0) as outer:
        with gt.ForwardAccumulator(a, 1.0) as inner:
            y = a * b * b
        da = inner.jvp(y)
    assert float(da) == pytest.approx(0.25) and float(outer.jvp(da)) == pytest.approx(-1.0)


def test_jvp_of_unconnected_values():
    x = gt.tensor(np.array([1.0, 2.0]))
    c = gt.tensor(np.array([3.0, 4.0]))
    before = x * 2.0  # computed outside the accumulator's context
    with gt.ForwardAccumulator(x, np.ones(2)) as acc:
        y = c * 2.0
        i = gt.argmax(x)
        s = gt.stop_gradient(x) * 3.0
        z = x * 2.0
    assert acc.jvp(y) is None and acc.jvp(i) is None and acc.jvp(s) is None
    assert acc.jvp(before) is None
    assert acc.jvp(x).numpy().tolist() == [1.0, 1.0]  # a primal: its own tangent
    zeros = acc.jvp([y, i], unconnected_gradients="zero")
    assert zeros[0].numpy().tolist() == [0.0, 0.0] and zeros[0].dtype == np.float64
    assert zeros[1].shape == () and zeros[1].dtype == i.dtype
    assert acc.jvp({"z": z, "y": y}) == {"z": acc.jvp(z), "y": None}
    after = x * 2.0  # after the context: not followed
    assert acc.jvp(after) is None
    _, t = gt.jvp(lambda x: c * 2.0, (x,), (np.ones(2),))  # gt.jvp: zeros
    assert t.numpy().tolist() == [0.0, 0.0]


def test_jvp_nested_structures():
    a = gt.tensor(np.array([1.0, 2.0]))
    b = gt.tensor(np.array(3.0))

    def f(pair, d):
        x, y = pair
        return {"sum": x * y + d["k"], "list": [x * x, gt.sin(y)]}

    k = gt.tensor(np.array([-1.0, 1.0]))
    out, t = gt.jvp(f, ((a, b), {"k": k}),
                    ((np.array([1.0, 0.0]), np.array(2.0)), {"k": np.array([0.5, 0.5])}))
    assert sorted(t) == ["list", "sum"]
    np.testing.assert_allclose(t["sum"].numpy(), [1.0 * 3 + 1 * 2 + 0.5, 0 * 3 + 2 * 2 + 0.5])
    np.testing.assert_allclose(t["list"][0].numpy(), [2.0, 0.0])
    np.testing.assert_allclose(t["list"][1].numpy(), np.cos(3.0) * 2.0)
    # float arrays as primals are converted
    out, t = gt.jvp(lambda x: x * x, (np.array([3.0]),), (np.array([1.0]),))
    assert isinstance(out, gt.Tensor) and t.numpy().tolist() == [6.0]


def test_same_tensor_twice_adds_tangents():
    x = gt.tensor(np.array([2.0]))
    with gt.ForwardAccumulator([x, x], [np.array([1.0]), np.array([0.5])]) as acc:
        y = x * x
    assert acc.jvp(y).numpy().tolist() == [6.0]  # 2 x (1 + 0.5)


def test_variable_primal():
    w = gt.Variable(np.array([1.0, -2.0]), name="w")
    with gt.ForwardAccumulator(w, np.array([1.0, 1.0])) as acc:
        y = gt.sum(w * w)
    assert float(acc.jvp(y)) == pytest.approx(-2.0)


def test_accumulator_usable_again_and_not_twice_at_once():
    x = gt.tensor(np.array(1.0))
    acc = gt.ForwardAccumulator(x, 1.0)
    with acc:
        with pytest.raises(ValueError, match="already active"):
            acc.__enter__()
        y = x * 3.0
    with acc:
        z = y * x
    assert float(acc.jvp(y)) == 3.0 and float(acc.jvp(z)) == 6.0


def test_accumulator_follows_only_its_thread():
    x = gt.tensor(np.array([1.0]))
    seen = {}
    with gt.ForwardAccumulator(x, np.array([1.0])) as acc:
        worker = threading.Thread(target=lambda: seen.setdefault("y", x * 2.0))
        worker.start()
        worker.join()
        z = x * 2.0
    assert acc.jvp(seen["y"]) is None and float(acc.jvp(z)) == 2.0


def test_tangents_live_as_long_as_their_tensors():
    x = gt.tensor(np.ones(1000))
    with gt.ForwardAccumulator(x, np.ones(1000)) as acc:
        y = gt.sin(x)
        t = weakref.ref(acc.jvp(y))
        del y
    gc.collect()
    assert t() is None, "the tangent of a tensor no longer alive is still held"
    assert acc.jvp(x) is not None  # the primal is alive


# --------------------------------------------------------------------------- rules missing
def test_custom_gradient_raises_when_a_tangent_flows_through_it():
    @gt.custom_gradient
    def clipped(x):
        return x * 1.0, lambda dy: gt.clip(dy, -1.0, 1.0)

    x = gt.tensor(np.array([2.0]))
    with gt.ForwardAccumulator(x, np.array([1.0])):
        with pytest.raises(MissingRuleError, match="custom_gradient function 'clipped'"):
            clipped(x)
        y = clipped(gt.tensor(np.array([3.0])))  # no tangent flows: fine
    assert y.numpy().tolist() == [3.0]


def test_extension_primitive_without_jvp_uses_its_transposed_vjp():
    """A primitive declared with a VJP rule but no jvp= (gradtape.extend) gets its tangent by
    transposing the rule; one with neither raises MissingRuleError naming it."""
    flip = REGISTRY["flip"]

    def cumsum_rule(m, rec, g):  # the adjoint of a cumulative sum: a reversed one
        return (m.apply(flip, m.apply(cumsum, m.apply(flip, g, axis=(0,))), axis=(0,)),)

    cumsum = gt.extend.primitive("_test_fwd_cumsum", lambda xp, x: xp.cumsum(x),
                                 rule=cumsum_rule, saves_inputs=False)
    norule = gt.extend.primitive("_test_fwd_norule", lambda xp, x: x * 2)
    try:
        x = np.array([0.5, -1.0, 2.0])
        v = np.array([1.0, 2.0, -1.0])
        _, t = gt.jvp(lambda x: gt.extend.bind(cumsum, x), (gt.tensor(x),), (v,))
        np.testing.assert_allclose(t.numpy(), np.cumsum(v))
        _check_case(lambda x: gt.sin(gt.extend.bind(cumsum, x)) * x, (x,), {},
                    np.random.default_rng(3), "transposed VJP")
        # second order through it: nested accumulators
        xt = gt.tensor(x)
        with gt.ForwardAccumulator(xt, v) as outer:
            with gt.ForwardAccumulator(xt, v) as inner:
                y = gt.sum(gt.extend.bind(cumsum, xt) ** 3.0)
            d1 = inner.jvp(y)
        cv = np.cumsum(v)
        np.testing.assert_allclose(float(d1), np.sum(3 * np.cumsum(x) ** 2 * cv))
        np.testing.assert_allclose(float(outer.jvp(d1)), np.sum(6 * np.cumsum(x) * cv * cv))
        with pytest.raises(MissingRuleError, match="_test_fwd_norule"):
            gt.jvp(lambda x: gt.extend.bind(norule, x), (gt.tensor(x),), (v,))
    finally:
        REGISTRY.pop("_test_fwd_cumsum", None)
        REGISTRY.pop("_test_fwd_norule", None)


# --------------------------------------------------------------------------- errors
def test_argument_errors():
    x = gt.tensor(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"tangents has shape \(3,\), expected primals's shape"):
        gt.ForwardAccumulator(x, np.ones(3))
    with pytest.raises(TypeError, match=r"tangents\[0\] has dtype float32, expected primals\[0\]"):
        gt.ForwardAccumulator([x], [gt.tensor([1.0, 1.0])])
    with pytest.raises(TypeError, match=r"primals\[1\] has dtype int64; forward-mode"):
        gt.ForwardAccumulator([x, gt.tensor(np.array([1, 2]))], [np.ones(2), np.ones(2)])
    with pytest.raises(TypeError, match="primals must be a gradtape Tensor"):
        gt.ForwardAccumulator(np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="structure of primals"):
        gt.ForwardAccumulator([x, x], [np.ones(2)])
    with pytest.raises(ValueError, match="structure of primals"):
        gt.ForwardAccumulator({"a": x}, {"b": np.ones(2)})
    with pytest.raises(TypeError, match="tangents must be a Tensor or array"):
        gt.ForwardAccumulator(x, "up")
    acc = gt.ForwardAccumulator(x, np.ones(2))
    with pytest.raises(ValueError, match="unconnected_gradients"):
        acc.jvp(x, unconnected_gradients="raise")
    with pytest.raises(TypeError, match=r"primals\[1\] must be a gradtape Tensor"):
        acc.jvp([x, 3.0])
    with pytest.raises(TypeError, match="primals must be a tuple"):
        gt.jvp(gt.sin, x, (np.ones(2),))
    with pytest.raises(ValueError, match="1 primal.* but 2 tangent"):
        gt.jvp(gt.sin, (x,), (np.ones(2), np.ones(2)))
    with pytest.raises(ValueError, match=r"jvp\(\): tangents\[0\] has shape \(3,\)"):
        gt.jvp(gt.sin, (x,), (np.ones(3),))
    with pytest.raises(TypeError, match="f must be callable"):
        gt.jvp(3, (x,), (np.ones(2),))
    with pytest.raises(TypeError, match="primals must be floating-point"):
        gt.jvp(gt.sin, (np.array([1, 2]),), (np.ones(2),))
    with pytest.raises(TypeError, match="f must return Tensors"):
        gt.jvp(lambda x: (x, 3.0), (x,), (np.ones(2),))


def test_selections_keep_an_unselected_inf_tangent_out():
    """As the reverse pass: an unselected branch whose tangent is inf (sqrt' at 0) gives a
    zero tangent, not NaN, through where, relu, maximum, max and max_pool2d."""
    x = gt.tensor(np.array([0.0, 4.0]))
    one = np.ones(2)
    _, t = gt.jvp(lambda x: gt.where(x > 0, gt.sqrt(x), 0.0), (x,), (one,))
    assert t.numpy().tolist() == [0.0, 0.25]
    _, t = gt.jvp(lambda x: gt.maximum(gt.sqrt(x), 1.0), (x,), (one,))
    assert t.numpy().tolist() == [0.0, 0.25]
    _, t = gt.jvp(lambda x: gt.relu(gt.sqrt(x) - 1.0), (x,), (one,))
    assert t.numpy().tolist() == [0.0, 0.25]
    _, t = gt.jvp(lambda x: gt.max(gt.sqrt(x)), (x,), (one,))
    assert float(t) == 0.25
    img = gt.reshape(gt.concat([x, gt.tensor(np.array([1.0, 9.0]))]), (1, 1, 2, 2))
    _, t = gt.jvp(lambda x: gt.nn.max_pool2d(gt.sqrt(x), 2), (img,), (np.ones((1, 1, 2, 2)),))
    assert t.numpy().ravel().tolist() == [1.0 / 6.0]


def test_extension_primitive_with_its_own_jvp_rule():
    """jvp=jvp(m, primals, tangents, out, **params) declared with gradtape.extend.primitive."""
    def scale_jvp(m, primals, tangents, out, *, k):
        return tangents[0] * k

    scale = gt.extend.primitive("_test_fwd_scale", lambda xp, x, *, k: x * k,
                                rule=lambda m, rec, g: (g * rec.params["k"],), jvp=scale_jvp,
                                saves_inputs=False)
    bad = gt.extend.primitive("_test_fwd_bad", lambda xp, x: x * 2,
                              rule=lambda m, rec, g: (g * 2,),
                              jvp=lambda m, primals, tangents, out: gt.sum(tangents[0]))
    try:
        x = gt.tensor(np.array([1.0, 2.0]))
        _, t = gt.jvp(lambda x: gt.extend.bind(scale, x, k=3.0), (x,), (np.array([1.0, -1.0]),))
        assert t.numpy().tolist() == [3.0, -3.0]
        with pytest.raises(ValueError, match="JVP rule of primitive '_test_fwd_bad' returned a "
                                             r"tangent of shape \(\)"):
            gt.jvp(lambda x: gt.extend.bind(bad, x), (x,), (np.ones(2),))
    finally:
        REGISTRY.pop("_test_fwd_scale", None)
        REGISTRY.pop("_test_fwd_bad", None)


def test_composes_with_vmap():
    """vmap of jvp over basis tangents is the Jacobian (jacfwd); jvp of a vmapped function."""
    x = gt.tensor(np.array([0.3, -1.2, 2.0]))
    w = gt.tensor(np.arange(6.0).reshape(2, 3) / 6.0)

    def f(x):
        return gt.tanh(w @ x) * gt.sum(x * x)

    jac = gt.vmap(lambda t: gt.jvp(f, (x,), (t,))[1])(gt.tensor(np.eye(3)))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = f(x)
    expected = tape.jacobian(y, x, experimental_use_pfor=False).numpy()
    np.testing.assert_allclose(jac.numpy().T, expected, rtol=1e-12, atol=1e-14)
    xs = gt.tensor(np.linspace(-1.0, 1.0, 6).reshape(2, 3))
    _, t = gt.jvp(gt.vmap(f), (xs,), (np.ones((2, 3)),))
    for i in range(2):
        _, ti = gt.jvp(f, (xs[i],), (np.ones(3),))
        np.testing.assert_allclose(t.numpy()[i], ti.numpy(), rtol=1e-12)
