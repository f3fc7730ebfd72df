"""Shared test fixtures: the real params.yaml, shrunk for tests; a tiny copy of the repo run under real DVC."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
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


# --------------------------------------------------------------------------- the tiny pipeline under real DVC


def tiny_pipeline_params() -> dict:
    """The real params.yaml shrunk until the whole pipeline of both datasets runs in a few minutes."""
    params = load_repo_params()
    for name, dataset in params["datasets"].items():
        toy = dataset["toy"]
        # 8 classes: the un-3-3-2 ablation (tests/test_ablations.py) needs 3 + 3 + 2 distinct ones
        toy["classes"] = toy["classes"][:8]
        toy.update(solo_videos_per_class=4, seconds_per_video=2, image_size=64, duet_videos=4 if name == "music" else 0)
        dataset["test_videos_per_class"] = 1
        dataset["val_videos_per_class"] = 1
        dataset["duet_test_videos_per_pair"] = 1 if name == "music" else 0
        dataset["duet_val_videos_per_pair"] = 1 if name == "music" else 0
    params["clips"]["frame_size"] = 64
    for mix_set in ("syn", "un", "train"):
        params["synth"][mix_set]["count"] = 16
    params["synth"]["val_count"] = 16
    params["detect"].update(epochs=1, image_size=64, max_train_images=32)
    params["model"].update(width=4, dim=16, hidden=16, image_size=64)
    params["pretrain"].update(images_per_class=2, val_images_per_class=1, epochs=1)  # every glyph class, 2 stills
    params["stage1"].update(batch_size=8, av_epochs=2, class_epochs=1, clusters=6, eval_mixtures=12)
    params["aii"]["epochs"] = 2
    params["cmr"].update(epochs=1, batch_size=8)
    params["evaluate"].update(batch_size=16, threshold_steps=10)
    return params


def dvc_environment() -> dict:
    """Environment for git and DVC in a temp repo: a committer, and this venv's python and dvc first on PATH."""
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1", YOLO_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # stage commands' python, dvc
    return env


def run(command: list[str], cwd: Path, env: dict, timeout: int = 1200) -> str:
    """Run `command` in `cwd`; fail the test with the end of its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


DVC = [sys.executable, "-m", "dvc"]


def run_with_uncommitted_params(root: Path, params_text: str, command: list[str]) -> subprocess.CompletedProcess:
    """Commit `params_text` as params.yaml in a fresh git repo at `root`, edit it without committing, and run
    `command` (a `python -m pipeline.<tool>` line) there with this repo on PYTHONPATH."""
    env = dvc_environment() | {"PYTHONPATH": str(REPO)}
    (root / "params.yaml").write_text(params_text)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "params"], root, env)
    (root / "params.yaml").write_text(params_text + "\n# edited\n")
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


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
