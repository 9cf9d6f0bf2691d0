"""Reliability suite configuration.

Every test here has a short version (the default, what CI runs) and a full one:
``pytest --long`` or ``OXYD_LONG=1``. The option is registered in tests/conftest.py, since
pytest takes command-line options only from the top-level conftest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The suite's own helpers (reliakit.py) and the project's tests/helpers.py.
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

LONG = os.environ.get("OXYD_LONG", "") == "1"


@pytest.fixture
def long_run() -> bool:
    return LONG
