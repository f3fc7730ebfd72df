"""Environments and subprocess runs: stage scripts from a temp folder, git and DVC in a temp repo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

DVC = [sys.executable, "-m", "dvc"]


def stage_environment() -> dict:
    """Environment for running `python -m stages.<name>` from a temp folder laid out like the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


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
