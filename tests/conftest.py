"""Shared test fixtures: the real params.yaml, shrunk for tests."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Tests never reach the network and never write ultralytics settings outside the repo.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def load_repo_params() -> dict:
    """The real params.yaml as plain data, for tests to shrink and write elsewhere."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def stage_environment() -> dict:
    """Environment for running `python -m stages.<name>` from a temp folder laid out like the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def repo_params() -> dict:
    return load_repo_params()


@pytest.fixture
def stage_env() -> dict:
    return stage_environment()


def replace(obj, **changes):
    """dataclasses.replace, re-exported so tests shrink typed params in one call."""
    return dataclasses.replace(obj, **changes)
