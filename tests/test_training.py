"""Training end to end: a short seeded run reaches a stated accuracy, a checkpoint resumes
training to identical losses, and the digits command runs."""

from __future__ import annotations

import builtins
import os
import re

import numpy as np
import pytest

import gradtape as gt

pytest.importorskip("sklearn")
from gradtape.examples import digits  # noqa: E402


def _step(model, opt, xb, yb):
    with gt.GradientTape() as tape:
        loss = gt.nn.cross_entropy(model(xb), yb)
    params = model.trainable_variables
    opt.apply_gradients(zip(tape.gradient(loss, params), params))
    return float(loss)


def _batches(x, y, seed, batch=64):
    perm = np.random.default_rng(seed).permutation(len(x))
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        yield gt.tensor(x[idx]), y[idx]


def test_short_seeded_mlp_run_reaches_95_percent():
    x_tr, y_tr, x_te, y_te = digits.load_data(seed=0)
    model = gt.nn.Sequential([gt.nn.Dense(64, 64, activation="relu", seed=1), gt.nn.Dense(64, 10, seed=2)])
    opt = gt.optimizers.Adam(3e-3)
    for epoch in range(8):
        for xb, yb in _batches(x_tr, y_tr, epoch):
            _step(model, opt, xb, yb)
    acc = (model(gt.tensor(x_te)).numpy().argmax(-1) == y_te).mean()
    assert acc >= 0.95, acc


@pytest.mark.parametrize("make_opt", [lambda: gt.optimizers.Adam(2e-3),
                                      lambda: gt.optimizers.SGD(0.05, momentum=0.9, nesterov=True)],
                         ids=["adam", "sgd-nesterov"])
def test_checkpoint_resumes_training_to_identical_losses(tmp_path, make_opt):
    x_tr, y_tr, _, _ = digits.load_data(seed=0)
    x_tr, y_tr = x_tr[:512], y_tr[:512]

    def run(model, opt, epochs):
        return [_step(model, opt, xb, yb) for e in epochs for xb, yb in _batches(x_tr, y_tr, e)]

    model, opt = digits.build_cnn(seed=3), make_opt()
    run(model, opt, [0])
    path = model.save(tmp_path / "ckpt.npz", optimizer=opt)
    expected = run(model, opt, [1, 2])

    fresh, fresh_opt = digits.build_cnn(seed=99), make_opt()
    fresh.load(path, optimizer=fresh_opt)
    assert fresh_opt.iterations == 8
    resumed = run(fresh, fresh_opt, [1, 2])
    assert resumed == expected  # bit for bit
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_digits_command_writes_plot_and_checkpoints(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = digits.main(["--epochs", "1", "--model", "both", "--backend", "numpy",
                      "--out", str(tmp_path), "--batch-size", "64"])
    assert rc == 0
    out = capsys.readouterr()
    assert "mlp: test accuracy" in out.out and "cnn: test accuracy" in out.out
    assert "wall time" in out.out and "epoch 1/1" in out.err
    for name in ("digits_mlp.npz", "digits_cnn.npz", "digits_both.png"):
        assert os.path.getsize(tmp_path / name) > 0
    with open(tmp_path / "digits_both.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    model = digits.build_mlp(seed=5).load(tmp_path / "digits_mlp.npz")
    assert model(gt.tensor(np.zeros((1, 64), np.float32))).shape == (1, 10)


def test_missing_dependency_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SystemExit, match=r"pip install gradtape\[examples\]"):
        digits.load_data()


def test_digits_command_compiles_prints_the_speed_up_and_no_compile_trains_eagerly(tmp_path, capsys):
    # the main job trains under gt.function and prints the step's speed-up; --no-compile
    # trains eagerly, with the same history (a replayed step equals the eager one on NumPy)
    args = ["--epochs", "2", "--model", "mlp", "--backend", "numpy", "--no-plot",
            "--batch-size", "64", "--out", str(tmp_path)]
    assert digits.main(args) == 0
    compiled = capsys.readouterr().out
    assert re.search(r"mlp: step under gt\.function [\d.]+ ms, eager [\d.]+ ms: speed-up "
                     r"[\d.]+x \(--no-compile trains eagerly\)", compiled), compiled
    assert digits.main(args + ["--no-compile"]) == 0
    eager = capsys.readouterr().out
    assert "speed-up" not in eager

    def accuracy(out):
        return re.search(r"mlp: test accuracy ([\d.]+)%", out).group(1)

    assert accuracy(eager) == accuracy(compiled)
