"""Transforms and the extension API: keyword arguments through vmap, jacrev, jacfwd and
hessian; the extension rules' messages; prod's second derivative with several zeros."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend


def _scaled(a, scale=1.0):
    return gt.sum(a * a) * scale


def test_keyword_arguments_pass_through_the_transforms():
    x = gt.tensor([1.0, 2.0])
    np.testing.assert_array_equal(gt.vmap(lambda a, scale=1.0: a * scale)(
        gt.tensor([[1.0, 2.0], [3.0, 4.0]]), scale=2.0).numpy(), [[2.0, 4.0], [6.0, 8.0]])
    np.testing.assert_array_equal(gt.jacrev(_scaled)(x, scale=2.0).numpy(), [4.0, 8.0])
    np.testing.assert_array_equal(gt.jacfwd(_scaled)(x, scale=2.0).numpy(), [4.0, 8.0])
    np.testing.assert_array_equal(gt.hessian(_scaled)(x, scale=2.0).numpy(), [[4.0, 0.0], [0.0, 4.0]])
    np.testing.assert_array_equal(gt.grad(_scaled)(x, scale=2.0).numpy(), [4.0, 8.0])
    # under vmap a keyword is the same for every example (not mapped), also in pieces
    xs = gt.tensor(np.arange(6.0).reshape(3, 2))
    got = gt.vmap(gt.grad(_scaled), chunk_size=2)(xs, scale=3.0)
    np.testing.assert_array_equal(got.numpy(), 6.0 * np.arange(6.0).reshape(3, 2))


def test_an_extension_jvp_rule_returning_none_raises():
    p = extend.primitive("edge_jvp_none", lambda xp, a: a * 2, rule=lambda m, rec, g: (g * 2,),
                         saves_inputs=False, jvp=lambda m, primals, tangents, out: None)
    x = gt.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=r"JVP rule of primitive 'edge_jvp_none' returned None"):
        gt.jvp(lambda a: extend.bind(p, a), (x,), (x,))


def test_an_extension_batching_rule_must_return_a_pair():
    p = extend.primitive("edge_batch_bare", lambda xp, a: a * 2, rule=lambda m, rec, g: (g * 2,),
                         saves_inputs=False, batch=lambda args, dims: args[0])
    with pytest.raises(TypeError, match=r"batching rule of primitive 'edge_batch_bare' returned "
                                        r"Tensor; a batching rule returns \(out, out_dim\)"):
        gt.vmap(lambda a: extend.bind(p, a))(gt.tensor([[1.0], [2.0]]))


def test_an_extension_vjp_of_the_wrong_shape_names_the_rule():
    p = extend.primitive("edge_vjp_shape", lambda xp, a: a * 2, rule=lambda m, rec, g: (g[:2],),
                         saves_inputs=False)
    x = gt.Variable([1.0, 2.0, 3.0])
    with gt.GradientTape() as tape:
        y = gt.sum(extend.bind(p, x))
    with pytest.raises(ValueError, match=r"the VJP rule of primitive 'edge_vjp_shape' returned a "
                                         r"gradient of shape \(2,\) for an input of shape \(3,\)"):
        tape.gradient(y, x)


def test_an_extension_batching_rule_must_keep_the_batch_size_and_a_valid_axis():
    short = extend.primitive("edge_batch_short", lambda xp, a: a * 2, rule=lambda m, rec, g: (g * 2,),
                             saves_inputs=False, batch=lambda args, dims: (args[0][:2] * 2, dims[0]))
    with pytest.raises(ValueError, match=r"batching rule of primitive 'edge_batch_short' returned a "
                                         r"result of shape \(2, 2\) whose batch axis 0 has size 2; "
                                         r"the batch has 3 examples"):
        gt.vmap(lambda a: extend.bind(short, a))(gt.ones((3, 2)))  # (was 2 rows, silently)
    far = extend.primitive("edge_batch_far", lambda xp, a: a * 2, rule=lambda m, rec, g: (g * 2,),
                           saves_inputs=False, batch=lambda args, dims: (args[0] * 2, 5))
    with pytest.raises(ValueError, match=r"batching rule of primitive 'edge_batch_far' returned "
                                         r"out_dim 5, out of range for its result of shape \(3, 2\)"):
        gt.vmap(lambda a: extend.bind(far, a))(gt.ones((3, 2)))


@pytest.mark.parametrize("result", [[1.0, 2.0], "abc"])
def test_an_extension_impl_must_return_an_array(result):
    p = extend.elementwise(f"edge_impl_{type(result).__name__}", lambda xp, x: result, d="1")
    with pytest.raises(TypeError, match=rf"primitive 'edge_impl_{type(result).__name__}': impl "
                                        rf"returned {type(result).__name__}; it must return an "
                                        r"array of the backend \(\w+\.ndarray"):
        extend.bind(p, gt.ones(2))


def test_an_extension_vjp_rule_returning_none_names_the_primitive():
    p = extend.primitive("edge_rule_none", lambda xp, a: a * 2, rule=lambda m, rec, g: None,
                         saves_inputs=False)
    x = gt.Variable([1.0, 2.0])
    with gt.GradientTape() as tape:
        y = gt.sum(extend.bind(p, x))
    with pytest.raises(TypeError, match=r"the VJP rule of primitive 'edge_rule_none' returned "
                                        r"NoneType; it must return a tuple with one gradient"):
        tape.gradient(y, x)


def test_extension_declarations_are_checked_at_registration():
    with pytest.raises(TypeError, match=r"^elementwise: name must be a non-empty str, got 5 \(int\)"):
        extend.elementwise(5, lambda xp, x: x, d="1")
    with pytest.raises(TypeError, match=r"^primitive: name must be a non-empty str, got None"):
        extend.primitive(None, lambda xp, x: x)
    with pytest.raises(KeyError, match="no primitive named 'edge_typo'"):
        extend.get("edge_typo")  # (an int name had broken this listing with a TypeError)
    with pytest.raises(TypeError, match=r"elementwise 'edge_d_int': d must be a derivative "
                                        r"expression string, or a tuple of them \(one per input\), "
                                        r"got 2 \(int\)"):
        extend.elementwise("edge_d_int", lambda xp, x: x, d=2)
    with pytest.raises(TypeError, match=r"elementwise 'edge_impl_5': impl must be callable"):
        extend.elementwise("edge_impl_5", 5, d="1")


def test_extend_bind_takes_a_primitive_or_a_registered_name():
    np.testing.assert_array_equal(extend.bind("mul", gt.tensor([2.0]), gt.tensor([3.0])).numpy(), [6.0])
    with pytest.raises(KeyError, match="no primitive named 'edge_unknown'"):
        extend.bind("edge_unknown", gt.ones(2))
    with pytest.raises(TypeError, match=r"extend.bind: prim must be a Primitive or the name of a "
                                        r"registered one, got 5 \(int\)"):
        extend.bind(5, gt.ones(2))
    p = extend.elementwise("edge_add_arrays", lambda xp, a, b: a + b, d=("1", "1"))
    np.testing.assert_array_equal(extend.bind(p, np.ones(2), np.ones(2)).numpy(), [2.0, 2.0])


def test_a_builtin_name_is_refused_as_taken():
    with pytest.raises(ValueError, match=r"primitive 'tanh': the name is taken by one of "
                                         r"gradtape's built-in primitives"):
        extend.elementwise("tanh", lambda xp, x: x, "1")
    extend.elementwise("edge_twice", lambda xp, x: x, "1")
    with pytest.raises(ValueError, match=r"primitive 'edge_twice' is declared twice"):
        extend.elementwise("edge_twice", lambda xp, x: x, "1")


def _prod_hessian(x: np.ndarray) -> np.ndarray:
    """d2 prod / dx_i dx_j: the product of the entries other than i and j (0 on the diagonal)."""
    n = x.size
    h = np.zeros((n, n))
    for i, j in itertools.product(range(n), range(n)):
        if i != j:
            h[i, j] = np.prod(np.delete(x, [i, j]))
    return h


@pytest.mark.parametrize("x", [[0.0, 0.0, 2.0, 3.0], [0.0, 1.5, 0.0, -2.0, 0.5], [0.0, 0.0, 0.0, 2.0],
                               [0.0, 2.0, 3.0], [1.5, 2.0, -3.0], [0.0, 0.0]])
def test_prod_second_derivative_is_exact_with_zeros(x):
    x = np.array(x)
    want = _prod_hessian(x)
    t = gt.tensor(x)
    for second in (gt.hessian(gt.prod), gt.jacrev(gt.jacrev(gt.prod)),
                   gt.jacrev(gt.jacfwd(gt.prod)), gt.jacfwd(gt.jacfwd(gt.prod))):
        np.testing.assert_allclose(second(t).numpy(), want, atol=1e-12)
    v = gt.tensor(np.linspace(0.5, 1.5, x.size))
    np.testing.assert_allclose(gt.hvp(gt.prod, (t,), (v,))[0].numpy(), want @ v.numpy(), atol=1e-12)
    rows = gt.hessian(lambda a: gt.sum(gt.prod(gt.reshape(a, (1, -1)), axis=1)))(t)
    np.testing.assert_allclose(rows.numpy(), want, atol=1e-12)


def test_messages_name_the_transform_called():
    for transform, name in [(gt.grad, "gt.grad"), (gt.hessian, "gt.hessian"),
                            (gt.value_and_grad, "gt.value_and_grad")]:
        with pytest.raises(TypeError, match=rf"^{name}\(<lambda>\): the function must return a "
                                            r"scalar"):
            transform(lambda x: x * 2)(gt.tensor([1.0, 2.0]))


@pytest.mark.parametrize("transform", ["grad", "value_and_grad", "jacrev", "jacfwd", "hessian"])
@pytest.mark.parametrize("argnums", [0.0, "0", None, (0, 1.0)])
def test_argnums_must_be_an_int_or_a_tuple_of_ints(transform, argnums):
    # refused when the transform is made (a float was "'float' object is not iterable" at the call)
    with pytest.raises(TypeError, match=rf"^gt.{transform}: argnums must be an int or a tuple of "
                                        rf"ints, got {re.escape(repr(argnums))}"):
        getattr(gt, transform)(_scaled, argnums=argnums)


def test_a_none_cotangent_is_refused_not_read_as_nan():
    _, f_scalar = gt.vjp(lambda x: gt.sum(x * x), gt.tensor([1.0, 3.0]))  # (was a NaN gradient)
    _, f_vector = gt.vjp(lambda x: x * x, gt.tensor([1.0, 3.0]))  # (was a shape mismatch)
    for vjp_fn in (f_scalar, f_vector):
        with pytest.raises(TypeError, match=r"vjp_fn: cotangent 0 must be a Tensor \(or array\), "
                                            r"got None"):
            vjp_fn(None)
    with pytest.raises(TypeError, match=r"cotangent 0 must be a Tensor \(or array\), got 'a'"):
        f_scalar("a")
    np.testing.assert_array_equal(f_scalar(2.0)[0].numpy(), [4.0, 12.0])


def test_a_host_read_in_jacobians_vectorized_backward_suggests_the_loop():
    @gt.custom_gradient
    def doubled(x):
        def grad(dy):
            return gt.tensor(dy.numpy() * 2)  # a host read: one value per row, not batched
        return x * 2, grad

    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = doubled(x)
    with pytest.raises(TypeError, match=r"numpy\(\) of a batched tensor inside tape.jacobian's "
                                        r"vectorized backward .* experimental_use_pfor=False"):
        tape.jacobian(y, x)
    np.testing.assert_array_equal(tape.jacobian(y, x, experimental_use_pfor=False).numpy(),
                                  [[2.0, 0.0], [0.0, 2.0]])


def _cumprod_hessian(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """d2/dx_a dx_b of sum_j w_j cumprod(x)_j: sum over j >= a, b of w_j times the product of
    x_k, k <= j, other than a and b."""
    n = x.size
    h = np.zeros((n, n))
    for j in range(n):
        for a, b in itertools.product(range(j + 1), range(j + 1)):
            if a != b:
                h[a, b] += weights[j] * np.prod(np.delete(x[:j + 1], [a, b]))
    return h


@pytest.mark.parametrize("x", [[0.0, 0.0, 2.0, 3.0], [1.5, 0.0, 2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 2.0],
                               [1.0, 0.0, 0.0, 0.0, 2.0], [2.0, 3.0, 0.5], [0.0, 1.0, 2.0]])
def test_cumprod_second_derivative_is_exact_with_zeros(x):
    x = np.array(x)
    w = np.linspace(0.5, 1.5, x.size)
    want = _cumprod_hessian(x, w)

    def f(a):
        return gt.sum(gt.cumprod(a) * gt.tensor(w))

    t = gt.tensor(x)
    for second in (gt.hessian(f), gt.jacrev(gt.jacrev(f)), gt.jacrev(gt.jacfwd(f)),
                   gt.jacfwd(gt.jacfwd(f))):  # every order of reverse and forward mode
        np.testing.assert_allclose(second(t).numpy(), want, atol=1e-12)
    first = [sum(w[j] * np.prod(np.delete(x[:j + 1], [i])) for j in range(i, x.size))
             for i in range(x.size)]
    np.testing.assert_allclose(gt.grad(f)(t).numpy(), first, atol=1e-12)


def test_each_argument_of_a_transform_is_an_input_of_its_own():
    # the transforms watched the caller's Tensor object, so every other reference to it (a
    # closure, a second argument, another leaf, the tangent) was differentiated too:
    # grad(lambda y: sum(y * x))(x) gave 2x, JAX gives x
    a = np.array([0.3, -1.2, 0.5])
    x = gt.tensor(a)
    ones = gt.tensor(np.ones(3))
    np.testing.assert_allclose(gt.grad(lambda y: gt.sum(y * x))(x).numpy(), a)
    np.testing.assert_allclose(gt.hessian(lambda w: gt.sum((w - x) ** 2))(x).numpy(), 2 * np.eye(3))
    f = lambda z: gt.sum(gt.sin(z)) * gt.sum(z ** 2)  # noqa: E731
    hv = gt.hvp(f, (x,), (x,))
    hv = hv[0] if isinstance(hv, tuple) else hv
    H = gt.hessian(f)(gt.tensor(a)).numpy()
    np.testing.assert_allclose(hv.numpy(), H @ a, rtol=1e-12)
    g = gt.grad(lambda p: gt.sum(p["u"] * p["v"] ** 2))({"u": x, "v": x})
    np.testing.assert_allclose(g["u"].numpy(), a ** 2)
    np.testing.assert_allclose(g["v"].numpy(), 2 * a * a)
    gu, gv = gt.grad(lambda u, v: gt.sum(u * v ** 2), argnums=(0, 1))(x, x)
    np.testing.assert_allclose(gu.numpy(), a ** 2)
    np.testing.assert_allclose(gv.numpy(), 2 * a * a)
    one = gt.tensor(1.0, dtype="float64")  # perturbation confusion: d/dt t * (d/ds (t + s)) = 1
    assert float(gt.grad(lambda t: t * gt.grad(lambda s: t + s)(t))(one)) == 1.0
    np.testing.assert_allclose(gt.jvp(lambda y: x * y, (x,), (ones,))[1].numpy(), a)
    np.testing.assert_allclose(gt.vjp(lambda y: x * y, x)[1](ones)[0].numpy(), a)
    np.testing.assert_allclose(gt.jacrev(lambda y: y * x)(x).numpy(), np.diag(a))
    np.testing.assert_allclose(gt.jacfwd(lambda y: y * x)(x).numpy(), np.diag(a))
    # a Variable is passed as itself: a model reading its own Variables is differentiated
    w = gt.Variable(a)
    np.testing.assert_allclose(gt.grad(lambda v: gt.sum(w * x))(w).numpy(), a)
    np.testing.assert_allclose(gt.jvp(lambda v: gt.sum(w * x), (w,), (ones,))[1].numpy(), a.sum())
    # hvp's tangents are constants, also a Variable given as its own tangent (H v at v)
    cube = lambda u: gt.sum(u ** 3)  # noqa: E731
    hv = gt.hvp(cube, (w,), (w,))
    hv = hv[0] if isinstance(hv, tuple) else hv
    np.testing.assert_allclose(hv.numpy(), 6 * a * a)


def _int_tensor_cases():
    f = lambda a, x: gt.sum(a * x)  # noqa: E731
    fl = gt.tensor([1.0, 2.0, 3.0])
    ints = gt.tensor([1, 2, 3])
    return [
        (lambda: gt.grad(f, argnums=1)(fl, ints), r"gt\.grad\(<lambda>\): argument 1 is "
         r"differentiated but is a Tensor of dtype int64 \(shape \(3,\)\).*leave it out of argnums"),
        (lambda: gt.value_and_grad(lambda p: gt.sum(p["w"] * 1.0))({"w": gt.tensor([1, 2])}),
         r"gt\.value_and_grad\(<lambda>\): argument 0\['w'\] is differentiated but is a Tensor "
         r"of dtype int64"),
        (lambda: gt.grad(lambda v: gt.sum(v * 1.0))(gt.Variable(np.array([1, 2]))),
         r"argument 0 is differentiated but is a Variable of dtype int64.*gt\.Variable\(\.\.\., "
         r"dtype=\"float32\"\)"),
        (lambda: gt.jacrev(lambda x: x * 1.5)(gt.tensor([1, 2])),
         r"gt\.jacrev\(<lambda>\): argument 0 is differentiated but is a Tensor of dtype int64"),
        (lambda: gt.vjp(lambda a, i: a * i, fl, ints),  # refused at the call, not in vjp_fn
         r"gt\.vjp\(<lambda>\): argument 1 is differentiated but is a Tensor of dtype int64"),
        (lambda: gt.hvp(lambda x: gt.sum(x * 1.0), (ints,), (fl,)),
         r"gt\.hvp\(<lambda>\): argument 0 is differentiated but is a Tensor of dtype int64"),
        (lambda: gt.jacrev(lambda x: x * 1.0)(np.array([1, 2])),
         r"^gt\.jacrev\(<lambda>\): argument 0 is differentiated but holds an integer.*leave it "
         r"out of argnums$"),
        (lambda: gt.hessian(lambda x: gt.sum(x * 1.0))(np.array([1, 2])),
         r"^gt\.hessian\(<lambda>\): argument 0 is differentiated but holds an integer"),
        (lambda: gt.grad(lambda p: gt.sum(p[1]["b"] * 1.0))([gt.tensor(1.0), {"b": np.array([1])}]),
         r"gt\.grad\(<lambda>\): argument 0\[1\]\['b'\] is differentiated but holds an integer"),
        (lambda: gt.jacrev(lambda a, x: x * a, argnums=1)(1.5, ints),  # named as the call's
         r"^gt\.jacrev\(<lambda>\): argument 1 is differentiated but is a Tensor of dtype int64"),
        (lambda: gt.grad(lambda z: gt.sum(gt.real(z * z)))(gt.tensor(np.array([1 + 1j]))),
         r"argument 0 is differentiated but is a Tensor of dtype complex128.*real and imaginary"),
        (lambda: gt.jacrev(lambda x: [x, 1.0])(fl), r"^gt\.jacrev\(<lambda>\): output leaf 1 is "
         r"a float, not a Tensor"),
    ]


@pytest.mark.parametrize("case", range(len(_int_tensor_cases())))
def test_a_bad_argument_is_refused_naming_the_transform_and_the_argument(case):
    # an integer Tensor got tape.gradient's "sources[0] has dtype int64" (the index of the
    # flattened sources, whatever argnums was), and gt.vjp took it until vjp_fn was called;
    # gt.jacrev and gt.hessian named gt.vjp and gt.jacfwd
    call, message = _int_tensor_cases()[case]
    with pytest.raises(TypeError, match=message):
        call()
