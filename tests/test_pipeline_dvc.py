"""The whole pipeline under real DVC in a temp git repo, on a tiny toy config: `dvc repro` ends with every
metric of the evaluation protocol (docs/architecture.md), and `dvc exp run -S` on one knob shows up in
`dvc metrics diff --json`."""
from __future__ import annotations

import json

import pytest

from tests.helpers.processes import DVC, dvc_environment, run

SET_KEYS = {"single": {"iou50", "auc"}, "syn": {"ciou30", "auc", "nsa"}, "un": {"ciou30", "auc", "nsa"},
            "stage1": {"nmi", "map", "precision", "recall"}, "detector": {"map50"}}
BASELINES = ("avol", "dsol", "oracle")
GROUNDED_KEYS = {"iou30", "auc", "sounding_recall", "silent_false_alarm", "heard_map", "heard_precision",
                 "heard_recall", "empty"}


def check_grounded(group: dict, sets: list[str], where: str, thresholds: bool = True) -> None:
    """The audio-grounded group: thresholds chosen on val (the val group has none of its own), every metric under
    each audio condition, the controls."""
    assert set(group["thresholds"]) == {"map", "heard"} if thresholds else "thresholds" not in group, where
    for name in sets:
        entry = group[name]
        assert GROUNDED_KEYS <= set(entry), (where, name)
        for condition in ("deranged", "silence"):
            assert set(entry[condition]) == GROUNDED_KEYS, (where, name, condition)
        assert entry["reliance"] == entry["iou30"] - entry["deranged"]["iou30"] or \
            abs(entry["reliance"] - (entry["iou30"] - entry["deranged"]["iou30"])) < 1e-5
        assert entry["silence_empty"] == entry["silence"]["empty"]
        values = [entry[key] for key in GROUNDED_KEYS] + [entry[c][key] for c in ("deranged", "silence")
                                                          for key in GROUNDED_KEYS]
        assert all(value is None or 0.0 <= value <= 1.0 for value in values), (where, name, entry)


@pytest.mark.slow
def test_tiny_pipeline_repro_and_metrics_diff(tiny_repo):
    env = dvc_environment()
    for dataset in ("music", "vggsound"):
        metrics = json.loads((tiny_repo / "reports" / dataset / "metrics.json").read_text())
        expected = SET_KEYS | ({"duet": {"ciou30", "auc", "nsa"}} if dataset == "music" else {})
        for group, keys in expected.items():
            assert keys <= set(metrics[group]), (dataset, group, metrics[group])
            for method in BASELINES:
                assert keys <= set(metrics["baselines"][method].get(group, keys)
                                   if group not in ("stage1", "detector") else keys), (dataset, method, group)
        values = [value for group in expected for value in metrics[group].values() if value is not None]
        assert all(0.0 <= value <= 1.0 for value in values), metrics
        # where the numbers come from: test split, thresholds from val, the generator's boxes (toy)
        assert (metrics["split"], metrics["thresholds_split"], metrics["boxes"]) == ("test", "val", "truth")
        sets = [name for name in ("single", "syn", "un", "duet") if name in expected]
        check_grounded(metrics["grounded"], sets, dataset)
        for method in BASELINES:  # AVOL, DSOL and the oracle (true labels): the same groups as IEr's
            check_grounded(metrics["baselines"][method]["grounded"], sets, f"{dataset} {method}")
        # the val sets' numbers at the same thresholds (what settings are chosen by), stage 1's val numbers too
        check_grounded(metrics["val"]["grounded"], sets, f"{dataset} val", thresholds=False)
        check_grounded(metrics["val"]["baselines"]["avol"]["grounded"], sets, f"{dataset} val avol", thresholds=False)
        assert set(metrics["val"]["stage1"]) == SET_KEYS["stage1"], metrics["val"]
        stage1_report = json.loads((tiny_repo / "reports" / dataset / "stage1.json").read_text())
        assert stage1_report["val"]["nmi"] == metrics["val"]["stage1"]["nmi"]
        if "detector_boxes" in metrics:  # absent when the detector found no sounding object in a test set
            check_grounded(metrics["detector_boxes"]["grounded"], sets, f"{dataset} detector boxes")
        assert not any("seconds" in key for key in json.loads((tiny_repo / "reports" / dataset /
                                                                "detector.json").read_text()))
    assert "<table" in (tiny_repo / "reports" / "index.html").read_text()
    assert "up to date" in run(DVC + ["status"], tiny_repo, env)

    # Evaluate again on the same models: no metric moves (wall times live outside the metric files).
    run(DVC + ["repro", "--force", "--single-item", "evaluate@music"], tiny_repo, env)
    assert json.loads(run(DVC + ["metrics", "diff", "--json"], tiny_repo, env)) == {}
    plots = json.loads(run(DVC + ["plots", "show", "--json"], tiny_repo, env))["data"]
    assert {"Success rate, music (test)", "Success rate, vggsound (test)"} <= set(plots), list(plots)
    assert all(plots[name] and plots[name][0]["content"] for name in plots), plots
    run(["git", "checkout", "--", "."], tiny_repo, env)

    # A stricter single-source threshold: a smaller predicted region, so other IoUs.
    run(DVC + ["exp", "run", "-S", "evaluate.single_threshold=0.9"], tiny_repo, env)
    diff = json.loads(run(DVC + ["metrics", "diff", "--json"], tiny_repo, env))
    changed = {(path, key) for path, entries in diff.items() for key, entry in entries.items()
               if entry.get("diff") not in (None, 0)}
    assert any(path.endswith("metrics.json") and key.startswith("single.") for path, key in changed), diff
    assert not any(path.endswith("stage1.json") for path, _ in changed), diff  # stage 1 did not rerun
