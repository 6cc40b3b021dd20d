"""Train an MLP and a small CNN on scikit-learn's bundled handwritten digits (8x8 images, 10
classes, 1797 examples; no download), with gradtape.

Run ``python -m gradtape.examples.digits`` (or ``gradtape-demo``). It prints a progress bar
with loss and accuracy, the final test accuracy and wall time of each model, and writes a
loss/accuracy plot (PNG) and a checkpoint (``.npz``, with the optimizer state) per model to
``--out`` (default ``./runs``). The GPU is used when CuPy and a device are available
(``--backend auto``).

Example:
    $ python -m gradtape.examples.digits --model mlp --epochs 20
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

import gradtape as gt

__all__ = ["main", "build_mlp", "build_cnn", "load_data", "train"]

_MISSING = ("the digits example needs scikit-learn and matplotlib ({what} is missing): "
            "pip install gradtape[examples]")


# --------------------------------------------------------------------------- data and models
def load_data(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """The digits dataset split into train/test (stratified, seeded), pixels scaled to [0, 1].

    Returns ``(x_train[N, 64], y_train[N], x_test[M, 64], y_test[M])`` float32 / int64 arrays.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit(_MISSING.format(what="scikit-learn")) from None
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=seed)
    return x_tr, y_tr, x_te, y_te


def build_mlp(seed: int = 0, hidden: int = 128) -> gt.nn.Module:
    """64 -> hidden -> hidden -> 10 with ReLU; input ``[N, 64]``, output logits ``[N, 10]``."""
    rng = np.random.default_rng(seed)
    return gt.nn.Sequential([
        gt.nn.Dense(64, hidden, activation="relu", kernel_init="he_uniform", seed=rng),
        gt.nn.Dense(hidden, hidden, activation="relu", kernel_init="he_uniform", seed=rng),
        gt.nn.Dense(hidden, 10, seed=rng),
    ])


class _ToImage(gt.nn.Module):
    def forward(self, x: gt.Tensor) -> gt.Tensor:
        return gt.reshape(x, (x.shape[0], 1, 8, 8))


def build_cnn(seed: int = 0) -> gt.nn.Module:
    """conv3x3(16) - relu - maxpool2 - conv3x3(32) - relu - maxpool2 - dense(10), on 1x8x8
    images; input ``[N, 64]`` (reshaped inside), output logits ``[N, 10]``."""
    rng = np.random.default_rng(seed)
    return gt.nn.Sequential([
        _ToImage(),
        gt.nn.Conv2D(1, 16, 3, padding=1, activation="relu", kernel_init="he_uniform", seed=rng),
        gt.nn.MaxPool2D(2),
        gt.nn.Conv2D(16, 32, 3, padding=1, activation="relu", kernel_init="he_uniform", seed=rng),
        gt.nn.MaxPool2D(2),
        gt.nn.Flatten(),
        gt.nn.Dense(32 * 2 * 2, 10, seed=rng),
    ])


# --------------------------------------------------------------------------- progress bar
class _Progress:
    """A one-line text progress bar on stderr (redrawn in place on a terminal; one line per
    epoch otherwise)."""

    def __init__(self, label: str, epoch: int, epochs: int, total: int,
                 stream: TextIO | None = None) -> None:
        self.label, self.epoch, self.epochs, self.total = label, epoch, epochs, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = 24

    def line(self, done: int, loss: float, acc: float, extra: str = "") -> str:
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        ep_w = len(str(self.epochs))
        return (f"{self.label} epoch {self.epoch:>{ep_w}}/{self.epochs} [{bar}] "
                f"{done:>{len(str(self.total))}}/{self.total}  loss {loss:.4f}  acc {acc:.4f}{extra}")

    def update(self, done: int, loss: float, acc: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(done, loss, acc))
            self.stream.flush()

    def finish(self, loss: float, acc: float, extra: str) -> None:
        text = self.line(self.total, loss, acc, extra)
        self.stream.write(("\r" + text + "\n") if self.tty else text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- training
def _evaluate(model: gt.nn.Module, x: gt.Tensor, y: gt.Tensor, batch: int = 512) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    n = x.shape[0]
    for i in range(0, n, batch):
        logits = model(x[i:i + batch])
        yb = y[i:i + batch]
        loss_sum += float(gt.nn.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.data.argmax(axis=-1) == yb.data).sum())
    model.train()
    return loss_sum / n, correct / n


def train_step(model: gt.nn.Module, optimizer: gt.optimizers.Optimizer, compiled: bool = True,
               distributed: bool = False) -> Callable[..., tuple[gt.Tensor, gt.Tensor]]:
    """One training step on a batch ``x`` (``[B, 64]``) with integer labels
    ``y`` (``[B]``): cross-entropy, its gradient, the optimizer's update; returns
    ``(loss, logits)``. ``compiled``: wrapped in ``gt.function`` (traced on the first calls of
    each batch shape, then replayed as one array program). ``distributed``: the step takes a
    third argument, the global batch size, and this rank's loss is its examples' share of the
    global mean, with gradients summed over the ranks."""
    params = model.trainable_variables

    def step(x: gt.Tensor, y: gt.Tensor, m_global: int = 0) -> tuple[gt.Tensor, gt.Tensor]:
        with gt.GradientTape() as tape:
            logits = model(x)
            if distributed:  # this rank's share of the global mean (the ranks' sum is it)
                loss = gt.nn.cross_entropy(logits, y, reduction="sum") / m_global
            else:
                loss = gt.nn.cross_entropy(logits, y)
        if distributed:
            grads = gt.distributed.DistributedGradientTape(tape, op="sum").gradient(loss, params)
        else:
            grads = tape.gradient(loss, params)
        optimizer.apply_gradients(zip(grads, params))
        return loss, logits

    return gt.function(step) if compiled else step


def step_speedup(build: Callable[[], gt.nn.Module], x: np.ndarray, y: np.ndarray, lr: float,
                 steps: int = 30) -> tuple[float, float]:
    """Seconds per training step, eager and compiled, on one batch with fresh models (the
    trained one is left alone): the fastest of ``steps`` calls each (the least disturbed by
    other work on the machine), after warm-up and the compiled step's traces."""
    times = []
    xb, yb = gt.tensor(x), gt.tensor(y)
    for compiled in (False, True):
        step = train_step(build(), gt.optimizers.Adam(lr), compiled)
        for _ in range(3):
            step(xb, yb)
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step(xb, yb)[0].numpy()
            ts.append(time.perf_counter() - t0)
        times.append(min(ts))
    return times[0], times[1]


def train(model: gt.nn.Module, optimizer: gt.optimizers.Optimizer, data: tuple[np.ndarray, ...],
          epochs: int, batch_size: int, seed: int, label: str,
          stream: TextIO | None = None, distributed: bool = False,
          compiled: bool = True) -> dict[str, list[float]]:
    """Minibatch training with cross-entropy; returns per-epoch history
    (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``seconds``). ``compiled``:
    the step runs under ``gt.function`` (:func:`train_step`).

    ``distributed`` (after ``gt.distributed.init()``): each rank takes its share of every
    global batch of ``batch_size`` and the gradients are summed over the ranks, each rank's
    loss being its examples' share of the global mean, so every step equals the one-process
    step on the whole batch (up to float rounding); the epoch's statistics are global."""
    x_tr, y_tr, x_te, y_te = (gt.tensor(a) for a in data)  # moved to the active backend
    xp = x_tr._backend.xp
    n = x_tr.shape[0]
    steps = (n + batch_size - 1) // batch_size
    rng = np.random.default_rng(seed)
    hist: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [],
                             "seconds": []}
    step = train_step(model, optimizer, compiled, distributed)
    me, ranks = (gt.distributed.rank(), gt.distributed.size()) if distributed else (0, 1)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        bar = _Progress(label, epoch, epochs, steps, stream)
        perm = rng.permutation(n)  # host indices: their range is checked on the host
        loss_sum = xp.zeros((), dtype=np.float64)
        correct = xp.zeros((), dtype=np.int64)
        seen = 0
        redraw = max(1, steps // 10)
        for s in range(steps):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if distributed:  # this rank's share of the global batch; gradients summed over ranks
                m_global, idx = idx.shape[0], idx[me::ranks]
            xb, yb = x_tr[idx], y_tr[idx]
            loss, logits = step(xb, yb, m_global) if distributed else step(xb, yb)
            m = idx.shape[0]
            seen += m
            loss_sum += loss.data * (m_global if distributed else m)
            correct += (logits.data.argmax(axis=-1) == yb.data).sum()
            if bar.tty and (s % redraw == 0 or s == steps - 1):
                bar.update(s + 1, float(loss_sum) / seen, int(correct) / seen)
        if distributed:  # the epoch's statistics over all ranks
            totals = gt.distributed.allreduce([gt.tensor(loss_sum), gt.tensor(correct),
                                               gt.tensor(np.int64(seen))], op="sum")
            loss_sum, correct, seen = totals[0].data, totals[1].data, int(totals[2].data)
        tr_loss, tr_acc = float(loss_sum) / seen, int(correct) / seen
        te_loss, te_acc = _evaluate(model, x_te, y_te)
        hist["train_loss"].append(tr_loss)
        hist["train_acc"].append(tr_acc)
        hist["test_loss"].append(te_loss)
        hist["test_acc"].append(te_acc)
        hist["seconds"].append(time.perf_counter() - start)
        bar.finish(tr_loss, tr_acc, f"  | test loss {te_loss:.4f}  test acc {te_acc:.4f}  "
                                    f"{hist['seconds'][-1]:.1f}s")
    return hist


def _plot(histories: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in histories.items():
        ep = np.arange(1, len(h["train_loss"]) + 1)
        line, = ax_loss.plot(ep, h["train_loss"], label=f"{name} train")
        ax_loss.plot(ep, h["test_loss"], "--", color=line.get_color(), label=f"{name} test")
        ax_acc.plot(ep, h["train_acc"], color=line.get_color(), label=f"{name} train")
        ax_acc.plot(ep, h["test_acc"], "--", color=line.get_color(), label=f"{name} test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=_accuracy_ylim(histories))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"gradtape on scikit-learn digits ({gt.backend_name()})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _accuracy_ylim(histories: dict) -> tuple[float, float]:
    """The accuracy axis's limits: from the lowest accuracy of any curve (rounded down to a
    multiple of 0.05; at most 0.8, so a good run still shows a useful scale) to just above 1,
    so every point, the first epochs' included, is inside the plot."""
    values = [a for h in histories.values() for key in ("train_acc", "test_acc") for a in h[key]]
    low = min(values, default=0.8)
    return max(0.0, min(0.8, math.floor(low / 0.05) * 0.05)), 1.005


def _blas_limits(threads: int) -> Any:
    if threads <= 0:
        return None
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


# argparse types: a bad value becomes argparse's one-line usage error naming the flag
def _argument(parse: Callable[[str], Any], ok: Callable[[Any], bool], kind: str,
              expected: str) -> Callable[[str], Any]:
    """An argparse type: ``parse(text)`` (a ``kind`` of value), checked by ``ok`` (else
    "expected ``expected``")."""
    def checked(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return checked


_positive_int = _argument(int, lambda v: v >= 1, "a positive integer", "a positive integer (>= 1)")
_non_negative_int = _argument(int, lambda v: v >= 0, "an integer >= 0", "an integer >= 0")
# a seed NumPy's generators and scikit-learn's split both take (scikit-learn refuses others
# deep inside the data split)
_seed = _argument(int, lambda v: 0 <= v < 2**32, "an integer seed", "a seed in [0, 2**32 - 1]")
_non_negative_float = _argument(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0",
                                "a finite number >= 0")
_learning_rate = _argument(float, lambda v: math.isfinite(v) and v > 0, "a positive number",
                           "a positive finite number")


def _output_dir_problem(path: str) -> str | None:
    """Why ``--out`` cannot hold the results (None when it can): the directory is created if
    missing and a scratch file is written and removed, so a read-only or impossible path fails
    before any training rather than after it."""
    if not path:
        return "expected a directory path, got an empty string"
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} exists and is not a directory"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"cannot write to {path}: {exc.strerror or exc}"
    return None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where it is None (the help text says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradtape-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs per model, >= 1 (default: 30 for the MLP, 15 for the CNN)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="examples per training step, >= 1")
    p.add_argument("--model", choices=("mlp", "cnn", "both"), default="both",
                   help="which model(s) to train")
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                   help="array backend; auto picks CuPy when a CUDA device works")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the data split, the initial weights and the batch order")
    p.add_argument("--lr", type=_learning_rate, default=2e-3,
                   help="Adam learning rate, a positive finite number")
    p.add_argument("--out", default="runs",
                   help="directory for the plot and the checkpoints (created if missing; must be writable)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--no-compile", action="store_true",
                   help="run the training step eagerly instead of under gt.function")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job (mpirun -np N python -m "
                        "gradtape.examples.digits --distributed): each global batch is split "
                        "across the ranks; rank 0 alone prints and writes the files")
    p.add_argument("--blas-threads", type=_non_negative_int, default=1,
                   help="BLAS threads on the CPU backend (0: leave the library default); these "
                        "matrices are small, so one thread avoids synchronization cost")
    return p


def _run(args: argparse.Namespace, wall0: float) -> None:
    lead = not args.distributed or gt.distributed.rank() == 0
    if not lead:  # the other ranks train in silence: rank 0 reports
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _train_all(args, wall0, lead, quiet)
    return _train_all(args, wall0, lead, None)


def _train_all(args: argparse.Namespace, wall0: float, lead: bool, stream: TextIO | None) -> None:
    data = load_data(args.seed)
    if args.distributed:
        print(f"distributed: {gt.distributed.size()} ranks, global batch {args.batch_size}")
    print(f"gradtape {gt.__version__} on {gt.backend_name()}: digits {data[0].shape[0]} train / "
          f"{data[2].shape[0]} test images, batch {args.batch_size}, seed {args.seed}")
    os.makedirs(args.out, exist_ok=True)
    names = ("mlp", "cnn") if args.model == "both" else (args.model,)
    histories, results = {}, []
    for name in names:
        model = build_mlp(args.seed) if name == "mlp" else build_cnn(args.seed)
        epochs = args.epochs or (30 if name == "mlp" else 15)
        opt = gt.optimizers.Adam(args.lr)
        print(f"{name}: {model.num_parameters()} parameters, Adam lr {args.lr}, {epochs} "
              f"epoch{'' if epochs == 1 else 's'}")
        if args.distributed:  # every rank starts from rank 0's weights
            gt.distributed.broadcast_variables(model.variables, root=0)
        t0 = time.perf_counter()
        compiled = not args.no_compile
        hist = train(model, opt, data, epochs, args.batch_size, args.seed, name, stream=stream,
                     distributed=args.distributed, compiled=compiled)
        if compiled and lead:
            build = functools.partial(build_mlp if name == "mlp" else build_cnn, args.seed)
            x0 = data[0][:args.batch_size]
            eager_s, comp_s = step_speedup(build, x0, data[1][:args.batch_size], args.lr)
            print(f"{name}: step under gt.function {comp_s * 1e3:.2f} ms, eager {eager_s * 1e3:.2f} ms: "
                  f"speed-up {eager_s / comp_s:.1f}x (--no-compile trains eagerly)")
        seconds = time.perf_counter() - t0
        path = os.path.join(args.out, f"digits_{name}.npz")
        ckpt = model.save(path, optimizer=opt) if lead else path
        histories[name] = hist
        results.append((name, hist["test_acc"][-1], seconds, ckpt))
    print()
    for name, acc, seconds, ckpt in results:
        print(f"{name}: test accuracy {acc * 100:.2f}%  train time {seconds:.1f}s  checkpoint {ckpt}")
    if not args.no_plot and lead:
        png = _plot(histories, os.path.join(args.out, f"digits_{args.model}.png"))
        print(f"plot: {png}")
    print(f"wall time {time.perf_counter() - wall0:.1f}s")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``gradtape-demo``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)  # bad values exit with argparse's one-line error
    problem = _output_dir_problem(args.out)
    if problem:
        parser.error(f"argument --out: {problem}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit(_MISSING.format(what="matplotlib")) from None
    wall0 = time.perf_counter()
    if args.distributed:
        gt.distributed.init()
    try:
        ctx = gt.use_backend(args.backend)
        ctx.__enter__()
    except gt.BackendUnavailableError as exc:
        raise SystemExit(f"--backend {args.backend}: {exc}") from None
    limits = _blas_limits(args.blas_threads if gt.backend_name() == "numpy" else 0)
    try:
        _run(args, wall0)
    finally:
        if limits is not None:
            limits.restore_original_limits()
        ctx.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
