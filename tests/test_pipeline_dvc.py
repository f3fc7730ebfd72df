"""The whole pipeline under real DVC in a temp git repo, on a tiny toy config: `dvc repro` ends with every
metric of DESIGN section 7, and `dvc exp run -S` on one knob shows up in `dvc metrics diff --json`."""
from __future__ import annotations

import json

import pytest

from tests.conftest import DVC, dvc_environment, run

SET_KEYS = {"single": {"iou50", "auc"}, "syn": {"ciou30", "auc", "nsa"}, "un": {"ciou30", "auc", "nsa"},
            "stage1": {"nmi", "map", "precision", "recall"}, "detector": {"map50"}}


@pytest.mark.slow
def test_tiny_pipeline_repro_and_metrics_diff(tiny_repo):
    env = dvc_environment()
    for dataset in ("music", "vggsound"):
        metrics = json.loads((tiny_repo / "reports" / dataset / "metrics.json").read_text())
        expected = SET_KEYS | ({"duet": {"ciou30", "auc", "nsa"}} if dataset == "music" else {})
        for group, keys in expected.items():
            assert keys <= set(metrics[group]), (dataset, group, metrics[group])
            assert keys <= set(metrics["baselines"]["avol"].get(group, keys) if group not in ("stage1", "detector")
                               else keys)
        values = [value for group in expected for value in metrics[group].values() if value is not None]
        assert all(0.0 <= value <= 1.0 for value in values), metrics
    assert "<table" in (tiny_repo / "reports" / "index.html").read_text()
    assert "up to date" in run(DVC + ["status"], tiny_repo, env)

    # A stricter single-source threshold: a smaller predicted region, so other IoUs.
    run(DVC + ["exp", "run", "-S", "evaluate.single_threshold=0.9"], tiny_repo, env)
    diff = json.loads(run(DVC + ["metrics", "diff", "--json"], tiny_repo, env))
    changed = {(path, key) for path, entries in diff.items() for key, entry in entries.items()
               if entry.get("diff") not in (None, 0)}
    assert any(path.endswith("metrics.json") and key.startswith("single.") for path, key in changed), diff
    assert not any(path.endswith("stage1.json") for path, _ in changed), diff  # stage 1 did not rerun
