"""Stage evaluate: IEr and the AVOL baseline on every test set of one dataset (DESIGN section 7).

python -m stages.evaluate <dataset>  ->  reports/<dataset>/metrics.json, reports/<dataset>/samples.csv,
                                        reports/<dataset>/examples.npz + examples.json (the report's figures)
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.evaluate import EvaluatePaths, run_evaluate
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    models, reports = Path("models") / dataset, Path("reports") / dataset
    paths = EvaluatePaths(stage1_model=models / "stage1.pt", stage2_model=models / "stage2.pt",
                          stage1_report=reports / "stage1.json", detector_report=reports / "detector.json",
                          metrics=reports / "metrics.json", samples=reports / "samples.csv",
                          examples=reports / "examples.npz")
    metrics = run_evaluate(Path("data/features") / dataset, Path("data/synth") / dataset, paths, params.model,
                           params.evaluate, params.datasets[dataset].source)
    sets = [name for name in ("syn", "un", "duet") if name in metrics]
    print(f"evaluate@{dataset}: single iou50 {metrics['single']['iou50']:.3f}; "
          + "; ".join(f"{name} ciou30 IEr {metrics[name]['ciou30']:.3f} / AVOL "
                      f"{metrics['baselines']['avol'][name]['ciou30']:.3f}" for name in sets))


if __name__ == "__main__":
    run_stage("evaluate", body)
