"""Stage evaluate: IEr and the AVOL baseline on one dataset, thresholds chosen on val, scored on test.

python -m stages.evaluate <dataset>  ->  reports/<dataset>/metrics.json, samples.csv, success.csv,
                                        examples.npz + examples.json (the report's figures)
"""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.evaluate import run_evaluate
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    source = params.datasets[dataset]
    # the deranged-audio pairing is part of the protocol: drawn from data_seed, the same for every training seed
    metrics = run_evaluate(paths.features(dataset), paths.synth(dataset), paths.evaluate(dataset), params.model,
                           params.evaluate, source.source, source.youtube.reference_boxes, params.data_seed)
    sets = [name for name in ("single", "syn", "un", "duet") if name in metrics]
    avol = metrics["baselines"]["avol"]
    print(f"evaluate@{dataset} (test, boxes {metrics['boxes']}): "
          + "; ".join(f"{name} grounded iou30 IEr {metrics['grounded'][name]['iou30']:.3f} / AVOL "
                      f"{avol['grounded'][name]['iou30']:.3f}, reliance IEr {metrics['grounded'][name]['reliance']:.3f}"
                      for name in sets))


if __name__ == "__main__":
    run_stage("evaluate", body)
