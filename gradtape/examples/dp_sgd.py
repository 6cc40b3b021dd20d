"""Differentially private training (DP-SGD) of the digits MLP with per-example clipping.

Each step computes every example's gradient norm over all parameters jointly, scales the
example's gradient by ``min(1, C / norm)``, sums, adds Gaussian noise of standard deviation
``noise_multiplier * C`` from a seeded generator, divides by the batch size and takes an Adam
step (Abadi et al. 2016). ``tape.per_example_gradients(..., max_norm=C, reduce="sum")`` does
the clipping and the sum in one backward pass, without materializing per-example gradients
for the dense layers ("ghost" norms).

Run ``python -m gradtape.examples.dp_sgd`` (needs scikit-learn: ``pip install
gradtape[examples]``). It prints the test accuracy per epoch.

Example:
    >>> from gradtape.examples import dp_sgd
    >>> acc = dp_sgd.main(["--epochs", "1"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gradtape as gt
from gradtape.examples.digits import _learning_rate, _non_negative_float, _positive_int, _seed, build_mlp, load_data

__all__ = ["main", "train_dp"]


def train_dp(epochs: int = 30, batch_size: int = 64, max_norm: float = 1.0,
             noise_multiplier: float = 1.0, lr: float = 5e-3, seed: int = 0,
             verbose: bool = True) -> float:
    """Train the digits MLP with DP-SGD; returns the final test accuracy (a float in [0, 1]).

    Args:
        epochs: passes over the 1437 training images.
        batch_size: examples per step (B); each step clips B per-example gradients.
        max_norm: the clipping norm C.
        noise_multiplier: sigma; the noise added to the clipped sum has std ``sigma * C``.
        lr: Adam's learning rate.
        seed: seeds the data split, the initialization, the batch order and the noise.
        verbose: print one line per epoch.
    """
    x_tr, y_tr, x_te, y_te = (gt.tensor(a) for a in load_data(seed))
    model = build_mlp(seed)
    params = model.trainable_variables
    opt = gt.optimizers.Adam(lr)
    rng = np.random.default_rng(seed)  # the batch order
    noise_gen = gt.random.Generator(seed)  # the noise: gradtape's seeded generator
    n = x_tr.shape[0]
    acc = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        perm = rng.permutation(n)
        clipped_frac = []
        for s in range(0, n - batch_size + 1, batch_size):
            idx = perm[s:s + batch_size]
            xb, yb = x_tr[idx], y_tr[idx]
            with gt.GradientTape() as tape:
                losses = gt.nn.cross_entropy(model(xb), yb, reduction="none")  # [B]
            sums, norms = tape.per_example_gradients(losses, params, max_norm=max_norm,
                                                     reduce="sum", return_norms=True)
            clipped_frac.append(float((norms.numpy() > max_norm).mean()))
            noisy = []
            for g in sums:
                noise = noise_gen.normal(g.shape, std=noise_multiplier * max_norm, dtype=g.dtype)
                noisy.append((g + noise) / batch_size)
            opt.apply_gradients(zip(noisy, params))
        logits = model(x_te)
        acc = float((logits.numpy().argmax(-1) == y_te.numpy()).mean())
        if verbose:
            print(f"dp-sgd epoch {epoch:2d}/{epochs}  test acc {acc:.4f}  "
                  f"clipped {np.mean(clipped_frac):.0%} of examples  "
                  f"{time.perf_counter() - start:.2f}s")
    return acc


def main(argv: list[str] | None = None) -> float:
    """Command line: ``--epochs``, ``--batch-size``, ``--max-norm``, ``--noise``, ``--lr``,
    ``--seed``. Returns the final test accuracy."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # (the digits demo's argument types: a bad value is a one-line usage error naming the flag)
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--max-norm", type=_learning_rate, default=1.0)
    p.add_argument("--noise", type=_non_negative_float, default=1.0)
    p.add_argument("--lr", type=_learning_rate, default=5e-3)
    p.add_argument("--seed", type=_seed, default=0)
    a = p.parse_args(argv)
    acc = train_dp(a.epochs, a.batch_size, a.max_norm, a.noise, a.lr, a.seed)
    print(f"DP-SGD digits MLP: test accuracy {acc:.2%} (C={a.max_norm}, sigma={a.noise}, "
          f"batch {a.batch_size}, {a.epochs} epoch{'' if a.epochs == 1 else 's'})")
    return acc


if __name__ == "__main__":
    main()
