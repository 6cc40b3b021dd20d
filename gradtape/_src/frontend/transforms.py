"""The functional transforms, built on the tape: ``grad``, ``value_and_grad``, ``vjp``,
``jacrev``, ``hessian`` (and ``jacfwd``/``hvp`` with forward mode, in :mod:`.forward`).

Each opens a :class:`~gradtape.GradientTape`, watches the differentiated arguments, runs the
function and calls the tape. They compose with each other, with ``gt.vmap`` (a tape entered
inside a vmap records per-example ops) and with tapes around them (an outer tape records the
backward pass, so derivatives of derivatives work).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ... import ops
from ..nest import flatten, leaf_paths, unflatten
from ..tensor import Tensor, _wrap, tensor
from .diagnostics import float_hint
from .forward import CustomGradientJvpError, fresh_input, jvp
from .tape import GradientTape
from .vmap import vmap

__all__ = ["grad", "value_and_grad", "vjp", "jacrev", "jacfwd", "hessian", "hvp", "basis"]


def _check_argnums(argnums: Any, who: str) -> None:
    """At transform creation: ``argnums`` is an int or a non-empty tuple/list of ints (not a
    float, a string or None), else TypeError / ValueError naming ``who``; the range is checked
    at each call (:func:`_argnums`), when the number of arguments is known."""
    def is_int(a: Any) -> bool:
        return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))
    if is_int(argnums):
        return
    if not isinstance(argnums, (tuple, list)) or not all(is_int(a) for a in argnums):
        raise TypeError(f"{who}: argnums must be an int or a tuple of ints, got {argnums!r} "
                        f"({type(argnums).__name__})")
    if not argnums:
        raise ValueError(f"{who}: argnums is empty; name at least one argument to differentiate")


def _argnums(argnums: int | Sequence[int], n: int, fname: str) -> tuple[int, ...]:
    """``argnums`` (checked by :func:`_check_argnums` when the transform was made) as indices
    into a call's ``n`` positional arguments."""
    nums = (argnums,) if isinstance(argnums, (int, np.integer)) else tuple(argnums)
    out = []
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"{fname}: argnums {a} is out of range for a call with {n} "
                             "positional arguments")
        out.append(int(a) % n)
    return tuple(out)


def _as_sources(arg: Any, fname: str, i: int, advice: str = "or leave it out of argnums") -> Any:
    """Tensors for the leaves of argument ``i`` (arrays and Python floats are converted); a
    leaf that cannot carry a gradient (an integer or bool Tensor, array or number) is refused
    here, the message naming the argument and the leaf's place in it (``argument 0['w']``)."""
    leaves, spec = flatten(arg)
    conv = []
    for k, leaf in enumerate(leaves):
        if isinstance(leaf, Tensor):  # each argument an input of its own, as JAX's
            if leaf.dtype.kind != "f":
                kind = "Variable" if leaf._is_variable else "Tensor"
                hint = (float_hint(leaf) if leaf.dtype.kind != "c" else "complex values: "
                        "differentiate the real and imaginary parts as separate float tensors")
                raise TypeError(f"{fname}: {_argument(i, spec, k)} is differentiated but is a "
                                f"{kind} of dtype {leaf.dtype} (shape {leaf.shape}); pass floats "
                                f"(gradients exist only for real floating-point inputs: "
                                f"{hint}) {advice}")
            conv.append(fresh_input(leaf))
            continue
        if isinstance(leaf, (complex, np.complexfloating)) or (
                isinstance(leaf, np.ndarray) and leaf.dtype.kind == "c"):
            raise TypeError(f"{fname}: {_argument(i, spec, k)} is differentiated but holds a "
                            f"complex value ({leaf!r:.60}); gradients exist only for real "
                            "floating-point inputs (differentiate the real and imaginary parts "
                            f"as separate float tensors) {advice}")
        if isinstance(leaf, (bool, int, np.integer)) or (
                isinstance(leaf, np.ndarray) and leaf.dtype.kind != "f"):
            raise TypeError(f"{fname}: {_argument(i, spec, k)} is differentiated but holds an "
                            f"integer or boolean value ({leaf!r:.60}); pass floats (gradients "
                            f"exist only for floating-point inputs) {advice}")
        try:
            conv.append(tensor(leaf))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{fname}: {_argument(i, spec, k)} is differentiated, so its leaves "
                            f"must be Tensors or float arrays, got {type(leaf).__name__} "
                            f"({exc})") from None
    return unflatten(spec, conv)


def _argument(i: int, spec: Any, k: int) -> str:
    """``argument i`` and, for a nested argument, where its leaf ``k`` sits in it."""
    return f"argument {i}{leaf_paths(spec)[k]}"


def _scalar_value(out: Any, fname: str, has_aux: bool) -> tuple[Tensor, Any]:
    aux = None
    if has_aux:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"{fname}(has_aux=True): the function must return a pair (value, "
                            f"aux), got {type(out).__name__}")
        out, aux = out
    if not isinstance(out, Tensor):
        raise TypeError(f"{fname}: the function must return a scalar Tensor, got "
                        f"{type(out).__name__}")
    if out.shape != ():
        raise TypeError(f"{fname}: the function must return a scalar (shape ()), got shape "
                        f"{out.shape}; reduce it (e.g. .sum() or .mean()), or use gt.jacrev / "
                        "gt.vjp for non-scalar outputs")
    if out.dtype.kind != "f":
        raise TypeError(f"{fname}: the function's output has dtype {out.dtype}; gradients need a "
                        "floating-point output")
    return out, aux


def value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0,
                   has_aux: bool = False) -> Callable[..., Any]:
    """``f``'s value and its gradient with respect to the arguments ``argnums``.

    Args:
        f: returns a scalar Tensor (shape ``()``), or ``(scalar, aux)`` with ``has_aux``.
        argnums: the positional argument(s) to differentiate: an int, or a tuple of ints. Each
            may be a Tensor or a nested tuple/list/dict of them (a parameter tree).
        has_aux: ``f`` returns ``(value, aux)``; aux is passed through, not differentiated.

    Returns:
        A function returning ``(value, grads)`` (``((value, aux), grads)`` with ``has_aux``):
        ``grads`` has the structure of the differentiated argument (a tuple of them for a tuple
        ``argnums``), each leaf the shape and dtype of its argument; an argument ``f`` does not
        use gets zeros (as JAX).

    Example:
        >>> import gradtape as gt
        >>> v, g = gt.value_and_grad(lambda x: (x * x).sum())(gt.tensor([1.0, 2.0]))
        >>> float(v), g.numpy()
        (5.0, array([2., 4.], dtype=float32))
    """
    return _value_and_grad(f, argnums, has_aux, "gt.value_and_grad")


def _value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int], has_aux: bool,
                    who: str) -> Callable[..., Any]:
    """:func:`value_and_grad`, its messages naming ``who``, the transform the user called."""
    if not callable(f):
        raise TypeError(f"{who}: f must be callable, got {type(f).__name__}")
    _check_argnums(argnums, who)
    fname = f"{who}({getattr(f, '__name__', 'f')})"

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nums = _argnums(argnums, len(args), fname)
        args_l = list(args)
        for i in nums:
            args_l[i] = _as_sources(args_l[i], fname, i)
        with GradientTape() as tape:
            for i in nums:
                tape.watch(args_l[i])
            out = f(*args_l, **kwargs)
        value, aux = _scalar_value(out, fname, has_aux)
        sources = [args_l[i] for i in nums]
        grads = tape.gradient(value, sources, unconnected_gradients="zero")
        g = grads[0] if isinstance(argnums, (int, np.integer)) else tuple(grads)
        return ((value, aux), g) if has_aux else (value, g)

    return wrapped


def grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0,
         has_aux: bool = False) -> Callable[..., Any]:
    """The gradient of scalar-valued ``f`` with respect to the arguments ``argnums`` (JAX's
    ``grad``); see :func:`value_and_grad` for the arguments.

    Returns:
        A function returning the gradients (``(grads, aux)`` with ``has_aux``), with the
        structure, shapes and dtypes of the differentiated arguments.

    Example:
        >>> import gradtape as gt
        >>> gt.grad(lambda x: (x ** 3).sum())(gt.tensor([1.0, 2.0])).numpy()
        array([ 3., 12.], dtype=float32)
        >>> gt.grad(gt.grad(lambda x: x ** 3))(gt.tensor(2.0)).numpy()   # second derivative
        array(12., dtype=float32)
    """
    return _grad(f, argnums, has_aux, "gt.grad")


def _grad(f: Callable[..., Any], argnums: int | Sequence[int], has_aux: bool,
          who: str) -> Callable[..., Any]:
    """:func:`grad`, its messages naming ``who``."""
    vg = _value_and_grad(f, argnums, has_aux, who)

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if has_aux:
            (_, aux), g = vg(*args, **kwargs)
            return g, aux
        return vg(*args, **kwargs)[1]

    return wrapped


def vjp(f: Callable[..., Any], *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """Run ``f(*primals)`` and return ``(out, vjp_fn)``; ``vjp_fn(cotangents)`` returns one
    gradient per primal: ``Σ cotangent · ∂out/∂primal``.

    ``cotangents`` has ``out``'s structure, shapes and dtypes. ``vjp_fn`` may be called many
    times, and under ``gt.vmap`` with a batch of cotangents (one backward pass for the batch:
    that is how :func:`jacrev` works). With ``has_aux``, ``f`` returns ``(out, aux)`` and the
    result is ``(out, vjp_fn, aux)``.

    Example:
        >>> import gradtape as gt
        >>> out, vjp_fn = gt.vjp(lambda x: x * x, gt.tensor([1.0, 3.0]))
        >>> vjp_fn(gt.tensor([1.0, 1.0]))[0].numpy()
        array([2., 6.], dtype=float32)
    """
    if not callable(f):
        raise TypeError(f"gt.vjp: f must be callable, got {type(f).__name__}")
    return _vjp(f, primals, has_aux, f"gt.vjp({getattr(f, '__name__', 'f')})",
                "(gt.vjp differentiates every argument: bind the others with a closure or "
                "functools.partial)", range(len(primals)))


def _vjp(f: Callable[..., Any], primals: Sequence[Any], has_aux: bool, fname: str, advice: str,
         numbers: Sequence[int]) -> tuple[Any, ...]:
    """:func:`vjp`, its messages naming ``fname`` (the transform the user called) and primal
    ``k`` as that call's argument ``numbers[k]``."""
    prims = [_as_sources(p, fname, numbers[k], advice) for k, p in enumerate(primals)]
    with GradientTape(persistent=True) as tape:
        for p in prims:
            tape.watch(p)
        out = f(*prims)
    aux = None
    if has_aux:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"{fname}(has_aux=True): the function must return (out, aux)")
        out, aux = out
    out_leaves, out_spec = flatten(out)
    for j, o in enumerate(out_leaves):
        if not isinstance(o, Tensor):
            raise TypeError(f"{fname}: output leaf {j} is a {type(o).__name__}, not a Tensor")

    def vjp_fn(cotangents: Any) -> tuple[Any, ...]:
        cts, ct_spec = flatten(cotangents)
        if len(cts) != len(out_leaves):
            raise ValueError(f"{fname} vjp_fn: cotangents have {len(cts)} leaves, the output has "
                             f"{len(out_leaves)}; pass one cotangent per output, same structure")
        targets, seeds = [], []
        for j, (o, c) in enumerate(zip(out_leaves, cts)):
            if not isinstance(c, Tensor):
                host = np.asarray(c) if c is not None else None
                if host is None or host.dtype.kind not in "biufc":  # (None read as a NaN scalar)
                    raise TypeError(f"{fname} vjp_fn: cotangent {j} must be a Tensor (or array), "
                                    f"got {c!r} ({type(c).__name__})")
                c = tensor(host.astype(o.dtype, copy=False))
            if c.shape != o.shape:
                raise ValueError(f"{fname} vjp_fn: cotangent {j} has shape {c.shape}, the output "
                                 f"has shape {o.shape}")
            if c.dtype != o.dtype:  # (as tape.gradient's output_gradients and jvp's tangents)
                raise TypeError(f"{fname} vjp_fn: cotangent {j} has dtype {c.dtype}, the output "
                                f"has dtype {o.dtype}; cast it (c.astype({str(o.dtype)!r}))")
            targets.append(o)
            seeds.append(c)
        grads = tape.gradient(targets, list(prims), output_gradients=seeds,
                              unconnected_gradients="zero")
        return tuple(grads)

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def basis(n: int, dtype: np.dtype, like: Tensor) -> Tensor:
    """The identity matrix ``[n, n]`` on ``like``'s backend: the cotangents (rows) or tangents
    (columns) a Jacobian is computed from in one vectorized pass."""
    return _wrap(like._backend.xp.eye(n, dtype=dtype), like._backend)


def jacrev(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Jacobian of ``f`` by reverse mode: one backward pass over a batch of basis cotangents
    (vmap of the VJP), not a loop over output elements.

    Returns:
        A function returning, for an output ``y`` and argument ``x``, a Tensor of shape
        ``y.shape + x.shape`` (a tuple of them for a tuple ``argnums``; for a tuple/list/dict
        output, the same structure of such results).

    Example:
        >>> import gradtape as gt
        >>> gt.jacrev(lambda x: x * x)(gt.tensor([1.0, 2.0])).numpy()
        array([[2., 0.],
               [0., 4.]], dtype=float32)
    """
    if not callable(f):
        raise TypeError(f"gt.jacrev: f must be callable, got {type(f).__name__}")
    _check_argnums(argnums, "gt.jacrev")
    fname = f"gt.jacrev({getattr(f, '__name__', 'f')})"

    @functools.wraps(f)
    def jac(*args: Any, **kwargs: Any) -> Any:
        nums = _argnums(argnums, len(args), fname)

        partial = _of_differentiated(f, args, nums, kwargs)

        out, vjp_fn = _vjp(partial, [args[i] for i in nums], False, fname,
                           "or leave it out of argnums", nums)
        out_leaves, out_spec = flatten(out)
        results = []  # per output leaf: one Jacobian per differentiated argument
        for j, o in enumerate(out_leaves):
            n = o.size
            seeds_j = ops.reshape(basis(n, o.dtype, o), (n,) + o.shape)

            def pull(ct: Tensor, j: int = j) -> tuple[Any, ...]:
                cts = [ct if k == j else _zeros(ol) for k, ol in enumerate(out_leaves)]
                return vjp_fn(unflatten(out_spec, cts))

            rows = vmap(pull, randomness="same")(seeds_j) if n else None
            per_arg = []
            for k, i in enumerate(nums):
                a_leaves, a_spec = flatten(args[i]) if not isinstance(args[i], Tensor) else ([args[i]], None)
                if rows is None:  # an empty output: an empty Jacobian
                    g_leaves = [_wrap(o._backend.xp.zeros(o.shape + a.shape, a.dtype), o._backend)
                                for a in a_leaves]
                else:
                    gk = rows[k]
                    g_flat = flatten(gk)[0] if a_spec is not None else [gk]
                    g_leaves = [ops.reshape(g, o.shape + g.shape[1:]) for g in g_flat]
                per_arg.append(g_leaves[0] if a_spec is None else unflatten(a_spec, g_leaves))
            results.append(per_arg[0] if isinstance(argnums, (int, np.integer)) else tuple(per_arg))
        return unflatten(out_spec, results)

    return jac


def jacfwd(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Jacobian of ``f`` by forward mode: ``gt.jvp`` vmapped over the basis tangents of each
    differentiated argument (one batched forward pass per argument, not a loop).

    Returns:
        For an output ``y`` and argument ``x``, a Tensor of shape ``y.shape + x.shape`` (a tuple
        of them for a tuple ``argnums``; an output tree gives the same tree of results). Cheaper
        than :func:`jacrev` when ``x`` has fewer elements than ``y``.

    Example:
        >>> import gradtape as gt
        >>> gt.jacfwd(lambda x: x * x)(gt.tensor([1.0, 2.0])).numpy()
        array([[2., 0.],
               [0., 4.]], dtype=float32)
    """
    return _jacfwd(f, argnums, "gt.jacfwd")


def _jacfwd(f: Callable[..., Any], argnums: int | Sequence[int], who: str) -> Callable[..., Any]:
    """:func:`jacfwd`, its messages naming ``who``, the transform the user called."""
    if not callable(f):
        raise TypeError(f"{who}: f must be callable, got {type(f).__name__}")
    _check_argnums(argnums, who)
    fname = f"{who}({getattr(f, '__name__', 'f')})"

    @functools.wraps(f)
    def jac(*args: Any, **kwargs: Any) -> Any:
        nums = _argnums(argnums, len(args), fname)
        primals = [_as_sources(args[i], fname, i) for i in nums]

        partial = _of_differentiated(f, args, nums, kwargs)

        per_arg = []  # for each differentiated argument: the output tree of Jacobians
        out_spec = None
        for i in range(len(nums)):
            a_leaves, a_spec = flatten(primals[i])
            cols_per_leaf = []
            for j, leaf in enumerate(a_leaves):
                n = leaf.size

                def push(v: Tensor, i: int = i, j: int = j, leaves: list = a_leaves,
                         spec: Any = a_spec) -> Any:
                    tangent_leaves = [v if k == j else _zeros(lf) for k, lf in enumerate(leaves)]
                    tangents = [_zeros_tree(p) for p in primals]
                    tangents[i] = unflatten(spec, tangent_leaves)
                    return jvp(partial, tuple(primals), tuple(tangents))[1]

                if n:
                    seeds = ops.reshape(basis(n, leaf.dtype, leaf), (n,) + leaf.shape)
                    cols = vmap(push, randomness="same")(seeds)  # output tree of [n, *out.shape]
                else:
                    cols = None
                cols_per_leaf.append((leaf, cols))
            outs = None
            for _leaf, cols in cols_per_leaf:
                if cols is not None:
                    outs, out_spec = flatten(cols)
                    break
            if outs is None:  # every leaf empty: evaluate f for the output shapes
                out_leaves, out_spec = flatten(partial(*primals))
                shapes = [o.shape for o in out_leaves]
            else:
                shapes = [o.shape[1:] for o in outs]
            jac_leaves = []  # per output leaf: the tree of Jacobians wrt this argument
            for k, oshape in enumerate(shapes):
                parts = []
                for leaf, cols in cols_per_leaf:
                    if cols is None:
                        parts.append(_wrap(leaf._backend.xp.zeros(oshape + leaf.shape, leaf.dtype),
                                           leaf._backend))
                        continue
                    c = flatten(cols)[0][k]  # [n, *oshape]
                    c = ops.moveaxis(c, 0, -1) if c.ndim > 1 else c
                    parts.append(ops.reshape(c, oshape + leaf.shape))
                jac_leaves.append(unflatten(a_spec, parts))
            per_arg.append(jac_leaves)
        results = []
        for k in range(len(per_arg[0])):
            items = [pa[k] for pa in per_arg]
            results.append(items[0] if isinstance(argnums, (int, np.integer)) else tuple(items))
        return unflatten(out_spec, results)

    return jac


def hessian(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Hessian of scalar-valued ``f``: forward over reverse, ``jacfwd(grad(f))`` (one reverse
    pass carrying a batch of tangents), shape ``x.shape + x.shape``.

    Example:
        >>> import gradtape as gt
        >>> gt.hessian(lambda x: (x ** 3).sum())(gt.tensor([1.0, 2.0])).numpy()
        array([[ 6.,  0.],
               [ 0., 12.]], dtype=float32)
    """
    return _jacfwd(_grad(f, argnums, False, "gt.hessian"), argnums, "gt.hessian")


def hvp(f: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
    """Hessian-vector product of scalar-valued ``f`` at ``primals`` along ``tangents``: the
    gradient of the directional derivative, ``grad(lambda *x: jvp(f, x, tangents)[1])`` at
    ``primals`` (reverse over forward: one forward pass carrying tangents through ``f``, then
    one backward pass through both). It does the same products as the hand-written
    Pearlmutter method; forward over reverse (``jvp(grad(f))``) also computes the gradient
    itself, which the product does not need (one more matrix product per layer's weight).
    When ``f`` calls a ``custom_gradient`` function (which defines only the reverse pass, so
    forward mode cannot go through it), the product is taken by nested tapes instead (the
    gradient of ``sum(grad(f) * v)``, through the custom gradient), running ``f`` a second
    time, Python side effects included.

    Args:
        f: returns a scalar float Tensor.
        primals: a tuple, one entry per positional argument of ``f`` (Tensors, float arrays,
            or nested tuples/lists/dicts of them).
        tangents: a tuple of the same structure and shapes (the vector ``v``).

    Returns:
        A tuple with one product per argument, each of its argument's structure and shapes.

    Example:
        >>> import gradtape as gt
        >>> gt.hvp(lambda x: (x ** 3).sum(), (gt.tensor([1.0, 2.0]),),
        ...        (gt.tensor([1.0, 0.0]),))[0].numpy()
        array([6., 0.], dtype=float32)
    """
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError("gt.hvp: primals and tangents must be tuples, one entry per argument of f")
    fname = f"gt.hvp({getattr(f, '__name__', 'f')})"
    if not primals:
        raise ValueError(f"{fname}: primals is empty; pass one entry per argument of f")
    xs = tuple(_as_sources(p, fname, i, "(gt.hvp differentiates every argument)")
               for i, p in enumerate(primals))
    # the tangents are constants: a Variable passed as a primal and as its own tangent (H v at
    # v) would otherwise be differentiated through the tangent too (H v + grad f)
    tangents = tuple(unflatten(spec, [ops.stop_gradient(t) if isinstance(t, Tensor) and t._is_variable
                                      else t for t in leaves])
                     for leaves, spec in (flatten(t) for t in tangents))
    try:
        with GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(list(xs))
            out, tan = jvp(f, xs, tuple(tangents))
    except CustomGradientJvpError:  # no forward mode through f (jvp checked the tangents first)
        return _hvp_nested_tapes(f, xs, tangents, fname)
    _scalar_value(out, fname, False)
    return tuple(tape.gradient(tan, list(xs), unconnected_gradients="zero"))


def _hvp_nested_tapes(f: Callable[..., Any], xs: tuple[Any, ...], tangents: Sequence[Any],
                      fname: str) -> tuple[Any, ...]:
    """``H v`` reverse over reverse: the gradient of ``sum(grad(f) * v)``, through any custom
    gradient ``f`` calls."""
    with GradientTape(watch_accessed_variables=False) as outer:
        outer.watch(list(xs))
        with GradientTape(watch_accessed_variables=False) as inner:
            inner.watch(list(xs))
            out = f(*xs)
        value, _ = _scalar_value(out, fname, False)
        g = flatten(inner.gradient(value, list(xs), unconnected_gradients="zero"))[0]
        vs = flatten(list(tangents))[0]
        terms = [ops.sum(a * b) for a, b in zip(g, vs)]
        gv = terms[0]
        for term in terms[1:]:
            gv = gv + term
    return tuple(outer.gradient(gv, list(xs), unconnected_gradients="zero"))


def _of_differentiated(f: Callable[..., Any], args: tuple, nums: tuple[int, ...],
                       kwargs: dict | None = None) -> Callable[..., Any]:
    """``f`` as a function of the arguments ``nums`` only, the others fixed to ``args`` (and
    the keyword arguments ``kwargs``, never differentiated)."""
    kw = kwargs or {}

    def partial(*diff_args: Any) -> Any:
        full = list(args)
        for i, a in zip(nums, diff_args):
            full[i] = a
        return f(*full, **kw)

    return partial


def _zeros(t: Tensor) -> Tensor:
    return _wrap(t._backend.xp.zeros(t.shape, t.dtype), t._backend)


def _zeros_tree(tree: Any) -> Any:
    leaves, spec = flatten(tree)
    return unflatten(spec, [_zeros(t) for t in leaves])
