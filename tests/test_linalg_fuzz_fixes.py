"""Found by fuzzing linear algebra, creation ops and transforms: norms of complex tensors,
norms of empty matrices, slogdet's derivative at a singular matrix, arange's size message, and
a compiled vmap of a function with defaults."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


@pytest.mark.parametrize("order", [None, 1, 2, np.inf, -np.inf, 3])
def test_vector_norms_of_complex_tensors_are_norms_of_the_magnitudes(order):
    z = np.array([3 + 4j, 1 - 2j, -0.5j])
    got = gt.norm(gt.tensor(z), ord=order)
    assert got.dtype.kind == "f"
    np.testing.assert_allclose(got.numpy(), np.linalg.norm(z, ord=order), rtol=1e-12)


def test_matrix_norms_of_complex_tensors():
    z = np.array([[1 + 1j, 2], [3, 4 - 2j]])
    for order in (None, "fro", 1, -1, np.inf, -np.inf):
        np.testing.assert_allclose(gt.norm(gt.tensor(z), ord=order).numpy(),
                                   np.linalg.norm(z, ord=order), rtol=1e-12)
    for order in ("nuc", 2, -2):
        with pytest.raises(TypeError, match=rf"norm: ord={order!r} of a complex matrix"):
            gt.norm(gt.tensor(z), ord=order)


@pytest.mark.parametrize("order", ["nuc", 2])
def test_spectral_norms_of_an_empty_matrix_are_zero(order):
    x = gt.tensor(np.zeros((0, 3)))
    with gt.GradientTape() as tape:
        tape.watch(x)
        n = gt.norm(x, ord=order)
    assert float(n) == 0.0 and tape.gradient(n, x).shape == (0, 3)
    with pytest.raises(ValueError, match=r"norm: ord=-2 of an empty matrix"):
        gt.norm(x, ord=-2)


def test_slogdets_derivative_at_a_singular_matrix_names_slogdet():
    a = gt.tensor(np.array([[1.0, 2.0], [2.0, 4.0]]))
    with gt.GradientTape() as tape:
        tape.watch(a)
        _, logdet = gt.slogdet(a)
    assert float(logdet) == -np.inf
    with pytest.raises(np.linalg.LinAlgError, match=r"^slogdet: the derivative of log\|det a\|"):
        tape.gradient(logdet, a)
    with pytest.raises(np.linalg.LinAlgError, match=r"^slogdet: the derivative"):
        gt.jvp(lambda x: gt.slogdet(x)[1], (a,), (gt.ones_like(a),))


def test_aranges_size_error_gives_the_count():
    with pytest.raises(ValueError, match=r"1000000000000000019884624838656 elements"):
        gt.arange(0.0, 1e30)


def test_a_compiled_vmap_leaves_the_functions_defaults_unmapped():
    W = gt.tensor(np.arange(9.0).reshape(3, 3))

    def f(x, w=W):
        return w @ x

    X = gt.ones((3, 3))
    eager = gt.vmap(f)(X)
    compiled = gt.function(gt.vmap(f))
    for _ in range(3):
        np.testing.assert_array_equal(compiled(X).numpy(), eager.numpy())
    assert eager.shape == (3, 3)
