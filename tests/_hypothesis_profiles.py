"""Hypothesis profiles for the property-based tests (tests/test_properties.py).

* ``ci`` (the default): a fixed, modest number of examples per test, no deadline, derandomized
  (the same examples on every run, so CI is reproducible) and no example database on disk.
* ``dev``: ten times the examples, randomized, with an example database (in the system's
  temporary folder, so failures replay first on the next run).

Select one with the environment variable ``HYPOTHESIS_PROFILE`` (``HYPOTHESIS_PROFILE=dev
python -m pytest tests/test_properties.py``). Tests scale their own example counts from the
loaded profile's ``max_examples`` (see ``examples()``).
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=_SLOW_OK)
# dev keeps its example database outside the source tree (.hypothesis/ is not git-ignored)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK,
                          database=DirectoryBasedExampleDatabase(
                              os.path.join(tempfile.gettempdir(), "gradtape-hypothesis")))

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(fraction: float = 1.0, minimum: int = 3) -> settings:
    """Settings for one test: ``fraction`` of the loaded profile's ``max_examples`` (at least
    ``minimum``), everything else as the profile says."""
    return settings(max_examples=max(minimum, round(settings.default.max_examples * fraction)))
