"""``gt.config`` switches: the documented spellings (environment: ``1/true/yes/on`` and
``0/false/no/off``, case-insensitive, whitespace ignored, empty = default; attributes: bool,
0/1, or those strings) and a ValueError naming the variable for anything else. The environment
is read at import, so those cases run in a separate interpreter that imports gradtape afresh
for each case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradtape as gt

ROOT = Path(__file__).resolve().parents[1]
VARS = ("GRADTAPE_FUSION", "GRADTAPE_CHECK_NUMERICS", "GRADTAPE_HOST_MEMORY_CACHE")

# each case: a fresh ``import gradtape`` under that environment (the previous import's modules
# dropped from sys.modules), reporting the three settings or the exception
PROBE = """
import json, os, sys
out = {}
for case, env in json.loads(sys.argv[1]).items():
    for var in json.loads(sys.argv[2]):
        os.environ.pop(var, None)
    os.environ.update(env)
    for name in [m for m in sys.modules if m == "gradtape" or m.startswith("gradtape.")]:
        del sys.modules[name]
    try:
        import gradtape as gt
        c = gt.config
        out[case] = ["ok", f"{c.fusion} {c.check_numerics} {c.host_memory_cache}"]
    except Exception as exc:
        out[case] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""

# (environment, expected settings)
ACCEPTED = {
    "off_spellings": ({"GRADTAPE_FUSION": " Off ", "GRADTAPE_CHECK_NUMERICS": "NO",
                       "GRADTAPE_HOST_MEMORY_CACHE": "False"}, "False False False"),
    "zero": ({v: "0" for v in VARS}, "False False False"),
    "on_spellings": ({"GRADTAPE_FUSION": "YES", "GRADTAPE_CHECK_NUMERICS": " true\n",
                      "GRADTAPE_HOST_MEMORY_CACHE": "On"}, "True True True"),
    "empty_means_default": ({v: "  " for v in VARS}, "True False True"),
    "unset_means_default": ({}, "True False True"),
}
REJECTED = {
    "fusion_disable": ("GRADTAPE_FUSION", "disable"),
    "fusion_n": ("GRADTAPE_FUSION", "n"),
    "fusion_00": ("GRADTAPE_FUSION", "00"),
    "fusion_maybe": ("GRADTAPE_FUSION", "maybe"),
    "host_memory_cache_disabled": ("GRADTAPE_HOST_MEMORY_CACHE", "disabled"),
    "check_numerics_enabled": ("GRADTAPE_CHECK_NUMERICS", "enabled"),
}


@pytest.fixture(scope="module")
def runs() -> dict:
    cases = {k: env for k, (env, _) in ACCEPTED.items()}
    cases.update({k: {var: value} for k, (var, value) in REJECTED.items()})
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases), json.dumps(VARS)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_environment_accepts_the_documented_spellings(runs, case):
    assert runs[case] == ["ok", ACCEPTED[case][1]]


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_invalid_environment_value_fails_import_naming_the_variable(runs, case):
    var, value = REJECTED[case]
    kind, message = runs[case]
    assert kind == "ValueError", (kind, message)
    assert f"environment variable {var}={value!r}" in message
    assert "1/true/yes/on" in message and "0/false/no/off" in message


def test_an_invalid_environment_value_fails_a_plain_import():
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env.update(PYTHONPATH=str(ROOT), GRADTAPE_FUSION="disable")
    res = subprocess.run([sys.executable, "-c", "import gradtape"], env=env, capture_output=True,
                         text=True, timeout=120, cwd=str(ROOT))
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: environment variable GRADTAPE_FUSION='disable'"), res.stderr


@pytest.fixture
def restore_config():
    saved = (gt.config.fusion, gt.config.check_numerics)
    yield
    gt.config.fusion, gt.config.check_numerics = saved


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), ("1", True), ("0", False),
    ("false", False), (" TRUE ", True), ("off", False), ("yes", True),
])
def test_assignment_accepts_bools_01_and_the_documented_strings(restore_config, value, expected):
    gt.config.fusion = value
    assert gt.config.fusion is expected
    gt.config.check_numerics = value
    assert gt.config.check_numerics is expected


@pytest.mark.parametrize("name", ["fusion", "check_numerics", "host_memory_cache"])
@pytest.mark.parametrize("value", ["maybe", "", "disabled", 2, -1, 0.5, None, [1]])
def test_assignment_rejects_other_values_naming_the_setting(restore_config, name, value):
    before = getattr(gt.config, name)
    with pytest.raises(ValueError, match=rf"gt\.config\.{name}:.*1/true/yes/on") as info:
        setattr(gt.config, name, value)
    assert repr(value) in str(info.value)
    assert getattr(gt.config, name) is before


def test_check_numerics_false_string_turns_it_off(restore_config):
    gt.config.check_numerics = "false"
    assert gt.config.check_numerics is False
    assert "check_numerics=False" in repr(gt.config)


def test_fusion_string_is_stored_as_a_bool(restore_config):
    gt.config.fusion = "0"
    assert gt.config.fusion is False


def test_host_memory_cache_accepts_a_string_and_stores_a_bool():
    # in a fresh interpreter: the setting is process-wide (tests/test_hostmem.py checks that the
    # setter applies and reverts the allocator setting)
    code = ("import gradtape as gt\n"
            "gt.config.host_memory_cache = ' OFF '\n"
            "a = gt.config.host_memory_cache\n"
            "gt.config.host_memory_cache = 'yes'\n"
            "print(a, gt.config.host_memory_cache)\n")
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False True"


def test_a_misspelt_setting_raises_instead_of_being_ignored():
    # gt.config.check_numeric = True (no "s") made a new attribute and left checking off
    with pytest.raises(AttributeError, match="gt.config has no setting 'check_numeric'; its "
                                             "settings are fusion, check_numerics"):
        gt.config.check_numeric = True
    assert gt.config.check_numerics is False


def _cache_budget_under(value: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env.update(PYTHONPATH=str(ROOT), GRADTAPE_CACHE_BUDGET=value)
    probe = ("from gradtape import extend\n"
             "with extend.cpu_thresholds() as t:\n    print(t['cache_budget'])")
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT))


def test_cache_budget_environment_fixes_the_fused_kernels_budget():
    res = _cache_budget_under(" 65536 ")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "65536"


@pytest.mark.parametrize("value", ["lots", "0", "-4", "1.5"])
def test_invalid_cache_budget_environment_fails_import_naming_the_variable(value):
    res = _cache_budget_under(value)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ValueError: environment variable GRADTAPE_CACHE_BUDGET={value!r}"), \
        res.stderr
    assert "number of bytes >= 1" in last
