"""Hypothesis profiles for the reliability suites, and a single torch thread.

* ``default``: a few derandomized cases per machine and fuzz target; part of the default CPU run.
* ``ci``: more cases, random (a new sample every run), failures printed with a reproduce blob.
* ``soak``: thousands of cases; run it on its own::

      KV_CANARY_RELIABILITY_STATS=/tmp/cases.jsonl \\
          python -m pytest tests/reliability -m "not slow" -n 2 --hypothesis-profile soak -p no:cacheprovider
      python -m tests.reliability.soak_stats /tmp/cases.jsonl

The profiles must be registered before Hypothesis's pytest plugin loads one, so select them with
this folder (or a file in it) on the command line, as above.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, settings

# The tiny models' ops are too small for intra-op threads to pay off; on 2 cores they thrash.
torch.set_num_threads(1)

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("default", max_examples=6, stateful_step_count=20, derandomize=True, **_COMMON)
settings.register_profile("ci", max_examples=25, stateful_step_count=30, print_blob=True, database=None, **_COMMON)
settings.register_profile("soak", max_examples=2_000, stateful_step_count=50, print_blob=True, **_COMMON)
settings.load_profile(settings.get_current_profile_name())

# Fuzz targets take milliseconds a case: they run this many times the profile's max_examples.
FUZZ_SCALE = 50
