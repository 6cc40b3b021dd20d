"""Users' scripts type-check against gradtape: mypy sees the public names (``gt.tensor``,
``gt.reshape``, ``gt.nn.softmax``, ``gt.optimizers.Adam`` ...) and their signatures.

mypy runs on a small user script written to a temporary folder, with the repository on
``MYPYPATH`` (an editable install hides the package behind an import hook mypy does not follow)
and ``--follow-imports=silent``: only the user's file is judged here; gradtape's own errors
are ``mypy gradtape``'s to report (``.ci/run``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import mypy  # noqa: F401 - only whether it is there
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("mypy is not installed (pip install -e '.[dev]')", allow_module_level=True)

USER_SCRIPT = """\
import numpy as np
from typing_extensions import assert_type

import gradtape as gt

x = gt.tensor([1.0])
y = gt.reshape(gt.tanh(x) * 2 + x, (1, 1))
z = gt.sum(y)
w = gt.Variable([1.0])
w.assign_sub([0.5])
print(z.numpy(), gt.nn.softmax(y), gt.optimizers.Adam(1e-3))

assert_type(x, gt.Tensor)
assert_type(y, gt.Tensor)
assert_type(w.assign_sub([0.5]), gt.Variable)
assert_type(z.numpy(), np.ndarray)
assert_type(x * 2 + 1, gt.Tensor)
assert_type(2.0 * x - x @ x, gt.Tensor)
assert_type(x[0], gt.Tensor)
assert_type(x.sum(axis=0).reshape(1, 1).T, gt.Tensor)
assert_type(gt.optimizers.Adam(1e-3), gt.optimizers.Adam)


def double(a: gt.TensorLike) -> gt.Tensor:
    return gt.mul(a, 2.0)


double(np.ones(3))
double([1.0, 2.0])
double(x)

model = gt.nn.Sequential([gt.nn.Dense(4, 8, activation="relu", seed=0), gt.nn.Dense(8, 3, seed=1)])
opt = gt.optimizers.SGD(0.1, momentum=0.9)
with gt.GradientTape() as tape:
    loss = gt.nn.cross_entropy(model(gt.tensor(np.ones((2, 4)))), gt.tensor([0, 1]))
grads = tape.gradient(loss, model.trainable_variables)
opt.apply_gradients(zip(grads, model.trainable_variables))
"""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(script: str, folder: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    path = folder / "user_script.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    env = dict(os.environ, MYPYPATH=str(ROOT))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--follow-imports=silent", "--no-implicit-reexport", "--cache-dir", str(cache),
           "--no-error-summary", "--show-error-codes", str(path)]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_a_user_script_type_checks(tmp_path, mypy_cache):
    res = run_mypy(USER_SCRIPT, tmp_path, mypy_cache)
    assert res.returncode == 0, f"mypy found errors in a user script:\n{res.stdout}{res.stderr}"


def test_mypy_sees_what_is_wrong(tmp_path, mypy_cache):
    """The check is not vacuous: a missing name and a wrong argument type are reported."""
    res = run_mypy("""\
        import gradtape as gt

        x = gt.tensor([1.0])
        gt.no_such_op(x)
        x.reshape("2, 3")
        """, tmp_path, mypy_cache)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'Module has no attribute "no_such_op"' in res.stdout, res.stdout
    assert "[arg-type]" in res.stdout, res.stdout
