"""Helpers shared by the tests (fixtures and hooks stay in tests/conftest.py).

- `tests.helpers.params`: the real params.yaml as data, shrunk for tests;
- `tests.helpers.processes`: environments and subprocess runs (stage scripts, git, DVC);
- `tests.helpers.features`: features splits written as the features stage writes them.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository root
