"""Interop with other array libraries: zero-copy DLPack both ways, and ``gt.tensor`` of any object
with ``__dlpack__`` or ``__array__``.

The PyTorch and JAX cases skip, with the reason, where those libraries are not installed (they
are no dependency of gradtape or of its dev extra); the cases with small hand-written producers
always run. Memory sharing is shown by writing through one side and reading the other, and by
comparing buffer addresses.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def _address(t: gt.Tensor) -> int:
    return np.asarray(t.data).__array_interface__["data"][0]


def _aligned(values, dtype=np.float32, align: int = 64) -> np.ndarray:
    """A writable host array of ``values`` whose buffer starts on an ``align``-byte boundary
    (JAX on the CPU shares only such buffers through DLPack and copies others)."""
    values = np.asarray(values, dtype=dtype)
    raw = np.empty(values.nbytes + align, dtype=np.uint8)
    start = -raw.__array_interface__["data"][0] % align
    out = raw[start:start + values.nbytes].view(dtype).reshape(values.shape)
    out[...] = values
    return out


# --- small producers: only __dlpack__, or only __array__ ---------------------------------------

class DLPackOnly:
    """Exports its array through ``__dlpack__`` alone (no ``__dlpack_device__``, no ``__array__``)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)


class ArrayOnly:
    """Converts through ``__array__`` alone, handing out its own buffer (as many wrappers do)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


@pytest.mark.parametrize("producer", [DLPackOnly, ArrayOnly])
def test_tensor_accepts_dlpack_only_and_array_only_objects(producer):
    src = np.arange(6.0).reshape(2, 3)  # float64
    t = gt.tensor(producer(src))
    assert isinstance(t, gt.Tensor) and t.shape == (2, 3) and t.backend == "numpy"
    assert t.dtype == np.float64  # an array keeps its dtype (Python floats alone become float32)
    np.testing.assert_array_equal(t.numpy(), src)
    assert not np.shares_memory(t.data, src)  # gt.tensor copies: tensors are immutable
    src[0, 0] = 42.0
    assert t.numpy()[0, 0] == 0.0


@pytest.mark.parametrize("producer", [DLPackOnly, ArrayOnly])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int32"])
def test_tensor_of_a_producer_with_a_dtype_copies(producer, dtype):
    src = np.arange(3.0)
    t = gt.tensor(producer(src), dtype=dtype)  # float64: the same dtype, still a copy
    assert t.dtype == np.dtype(dtype)
    src[0] = 7.0
    np.testing.assert_array_equal(t.numpy(), [0, 1, 2])


@pytest.mark.parametrize("producer", [DLPackOnly, ArrayOnly])
def test_variable_of_a_producer_is_its_own_buffer(producer):
    src = np.array([1.0, 2.0], dtype=np.float32)
    v = gt.Variable(producer(src), name="v")
    v.assign_add([1.0, 1.0])
    np.testing.assert_array_equal(src, [1.0, 2.0])  # the producer's memory is untouched
    np.testing.assert_array_equal(v.numpy(), [2.0, 3.0])
    with gt.GradientTape() as tape:
        y = gt.sum(v * gt.tensor(producer(np.array([3.0, 4.0], dtype=np.float32))))
    np.testing.assert_array_equal(tape.gradient(y, v).numpy(), [3.0, 4.0])


def test_from_dlpack_shares_a_dlpack_only_producer():
    src = np.arange(4.0, dtype=np.float32)
    t = gt.from_dlpack(DLPackOnly(src))  # no __dlpack_device__: host memory assumed
    assert t.backend == "numpy" and _address(t) == src.__array_interface__["data"][0]
    src[1] = 9.0
    assert t.numpy()[1] == 9.0


def test_from_dlpack_refuses_an_array_only_object():
    with pytest.raises(TypeError, match="from_dlpack: expected an object with __dlpack__, got ArrayOnly"):
        gt.from_dlpack(ArrayOnly(np.zeros(2)))


def test_non_numeric_producers_are_refused_naming_the_type():
    with pytest.raises(TypeError, match="gt.tensor: .*numeric.*ArrayOnly"):
        gt.tensor(ArrayOnly(np.array(["a", "b"])))


# --- PyTorch ------------------------------------------------------------------------------------

@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: no DLPack exchange with it to test")


def test_from_dlpack_of_a_torch_tensor_shares_memory(torch):
    src = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = gt.from_dlpack(src)
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.backend == "numpy"
    assert _address(t) == src.data_ptr()
    src[1, 2] = 100.0  # a write through the torch side is seen by gradtape
    assert t.numpy()[1, 2] == 100.0
    src.mul_(2)
    np.testing.assert_array_equal(t.numpy(), [[0, 2, 4], [6, 8, 200]])


def test_torch_from_dlpack_of_a_gradtape_tensor_shares_memory(torch):
    t = gt.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = torch.from_dlpack(t)
    assert tuple(out.shape) == (2, 2) and out.dtype == torch.float32
    assert out.data_ptr() == _address(t)
    out[0, 1] = 50.0  # a write through the torch side is seen by gradtape
    np.testing.assert_array_equal(t.numpy(), [[1.0, 50.0], [3.0, 4.0]])
    v = gt.Variable([1.0, 2.0, 3.0])  # a Variable exports its live buffer
    view = torch.from_dlpack(v)
    v.assign_add([1.0, 1.0, 1.0])
    assert view.tolist() == [2.0, 3.0, 4.0]


def test_gradient_round_trip_through_torch(torch):
    x_torch = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    x = gt.from_dlpack(x_torch)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.sum(gt.tanh(x) * x)
    g = torch.from_dlpack(tape.gradient(y, x))
    xr = x_torch.clone().requires_grad_(True)
    (torch.tanh(xr) * xr).sum().backward()
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, xr.grad)


def test_tensor_of_a_torch_tensor_copies_and_keeps_its_dtype(torch):
    for dtype, expect in ((torch.float64, np.float64), (torch.float32, np.float32), (torch.int64, np.int64)):
        src = torch.arange(3).to(dtype)
        t = gt.tensor(src)
        assert t.dtype == expect
        src[0] = 7
        np.testing.assert_array_equal(t.numpy(), [0, 1, 2])


def test_torch_tensor_that_requires_grad_is_refused_with_the_fix(torch):
    src = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="gt.tensor: Tensor cannot be read through DLPack.*detach"):
        gt.tensor(src)
    with pytest.raises(TypeError, match="from_dlpack: Tensor cannot be shared through DLPack.*detach"):
        gt.from_dlpack(src)
    np.testing.assert_array_equal(gt.from_dlpack(src.detach()).numpy(), [1.0, 1.0])


# --- JAX ----------------------------------------------------------------------------------------

@pytest.fixture
def jnp():
    pytest.importorskip("jax", reason="JAX is not installed: no DLPack exchange with it to test")
    import jax.numpy as jnp  # after the skip: JAX is optional

    return jnp


def test_from_dlpack_of_a_jax_array_shares_memory(jnp):
    a = jnp.arange(8.0, dtype=jnp.float32)
    t = gt.from_dlpack(a)
    assert t.shape == (8,) and t.dtype == np.float32 and t.backend == "numpy"
    assert _address(t) == a.unsafe_buffer_pointer()
    # JAX arrays cannot be written; write to a host buffer JAX itself reads without a copy
    host = _aligned([1.0, 2.0, 3.0, 4.0])
    j = jnp.from_dlpack(host)
    assert j.unsafe_buffer_pointer() == host.__array_interface__["data"][0]
    t = gt.from_dlpack(j)
    host[2] = 30.0
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 30.0, 4.0])


def test_jax_from_dlpack_of_a_gradtape_tensor_shares_memory(jnp):
    import jax.dlpack  # JAX is present (the fixture skipped otherwise)

    host = _aligned([[1.0, 2.0], [3.0, 4.0]])
    t = gt.from_dlpack(host)  # a gradtape tensor on that (64-byte-aligned) buffer
    for j in (jnp.from_dlpack(t), jax.dlpack.from_dlpack(t)):
        assert j.shape == (2, 2) and j.dtype == jnp.float32
        assert j.unsafe_buffer_pointer() == _address(t)
    host[0, 0] = -5.0  # the one buffer: JAX sees the write
    assert float(j[0, 0]) == -5.0
    np.testing.assert_array_equal(np.asarray(jnp.from_dlpack(gt.tensor([1.0, 2.0]))), [1.0, 2.0])


def test_tensor_of_a_jax_array_copies(jnp):
    a = jnp.asarray([1.0, 2.0, 3.0])
    t = gt.tensor(a)
    assert t.dtype == np.float32 and _address(t) != a.unsafe_buffer_pointer()
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 3.0])
    with gt.GradientTape() as tape:
        tape.watch(t)
        y = gt.sum(t * t)
    np.testing.assert_array_equal(np.asarray(jnp.from_dlpack(tape.gradient(y, t))), [2.0, 4.0, 6.0])
