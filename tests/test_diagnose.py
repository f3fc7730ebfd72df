"""pipeline.diagnose and pipeline.diagnose_stage1 on the tiny pipeline's real outputs: they reproduce what the
stages scored (evaluate's class maps, stage 1's test NMI)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipeline.diagnose import ROLES, SEEN_MASKS, TERMS, diagnose
from pipeline.diagnose_listening import class_columns, swapped
from pipeline.diagnose_stage1 import diagnose_stage1, linear_probe
from pipeline.grounded import Outputs
from tests.helpers import REPO
from tests.helpers.processes import stage_environment


@pytest.mark.slow
def test_evaluated_term_reproduces_the_metrics_of_evaluate(tiny_pipeline):
    for dataset in ("music", "vggsound"):
        metrics = json.loads((tiny_pipeline / "reports" / dataset / "metrics.json").read_text())
        results = diagnose(tiny_pipeline, dataset, tiny_pipeline / "params.yaml")
        assert set(results) == {name for name in ("syn", "un", "duet") if name in metrics}
        for name, result in results.items():
            assert set(result["terms"]) == set(TERMS)
            evaluated = result["terms"]["evaluated"]
            assert evaluated["ciou30"] == pytest.approx(metrics[name]["ciou30"], abs=1e-6), (dataset, name)
            assert evaluated["nsa"] == pytest.approx(metrics[name]["nsa"], abs=1e-6), (dataset, name)
            for term in result["terms"].values():
                assert all(value is None or 0.0 <= value <= 1.0 for value in term.values()), term
            assert all(value is None or 0.0 <= value <= 1.0 for value in result["heard"].values())
            # Eq. 4's seen area of every role under each mask, a share of the mosaic
            assert set(result["seen"]) == set(SEEN_MASKS)
            for seen in result["seen"].values():
                assert set(seen) == set(ROLES) and all(value is None or 0.0 <= value <= 1.0 for value in seen.values())


@pytest.mark.slow
def test_command_prints_one_row_per_set_and_term(tiny_pipeline):
    run = subprocess.run([sys.executable, "-m", "pipeline.diagnose", "music"], cwd=tiny_pipeline,
                         env=stage_environment(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| syn |", "| un |", "| duet |"))]
    # the terms of each set, then p^a of each set, then the seen area of each set under each mask
    assert len(rows) == 3 * len(TERMS) + 3 + 3 * len(SEEN_MASKS)


@pytest.mark.slow
def test_stage1_diagnosis_reproduces_the_stage_nmi_and_covers_every_test_clip(tiny_pipeline):
    for dataset in ("music", "vggsound"):
        report = json.loads((tiny_pipeline / "reports" / dataset / "stage1.json").read_text())
        result = diagnose_stage1(tiny_pipeline, dataset, tiny_pipeline / "params.yaml")
        assert result["nmi"] == pytest.approx(report["nmi"], abs=1e-6), dataset  # the stage's own test assignment
        rows = result["classes"].values()
        assert sum(row["clips"] for row in rows) == report["test_clips"]
        assert all(sum(row["clusters"].values()) == row["clips"] for row in rows)
        assert all(0 <= k < report["clusters"] for row in rows for k in row["clusters"])
        for label, row in result["classes"].items():
            assert all(0.0 <= row[key] <= 1.0 for key in ("recognised", "probe_object", "probe_audio")), row
            assert row["taken_for"] != label
            assert (row["taken_for"] is None) == (row["recognised"] == 1.0), row


@pytest.mark.slow
def test_stage1_diagnosis_command_prints_one_row_per_class(tiny_pipeline):
    run = subprocess.run([sys.executable, "-m", "pipeline.diagnose_stage1", "vggsound"], cwd=tiny_pipeline,
                         env=stage_environment(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    classes = yaml.safe_load((tiny_pipeline / "params.yaml").read_text())["datasets"]["vggsound"]["toy"]["classes"]
    rows = [line for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| class", "| ---"))]
    assert sorted(row.split(" | ")[0][2:] for row in rows) == sorted(classes)
    assert run.stdout.startswith("vggsound: test NMI ")


def test_linear_probe_finds_planted_classes_and_cannot_split_identical_ones():
    rng = np.random.default_rng(0)
    centers = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    def clips(classes: list[str]) -> np.ndarray:
        return np.array([centers[label] for label in classes]) + rng.normal(0.0, 0.1, (len(classes), 3))
    train_classes, test_classes = ["a", "b", "c"] * 20, ["a", "b", "c"] * 10
    assert list(linear_probe(clips(train_classes), train_classes, clips(test_classes))) == test_classes
    centers["b"] = centers["a"]  # b now looks exactly like a: the probe can get at most one of the two right
    predicted = linear_probe(clips(train_classes), train_classes, clips(test_classes))
    truth = np.array(test_classes)
    assert np.all(predicted[truth == "c"] == "c")
    assert np.mean(predicted[truth != "c"] == truth[truth != "c"]) < 0.8


@pytest.mark.parametrize("module", ["pipeline.diagnose", "pipeline.diagnose_stage1", "pipeline.diagnose_listening"])
def test_command_without_a_trained_model_is_one_line(tmp_path, module):
    run = subprocess.run([sys.executable, "-m", module, "music", "--params", str(REPO / "params.yaml")], cwd=tmp_path,
                         env=stage_environment(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    model = "stage1" if module.endswith("stage1") else "stage2"
    missing = f"error: models/music/{model}.pt: not found (run the stage that writes it first)"
    assert run.stderr.strip().splitlines() == [missing]


def test_swapping_ears_gates_each_map_by_the_other_models_score_of_its_class():
    maps = Outputs([np.zeros((3, 2, 2))], np.array([[0.9, 0.8, 0.7]]), np.array([[0.9, 0.1]]))
    ears = Outputs([np.zeros((2, 2, 2))], np.array([[0.2, 0.6]]), np.array([[0.2, 0.6]]))
    # the three maps are of class 1, of no class, of class 0
    hybrid = swapped(maps, class_columns(["b", "", "a"], ["a", "b"]), ears)
    assert hybrid.maps is maps.maps
    np.testing.assert_allclose(hybrid.gates, [[0.6, 0.0, 0.2]])
    np.testing.assert_allclose(hybrid.heard, ears.heard)
