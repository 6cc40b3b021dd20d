"""Backends: selection, GRADTAPE_BACKEND, lazy/cached/silent CuPy detection with the real
reason, moving tensors, mixing backends.

CuPy is simulated (``sys.modules['cupy'] = None`` or a fake module object) so every reason is
tested on any machine; the probe cache is reset around each such test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt

# The CuPy probe (its cached reason, and the reset that lets one process simulate several
# installs) has no public face: only gradtape._src.backend holds it.
from gradtape._src import backend as _backend

BackendUnavailableError = gt.BackendUnavailableError

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env_backend: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter importing this checkout of gradtape."""
    env = {k: v for k, v in os.environ.items() if k != "GRADTAPE_BACKEND"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if env_backend is not None:
        env["GRADTAPE_BACKEND"] = env_backend
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(ROOT))


# A prologue for subprocesses: CuPy "not installed", whatever this machine has.
NO_CUPY = "import sys; sys.modules['cupy'] = None\n"


@pytest.fixture
def fresh_probe():
    """Forget the cached CuPy probe before and after the test; the test starts on NumPy and
    the previous selection is restored after it (``use_backend`` restores on exit)."""
    _backend._reset_cupy_probe()
    try:
        with gt.use_backend("numpy"):
            yield
    finally:
        _backend._reset_cupy_probe()


class CudaError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{text}")
        self.status = status


def fake_cupy(count=1, count_error=None, first_op_error=None, calls=None):
    """A module object that looks enough like CuPy for the probe."""
    mod = types.ModuleType("cupy")

    def get_device_count():
        if calls is not None:
            calls.append("getDeviceCount")
        if count_error is not None:
            raise count_error
        return count

    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))

    class ndarray(np.ndarray):  # noqa: N801 - CuPy's spelling
        pass

    def zeros(n):
        if first_op_error is not None:
            raise first_op_error
        return np.zeros(n)

    mod.ndarray = ndarray
    mod.zeros = zeros
    mod.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype).view(ndarray)
    mod.asnumpy = lambda a: np.asarray(a).view(np.ndarray).copy()
    mod.ElementwiseKernel = lambda *args, **kwargs: ("kernel", args)
    return mod


# --------------------------------------------------------------------------- selection
def test_error_type_is_public_runtime_error():
    assert issubclass(gt.BackendUnavailableError, RuntimeError)
    assert gt.BackendUnavailableError is _backend.BackendUnavailableError


def test_set_backend_numpy_and_backend_name():
    with gt.use_backend("numpy"):
        assert gt.backend_name() == "numpy"
        assert gt.tensor([1.0]).backend == "numpy"
        assert isinstance(gt.tensor([1.0]).data, np.ndarray)


def test_set_backend_is_case_insensitive():
    with gt.use_backend(" NumPy "):
        assert gt.backend_name() == "numpy"


def test_set_backend_rejects_unknown_names():
    before = gt.backend_name()
    with pytest.raises(ValueError, match="'numpy', 'cupy' or 'auto'.*'torch'"):
        gt.set_backend("torch")
    with pytest.raises(TypeError, match="str"):
        gt.set_backend(None)
    assert gt.backend_name() == before


def test_use_backend_restores_on_exit_and_on_error(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    gt.set_backend("numpy")
    with gt.use_backend("cupy") as b:
        assert b.name == "cupy" and gt.backend_name() == "cupy"
        with pytest.raises(KeyError):
            with gt.use_backend("numpy"):
                assert gt.backend_name() == "numpy"
                raise KeyError("boom")
        assert gt.backend_name() == "cupy"
    assert gt.backend_name() == "numpy"


def test_failed_set_backend_keeps_previous_choice(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    gt.set_backend("numpy")
    with pytest.raises(BackendUnavailableError):
        gt.set_backend("cupy")
    with pytest.raises(BackendUnavailableError):
        with gt.use_backend("cupy"):
            pytest.fail("body must not run")  # pragma: no cover
    assert gt.backend_name() == "numpy"


# --------------------------------------------------------------------------- reasons
def test_cupy_not_installed_reason(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendUnavailableError, match="CuPy is not installed") as info:
        gt.set_backend("cupy")
    assert isinstance(info.value, RuntimeError)
    assert _backend.cupy_unavailable_reason().startswith("CuPy is not installed")
    assert _backend.cupy_module() is None


def test_cupy_broken_install_reason(fresh_probe, monkeypatch):
    class Finder:  # `import cupy` raises ImportError from inside the package
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "cupy":
                raise ImportError("libcudart.so.12: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(BackendUnavailableError, match="installed but failed to import.*libcudart"):
        gt.set_backend("cupy")


def test_no_driver_reason(fresh_probe, monkeypatch):
    err = CudaError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count_error=err))
    with pytest.raises(BackendUnavailableError) as info:
        gt.set_backend("cupy")
    msg = str(info.value)
    assert "CUDA driver is missing" in msg and "cudaErrorInsufficientDriver" in msg
    assert "CudaError" in msg  # the original exception type is kept for the user


def test_unknown_driver_failure_reason(fresh_probe, monkeypatch):
    err = RuntimeError("something odd in the runtime")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count_error=err))
    with pytest.raises(BackendUnavailableError, match="no CUDA driver is usable.*something odd"):
        gt.set_backend("cupy")


@pytest.mark.parametrize("kwargs", [
    {"count_error": CudaError(100, "cudaErrorNoDevice: no CUDA-capable device is detected")},
    {"count": 0},
])
def test_no_device_reason(fresh_probe, monkeypatch, kwargs):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(**kwargs))
    with pytest.raises(BackendUnavailableError, match="no CUDA device is present"):
        gt.set_backend("cupy")


def test_driver_error_on_first_operation_reason(fresh_probe, monkeypatch):
    err = CudaError(999, "cudaErrorUnknown: unknown error")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(first_op_error=err))
    with pytest.raises(BackendUnavailableError, match="CUDA driver error.*cudaErrorUnknown"):
        gt.set_backend("cupy")


def test_probe_is_cached(fresh_probe, monkeypatch):
    calls = []
    err = CudaError(35, "cudaErrorInsufficientDriver")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count_error=err, calls=calls))
    for _ in range(3):
        with pytest.raises(BackendUnavailableError):
            gt.set_backend("cupy")
        assert "driver" in _backend.cupy_unavailable_reason()
    assert calls == ["getDeviceCount"]
    _backend._reset_cupy_probe()  # the reset helper makes it probe again
    _backend.cupy_unavailable_reason()
    assert calls == ["getDeviceCount"] * 2


def test_auto_without_usable_cupy_is_numpy_and_silent(fresh_probe, monkeypatch, recwarn, capfd):
    err = CudaError(35, "cudaErrorInsufficientDriver")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count_error=err))
    gt.set_backend("auto")
    assert gt.backend_name() == "numpy"
    out, errout = capfd.readouterr()
    assert out == "" and errout == ""
    assert len(recwarn) == 0


def test_probe_keeps_cupy_import_warnings_out_of_user_output(fresh_probe, monkeypatch, recwarn):
    import warnings

    class Loud:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "cupy":
                warnings.warn("two CuPy packages are installed", UserWarning, stacklevel=1)
                raise ImportError("half-installed")
            return None

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Loud(), *sys.meta_path])
    gt.set_backend("auto")
    assert gt.backend_name() == "numpy"
    assert len(recwarn) == 0
    assert "two CuPy packages" in _backend.cupy_unavailable_reason()


def test_working_cupy_is_picked_by_auto(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setitem(sys.modules, "cupyx", None)  # no cupyx: erf falls back to a kernel
    gt.set_backend("auto")
    assert gt.backend_name() == "cupy"
    assert _backend.cupy_unavailable_reason() is None
    assert _backend.cupy_module() is sys.modules["cupy"]


# --------------------------------------------------------------------------- moving, mixing
def test_to_numpy_is_a_no_op_on_numpy():
    t = gt.tensor([1.0, 2.0])
    assert t.to("numpy") is t
    assert t.to("auto").backend in ("numpy", "cupy")


def test_to_cupy_raises_with_reason(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    t = gt.tensor([1.0, 2.0])
    with pytest.raises(BackendUnavailableError, match="not installed"):
        t.to("cupy")
    with pytest.raises(ValueError, match="'numpy', 'cupy' or 'auto'"):
        t.to("gpu")


def test_to_and_back_with_a_working_cupy(fresh_probe, monkeypatch):
    fake = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupyx", None)
    t = gt.tensor([1.0, 2.0])
    d = t.to("cupy")
    assert d.backend == "cupy" and isinstance(d.data, fake.ndarray)
    h = d.to("numpy")
    assert h.backend == "numpy" and type(h.numpy()) is np.ndarray
    np.testing.assert_array_equal(h.numpy(), [1.0, 2.0])
    with pytest.raises(ValueError, match="one backend.*'cupy'.*'numpy'.*to\\("):
        d + h
    # host data given to a constructor moves to the active backend
    with gt.use_backend("cupy"):
        assert gt.tensor(np.ones(2)).backend == "cupy"
        assert gt.Variable(np.ones(2)).backend == "cupy"
        assert gt.tensor([1.0]).backend == "cupy"


def test_mixing_backends_in_one_op_raises(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setitem(sys.modules, "cupyx", None)
    a = gt.tensor([1.0, 2.0])
    b = gt.tensor([3.0, 4.0]).to("cupy")
    assert a.backend == "numpy" and b.backend == "cupy"
    for op in (lambda: a + b, lambda: b * a, lambda: gt.matmul(a, b), lambda: gt.add(b, a)):
        with pytest.raises(ValueError, match="all tensors must be on one backend") as info:
            op()
        assert "'numpy'" in str(info.value) and "'cupy'" in str(info.value)
    v = gt.Variable([1.0, 2.0], name="w")
    with pytest.raises(ValueError, match="backend 'cupy'"):
        v.assign(b)
    with pytest.raises(ValueError, match="'cupy'.*'numpy'"):  # the value's, then the variable's
        v.assign_add(b)
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])  # nothing was written


def test_numpy_backend_object():
    with gt.use_backend("numpy") as numpy_backend:
        assert numpy_backend.name == "numpy" and numpy_backend.xp is np
        assert numpy_backend.owns(np.ones(2)) and numpy_backend.owns(np.float32(1))
        assert not numpy_backend.owns([1.0])
        assert type(numpy_backend.to_host(np.ones(2))) is np.ndarray
        assert "numpy" in repr(numpy_backend)


# --------------------------------------------------------------------------- fresh processes
def test_import_does_not_import_or_probe_cupy():
    code = (
        "import sys\n"
        "tried = []\n"
        "class Spy:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cupy', 'cupyx', 'cupy_backends'): tried.append(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import gradtape as gt\n"
        "x = gt.Variable([1.0]); y = gt.tensor([2.0]) * 3\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
        "assert tried == [], tried\n"
        "try:\n"  # nothing probed yet: the first probe happens now, and the spy sees it
        "    gt.set_backend('cupy')\n"
        "except gt.BackendUnavailableError:\n"
        "    pass\n"
        "assert tried[:1] == ['cupy'], tried\n"
        "print('ok')\n")
    res = run_python(code, env_backend="numpy")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok" and res.stderr == ""
    res = run_python("import sys, gradtape; assert 'cupy' not in sys.modules; print('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_default_auto_resolves_to_numpy_silently_without_cupy():
    res = run_python(NO_CUPY + "import gradtape as gt; print(gt.backend_name()); "
                     "print(gt.tensor([1.0]).backend)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["numpy", "numpy"]
    assert res.stderr == ""


def test_default_auto_without_driver_is_silent():
    code = ("import sys, types, warnings\n"
            "def boom():\n"
            "    raise RuntimeError('cudaErrorInsufficientDriver: CUDA driver version is insufficient')\n"
            "m = types.ModuleType('cupy')\n"
            "m.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=boom))\n"
            "sys.modules['cupy'] = m\n"
            "import gradtape as gt\n"
            "print(gt.backend_name())\n")
    res = run_python(code, env_backend="auto")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "numpy" and res.stderr == ""


@pytest.mark.parametrize("value", ["numpy", " NUMPY ", ""])
def test_env_var_numpy(value):
    res = run_python(NO_CUPY + "import gradtape as gt; print(gt.backend_name())", env_backend=value)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "numpy" and res.stderr == ""


def test_env_var_cupy_without_cupy_fails_at_first_use_naming_the_variable():
    code = NO_CUPY + (
        "import gradtape as gt\n"  # the import itself succeeds
        "try:\n"
        "    gt.tensor([1.0])\n"
        "except gt.BackendUnavailableError as e:\n"
        "    print(e)\n"
        "gt.set_backend('numpy'); print(gt.backend_name())\n")
    res = run_python(code, env_backend="cupy")
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.strip().splitlines()
    assert "GRADTAPE_BACKEND='cupy'" in first and "CuPy is not installed" in first
    assert second == "numpy"


def test_env_var_invalid_value_names_the_variable():
    code = ("import gradtape as gt\n"
            "try:\n"
            "    gt.backend_name()\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    res = run_python(code, env_backend="tpu")
    assert res.returncode == 0, res.stderr
    assert "GRADTAPE_BACKEND='tpu'" in res.stdout and "'numpy', 'cupy' or 'auto'" in res.stdout


def test_env_var_is_read_at_import_only():
    code = ("import os, gradtape as gt\n"
            "os.environ['GRADTAPE_BACKEND'] = 'bogus'\n"
            "print(gt.backend_name())\n")
    res = run_python(code, env_backend="numpy")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "numpy"
