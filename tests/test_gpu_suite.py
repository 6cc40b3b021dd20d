"""benchmarks/gpu_suite.py, the one command for a CUDA machine, checked on the CPU: its dry run
builds and gradient-checks every cell of the table against NumPy and collects the ``gpu`` tests
without claiming a figure, and its device timing calls the event APIs of CuPy and PyTorch in
the right order (checked here against stand-ins of those modules)."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import gradtape as gt

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    """The suite's module (benchmarks/ is not a package: imported by path)."""
    sys.path.insert(0, str(SUITE.parent))
    try:
        yield importlib.import_module("gpu_suite")
    finally:
        sys.path.remove(str(SUITE.parent))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run (the gpu tests collected from one small file only, to stay fast)."""
    out = tmp_path_factory.mktemp("gpu_suite") / "dry.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--tests", "tests/test_copy.py",
                           "--json", str(out), "--test-log", str(out.with_suffix(".log"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    proc.test_log = out.with_suffix(".log")  # (read by the --test-log test)
    return proc, json.loads(out.read_text()) if out.exists() else None


def test_the_test_log_holds_the_whole_pytest_output(dry_run):
    """``--test-log``: every collected test id is in the log, not only the summary's tail."""
    text = dry_run[0].test_log.read_text()
    assert "tests/test_copy.py::" in text and "collected" in text


def test_the_dry_run_passes_and_claims_no_figure(dry_run):
    proc, res = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DRY RUN" in proc.stdout and "SUITE OK" in proc.stdout
    assert res["dry_run"] is True and res["ok"] is True
    assert res["median"] is None and res["targets"] == []
    assert res["tests"]["counts"].get("collected", 0) > 0  # pytest -m gpu found the gpu tests


def test_the_dry_run_builds_and_checks_every_gradtape_cell(dry_run, suite):
    _, res = dry_run
    table = suite.rows(suite.DRY)
    assert set(res["rows"]) == {r.key for r in table}
    for row in table:
        for col in row.columns:
            if col.startswith("gradtape") or col == "cupy":  # torch: only where it imports
                assert col in res["built"].get(row.key, []), (row.key, col, res["skipped"])
                if row.ref is not None and col != "cupy":
                    assert res["grad_max_rel_err_vs_numpy"][row.key][col] <= suite.GRAD_TOL


def test_every_row_of_the_issue_is_in_the_table(suite):
    keys = [r.key for r in suite.rows(suite.FULL)]
    assert keys[:2] == ["copy", "chain_bwd"]  # the floor first, then the fraction of it
    for key in ("chain_bwd_dev", "chain", "mlp_256", "mlp_4096", "perop", "per_example",
                "jacobian"):
        assert key in keys
    full = {r.key: r for r in suite.rows(suite.FULL)}
    assert suite.FULL.chain_n == 1 << 24 and suite.FULL.mlp_batches == (256, 4096)
    for key, row in full.items():  # each against PyTorch CUDA eager in the same run
        assert "torch" in row.columns, key
        assert set(row.quick) <= set(row.columns), key


class _Event:
    """A stand-in for ``cupy.cuda.Event`` and ``torch.cuda.Event``: a record is a tick;
    ``done`` / ``query()`` (has the device passed it?) read ``_Event.passed``."""

    log: list = []
    made: list = []
    passed = False

    def __init__(self, **kw):
        _Event.made.append(kw)
        self.t = None

    def record(self):
        _Event.log.append("record")
        self.t = len(_Event.log)

    def synchronize(self):
        _Event.log.append("sync")

    def elapsed_time(self, end):  # torch's spelling: milliseconds from self to end
        return 1.0 * (end.t - self.t)

    @property
    def done(self):  # CuPy's spelling
        return _Event.passed() if callable(_Event.passed) else _Event.passed

    def query(self):  # torch's spelling
        return self.done


@pytest.mark.parametrize("kind", ["cupy", "torch"])
def test_device_timing_uses_the_event_apis(suite, monkeypatch, kind):
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(
        Event=_Event, get_elapsed_time=lambda a, b: 1.0 * (b.t - a.t)))
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(Event=_Event))
    monkeypatch.setitem(suite.W._MODULES, "cupy", fake_cupy)
    monkeypatch.setitem(suite.W._MODULES, "torch", fake_torch)
    timer = suite.timer_for("torch[x]" if kind == "torch" else "gradtape", dry=False)
    assert timer.kind == kind
    calls = []
    cell = suite.W.Cell(lambda: (calls.append("run"), _Event.log.append("run")))
    _Event.log = []
    per_call = timer.block(cell, 4)
    assert calls == ["run"] * 4
    assert _Event.log == ["record"] + ["run"] * 4 + ["record", "sync"]
    assert per_call == pytest.approx(5 / 1e3 / 4)  # 5 "ms" between the two records, per call
    if kind == "torch":  # torch's events time only when asked to
        assert _Event.made[-2:] == [{"enable_timing": True}] * 2
    # a cell timing only part of a step: the untimed part is synchronized before each start
    synced = []
    cell = suite.W.Cell(lambda s: _Event.log.append("run"), prepare=lambda: "state",
                        sync=lambda: synced.append(len(_Event.log)))
    _Event.log = []
    timer.block(cell, 2)
    assert _Event.log == ["record", "run", "record", "sync"] * 2
    assert len(synced) == 2


def _fake_device_modules(suite, monkeypatch, compile_ticks=0):
    """Stand-ins of CuPy and PyTorch for the timing code: events that tick on each record,
    spin launches (CuPy's RawKernel, whose first call compiles for ``compile_ticks`` ticks,
    and torch.cuda._sleep) that log their cycles, and the L2 flush's scratch buffer."""
    spins = []
    _Event.passed = False

    class RawKernel:
        def __init__(self, source, name):
            assert "clock64" in source and name in source
            self.compiled = False

        def __call__(self, grid, block, args):
            if not self.compiled:  # CuPy compiles and loads at the first launch
                _Event.log.extend(["compile"] * compile_ticks)
                self.compiled = True
            _Event.log.append("spin")
            spins.append(int(args[0]))

    def sleep(cycles):
        _Event.log.append("spin")
        spins.append(int(cycles))

    scratch = SimpleNamespace(fill=lambda v: _Event.log.append("flush"),
                              zero_=lambda: _Event.log.append("flush"))
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(
        Event=_Event, get_elapsed_time=lambda a, b: 1.0 * (b.t - a.t)), RawKernel=RawKernel,
        empty=lambda shape, dtype: scratch)
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(Event=_Event, _sleep=sleep),
                                 empty=lambda n, device: scratch)
    monkeypatch.setitem(suite.W._MODULES, "cupy", fake_cupy)
    monkeypatch.setitem(suite.W._MODULES, "torch", fake_torch)
    return spins


@pytest.mark.parametrize("kind", ["cupy", "torch"])
def test_device_only_timing_hides_the_host_dispatch_behind_a_spin(suite, monkeypatch, kind):
    """``device_only``: each call is enqueued behind a spin kernel launched before the start
    event (after the L2 flush), so the events bracket the device work alone; the spin's
    cycles come from one calibration launch timed with the events, after a first launch that
    compiles the kernel (a compile inside the calibration would shorten every spin)."""
    spins = _fake_device_modules(suite, monkeypatch, compile_ticks=50)
    timer = suite.timer_for("torch" if kind == "torch" else "gradtape", dry=False)
    cell = suite.W.Cell(lambda s: _Event.log.append("run"), prepare=lambda: "state")
    _Event.log = []
    per_call = timer.block(cell, 2, device_only=True)
    log = [e for e in _Event.log if e != "compile"]
    # a first launch loads the kernel, then 10^7 cycles take 2 ticks ("ms")
    calib = ["spin", "record", "sync", "record", "spin", "record", "sync"]
    call = ["flush", "spin", "record", "run", "record", "sync"]
    assert log == calib + call * 2
    assert per_call == pytest.approx(2 / 1e3)  # start record, run, end record: 2 ticks
    assert spins[:2] == [1, 10_000_000]
    assert spins[2:] == [int(suite.SPIN_MS * 10_000_000 / 2)] * 2  # SPIN_MS at 5e6 cycles/ms


def test_device_only_timing_grows_the_spin_a_call_outlasted(suite, monkeypatch):
    """A call the device caught up with (the start event passed before the end event was
    enqueued: the host slower than the spin) is run again behind a 4x longer spin; the
    figure is the covered call's."""
    spins = _fake_device_modules(suite, monkeypatch)
    timer = suite.timer_for("gradtape", dry=False)
    calls = []
    answers = iter([True, False])  # the first call outlasted its spin, the second did not
    _Event.passed = lambda: next(answers)
    cell = suite.W.Cell(lambda: calls.append(1))
    assert timer.block(cell, 1, device_only=True) == pytest.approx(1 / 1e3)  # 1 tick apart
    assert len(calls) == 2 and timer.spin_ms == 4 * suite.SPIN_MS
    assert [s // 5_000_000 for s in spins[2:]] == [suite.SPIN_MS, 4 * suite.SPIN_MS]


def test_device_only_timing_refuses_a_call_that_waits_for_the_device(suite, monkeypatch):
    """A call that always outlasts its spin (it synchronises with the device inside, so it
    waits for the spin) raises after ``SPIN_TRIES`` calls at the longest spin, instead of
    giving a figure; the spin grew 4x each try up to ``SPIN_MAX_MS``."""
    spins = _fake_device_modules(suite, monkeypatch)
    monkeypatch.setattr(suite, "SPIN_MS", 1.0)
    monkeypatch.setattr(suite, "SPIN_MAX_MS", 16.0)
    timer = suite.timer_for("gradtape", dry=False)
    _Event.passed = True
    cell = suite.W.Cell(lambda: None)
    with pytest.raises(suite.HostSyncError, match="3 calls in a row outlasted a 16 ms spin"):
        timer.block(cell, 1, device_only=True)
    assert [s // 5_000_000 for s in spins[2:]] == [1, 4, 16, 16, 16]  # ms of spin per try


def test_the_timed_path_end_to_end_on_host_clocks(suite, monkeypatch, tmp_path, capsys):
    """The repeats, medians, targets and table of a real run, with host clocks standing in for
    the device events and NumPy for CuPy (figures of this machine, asserted on nothing)."""
    monkeypatch.setattr(suite, "timer_for", lambda col, dry: suite.Timer("host"))
    args = argparse.Namespace(dry_run=False, quick=True, repeats=2, block=0.002, warmup=1,
                              budget=60.0, json=tmp_path / "run.json")
    table = [r for r in suite.rows(suite.DRY) if r.key in ("copy", "chain_bwd", "chain_bwd_dev",
                                                            "perop")]
    res = suite.bench(table, lambda r: tuple(c for c in r.columns if c != "torch"), "cpu",
                      suite.DRY, args, time.perf_counter() + 60)
    nbytes = suite.chain_bwd_bytes("cpu", suite.DRY.chain_n)
    full = 5 * 4 * suite.DRY.chain_n  # x and three saved values read, dx written
    assert full <= nbytes <= full + 64  # (and a few scalars)
    rc = suite.report(table, res, None, {"versions": {}}, nbytes, suite.DRY, args)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "chain bwd (device work) bandwidth / copy bandwidth" in out and "SUITE OK" in out
    saved = json.loads(args.json.read_text())
    assert all(len(ts) == 2 for by in saved["repeats_s"].values() for ts in by.values())
    assert saved["median"]["chain_bwd"]["gradtape"] > 0
    assert saved["median"]["chain_bwd_dev"]["gradtape"] > 0
    goal = [t for t in saved["targets"] if t["goal"] == ">= 0.7"]
    assert len(goal) == 1 and "device work" in goal[0]["target"]


def test_without_a_gpu_the_suite_says_so(suite, capsys):
    try:
        with gt.use_backend("cupy"):
            pytest.skip("a CUDA device is usable here: the suite would run for real")
    except gt.BackendUnavailableError:
        pass
    assert suite.main(["--no-tests", "-w", "copy"]) == 1
    assert "no usable CUDA device" in capsys.readouterr().out


def test_list_and_unknown_rows(suite, capsys):
    assert suite.main(["--list"]) == 0
    assert "chain_bwd" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        suite.main(["--dry-run", "-w", "no_such_row"])
