"""The DP-SGD example (README "Batched gradients"): it trains, learns, and is reproducible."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")
from gradtape.examples import dp_sgd  # noqa: E402


def test_dp_sgd_learns_and_is_reproducible() -> None:
    a = dp_sgd.train_dp(epochs=3, seed=1, verbose=False)
    b = dp_sgd.train_dp(epochs=3, seed=1, verbose=False)
    assert a == b
    assert a > 0.5  # 10 classes: chance is 0.1; three noisy epochs reach about 0.65


def test_dp_sgd_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    acc = dp_sgd.main(["--epochs", "1", "--batch-size", "128"])
    out = capsys.readouterr().out
    assert "test accuracy" in out and 0.0 <= acc <= 1.0
