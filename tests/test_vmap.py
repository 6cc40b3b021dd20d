"""gt.vmap and the functional transforms (grad, value_and_grad, vjp, jacrev, hessian), and the
vectorized tape.jacobian / batch_jacobian, through the public API: every result is compared
with a Python loop over examples or with the loop path (experimental_use_pfor=False)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY, MissingRuleError, elementwise, primitive

RNG = np.random.default_rng(0)


def t(*shape: int, dtype: type = np.float64) -> gt.Tensor:
    return gt.tensor(RNG.standard_normal(shape).astype(dtype))


def close(a: gt.Tensor | np.ndarray, b: gt.Tensor | np.ndarray, tol: float = 1e-10) -> None:
    host = [v.numpy() if isinstance(v, gt.Tensor) else np.asarray(v) for v in (a, b)]  # any backend
    np.testing.assert_allclose(host[0], host[1], rtol=tol, atol=tol)


def mlp_loss(params: dict, x: gt.Tensor, y: gt.Tensor) -> gt.Tensor:
    h = gt.tanh(x @ params["W1"] + params["b1"])
    logits = h @ params["W2"] + params["b2"]
    return gt.nn.cross_entropy(logits, y)


def mlp_params(d: int = 5, h: int = 7, k: int = 3, dtype: type = np.float64) -> dict:
    return {"W1": t(d, h, dtype=dtype), "b1": t(h, dtype=dtype),
            "W2": t(h, k, dtype=dtype), "b2": t(k, dtype=dtype)}


# ------------------------------------------------------------------------------------ vmap
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vmap_matches_loop_mixed_axes(dtype: type) -> None:
    def f(a: gt.Tensor, w: gt.Tensor, b: gt.Tensor) -> gt.Tensor:
        return gt.sum(gt.tanh(a @ w) * b, axis=0)

    A = t(3, 4, 5, dtype=dtype)   # batch on axis 1
    W = t(5, 2, dtype=dtype)      # shared
    Bv = t(2, 4, dtype=dtype)     # batch on axis 1 (last)
    out = gt.vmap(f, in_axes=(1, None, -1))(A, W, Bv)
    ref = np.stack([f(A[:, i], W, Bv[:, i]).numpy() for i in range(4)])
    assert out.shape == (4, 2) and out.dtype == dtype
    close(out, ref, 1e-5 if dtype == np.float32 else 1e-12)


def test_vmap_out_axes_and_trees() -> None:
    def f(d: dict, pair: tuple) -> dict:
        return {"s": d["x"] * pair[0], "t": (d["y"] + pair[1], gt.tensor(2.0))}

    X, Y, P0, P1 = t(3, 2), t(3, 4), t(2), t(3, 4)
    out = gt.vmap(f, in_axes=({"x": 0, "y": 0}, (None, 0)),
                  out_axes={"s": 1, "t": (0, None)})(dict(x=X, y=Y), (P0, P1))
    close(out["s"], (X.numpy() * P0.numpy()).T)
    close(out["t"][0], Y.numpy() + P1.numpy())
    assert float(out["t"][1]) == 2.0


def test_vmap_unbatched_output_is_broadcast() -> None:
    out = gt.vmap(lambda x, w: w * 2.0, in_axes=(0, None))(t(4, 2), gt.tensor([1.0, 2.0]))
    close(out, np.tile([2.0, 4.0], (4, 1)))


def test_nested_vmap_outer_product() -> None:
    a, b = t(3), t(4)
    out = gt.vmap(gt.vmap(lambda x, y: x * y, in_axes=(None, 0)), in_axes=(0, None))(a, b)
    close(out, np.outer(a.numpy(), b.numpy()))


def test_nested_vmap_matmul_and_reduction() -> None:
    X = t(2, 3, 4)
    W = t(4, 5)
    out = gt.vmap(gt.vmap(lambda x: gt.sum(gt.tanh(x @ W))))(X)
    close(out, np.tanh(X.numpy() @ W.numpy()).sum(-1))


def test_axis_size_and_chunk_size() -> None:
    out = gt.vmap(lambda: gt.tensor([1.0, 2.0]), axis_size=3)()
    assert out.shape == (3, 2)
    X = t(10, 3)
    full = gt.vmap(lambda x: gt.sum(x * x))(X)
    chunked = gt.vmap(lambda x: gt.sum(x * x), chunk_size=3)(X)
    close(full, chunked)
    close(full, (X.numpy() ** 2).sum(1))


def test_chunk_size_bounds_the_memory_of_the_batch(peak_bytes) -> None:  # type: ignore[no-untyped-def]
    # chunk_size runs the batch in pieces: the intermediates of one piece at a time (the
    # [64, 256, 256] outer products here), the same result as all at once
    X = t(64, 256)

    def f(x: gt.Tensor) -> gt.Tensor:
        return gt.sum(gt.tanh(gt.outer(x, x)), axis=0)  # a [256, 256] intermediate per example

    full_peak = peak_bytes(lambda: gt.vmap(f)(X))
    chunk_peak = peak_bytes(lambda: gt.vmap(f, chunk_size=8)(X))
    close(gt.vmap(f)(X), gt.vmap(f, chunk_size=8)(X))
    assert full_peak > 64 * 256 * 256 * 8  # the whole batch's intermediates at once
    assert chunk_peak < full_peak / 3, (chunk_peak, full_peak)


def test_vmap_errors() -> None:
    with pytest.raises(ValueError, match="batch sizes differ"):
        gt.vmap(lambda a, b: a + b)(t(3), t(4))
    with pytest.raises(ValueError, match="axis_size"):
        gt.vmap(lambda a: a, in_axes=None)(t(3))
    with pytest.raises(ValueError, match="out of range"):
        gt.vmap(lambda a: a, in_axes=2)(t(3, 2))
    with pytest.raises(ValueError, match="in_axes has 2 entries"):
        gt.vmap(lambda a: a, in_axes=(0, 0))(t(3))
    with pytest.raises(ValueError, match="out_axes is None"):
        gt.vmap(lambda a: a, out_axes=None)(t(3))
    with pytest.raises(TypeError, match="truth value"):
        gt.vmap(lambda a: a if a > 0 else -a)(t(3))
    with pytest.raises(TypeError, match="numpy"):
        gt.vmap(lambda a: a.numpy())(t(3))
    with pytest.raises(ValueError, match="chunk_size"):
        gt.vmap(lambda a: a, chunk_size=0)


def test_missing_batching_rule_names_the_primitive() -> None:
    p = primitive("test_vmap_no_rule", lambda xp, x: x * 3.0, rule=lambda m, rec, g: (g * 3.0,),
                  saves_inputs=False)
    assert gt.tensor([1.0]).shape == (1,)
    with pytest.raises(MissingRuleError, match="test_vmap_no_rule"):
        gt.vmap(lambda x: p(x))(t(3))


def test_custom_elementwise_is_batched_by_the_factory() -> None:
    cube = elementwise("test_vmap_cube", lambda xp, x: x * x * x, d="3 * x * x")
    X = t(4, 3)
    close(gt.vmap(lambda x: cube(x))(X), X.numpy() ** 3)


def test_tape_inside_vmap_gives_per_example_gradients() -> None:
    W = t(3, 2)
    X = t(5, 3)

    def per_example(x: gt.Tensor) -> gt.Tensor:
        with gt.GradientTape() as tape:
            tape.watch(W)
            loss = gt.sum(gt.tanh(x @ W) ** 2)
        return tape.gradient(loss, W)

    out = gt.vmap(per_example)(X)
    ref = np.stack([per_example(X[i]).numpy() for i in range(5)])
    assert out.shape == (5, 3, 2)
    close(out, ref)


def test_tape_outside_vmap_differentiates_through_it() -> None:
    W = t(3, 2)
    X = t(5, 3)
    with gt.GradientTape() as tape:
        tape.watch(W)
        per = gt.vmap(lambda x: gt.sum(gt.sin(x @ W)), in_axes=0)(X)
        loss = gt.sum(per)
    g = tape.gradient(loss, W)
    with gt.GradientTape() as tape2:
        tape2.watch(W)
        ref_loss = gt.sum(gt.sin(X @ W))
    close(g, tape2.gradient(ref_loss, W))


# ---------------------------------------------------------------------- grad and friends
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vmap_grad_per_example_mlp(dtype: type) -> None:
    params = mlp_params(dtype=dtype)
    X = t(6, 5, dtype=dtype)
    Y = gt.tensor(RNG.integers(0, 3, size=6))
    per = gt.vmap(gt.grad(mlp_loss), in_axes=(None, 0, 0))(params, X, Y)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for i in range(6):
        one = gt.grad(mlp_loss)(params, X[i:i + 1], Y[i:i + 1])
        for k in params:
            assert per[k].shape == (6,) + params[k].shape and per[k].dtype == dtype
            close(per[k][i], one[k], tol)
    batch = gt.grad(lambda p: gt.sum(gt.vmap(mlp_loss, in_axes=(None, 0, 0))(p, X[:, None], Y[:, None])))(params)
    for k in params:
        close(gt.sum(per[k], axis=0), batch[k], tol)


def test_value_and_grad_argnums_aux() -> None:
    def f(a: gt.Tensor, b: gt.Tensor) -> tuple:
        return gt.sum(a * b * b), {"a2": a * 2}

    a, b = t(3), t(3)
    (v, aux), (ga, gb) = gt.value_and_grad(f, argnums=(0, 1), has_aux=True)(a, b)
    close(v, (a.numpy() * b.numpy() ** 2).sum())
    close(aux["a2"], a.numpy() * 2)
    close(ga, b.numpy() ** 2)
    close(gb, 2 * a.numpy() * b.numpy())
    g, aux2 = gt.grad(f, has_aux=True)(a, b)
    close(g, ga)


def test_grad_unused_argument_gives_zeros_and_errors() -> None:
    g = gt.grad(lambda a, b: gt.sum(a * 2.0), argnums=1)(t(2), t(3))
    close(g, np.zeros(3))
    with pytest.raises(TypeError, match="shape"):
        gt.grad(lambda a: a * 2)(t(3))
    with pytest.raises(TypeError, match="integer"):
        gt.grad(lambda a: a * 2)(3)
    with pytest.raises(ValueError, match="out of range"):
        gt.grad(lambda a: a, argnums=2)(t(1))


def test_grad_of_grad_and_vmap_of_grad_of_grad() -> None:
    f = lambda x: gt.sum(gt.sin(x) * x)  # noqa: E731
    x = t(4)
    d2 = gt.grad(lambda x: gt.sum(gt.grad(f)(x)))(x)
    xn = x.numpy()
    close(d2, 2 * np.cos(xn) - xn * np.sin(xn))
    X = t(3, 4)
    per = gt.vmap(gt.grad(lambda x: gt.sum(gt.grad(f)(x))))(X)
    close(per, 2 * np.cos(X.numpy()) - X.numpy() * np.sin(X.numpy()))


def test_vjp_and_batched_vjp() -> None:
    W = t(3, 4)
    x = t(3)
    out, vjp_fn = gt.vjp(lambda x, W: gt.tanh(x @ W), x, W)
    ct = t(4)
    gx, gW = vjp_fn(ct)
    d = (1 - np.tanh(x.numpy() @ W.numpy()) ** 2) * ct.numpy()
    close(gx, W.numpy() @ d)
    close(gW, np.outer(x.numpy(), d))
    cts = t(6, 4)
    gxs, gWs = gt.vmap(vjp_fn)(cts)
    for i in range(6):
        gi = vjp_fn(cts[i])
        close(gxs[i], gi[0])
        close(gWs[i], gi[1])
    with pytest.raises(ValueError, match="shape"):
        vjp_fn(t(3))
    with pytest.raises(TypeError, match="dtype float32, the output has dtype float64"):
        vjp_fn(t(4, dtype=np.float32))  # (was cast; tape.gradient and jvp refuse it too)
    close(vjp_fn(np.eye(4)[1])[0], W.numpy()[:, 1] * d[1] / ct.numpy()[1])  # an array: converted


# ------------------------------------------------------------------------------ jacobians
def _jac_cases() -> list:
    W = t(5, 4)
    return [
        (lambda x: gt.tanh(W @ x), (4,)),
        (lambda x: gt.nn.softmax(x * x, axis=-1), (2, 3)),
        (lambda x: gt.sum(x * x, axis=0), (3, 2)),
        (lambda x: gt.reshape(x, (6,))[1:4] * 2.0, (2, 3)),
        (lambda x: gt.max(x, axis=1) + gt.mean(x), (3, 4)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_jacobian_vectorized_equals_loop(case: int) -> None:
    f, shape = _jac_cases()[case]
    x = t(*shape)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = f(x)
    jv = tape.jacobian(y, x)
    jl = tape.jacobian(y, x, experimental_use_pfor=False)
    assert jv.shape == y.shape + x.shape
    close(jv, jl)
    close(gt.jacrev(f)(x), jl)


def test_jacobian_is_differentiable_under_an_outer_tape() -> None:
    x = t(3)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = gt.sin(x) * x
        j = inner.jacobian(y, x)
        s = gt.sum(j)
    g = outer.gradient(s, x)
    xn = x.numpy()
    close(g, 2 * np.cos(xn) - xn * np.sin(xn))


def test_batch_jacobian_vectorized_equals_loop() -> None:
    W = t(4, 3)
    X = t(5, 4)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(X)
        Y = gt.tanh(X @ W)
    bj = tape.batch_jacobian(Y, X)
    assert bj.shape == (5, 3, 4)
    close(bj, tape.batch_jacobian(Y, X, experimental_use_pfor=False))
    for i in range(5):
        d = 1 - np.tanh(X.numpy()[i] @ W.numpy()) ** 2
        close(bj[i], d[:, None] * W.numpy().T)


def test_jacobian_empty_and_unconnected() -> None:
    x = t(3)
    u = t(2)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([x, u])
        y = x[:0] * 2.0
        z = x * 2.0
    assert tape.jacobian(y, x).shape == (0, 3)
    assert tape.jacobian(z, u) is None
    assert tape.jacobian(z, u, unconnected_gradients="zero").shape == (3, 2)


def test_jacrev_argnums_and_hessian() -> None:
    def f(a: gt.Tensor, b: gt.Tensor) -> gt.Tensor:
        return gt.sum(a * a * b)

    a, b = t(3), t(3)
    ja, jb = gt.jacrev(f, argnums=(0, 1))(a, b)
    close(ja, 2 * a.numpy() * b.numpy())
    close(jb, a.numpy() ** 2)
    H = gt.hessian(lambda x: gt.sum(gt.sin(x) * x[0]))(a)
    an = a.numpy()
    ref = np.diag(-np.sin(an) * an[0])
    ref[0, :] += np.cos(an)
    ref[:, 0] += np.cos(an)
    close(H, ref)


def test_hessian_of_mlp_loss_matches_nested_tapes() -> None:
    params = mlp_params(d=3, h=4, k=2)
    X = t(4, 3)
    Y = gt.tensor(RNG.integers(0, 2, size=4))
    W1 = params["W1"]

    def loss(w: gt.Tensor) -> gt.Tensor:
        return mlp_loss({**params, "W1": w}, X, Y)

    H = gt.hessian(loss)(W1)
    with gt.GradientTape(persistent=True) as outer:
        outer.watch(W1)
        with gt.GradientTape() as inner:
            inner.watch(W1)
            L = loss(W1)
        g = inner.gradient(L, W1)
    ref = outer.jacobian(g, W1, experimental_use_pfor=False)
    assert H.shape == (3, 4, 3, 4)
    close(H, ref, 1e-9)


# ------------------------------------------------------------------ forward-mode compositions
def test_jacfwd_equals_jacrev_and_argnums() -> None:
    W = t(4, 3)

    def f(x: gt.Tensor, w: gt.Tensor) -> gt.Tensor:
        return gt.nn.softmax(gt.tanh(x @ w) * 2.0) + gt.sum(x * x)

    x = t(4)
    for argnums in (0, 1):
        close(gt.jacfwd(f, argnums)(x, W), gt.jacrev(f, argnums)(x, W))
    jx, jw = gt.jacfwd(f, argnums=(0, 1))(x, W)
    assert jx.shape == (3, 4) and jw.shape == (3, 4, 3)


def test_jacfwd_of_a_tree_argument_and_tree_output() -> None:
    p = {"a": t(2), "b": t(3)}

    def f(p: dict) -> tuple:
        return gt.sum(p["a"]) * p["b"], gt.sin(p["a"])

    fw = gt.jacfwd(f)(p)
    rv = gt.jacrev(f)(p)
    for k in ("a", "b"):
        close(fw[0][k], rv[0][k])
        close(fw[1][k], rv[1][k])


def test_hvp_forward_over_reverse_equals_hessian_rows() -> None:
    params = mlp_params(d=3, h=4, k=2)
    X = t(5, 3)
    Y = gt.tensor(RNG.integers(0, 2, size=5))

    def loss(w: gt.Tensor) -> gt.Tensor:
        return mlp_loss({**params, "W1": w}, X, Y)

    W1 = params["W1"]
    V = t(3, 4)
    (hv,) = gt.hvp(loss, (W1,), (V,))
    H = gt.hessian(loss)(W1).numpy().reshape(12, 12)
    close(hv, (H @ V.numpy().reshape(12)).reshape(3, 4), 1e-9)
    # the same by nested tapes (reverse over reverse)
    with gt.GradientTape() as outer:
        outer.watch(W1)
        with gt.GradientTape() as inner:
            inner.watch(W1)
            L = loss(W1)
        gv = gt.sum(inner.gradient(L, W1) * V)
    close(outer.gradient(gv, W1), hv, 1e-9)


def test_hvp_of_a_parameter_tree_and_several_arguments_equals_forward_over_reverse() -> None:
    """gt.hvp (reverse over forward) against jvp(grad) (forward over reverse) and the
    Hessian: a dict argument, a second argument, a Variable read inside f (not differentiated)
    and an argument f does not use (zeros)."""
    params = mlp_params(d=3, h=4, k=2)
    X = t(5, 3)
    Y = gt.tensor(RNG.integers(0, 2, size=5))
    scale = gt.Variable(RNG.standard_normal(()) + 2.0)

    def loss(p: dict, x: gt.Tensor, unused: gt.Tensor) -> gt.Tensor:
        return mlp_loss(p, x, Y) * scale + gt.sum(gt.sin(x) * x)

    tang = ({k: t(*v.shape) for k, v in params.items()}, t(5, 3), t(2))
    prim = (params, X, t(2))
    got = gt.hvp(loss, prim, tang)
    want = gt.jvp(gt.grad(loss, (0, 1, 2)), prim, tang)[1]
    for k in params:
        close(got[0][k], want[0][k], 1e-9)
    close(got[1], want[1], 1e-9)
    assert got[2].shape == (2,) and not np.any(got[2].numpy())
    (hx,) = gt.hvp(lambda x: loss(params, x, prim[2]), (X,), (tang[1],))  # the x-x block alone
    H = gt.hessian(lambda x: loss(params, x, prim[2]))(X).numpy().reshape(15, 15)
    close(hx, (H @ tang[1].numpy().reshape(15)).reshape(5, 3), 1e-9)


def test_hvp_through_a_custom_gradient_takes_nested_tapes() -> None:
    """Forward mode cannot go through a custom_gradient function, so gt.hvp differentiates
    its custom gradient reverse over reverse (nested tapes): here the gradient is defined as
    3 * x * dy (not cos), so the 'Hessian' is 3 everywhere. Bad calls name gt.hvp."""
    @gt.custom_gradient
    def odd(x):
        def grad(dy):
            return dy * x * 3.0
        return gt.sin(x), grad

    x, v = t(4), t(4)
    (hv,) = gt.hvp(lambda x: gt.sum(odd(x)), (x,), (v,))
    close(hv, 3.0 * v.numpy())
    with pytest.raises(TypeError, match=r"gt\.hvp.*scalar"):
        gt.hvp(lambda x: x * x, (x,), (v,))
    with pytest.raises(TypeError, match=r"gt\.hvp.*integer.*differentiates every argument"):
        gt.hvp(lambda x: gt.sum(x * 1.0), (np.arange(3),), (np.ones(3),))
    with pytest.raises(ValueError, match=r"gt\.hvp.*primals is empty"):
        gt.hvp(lambda: gt.tensor(1.0), (), ())


def test_hvp_keeps_the_forward_mode_error_of_a_primitive_without_rules() -> None:
    """A primitive with neither a JVP nor a VJP rule is not a custom gradient: gt.hvp raises
    forward mode's error naming it (no second run of f through nested tapes)."""
    bare = primitive("_test_hvp_bare", lambda xp, x: x * 2.0)
    calls = []

    def f(x):
        calls.append(1)
        return gt.sum(bare(x))
    try:
        with pytest.raises(MissingRuleError, match="forward mode.*_test_hvp_bare"):
            gt.hvp(f, (t(3),), (t(3),))
        assert len(calls) == 1
    finally:
        REGISTRY.pop("_test_hvp_bare", None)


def test_hvp_composes_with_vmap_and_function() -> None:
    """Per-example Hessian-vector products by vmap of gt.hvp, and gt.hvp compiled."""
    W, X, V = t(3, 2), t(4, 3), t(3, 2)

    def loss(w: gt.Tensor, x: gt.Tensor) -> gt.Tensor:
        return gt.sum(gt.tanh(x @ w) ** 2)

    per = gt.vmap(lambda x: gt.hvp(lambda w: loss(w, x), (W,), (V,))[0])(X)
    for i in range(4):
        H = gt.hessian(loss)(W, X[i]).numpy().reshape(6, 6)
        close(per[i], (H @ V.numpy().reshape(6)).reshape(3, 2), 1e-9)
    step = gt.function(lambda w, v: gt.hvp(lambda w: loss(w, X), (w,), (v,))[0])
    for _ in range(3):
        W2, V2 = t(3, 2), t(3, 2)
        got, want = step(W2, V2), gt.hvp(lambda w: loss(w, X), (W2,), (V2,))[0]
        if gt.backend_name() == "numpy":  # bit for bit; a device fuses the replay's forward
            np.testing.assert_array_equal(got.numpy(), want.numpy())
        else:
            close(got, want, 1e-12)


def test_vmap_of_jvp_and_jvp_of_vmap() -> None:
    x = t(3)
    f = lambda x: gt.sin(x) * gt.sum(x * x)  # noqa: E731
    V = t(5, 3)
    cols = gt.vmap(lambda v: gt.jvp(f, (x,), (v,))[1])(V)
    J = gt.jacrev(f)(x).numpy()
    close(cols, V.numpy() @ J.T)
    X = t(4, 3)
    out, tan = gt.jvp(gt.vmap(f), (X,), (V[:4],))
    for i in range(4):
        close(tan[i], gt.jacrev(f)(X[i]).numpy() @ V.numpy()[i])


def test_jvp_of_grad_inside_vmap_per_example_hvp() -> None:
    W = t(3, 2)
    X = t(4, 3)
    V = t(3, 2)

    def loss(w: gt.Tensor, x: gt.Tensor) -> gt.Tensor:
        return gt.sum(gt.tanh(x @ w) ** 2)

    per = gt.vmap(lambda x: gt.jvp(lambda w: gt.grad(loss)(w, x), (W,), (V,))[1])(X)
    for i in range(4):
        H = gt.hessian(loss)(W, X[i]).numpy().reshape(6, 6)
        close(per[i], (H @ V.numpy().reshape(6)).reshape(3, 2), 1e-9)


def test_custom_gradient_functions_vmap_and_their_gradient_batches():
    @gt.custom_gradient
    def clipped_sin(x):
        def grad(dy):
            return gt.clip(dy, -1.0, 1.0) * 3.0
        return gt.sin(x), grad

    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3))
    w = gt.tensor(rng.standard_normal(3))
    np.testing.assert_allclose(gt.vmap(clipped_sin)(X).numpy(), np.sin(X))

    def f(w, x):
        return gt.sum(clipped_sin(w * x) * 2.0)

    got = gt.vmap(gt.grad(f), in_axes=(None, 0))(w, X).numpy()
    want = np.stack([gt.grad(f)(w, gt.tensor(x)).numpy() for x in X])
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(want, np.clip(2.0, -1, 1) * 3.0 * X)  # the user's rule, not cos


@pytest.mark.parametrize("op", ["sort", "topk", "take_along_axis"])
def test_vmap_of_grad_through_a_per_example_permutation_with_a_shared_cotangent(op):
    # the indices differ per example and the cotangent does not (the loss is linear after
    # the permutation): every example's gradient, not only the first one's
    rng = np.random.default_rng(0)
    X = gt.tensor(rng.standard_normal((4, 5)))
    w = gt.tensor(np.array([1.0, 10.0, 100.0, 1000.0, 10000.0]))

    def perm(x):
        if op == "sort":
            return gt.sort(x)
        if op == "topk":
            return gt.topk(x, 5)[0]
        return gt.take_along_axis(x, gt.argsort(x), axis=0)

    def f(x):
        return gt.sum(perm(x) * w)

    got = gt.vmap(gt.grad(f))(X).numpy()
    want = np.stack([gt.grad(f)(X[i]).numpy() for i in range(4)])
    np.testing.assert_array_equal(got, want)
    assert sorted(want[1].tolist()) == sorted(w.numpy().tolist())


def test_softmax_over_an_empty_axis_is_empty():
    x = gt.tensor(np.zeros((0, 2)))
    for fn in (gt.softmax, gt.log_softmax):
        for axis in (0, -1):
            assert fn(x, axis=axis).shape == (0, 2)


def test_custom_gradient_under_vmap_with_a_tape_outside_is_refused_not_wrong():
    @gt.custom_gradient
    def cf(x):
        def grad(dy):
            return dy * 3.0
        return x * x, grad

    X = gt.tensor(np.ones((2, 2)))
    with pytest.raises(NotImplementedError, match="inside gt.vmap while a tape outside the vmap"):
        gt.grad(lambda X: gt.sum(gt.vmap(cf)(X)))(X)
    np.testing.assert_array_equal(gt.vmap(gt.grad(lambda x: gt.sum(cf(x))))(X).numpy(), 3.0)


# --------------------------------------------------------------------------- randomness
def test_random_draws_inside_vmap_are_refused_by_default():
    """A draw inside vmap would give every example the same numbers (one dropout mask for
    all examples): refused unless ``randomness`` says which is meant, as torch.func does."""
    g = gt.random.Generator(0)
    x = gt.ones((4, 6))
    for f in (lambda a: gt.nn.dropout(a, 0.5, generator=g), lambda a: a + g.normal((6,)),
              lambda a: a + gt.random.uniform((6,)), lambda a: a * g.bernoulli(0.5, (6,)),
              lambda a: a + g.integers(0, 3, shape=(6,)), lambda a: gt.nn.Dropout(0.5)(a)):
        with pytest.raises(ValueError, match="randomness='different'"):
            gt.vmap(f)(x)
    with pytest.raises(ValueError, match="randomness must be one of"):
        gt.vmap(lambda a: a, randomness="per_example")
    # an initializer draws one array: refused by default and per example, shared when "same"
    init = lambda a: a + gt.tensor(gt.nn.init.normal((6,), seed=g))  # noqa: E731
    with pytest.raises(ValueError, match="randomness='different'"):
        gt.vmap(init)(x)
    with pytest.raises(ValueError, match="not one per example"):
        gt.vmap(init, randomness="different")(x)
    rows = gt.vmap(init, randomness="same")(x).numpy()
    np.testing.assert_array_equal(rows, np.tile(rows[0], (4, 1)))


def test_randomness_different_draws_the_batch_shaped_draw():
    g1, g2 = gt.random.Generator(5), gt.random.Generator(5)
    out = gt.vmap(lambda a: a + g1.normal((3,)), randomness="different")(gt.zeros((4, 3)))
    np.testing.assert_array_equal(out.numpy(), g2.normal((4, 3)).numpy())
    out = gt.vmap(lambda a: a + g1.integers(0, 9, shape=(3,)), in_axes=1,
                  randomness="different")(gt.zeros((3, 4)))
    np.testing.assert_array_equal(out.numpy(), g2.integers(0, 9, shape=(4, 3)).numpy())
    masks = gt.vmap(lambda a: gt.nn.dropout(a, 0.5, generator=g1),
                    randomness="different")(gt.ones((8, 16))).numpy()
    assert len({m.tobytes() for m in masks}) == 8  # a mask per example
    np.testing.assert_array_equal(masks, gt.nn.dropout(gt.ones((8, 16)), 0.5, generator=g2).numpy())
    # nested: the sizes in front, outermost first; "same" inside shares along its level
    out = gt.vmap(gt.vmap(lambda a: a + g1.normal(()), randomness="different"),
                  randomness="different")(gt.zeros((2, 3)))
    np.testing.assert_array_equal(out.numpy(), g2.normal((2, 3)).numpy())
    out = gt.vmap(gt.vmap(lambda a: a + g1.normal(()), randomness="same"),
                  randomness="different")(gt.zeros((2, 3))).numpy()
    np.testing.assert_array_equal(out, np.repeat(g2.normal((2,)).numpy()[:, None], 3, axis=1))
    # chunks draw per piece, in order
    out = gt.vmap(lambda a: a + g1.uniform((2,)), randomness="different",
                  chunk_size=3)(gt.zeros((5, 2)))
    np.testing.assert_array_equal(out.numpy(), np.concatenate(
        [g2.uniform((3, 2)).numpy(), g2.uniform((2, 2)).numpy()]))
    with pytest.raises(ValueError, match="permutation"):
        gt.vmap(lambda a: a + g1.permutation(3), randomness="different")(gt.zeros((2, 3)))


def test_randomness_same_draws_once_for_all_examples():
    g1, g2 = gt.random.Generator(1), gt.random.Generator(1)
    out = gt.vmap(lambda a: a + g1.normal((3,)), randomness="same")(gt.zeros((4, 3)))
    np.testing.assert_array_equal(out.numpy(), np.tile(g2.normal((3,)).numpy(), (4, 1)))
    # in pieces too: the later pieces take the first piece's draws (each piece drew anew)
    out = gt.vmap(lambda a: a + g1.normal((3,)), randomness="same", chunk_size=2)(gt.zeros((5, 3)))
    np.testing.assert_array_equal(out.numpy(), np.tile(g2.normal((3,)).numpy(), (5, 1)))
    masks = gt.vmap(lambda a: gt.nn.dropout(a, 0.5, generator=g1), randomness="same",
                    chunk_size=2)(gt.ones((5, 16))).numpy()
    np.testing.assert_array_equal(masks, np.tile(masks[0], (5, 1)))
    # an outer "same" in pieces around an inner "different": rows equal, columns not
    out = gt.vmap(gt.vmap(lambda a: a + g1.normal(()), randomness="different", chunk_size=2),
                  randomness="same", chunk_size=2)(gt.zeros((5, 3))).numpy()
    np.testing.assert_array_equal(out, np.tile(out[0], (5, 1)))
    assert len(set(out[0].tolist())) == 3


def test_per_example_gradients_through_dropout_use_each_examples_mask():
    g1, g2 = gt.random.Generator(2), gt.random.Generator(2)
    W = gt.tensor(RNG.standard_normal((3, 2)))
    X = gt.tensor(RNG.standard_normal((5, 3)))

    def loss(w, x, g):
        return gt.sum(gt.tanh(gt.nn.dropout(x, 0.5, generator=g) @ w))

    got = gt.vmap(gt.grad(loss), in_axes=(None, 0, None), randomness="different")(W, X, g1)
    dropped = gt.nn.dropout(X, 0.5, generator=g2).numpy()  # the batch-shaped draw
    for b in range(5):
        xb = dropped[b]
        want = np.outer(xb, 1 - np.tanh(xb @ W.numpy()) ** 2)
        close(got[b], want)


def test_randomness_inside_a_compiled_step_draws_anew_at_each_call():
    g1, g2 = gt.random.Generator(3), gt.random.Generator(3)
    body = lambda x, g: gt.vmap(lambda a: a + g.normal((4,)), randomness="different")(x)  # noqa: E731
    f = gt.function(lambda x: body(x, g1))
    for _ in range(4):
        np.testing.assert_array_equal(f(gt.zeros((3, 4))).numpy(), body(gt.zeros((3, 4)), g2).numpy())
    assert f.trace_count == 2  # (a trace, its checking trace, then replays)


def test_jacfwd_and_jacrev_of_a_function_that_draws_share_one_draw():
    g = gt.random.Generator(4)
    x = gt.ones(5)
    for jac in (gt.jacfwd, gt.jacrev):
        J = jac(lambda a: gt.nn.dropout(a, 0.5, generator=g))(x).numpy()
        assert np.count_nonzero(J - np.diag(np.diag(J))) == 0  # one mask: a diagonal Jacobian
        assert set(np.diag(J).tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize("which", ["x", "w", "both"])
def test_vmap_of_a_convolution_over_no_examples(which):
    # a batch of 0 with mapped weights raised ZeroDivisionError (the rules fold the batch into
    # channels or groups); now an empty result of the per-example shape, also for the
    # transposed convolution and the weight gradient
    x = gt.tensor(np.zeros((0, 1, 2, 5, 5)) if which != "w" else np.zeros((1, 2, 5, 5)))
    w = gt.tensor(np.ones((0, 3, 2, 3, 3)) if which != "x" else np.ones((3, 2, 3, 3)))
    axes = (0 if which != "w" else None, 0 if which != "x" else None)
    y = gt.vmap(lambda a, b: gt.nn.conv2d(a, b), in_axes=axes)(x, w)
    assert y.shape == (0, 1, 3, 3, 3)
    wt = gt.tensor(np.ones((0, 2, 3, 3, 3)) if which != "x" else np.ones((2, 3, 3, 3)))
    yt = gt.vmap(lambda a, b: gt.nn.conv_transpose2d(a, b), in_axes=axes)(x, wt)
    assert yt.shape == (0, 1, 3, 7, 7)

    def loss(b, a):
        return gt.sum(gt.nn.conv2d(a, b) ** 2)

    g = gt.vmap(gt.grad(loss), in_axes=(axes[1], axes[0]))(w, x)
    assert g.shape == (0, 3, 2, 3, 3)


@pytest.mark.parametrize("fn, index", [
    (lambda a, i: a[i], [[0], [-4]]),
    (lambda a, i: a[i], [[-4], [0]]),
    (lambda a, i: a[i], [[3], [0]]),
    (lambda a, i: a[:, i], [[0], [-5]]),
    (lambda a, i: gt.take(a, i), [[0], [-13]]),
    (lambda a, i: gt.take(a, i, axis=0), [[5], [0]]),
    (lambda a, i: gt.sum(gt.grad(lambda b: gt.sum(b[i]))(a)), [[0], [-4]]),
])
def test_a_per_example_index_out_of_range_raises_instead_of_reading_another_example(fn, index):
    # indices per example are flattened onto the batch: -4 on 3 rows read the row before,
    # another example's, silently (eagerly the same index raises IndexError)
    xb = gt.tensor(np.arange(24.0).reshape(2, 3, 4))
    with pytest.raises(IndexError, match="inside gt.vmap: an example's index holds the index"):
        gt.vmap(fn)(xb, gt.tensor(index))


def test_per_example_indices_in_range_still_count_negatives_from_each_end():
    x = np.arange(24.0).reshape(2, 3, 4)
    idx = np.array([[0, -1], [-3, 2]])
    got = gt.vmap(lambda a, i: a[i])(gt.tensor(x), gt.tensor(idx)).numpy()
    np.testing.assert_array_equal(got, np.stack([x[b][idx[b]] for b in range(2)]))
    step = gt.function(lambda a, i: gt.vmap(lambda b, j: b[j])(a, i))
    np.testing.assert_array_equal(step(gt.tensor(x), gt.tensor(idx)).numpy(), got)
    idx2 = np.array([[2, 1], [-1, 0]])
    np.testing.assert_array_equal(step(gt.tensor(x), gt.tensor(idx2)).numpy(),
                                  np.stack([x[b][idx2[b]] for b in range(2)]))
    with pytest.raises(IndexError, match="holds the index -4"):  # checked at each replay
        step(gt.tensor(x), gt.tensor(np.array([[0, 1], [-4, 0]])))


def test_vmap_over_mixed_float_dtypes_without_a_tape():
    # the unrecorded promotion read .astype of a batched tensor and raised inside vmap
    xs = gt.tensor(np.arange(6.0).reshape(2, 3).astype(np.float16))
    c = gt.tensor(np.array([1.0, 2.0, 3.0], np.float32))
    out = gt.vmap(lambda r: r * c)(xs)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), np.arange(6.0).reshape(2, 3) * [1, 2, 3])


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_an_error_inside_vmap_names_the_per_example_shapes():
    # a batching rule runs on whole batches: NumPy's message showed the batch axis ((5, 3)
    # against (4,)) or counted axes from it ("axis 1" of a (3,) example)
    x = gt.ones((5, 3))
    with pytest.raises(ValueError, match=r"add: the operands' shapes") as info:
        gt.vmap(lambda r: r + gt.ones(4))(x)
    assert ("inside gt.vmap: add's operands have per-example shapes (3,), (4,), batch size 5"
            in "".join(info.value.__notes__))
    with pytest.raises(IndexError, match=r"indexing a tensor of shape \(3,\)") as info:
        gt.vmap(lambda r: r[7])(x)
    assert "per-example shapes (3,), batch size 5" in "".join(info.value.__notes__)
    with pytest.raises(ValueError) as info:  # nested: one note, the innermost level's
        gt.vmap(gt.vmap(lambda r: r + gt.ones(4)))(gt.ones((2, 5, 3)))
    assert len(info.value.__notes__) == 1 and "per-example shapes (3,), (4,), batch size 5" \
        in info.value.__notes__[0]


_MIXED_INDICES = {
    "x[i, :]": lambda x, i, j: x[i, :],
    "x[..., i]": lambda x, i, j: x[..., i],
    "x[i, 0]": lambda x, i, j: x[i, 0],
    "x[0, j]": lambda x, i, j: x[0, j],
    "x[i, i]": lambda x, i, j: x[i, i],
    "x[i, j]": lambda x, i, j: x[i, j],
    "x[:, j, 1:3]": lambda x, i, j: x[:, j, 1:3],
    "x[i, :, 2]": lambda x, i, j: x[i, :, 2],  # separated: the index's axes go first
    "x[1, ::-1, j]": lambda x, i, j: x[1, ::-1, j],
    "x[i, j, ::2]": lambda x, i, j: x[i, j, ::2],
    "x[i, :, [0, 1]]": lambda x, i, j: x[i, :, [0, 1]],
    "x[i[0], j]": lambda x, i, j: x[i[0], j],
    # an Ellipsis for no axis still parts them, as NumPy counts it: their axes go first
    "x[0:1, 1, ..., j]": lambda x, i, j: x[0:1, 1, ..., j],
    "x[i, ..., 0, j]": lambda x, i, j: x[i, ..., 0, j],
}


@pytest.mark.parametrize("name", sorted(_MIXED_INDICES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_per_example_index_mixed_with_other_items_is_numpys_indexing(name, dtype):
    """x[i, :], x[..., i], x[i, 0], x[0, i], x[i, i] raised NotImplementedError inside vmap
    while x[i] worked."""
    f = _MIXED_INDICES[name]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 3, 4, 6)).astype(dtype)
    Ii, Jj = rng.integers(-3, 3, (5, 2)), rng.integers(-4, 4, (5, 2))
    args = gt.tensor(X), gt.tensor(Ii), gt.tensor(Jj)
    got = gt.vmap(f)(*args)
    want = np.stack([f(X[b], Ii[b], Jj[b]) for b in range(5)])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), want)
    g = gt.vmap(gt.grad(lambda x, i, j: gt.sum(f(x, i, j) ** 2)))(*args).numpy()
    for b in range(5):  # the gradient scatters 2 x[pos] back to each position read
        pos = f(np.arange(X[b].size).reshape(X[b].shape), Ii[b], Jj[b]).reshape(-1)
        want_g = np.zeros(X[b].size)
        np.add.at(want_g, pos, 2 * X[b].reshape(-1)[pos].astype(np.float64))
        np.testing.assert_allclose(g[b].reshape(-1), want_g, rtol=1e-6)
    shared = gt.vmap(f, in_axes=(None, 0, 0))(gt.tensor(X[0]), *args[1:])  # one x, indices per example
    np.testing.assert_array_equal(shared.numpy(), np.stack([f(X[0], Ii[b], Jj[b]) for b in range(5)]))


@pytest.mark.parametrize("name,index", [
    ("x[3]", lambda x: x[3]), ("x[np.array([3])]", lambda x: x[np.array([3])]),
    ("x[:, 5]", lambda x: x[:, 5]), ("x[0, 0, 0]", lambda x: x[0, 0, 0]),
    ("mask", lambda x: x[np.array([True, False])])])
def test_a_bad_constant_index_inside_vmap_is_reported_as_for_one_example(name, index):
    """The error of a constant index out of range inside gt.vmap counted axes from the batch
    axis and read their sizes there ("index 3 is out of bounds for axis 1 with size 3" for
    axis 0 of a (3, 4) example); it now says what NumPy says of one example."""
    with pytest.raises(IndexError) as eager:
        index(gt.tensor(np.zeros((3, 4))))
    with pytest.raises(IndexError) as batched:
        gt.vmap(index)(gt.tensor(np.zeros((2, 3, 4))))
    assert str(batched.value) == str(eager.value)


def test_a_list_of_per_example_tensors_as_an_index_names_the_stacked_form():
    """x[[a, b]] with per-example a, b raised np.asarray()'s message about Python values; it
    now names the index and the form that works, x[gt.stack([a, b])]."""
    x = gt.tensor(np.arange(12.0).reshape(4, 3))
    a, b = gt.tensor(np.array([0, 1])), gt.tensor(np.array([2, 3]))
    with pytest.raises(TypeError, match=r"indexing inside gt.vmap: a list holding per-example "
                                        r"tensors .* x\[gt.stack\(\[a, b\]\)\]"):
        gt.vmap(lambda a, b: x[[a, b]])(a, b)
    got = gt.vmap(lambda a, b: x[gt.stack([a, b])])(a, b).numpy()
    np.testing.assert_array_equal(got, np.stack([x.numpy()[[0, 2]], x.numpy()[[1, 3]]]))


def test_a_mixed_per_example_index_out_of_range_or_unsupported_raises():
    x = gt.tensor(np.zeros((2, 3, 4)))
    with pytest.raises(IndexError, match="holds the index 4"):
        gt.vmap(lambda a, i: a[0, i])(x, gt.tensor([[0], [4]]))
    with pytest.raises(IndexError, match="index 5 is out of bounds for axis 1"):
        gt.vmap(lambda a, i: a[i, 5])(x, gt.tensor([[0], [1]]))
    with pytest.raises(NotImplementedError, match="holds None"):
        gt.vmap(lambda a, i: a[i, None])(x, gt.tensor([[0], [1]]))
    with pytest.raises(IndexError, match="too many indices"):
        gt.vmap(lambda a, i: a[i, 0, 0])(x, gt.tensor([[0], [1]]))
    step = gt.function(lambda a, i: gt.vmap(lambda b, j: b[j, 1:])(a, i))
    for idx in ([[0], [2]], [[1], [-1]]):  # traced, then replayed with other indices
        want = np.stack([x.numpy()[b][np.array(idx[b]), 1:] for b in range(2)])
        np.testing.assert_array_equal(step(x, gt.tensor(idx)).numpy(), want)


@pytest.mark.parametrize("dt", [np.int8, np.uint8, np.int16, np.uint16, np.int32])
@pytest.mark.parametrize("name", ["x[i]", "x[i, :]", "x[i, 1]", "take_along_axis"])
def test_narrow_per_example_indices_read_their_own_examples_rows(dt, name):
    """The batch offsets (b * n) were formed in the index's dtype and wrapped around: int16
    indices on 100 examples of 400 rows read other examples' rows for 19 of them."""
    f = {"x[i]": lambda x, i: x[i], "x[i, :]": lambda x, i: x[i, :],
         "x[i, 1]": lambda x, i: x[i, 1],
         "take_along_axis": lambda x, i: gt.take_along_axis(x, i[:, None], axis=0)}[name]
    ref = {"take_along_axis": lambda x, i: np.take_along_axis(x, i[:, None], axis=0)}.get(name, f)
    B, n = (100, 400) if np.iinfo(dt).max > 400 else (3, 100)
    X = np.arange(B * n * 2, dtype=np.float64).reshape(B, n, 2)
    idx = np.full((B, 1), n - 1, dtype=dt)
    if np.iinfo(dt).min < 0:
        idx[::2] = -1  # negative: counted from each example's end
    got = gt.vmap(f)(gt.tensor(X), gt.tensor(idx)).numpy()
    np.testing.assert_array_equal(got, np.stack([ref(X[b], idx[b].astype(np.intp)) for b in range(B)]))


@pytest.mark.parametrize("dt", [np.int8, np.uint8])
def test_narrow_indices_on_a_long_axis_outside_vmap(dt):
    x = np.arange(400.0).reshape(2, 200)
    i = np.array([[1], [199 if dt == np.uint8 else -1]], dt)
    np.testing.assert_array_equal(gt.take_along_axis(gt.tensor(x), i, axis=1).numpy(),
                                  np.take_along_axis(x, i.astype(np.intp), axis=1))
    ids = np.array([0, 1, 2, 100, 3], dt)
    if dt == np.int8:
        ids[2] = -1  # dropped
    want = np.zeros(200)
    np.add.at(want, ids[ids >= 0].astype(np.intp), 1.0)
    np.testing.assert_array_equal(gt.segment_sum(gt.tensor(np.ones(5)), ids, 200).numpy(), want)


def test_batch_size_errors_name_the_arguments_as_written() -> None:
    # the message named "argument leaf 2", an index into all arguments' leaves (dict keys
    # sorted), and "an earlier argument" without saying which
    params = {"a": t(3, 2), "b": t(3, 4)}
    with pytest.raises(ValueError, match=r"batch sizes differ: argument 1 has 5 along axis 0 "
                                         r"\(shape \(5, 2\)\), but argument 0\['a'\] has 3 along "
                                         r"axis 0 \(shape \(3, 2\)\)"):
        gt.vmap(lambda p, x: x)(params, t(5, 2))
    with pytest.raises(ValueError, match=r"argument 0\['b'\] has 4 along axis 1 \(shape \(2, 4\)\)"
                                         r", but argument 0\['a'\] has 3 along axis 0"):
        gt.vmap(lambda p: p["a"], in_axes=({"a": 0, "b": 1},))({"a": t(3, 2), "b": t(2, 4)})
    with pytest.raises(ValueError, match=r"in_axes 3 is out of range for argument 1\[0\] of "
                                         r"shape \(3, 2\)"):
        gt.vmap(lambda a, b: a, in_axes=(0, 3))(t(3), [t(3, 2)])
    with pytest.raises(TypeError, match=r"argument 1 is mapped over an axis, so it must be a "
                                        r"Tensor or an array, got str"):
        gt.vmap(lambda a, b: a)(t(3), "abc")
    with pytest.raises(ValueError, match=r"out_axes is None for the output\['y'\], but it "
                                         r"depends on the batched arguments"):
        gt.vmap(lambda a: {"x": a * 0.0 + 1.0, "y": a}, out_axes={"x": 0, "y": None})(t(3))


def test_a_vmapped_variable_is_not_watched_and_the_message_says_why() -> None:
    Ws = gt.Variable(np.ones((3, 4, 2)), name="ensemble")
    x = t(5, 4)

    def member(w: gt.Tensor, xx: gt.Tensor, watch: bool) -> gt.Tensor:
        with gt.GradientTape() as tape:
            if watch:
                tape.watch(w)
            loss = gt.sum(gt.tanh(xx @ w))
        return tape.gradient(loss, w, unconnected_gradients="raise")

    with pytest.raises(gt.UnconnectedGradientError,
                       match=r"one example of Variable 'ensemble' \(shape \(3, 4, 2\)\), mapped "
                             r"by gt.vmap.*tape.watch\(x\).*in_axes=None"):
        gt.vmap(lambda w, xx: member(w, xx, False), in_axes=(0, None))(Ws, x)
    got = gt.vmap(lambda w, xx: member(w, xx, True), in_axes=(0, None))(Ws, x)
    for k in range(3):
        want = x.numpy().T @ (1 - np.tanh(x.numpy() @ Ws.numpy()[k]) ** 2)
        close(got[k], want)


def test_nested_vmap_of_grad_through_per_example_indices() -> None:
    # index_put's batching rule took g with the indexed dims spelled out: a 0-d g (the
    # cotangent of a sum) broadcasting over an inner vmap's flat index failed in transpose
    rng = np.random.default_rng(0)
    W = gt.tensor(rng.normal(size=(3, 4)))
    X, Y = rng.normal(size=(2, 3, 3)), rng.integers(0, 4, size=(2, 3))
    losses = [lambda W, x, y: gt.sum((x @ W)[y]),
              lambda W, x, y: gt.sum((gt.expand_dims(x, 0) @ W)[0, y]),
              lambda W, x, y: gt.sum((gt.expand_dims(x, 0) @ W)[np.arange(1), gt.expand_dims(y, 0)])]
    for loss in losses:
        want = np.stack([[gt.grad(loss)(W, gt.tensor(X[a, b]), gt.tensor(Y[a, b])).numpy()
                          for b in range(3)] for a in range(2)])
        inner = gt.vmap(gt.grad(loss), in_axes=(None, 0, 0))
        got = gt.vmap(inner, in_axes=(None, 0, 0))(W, gt.tensor(X), gt.tensor(Y))
        close(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vmap_grad_of_a_large_dense_layer_is_each_examples_outer_product(dtype: type) -> None:
    # the weight gradient of one example's x @ W under a loss linear in the output is the outer
    # product of x and the output's weights; vmapped over 33 examples (an odd count) of a
    # layer large enough for the host's products of examples in pairs, each is NumPy's exactly
    rng = np.random.default_rng(9)
    B, d, p = 33, 40, 24
    x = rng.standard_normal((B, d)).astype(dtype)
    y = rng.standard_normal((B, p)).astype(dtype)
    W = gt.tensor(rng.standard_normal((d, p)).astype(dtype))

    def loss(W: gt.Tensor, x: gt.Tensor, y: gt.Tensor) -> gt.Tensor:
        return gt.sum(gt.matmul(x[None, :], W)[0] * y)

    got = gt.vmap(gt.grad(loss), in_axes=(None, 0, 0))(W, gt.tensor(x), gt.tensor(y))
    assert got.shape == (B, d, p) and got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), np.einsum("bi,bj->bij", x, y))
