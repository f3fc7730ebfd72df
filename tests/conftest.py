"""Shared test fixtures and hooks: the real params.yaml, shrunk for tests; a tiny copy of the repo run under real
DVC. The helpers they use live in tests/helpers/."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.helpers.params import load_repo_params, tiny_pipeline_params

from tests.helpers.processes import DVC, dvc_environment, run, stage_environment

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


@pytest.fixture
def repo_params() -> dict:
    return load_repo_params()


@pytest.fixture
def stage_env() -> dict:
    return stage_environment()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The repo's tracked files with tiny params in a fresh git repo, `dvc repro` run and everything committed.

    Built once per session (about 2 minutes on 2 cores); tests that change it work on a copy (`tiny_repo`).
    """
    root = tmp_path_factory.mktemp("tiny-pipeline")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        # Outputs and the lock of the real run stay behind: this repo makes its own.
        if name == "dvc.lock" or name.startswith(("reports/", "data/", "models/")) or not (REPO / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_pipeline_params(), sort_keys=False))
    env = dvc_environment()
    run(["git", "init", "-q"], root, env)  # .dvc/ came with the tracked files: already a DVC repo
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "code and tiny params"], root, env)  # dvclive needs a commit
    run(DVC + ["repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "tiny pipeline's outputs"], root, env)
    return root


@pytest.fixture
def tiny_repo(tiny_pipeline, tmp_path) -> Path:
    """A private copy of `tiny_pipeline` (git history, DVC cache and outputs) that a test may change."""
    copy = tmp_path / "repo"
    shutil.copytree(tiny_pipeline, copy, symlinks=True)
    return copy
