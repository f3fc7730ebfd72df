"""The whole pipeline under real DVC in a temp git repo, on a tiny toy config: `dvc repro` ends with every
metric of DESIGN section 7, and `dvc exp run -S` on one knob shows up in `dvc metrics diff --json`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, load_repo_params

SET_KEYS = {"single": {"iou50", "auc"}, "syn": {"ciou30", "auc", "nsa"}, "un": {"ciou30", "auc", "nsa"},
            "stage1": {"nmi", "map", "precision", "recall"}, "detector": {"map50"}}


def tiny_params() -> dict:
    """The real params.yaml shrunk until the whole pipeline of both datasets runs in a few minutes."""
    params = load_repo_params()
    for name, dataset in params["datasets"].items():
        toy = dataset["toy"]
        toy["classes"] = toy["classes"][:5]  # synth needs 2 sounding + 2 silent + 1 off-screen classes
        toy.update(solo_videos_per_class=4, seconds_per_video=2, image_size=64, duet_videos=4 if name == "music" else 0)
        dataset["test_videos_per_class"] = 1
        dataset["duet_test_videos_per_pair"] = 1 if name == "music" else 0
    params["clips"]["frame_size"] = 64
    for mix_set in ("syn", "un", "train"):
        params["synth"][mix_set]["count"] = 16
    params["detect"].update(epochs=1, image_size=64, max_train_images=32)
    params["model"].update(width=4, dim=16, hidden=16, image_size=64)
    params["stage1"].update(batch_size=8, av_epochs=2, clusters=6, eval_mixtures=12)
    params["aii"]["epochs"] = 2
    params["cmr"].update(epochs=1, batch_size=8)
    params["evaluate"]["batch_size"] = 16
    return params


def run(command: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_tiny_pipeline_repro_and_metrics_diff(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        # Outputs and the lock of the real run stay behind: this repo makes its own.
        if name == "dvc.lock" or name.startswith(("reports/", "data/", "models/")) or not (REPO / name).is_file():
            continue
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1", YOLO_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # stage commands' python, dvc
    dvc = [sys.executable, "-m", "dvc"]

    run(["git", "init", "-q"], tmp_path, env)  # .dvc/ came with the tracked files: already a DVC repo
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "code and tiny params"], tmp_path, env)  # dvclive needs a commit
    run(dvc + ["repro"], tmp_path, env)
    for dataset in ("music", "vggsound"):
        metrics = json.loads((tmp_path / "reports" / dataset / "metrics.json").read_text())
        expected = SET_KEYS | ({"duet": {"ciou30", "auc", "nsa"}} if dataset == "music" else {})
        for group, keys in expected.items():
            assert keys <= set(metrics[group]), (dataset, group, metrics[group])
            assert keys <= set(metrics["baselines"]["avol"].get(group, keys) if group not in ("stage1", "detector")
                               else keys)
        values = [value for group in expected for value in metrics[group].values() if value is not None]
        assert all(0.0 <= value <= 1.0 for value in values), metrics
    assert "<table" in (tmp_path / "reports" / "index.html").read_text()
    assert "up to date" in run(dvc + ["status"], tmp_path, env)

    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "tiny pipeline's outputs"], tmp_path, env)
    # A stricter single-source threshold: a smaller predicted region, so other IoUs.
    run(dvc + ["exp", "run", "-S", "evaluate.single_threshold=0.9"], tmp_path, env)
    diff = json.loads(run(dvc + ["metrics", "diff", "--json"], tmp_path, env))
    changed = {(path, key) for path, entries in diff.items() for key, entry in entries.items()
               if entry.get("diff") not in (None, 0)}
    assert any(path.endswith("metrics.json") and key.startswith("single.") for path, key in changed), diff
    assert not any(path.endswith("stage1.json") for path, _ in changed), diff  # stage 1 did not rerun
