"""pipeline.diagnose on the tiny pipeline's real outputs: its `evaluated` class maps are the ones evaluate scored."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.diagnose import TERMS, diagnose
from tests.conftest import stage_environment


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


@pytest.mark.slow
def test_command_prints_one_row_per_set_and_term(tiny_pipeline):
    run = subprocess.run([sys.executable, "-m", "pipeline.diagnose", "music"], cwd=tiny_pipeline,
                         env=stage_environment(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| syn |", "| un |", "| duet |"))]
    assert len(rows) == 3 * len(TERMS) + 3  # the terms of each set, then p^a of each set
