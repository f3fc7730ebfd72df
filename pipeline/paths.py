"""Where every stage writes (relative to the repository root): the one source of the DVC contract.

Stage scripts take their paths from here, and dvc.yaml's `outs`, `metrics` and `plots` name the same
paths: tests/test_dvc_contract.py expands dvc.yaml for each dataset and checks every entry against
`stage_outputs`.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

DATA, MODELS, REPORTS = Path("data"), Path("models"), Path("reports")


class DetectPaths(NamedTuple):
    boxes: Path  # data/boxes/<ds>.parquet: boxes on the val and test frames
    weights: Path  # models/<ds>/detector.pt
    report: Path  # reports/<ds>/detector.json (mAP50: a metric)
    run: Path  # reports/<ds>/detector-run.json (wall time: a run fact)


class PretrainPaths(NamedTuple):
    weights: Path  # models/pretrain/visual.pt: what model.visual_pretrained names
    report: Path  # reports/pretrain.json (held-out accuracy: a metric)
    run: Path  # reports/pretrain-run.json (wall times: a run fact)


class Stage1Paths(NamedTuple):
    model: Path  # models/<ds>/stage1.pt
    dsol_model: Path  # models/<ds>/stage1-dsol.pt: the networks before the AII phase (DSOL's stage 1)
    report: Path  # reports/<ds>/stage1.json
    checkpoints: Path  # models/<ds>/stage1-checkpoints/
    live: Path  # reports/<ds>/stage1-live/ (dvclive)


class Stage2Paths(NamedTuple):
    stage1_model: Path  # models/<ds>/stage1.pt (input)
    model: Path  # models/<ds>/stage2.pt
    report: Path  # reports/<ds>/stage2.json
    checkpoints: Path  # models/<ds>/stage2-checkpoints/
    live: Path  # reports/<ds>/stage2-live/ (dvclive)


class OraclePaths(NamedTuple):
    model: Path  # models/<ds>/oracle.pt
    report: Path  # reports/<ds>/oracle.json


class EvaluatePaths(NamedTuple):
    stage1_model: Path  # models/<ds>/stage1.pt: AVOL's networks
    stage2_model: Path  # models/<ds>/stage2.pt: IEr
    dsol_model: Path  # models/<ds>/dsol.pt: the DSOL baseline
    oracle_model: Path  # models/<ds>/oracle.pt: the ceiling
    stage1_report: Path  # reports/<ds>/stage1.json
    detector_report: Path  # reports/<ds>/detector.json
    boxes: Path  # data/boxes/<ds>.parquet: the detector's boxes on the evaluation frames
    metrics: Path  # reports/<ds>/metrics.json
    samples: Path  # reports/<ds>/samples.csv
    success: Path  # reports/<ds>/success.csv
    examples: Path  # reports/<ds>/examples.npz (and examples.json beside it)


def raw(dataset: str) -> Path:
    return DATA / "raw" / dataset


def clips(dataset: str) -> Path:
    return DATA / "clips" / dataset


def features(dataset: str) -> Path:
    return DATA / "features" / dataset


def synth(dataset: str) -> Path:
    return DATA / "synth" / dataset


def detect(dataset: str) -> DetectPaths:
    return DetectPaths(DATA / "boxes" / f"{dataset}.parquet", MODELS / dataset / "detector.pt",
                       REPORTS / dataset / "detector.json", REPORTS / dataset / "detector-run.json")


PRETRAIN = PretrainPaths(MODELS / "pretrain" / "visual.pt", REPORTS / "pretrain.json", REPORTS / "pretrain-run.json")


def stage1(dataset: str) -> Stage1Paths:
    return Stage1Paths(MODELS / dataset / "stage1.pt", MODELS / dataset / "stage1-dsol.pt",
                       REPORTS / dataset / "stage1.json",
                       MODELS / dataset / "stage1-checkpoints", REPORTS / dataset / "stage1-live")


def stage2(dataset: str) -> Stage2Paths:
    return Stage2Paths(stage1(dataset).model, MODELS / dataset / "stage2.pt", REPORTS / dataset / "stage2.json",
                       MODELS / dataset / "stage2-checkpoints", REPORTS / dataset / "stage2-live")


def oracle(dataset: str) -> OraclePaths:
    return OraclePaths(MODELS / dataset / "oracle.pt", REPORTS / dataset / "oracle.json")


def dsol(dataset: str) -> Stage2Paths:
    """The DSOL baseline: stage 2 as DSOL trains it, from the stage-1 networks before the AII phase."""
    return Stage2Paths(stage1(dataset).dsol_model, MODELS / dataset / "dsol.pt", REPORTS / dataset / "dsol.json",
                       MODELS / dataset / "dsol-checkpoints", REPORTS / dataset / "dsol-live")


def evaluate(dataset: str) -> EvaluatePaths:
    reports = REPORTS / dataset
    return EvaluatePaths(stage1(dataset).model, stage2(dataset).model, dsol(dataset).model, oracle(dataset).model,
                         stage1(dataset).report,
                         detect(dataset).report, detect(dataset).boxes, reports / "metrics.json",
                         reports / "samples.csv", reports / "success.csv", reports / "examples.npz")


REPORT_PAGE = REPORTS / "index.html"


def stage_outputs(stage: str, dataset: str | None = None) -> list[Path]:
    """Every path the stage writes (for `pretrain` and `report`, which run once, `dataset` is None)."""
    if stage == "pretrain":
        return list(PRETRAIN)
    if stage == "report":
        return [REPORT_PAGE]
    if stage in ("stage2", "dsol"):
        return list({"stage2": stage2, "dsol": dsol}[stage](dataset))[1:]  # the first entry is an input
    if stage == "evaluate":
        written = evaluate(dataset)
        return [written.metrics, written.samples, written.success, written.examples,
                written.examples.with_suffix(".json")]
    single = {"download": raw, "clips": clips, "features": features, "synth": synth}
    if stage in single:
        return [single[stage](dataset)]
    return list({"detect": detect, "stage1": stage1, "oracle": oracle}[stage](dataset))
