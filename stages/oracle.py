"""Stage oracle: IEr's networks trained with the true classes, the ceiling evaluate scores IEr against.

python -m stages.oracle <dataset>  ->  models/<dataset>/oracle.pt, reports/<dataset>/oracle.json
"""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.oracle import run_oracle
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    report = run_oracle(paths.features(dataset), paths.oracle(dataset), params.model, params.oracle, params.seed)
    print(f"oracle@{dataset}: {report['train_clips']} training clips, val accuracy audio "
          f"{report['val']['audio_accuracy']:.3f}, visual {report['val']['visual_accuracy']:.3f}")


if __name__ == "__main__":
    run_stage("oracle", body)
