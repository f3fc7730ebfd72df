"""Object boxes on the evaluation frames with ultralytics YOLO, offline (docs/architecture.md).

Toy source: a detector is trained from scratch (architecture yaml, no download)
on frame 0 of the training clips with the generator's boxes as labels, then
predicts on frame 0 of the evaluation clips (`val`, `test`, `duet_val`, `duet`);
its mAP50 against the generator's boxes on those frames is the toy world's
detector agreement.
Youtube source: local pretrained weights predict; their class names map to
the dataset's classes through `detect.class_map`.

ultralytics is imported only through `load_ultralytics()`, which first makes
it offline and keeps it out of the repo: no online checks, no auto-install,
no analytics, no font download, no training integrations (its dvclive
callback would write a dvc.yaml), and its run folder in a temporary folder.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import Detect
from pipeline.runtime import save_torch
from pipeline.shards import atomic_path, shard_paths, write_json, write_table
from pipeline.stage import StageError

TRAIN_SPLITS = ("train_single", "train_mix")  # by video: no evaluation clip is ever trained on
EVAL_SPLITS = ("val", "test", "duet_val", "duet")  # the duets exist for the music role only
IOU_MATCH = 0.5  # the "50" of mAP50
PREDICT_CONFIDENCE = 0.001  # mAP needs the whole ranking; the boxes file keeps >= detect.confidence
MAX_BOXES_PER_FRAME = 100

BOXES_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("class", pa.string()),
        ("score", pa.float32()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
    ]
)
BOX_COLUMNS = ["x0", "y0", "x1", "y1"]


# --------------------------------------------------------------------------- offline ultralytics


def load_ultralytics(config_dir: str | Path = ".yolo") -> Any:
    """Import ultralytics with every network path and every side effect on the repo closed.

    The environment must be set before the first import (ultralytics reads it
    at import time). Its training integrations are switched off in its
    settings file: dvclive, installed for the pipeline, would otherwise write
    a `dvc.yaml` and `dvclive/` into the working directory. Its dataset check
    always looks for Arial.ttf and downloads it when missing: a local copy of
    matplotlib's DejaVu Sans under that name in the config folder stops that.
    """
    os.environ["YOLO_OFFLINE"] = "1"  # no online check, no analytics events
    os.environ["YOLO_AUTOINSTALL"] = "false"  # never pip-install a missing requirement
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(config_dir).resolve()))
    # Per-batch progress bars would bury the stage log (dvc repro); the stage prints its own summary.
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.pop("ULTRALYTICS_API_KEY", None)  # no streaming to Ultralytics Platform
    import matplotlib
    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    integrations = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
    wanted = {"sync": False, "api_key": "", **dict.fromkeys(integrations, False)}
    if any(SETTINGS.get(key) != value for key, value in wanted.items()):
        SETTINGS.update(wanted)
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for font_name in ("Arial.ttf", "Arial.Unicode.ttf"):
        font = Path(USER_CONFIG_DIR) / font_name
        if not font.exists():
            with atomic_path(font) as tmp:
                shutil.copyfile(dejavu, tmp)
    return ultralytics


# --------------------------------------------------------------------------- reading frames


@dataclass(frozen=True)
class Frames:
    """Frame 0 of each clip of some splits, with its truth boxes (toy) in long form."""

    clip_ids: list[str]
    jpegs: list[bytes]
    truth: pd.DataFrame  # clip_id, class, x0, y0, x1, y1 (no rows for youtube)


def read_frames(features_dir: str | Path, splits: tuple[str, ...], required: tuple[str, ...] = ()) -> Frames:
    """Frame 0 and its objects of every clip of `splits`; a split in `required` must exist."""
    clip_ids: list[str] = []
    jpegs: list[bytes] = []
    truth_rows: list[dict] = []
    for split in splits:
        paths = shard_paths(Path(features_dir) / split)
        if not paths:
            if split in required:
                raise StageError(f"{Path(features_dir) / split}: no feature shards (run the features stage)")
            continue
        for path in paths:
            try:
                table = pq.read_table(path, columns=["clip_id", "frames", "objects"])
            except (pa.ArrowInvalid, KeyError) as err:
                raise StageError(f"{path}: cannot read clip_id/frames/objects ({err})") from None
            for clip_id, frames, objects in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                if not frames:
                    raise StageError(f"{path}: clip {clip_id} has no frames")
                clip_ids.append(clip_id)
                jpegs.append(frames[0])
                for obj in (objects[0] if objects else None) or []:
                    truth_rows.append({"clip_id": clip_id, **{k: obj[k] for k in ("class", *BOX_COLUMNS)}})
    truth = pd.DataFrame(truth_rows, columns=["clip_id", "class", *BOX_COLUMNS])
    return Frames(clip_ids, jpegs, truth)


def subsample(frames: Frames, limit: int, seed: int) -> Frames:
    """At most `limit` frames, drawn with the seed, kept in their original order."""
    if len(frames.clip_ids) <= limit:
        return frames
    keep = np.sort(np.random.default_rng(seed).choice(len(frames.clip_ids), size=limit, replace=False))
    clip_ids = [frames.clip_ids[i] for i in keep]
    truth = frames.truth[frames.truth["clip_id"].isin(set(clip_ids))].reset_index(drop=True)
    return Frames(clip_ids, [frames.jpegs[i] for i in keep], truth)


# --------------------------------------------------------------------------- YOLO dataset export


def yolo_label_lines(boxes: pd.DataFrame, class_ids: dict[str, int]) -> list[str]:
    """YOLO txt lines `class x_center y_center width height` (normalised) for one image's boxes."""
    lines = []
    corners = np.clip(boxes[BOX_COLUMNS].to_numpy(float), 0.0, 1.0)
    for name, (x0, y0, x1, y1) in zip(boxes["class"], corners):
        if x1 <= x0 or y1 <= y0:
            continue  # a box clipped away to nothing is no object
        lines.append(f"{class_ids[name]} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}")
    return lines


def export_yolo_split(frames: Frames, class_ids: dict[str, int], root: Path, split: str) -> None:
    """Write `root/images/<split>/<clip>.jpg` (the JPEG bytes as they are) and `root/labels/<split>/<clip>.txt`."""
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    by_clip = dict(tuple(frames.truth.groupby("clip_id", sort=False)))
    empty = frames.truth.iloc[:0]
    for clip_id, jpeg in zip(frames.clip_ids, frames.jpegs):
        (images / f"{clip_id}.jpg").write_bytes(jpeg)
        lines = yolo_label_lines(by_clip.get(clip_id, empty), class_ids)
        (labels / f"{clip_id}.txt").write_text("".join(line + "\n" for line in lines))


def export_yolo_dataset(train: Frames, val: Frames, class_names: list[str], root: Path) -> Path:
    """A YOLO dataset folder with its data yaml; returns the yaml path."""
    class_ids = {name: i for i, name in enumerate(class_names)}
    export_yolo_split(train, class_ids, root, "train")
    export_yolo_split(val, class_ids, root, "val")
    data_yaml = root / "data.yaml"
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(class_names))
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data_yaml


# --------------------------------------------------------------------------- training and prediction


def train_detector(ultralytics: Any, data_yaml: Path, params: Detect, seed: int, workdir: Path) -> tuple[Any, dict]:
    """Train `params.model` (an architecture yaml: from scratch); return the model and ultralytics'
    metrics on the data yaml's `val` images after the last epoch."""
    try:
        model = ultralytics.YOLO(params.model)
    except FileNotFoundError as err:
        raise StageError(f"detect.model: {err}") from None

    def print_epoch(trainer: Any) -> None:  # one line per epoch instead of ultralytics' per-batch bars
        losses = " ".join(f"{name.split('/')[-1]} {value:.3f}" for name, value in trainer.label_loss_items(
            trainer.tloss, prefix="train").items())
        print(f"  detector epoch {trainer.epoch + 1}/{trainer.epochs}: {losses}", flush=True)

    def use_every_core(trainer: Any) -> None:
        # ultralytics trains a CPU model on cores - 1 threads (1 of 2 here, set when it picks the device); the
        # stage runs alone, so it takes them all.
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

    model.add_callback("on_train_epoch_end", print_epoch)
    model.add_callback("on_pretrain_routine_start", use_every_core)
    results = model.train(
        data=str(data_yaml),
        epochs=params.epochs,
        imgsz=params.image_size,
        batch=params.batch,
        seed=seed,
        deterministic=True,
        workers=0,  # ultralytics loads in the training process on CPU anyway
        device="cpu",
        amp=False,  # the AMP check downloads a model; CPU trains in float32 anyway
        plots=False,  # plotting needs fonts and costs time
        cache=False,  # decoding a few hundred small JPEGs per epoch costs little; ultralytics warns
        # that its RAM cache may break determinism
        mosaic=params.mosaic,
        close_mosaic=params.close_mosaic,
        optimizer=params.optimizer,
        lr0=params.lr0,
        val=False,  # validated once, after the last epoch
        project=str(workdir),  # ultralytics writes its run folder here, never under the repo
        name="train",
        exist_ok=True,
        verbose=False,
    )
    metrics = dict(results.results_dict) if results is not None else {}
    return model, metrics


def predict_boxes(model: Any, frames: Frames, image_size: int, batch: int) -> pd.DataFrame:
    """Every box the model finds on each frame, at a low score floor (the ranking mAP needs)."""
    rows = []
    for start in range(0, len(frames.jpegs), batch):
        images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for jpeg in frames.jpegs[start : start + batch]]
        results = model.predict(
            images,
            imgsz=image_size,
            conf=PREDICT_CONFIDENCE,
            max_det=MAX_BOXES_PER_FRAME,
            device="cpu",
            verbose=False,
        )
        for clip_id, result in zip(frames.clip_ids[start : start + batch], results):
            boxes = result.boxes
            for (x0, y0, x1, y1), score, cls in zip(
                boxes.xyxyn.tolist(), boxes.conf.tolist(), boxes.cls.int().tolist()
            ):
                rows.append(
                    {"clip_id": clip_id, "class": result.names[cls], "score": score,
                     "x0": x0, "y0": y0, "x1": x1, "y1": y1}
                )
    return pd.DataFrame(rows, columns=BOXES_SCHEMA.names)


def boxes_table(boxes: pd.DataFrame) -> pa.Table:
    """The boxes file's table (docs/data.md), rows sorted by clip, then score descending."""
    ordered = boxes.sort_values(["clip_id", "score", "class"], ascending=[True, False, True], kind="stable")
    return pa.Table.from_pandas(ordered.reset_index(drop=True), schema=BOXES_SCHEMA, preserve_index=False)


# --------------------------------------------------------------------------- mAP50


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one `x0, y0, x1, y1` box with each row of `others`."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def average_precision(predictions: pd.DataFrame, truth: pd.DataFrame, iou_match: float = IOU_MATCH) -> float:
    """AP of one class: predictions ranked by score, each matched to the best unmatched truth box
    of its frame with IoU >= `iou_match` (COCO matching); area under the precision envelope over
    every recall step (all-point interpolation, VOC 2010+)."""
    if truth.empty:
        raise ValueError("average_precision needs at least one truth box")
    truth_by_clip = {clip: group[BOX_COLUMNS].to_numpy(float) for clip, group in truth.groupby("clip_id")}
    matched = {clip: np.zeros(len(b), bool) for clip, b in truth_by_clip.items()}
    ranked = predictions.sort_values(["score", "clip_id"], ascending=[False, True], kind="stable")
    hits = np.zeros(len(ranked), bool)
    for i, pred in enumerate(ranked.itertuples(index=False)):
        if pred.clip_id not in truth_by_clip:
            continue
        ious = box_iou(np.array([pred.x0, pred.y0, pred.x1, pred.y1], float), truth_by_clip[pred.clip_id])
        ious[matched[pred.clip_id]] = -1.0
        best = int(np.argmax(ious))
        if ious[best] >= iou_match:
            matched[pred.clip_id][best] = True
            hits[i] = True
    true_positives = np.cumsum(hits)
    recall = np.concatenate([[0.0], true_positives / len(truth), [1.0]])
    precision = np.concatenate([[1.0], true_positives / np.arange(1, len(ranked) + 1), [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def map50(predictions: pd.DataFrame, truth: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """Mean AP50 over the classes that have truth boxes, and the AP50 of each of them."""
    per_class = {
        name: average_precision(predictions[predictions["class"] == name], group)
        for name, group in truth.groupby("class")
    }
    if not per_class:
        raise ValueError("map50 needs at least one truth box")
    return float(np.mean(list(per_class.values()))), per_class


# --------------------------------------------------------------------------- the stage


def check_model(params: Detect, source: str) -> None:
    """Fail before any work when the model cannot be had without a download."""
    if (source == "youtube" or params.model.endswith(".pt")) and not Path(params.model).is_file():
        need = "the youtube source needs local pretrained weights (e.g. yolov8n-oiv7.pt)" if source == "youtube" else (
            "a .pt model must be a local file")
        raise StageError(f"detect.model: weights file {params.model} not found; {need}, "
                         "nothing is downloaded at run time")
    if source == "youtube" and not params.class_map:
        raise StageError("detect.class_map: empty; the youtube source needs detector class -> dataset class")


def run_detect(
    features_dir: str | Path,
    boxes_path: str | Path,
    weights_path: str | Path,
    report_path: str | Path,
    run_path: str | Path,
    params: Detect,
    source: str,
    seed: int,
) -> dict:
    """The detect stage: boxes on every evaluation frame, the detector's weights and its report.

    The report (`report_path`, a DVC metric) holds results only; the wall time goes to `run_path`, so that
    `dvc metrics diff` of two runs of the same detector shows nothing.
    """
    start = time.perf_counter()
    check_model(params, source)
    features_dir = Path(features_dir)
    evaluation = read_frames(features_dir, EVAL_SPLITS, required=("test",))
    ultralytics = load_ultralytics()
    report: dict[str, Any] = {
        "source": source, "model": params.model, "image_size": params.image_size, "train_images": 0, "epochs": 0,
    }
    with tempfile.TemporaryDirectory(prefix="detect-") as workdir:
        if source == "toy":
            model = _train_toy(ultralytics, features_dir, evaluation, params, seed, Path(workdir), report)
            weights = Path(model.trainer.best)  # with val=False, best.pt holds the last epoch; `model` is it
        else:
            weights = Path(params.model)
            model = ultralytics.YOLO(str(weights))
        found = predict_boxes(model, evaluation, params.image_size, params.batch)
        if source == "youtube":
            found = map_classes(found, params.class_map)
        if evaluation.truth.empty:
            report.update(map50=None, per_class_ap50={}, note="no ground-truth boxes for this source")
        else:
            score, per_class = map50(found, evaluation.truth)
            report.update(map50=score, per_class_ap50=per_class)
        kept = found[found["score"] >= params.confidence]
        write_table(boxes_table(kept), boxes_path)
        if source == "toy":  # weights we trained: without the run's facts, so that equal weights give equal bytes
            save_torch(without_run_facts(weights, Path(workdir)), Path(weights_path))
        else:  # the user's weights file, as it is
            with atomic_path(weights_path) as tmp:
                shutil.copyfile(weights, tmp)
    report.update(images=len(evaluation.clip_ids), boxes=len(kept))
    write_json(report, report_path)
    write_json({"seconds": round(time.perf_counter() - start, 1)}, run_path)
    return report


def without_run_facts(weights: Path, workdir: Path) -> dict:
    """The checkpoint ultralytics wrote at `weights`, less what it records about the run rather than the weights:
    the date, the repository's git state, the epochs' wall times, and the temporary folder in the training
    arguments (the checkpoint's and the network's copy). Every run of the same training then writes the same
    bytes (the tensors already were equal)."""
    import torch

    def without_workdir(arguments: dict) -> dict:
        return {key: value.replace(str(workdir), "<workdir>") if isinstance(value, str) else value
                for key, value in arguments.items()}

    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)  # our own file, just written
    checkpoint["date"], checkpoint["git"] = None, None
    checkpoint["train_args"] = without_workdir(checkpoint.get("train_args") or {})
    if isinstance(getattr(checkpoint.get("model"), "args", None), dict):  # the network keeps a copy of them
        checkpoint["model"].args = without_workdir(checkpoint["model"].args)
    checkpoint["train_results"] = {key: value for key, value in (checkpoint.get("train_results") or {}).items()
                                   if key != "time"}
    return checkpoint


def _train_toy(ultralytics, features_dir: Path, evaluation: Frames, params: Detect, seed: int, workdir: Path,
               report: dict) -> Any:
    """Train on frame 0 of the training clips, labelled with every truth object; fill the report's training keys."""
    train = subsample(read_frames(features_dir, TRAIN_SPLITS, required=TRAIN_SPLITS[:1]), params.max_train_images, seed)
    if train.truth.empty:
        raise StageError(f"{features_dir}: the training frames carry no objects to train the toy detector on")
    class_names = sorted(set(train.truth["class"]) | set(evaluation.truth["class"]))
    # ultralytics validates after the last epoch, and again on its saved weights: on the val frames only (a
    # cross-check that never looks at test, at a quarter of the cost); it changes no weight
    data_yaml = export_yolo_dataset(train, read_frames(features_dir, ("val",), required=("val",)), class_names,
                                    workdir / "dataset")
    model, val_metrics = train_detector(ultralytics, data_yaml, params, seed, workdir)
    report.update(
        train_images=len(train.clip_ids),
        train_splits=list(TRAIN_SPLITS),
        epochs=params.epochs,
        classes=class_names,
        ultralytics_val_map50=val_metrics.get("metrics/mAP50(B)"),
    )
    return model


def map_classes(boxes: pd.DataFrame, class_map: dict[str, str]) -> pd.DataFrame:
    """Rename detector classes to dataset classes; boxes of unmapped classes are dropped."""
    mapped = boxes[boxes["class"].isin(class_map)].copy()
    mapped["class"] = mapped["class"].map(class_map)
    return mapped.reset_index(drop=True)
