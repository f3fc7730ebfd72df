"""Evaluation of IEr and the AVOL baseline on one dataset (DESIGN section 7; DSOL's protocol).

    run_evaluate(features_dir, synth_dir, paths, model_params, evaluate_params, source)

- single: the `test` clips; the map of each clip's image with its own audio, resized to
  `map_size`, above `single_threshold` x max, IoU with the sounding object's box: iou50 and auc.
- syn, un, duet (where synth made them): the class-aware maps, IoU per sounding class with that
  class's boxes, CIoU = their mean (Eq. 7): ciou30 and auc; NSA of the classes that are not sounding.
  IEr: the stage-2 model's L^av_k of every pseudo-class (with the silent filter as stage 2 was
  trained), turned into class maps as DSOL does (a softmax across the clusters of the logit-scale
  maps, then summed per class by the cluster -> class map, `pipeline.metrics.class_maps`). L^av_k's
  logit form is the sum of its two factors' logits (the log of their odds product), and the softmax
  runs on it with scale 1 (DSOL's 3 was for its own head's logits; docs/decisions.md).
  AVOL ("Objects that sound"): the stage-1 map of the image with the whole (mixed) audio, min-max
  normalised, the same map for every class (no softmax over classes: identical maps would become
  uniform, docs/decisions.md).
- stage1: NMI and the Table 2 audio metrics, from reports/<ds>/stage1.json; detector: mAP50 of the
  detector against the generator's boxes, from reports/<ds>/detector.json.

Outputs: reports/<ds>/metrics.json (flat groups, values in [0, 1]), reports/<ds>/samples.csv (one row
per sample, set and method), and reports/<ds>/examples.npz / .json (the first `examples` mosaics of
each set with IEr's class maps and the perceived audio distribution, for the report's figures).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from pipeline.config import Evaluate, Model
from pipeline.metrics import (auc, boxes_mask, class_aware_iou, class_maps, iou, non_sounding_area, resize_map,
                              success_rate)
from pipeline.models.ier import localization_map
from pipeline.reader import ShardReader
from pipeline.shards import atomic_path, write_json
from pipeline.stage import StageError
from pipeline.train.stage1 import autocast, pick_device, prepare_images, prepare_logmel
from pipeline.train.stage2 import Trained, load_trained, stage2_forward

CLASS_AWARE_SETS = ("syn", "un", "duet")


class EvaluatePaths(NamedTuple):
    stage1_model: Path  # models/<ds>/stage1.pt: AVOL's map
    stage2_model: Path  # models/<ds>/stage2.pt: IEr
    stage1_report: Path  # reports/<ds>/stage1.json
    detector_report: Path  # reports/<ds>/detector.json
    metrics: Path  # reports/<ds>/metrics.json
    samples: Path  # reports/<ds>/samples.csv
    examples: Path  # reports/<ds>/examples.npz (and .json beside it)


def correspondence_maps(trained: Trained, images: torch.Tensor, log_mels: torch.Tensor) -> np.ndarray:
    """The stage-1 style map of each image with its own audio, head(l(f^v, f^a)), min-max normalised to [0, 1]
    per image (as LVS and EZ-VSL do before thresholding: the head's sigmoid never reaches 0, so a threshold
    at 0.1 x max of the raw map would keep nearly the whole image). (B, h, w)."""
    visual = trained.model.visual(images).embedding
    audio = trained.model.audio(log_mels).embedding
    _, probability_map = trained.model.head(localization_map(visual, audio))
    maps = probability_map.float().cpu().numpy()
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - low, 1e-8)


def sounding_boxes(objects: list[dict], name: str | None = None) -> list[dict]:
    """The boxes of the sounding objects (of class `name`, when given)."""
    return [box for box in objects if box["sounding"] and (name is None or box["class"] == name)]


def batches(folder: Path, columns: tuple[str, ...], batch_size: int):
    """Every row of `folder` once, in order."""
    return ShardReader(folder, columns=columns, batch_size=batch_size, rank=0, world_size=1)


def prepared(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images at their own size (frames 128, mosaics grid x 128) and log-mels, ready for the nets."""
    images = prepare_images(batch["image"], batch["image"].shape[-1], device, False)
    return images, prepare_logmel(batch["logmel"], device, False)


def evaluate_single(folder: Path, ier: Trained, avol: Trained, params: Evaluate, device: torch.device,
                    rows: list[dict]) -> dict:
    """Single-source IoU of IEr and AVOL on the test clips; per-clip rows appended to `rows`."""
    ious = {"ier": [], "avol": []}
    for batch in batches(folder, ("image", "logmel", "clip_id", "objects"), params.batch_size):
        images, log_mels = prepared(batch, device)
        with torch.no_grad(), autocast(device):
            maps = {"ier": correspondence_maps(ier, images, log_mels), "avol": correspondence_maps(avol, images, log_mels)}
        for row, (clip_id, frames) in enumerate(zip(batch["clip_id"], batch["objects"])):
            truth = boxes_mask(sounding_boxes(frames[0]), params.map_size, params.map_size)
            for method, method_maps in maps.items():
                value = iou(resize_map(method_maps[row], params.map_size), truth, params.single_threshold)
                ious[method].append(value)
                rows.append({"set": "single", "sample_id": clip_id, "method": method, "iou": value, "nsa": ""})
    return {method: {"iou50": success_rate(values, params.iou_success), "auc": auc(values)}
            for method, values in ious.items()}


class Example(NamedTuple):
    image: np.ndarray  # (S, S, 3) uint8, S = map_size
    maps: np.ndarray  # (C, S, S) float32, IEr's class maps
    info: dict  # sample_id, set, sounding, silent, offscreen, objects, audio_distribution


def evaluate_class_aware(name: str, folder: Path, ier: Trained, avol: Trained, classes: list[str],
                         model_params: Model, params: Evaluate, device: torch.device, rows: list[dict],
                         examples: list[Example]) -> dict:
    """CIoU and NSA of IEr and AVOL on one mosaic set; per-image rows and the first examples appended."""
    threshold = params.duet_threshold if name == "duet" else params.class_threshold
    silent_filter = bool(ier.config.get("silent_filter", True))
    ciou, nsa = {"ier": [], "avol": []}, {"ier": [], "avol": []}
    columns = ("image", "logmel", "sample_id", "objects", "sounding", "silent", "offscreen")
    for batch in batches(folder, columns, params.batch_size):
        images, log_mels = prepared(batch, device)
        with torch.no_grad(), autocast(device):
            maps, heard = stage2_forward(ier.model, ier.model.head, images, log_mels, ier.visual_prototypes.to(device),
                                         ier.audio_prototypes.to(device), model_params, silent_filter)
            avol_maps = correspondence_maps(avol, images, log_mels)
        # DSOL softmaxes its maps over the clusters on the logit scale; L^av_k's logit form is the sum of its
        # factors' logits (pipeline.train.referrer.class_aware_maps), so the softmax normalises their odds product.
        logit_maps = maps.audio_visual_logit.float().cpu().numpy()
        heard = heard.float().cpu().numpy()
        for row, sample_id in enumerate(batch["sample_id"]):
            objects, sounding = batch["objects"][row], list(batch["sounding"][row])
            boxes = {label: sounding_boxes(objects, label) for label in sounding}
            per_class = dict(zip(classes, class_maps(logit_maps[row], ier.cluster_to_class, classes, scale=1.0)))
            avol_per_class = {label: avol_maps[row] for label in classes}
            for method, method_maps in (("ier", per_class), ("avol", avol_per_class)):
                value = class_aware_iou(method_maps, boxes, sounding, threshold, params.map_size)
                quiet = non_sounding_area(method_maps, sounding, size=params.map_size)
                ciou[method].append(value)
                nsa[method].append(quiet)
                rows.append({"set": name, "sample_id": sample_id, "method": method, "iou": value,
                             "nsa": "" if np.isnan(quiet) else quiet})
            if sum(example.info["set"] == name for example in examples) < params.examples:
                image = Image.fromarray(batch["image"][row].permute(1, 2, 0).numpy())
                image = np.asarray(image.resize((params.map_size, params.map_size), Image.BILINEAR))
                resized = np.stack([resize_map(per_class[label], params.map_size) for label in classes])
                heard_by_class = {label: float(max((heard[row, k] for k, owner in enumerate(ier.cluster_to_class)
                                                    if owner == label), default=0.0)) for label in classes}
                examples.append(Example(image, resized.astype(np.float32), {
                    "sample_id": sample_id, "set": name, "sounding": sounding,
                    "silent": list(batch["silent"][row]), "offscreen": list(batch["offscreen"][row]),
                    "objects": objects, "audio_distribution": heard_by_class}))
    return {method: {"ciou30": success_rate(ciou[method], params.ciou_success), "auc": auc(ciou[method]),
                     "nsa": float(np.nanmean(nsa[method])) if not np.isnan(nsa[method]).all() else None}
            for method in ciou}


def write_samples(rows: list[dict], path: Path) -> None:
    """samples.csv: set, sample_id, method, iou (IoU or CIoU), nsa (blank where undefined)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["set", "sample_id", "method", "iou", "nsa"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: (round(value, 6) if isinstance(value, float) else value) for key, value in row.items()}
                     for row in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def write_examples(examples: list[Example], classes: list[str], path: Path, size: int) -> None:
    """examples.npz (images, maps, classes) and examples.json (one dict per example) for the report."""
    images = np.stack([example.image for example in examples]) if examples else np.zeros((0, size, size, 3), np.uint8)
    maps = (np.stack([example.maps for example in examples]) if examples
            else np.zeros((0, len(classes), size, size), np.float32))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images, maps=maps, classes=np.array(classes, dtype=str))
    info = [{key: (round(value, 6) if isinstance(value, float) else value) for key, value in example.info.items()}
            for example in examples]
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise StageError(f"{path}: not found (run the stage that writes it first)")
    return json.loads(path.read_text())


def rounded(value):
    """Floats rounded to 6 digits, through nested dicts (reruns give the same bytes)."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def run_evaluate(features_dir: str | Path, synth_dir: str | Path, paths: EvaluatePaths, model_params: Model,
                 params: Evaluate, source: str) -> dict:
    """Evaluate IEr (stage 2) and AVOL (stage 1) on every test set of one dataset; write `paths`; the metrics."""
    features_dir, synth_dir = Path(features_dir), Path(synth_dir)
    test_dir = features_dir / "test"
    if not list(test_dir.glob("shard-*.parquet")):
        raise StageError(f"{test_dir}: no shard-*.parquet files (run the features stage first)")
    device = pick_device(params.device)
    ier, avol = load_trained(paths.stage2_model, model_params), load_trained(paths.stage1_model, model_params)
    for trained in (ier, avol):
        trained.model.to(device).eval()
    stage1_report, detector_report = read_json(paths.stage1_report), read_json(paths.detector_report)
    summary = read_json(synth_dir / "summary.json")
    classes = sorted({label for label in ier.cluster_to_class if label}
                     | set(json.loads((features_dir / "summary.json").read_text()).get("classes", [])))

    rows: list[dict] = []
    examples: list[Example] = []
    single = evaluate_single(test_dir, ier, avol, params, device, rows)
    metrics = {"source": source, "single": single["ier"], "baselines": {"avol": {"single": single["avol"]}}}
    for name in CLASS_AWARE_SETS:
        folder = synth_dir / name
        if summary.get("sets", {}).get(name, {}).get("samples", 0) == 0 or not list(folder.glob("shard-*.parquet")):
            continue  # e.g. VGGSound has no duet set
        result = evaluate_class_aware(name, folder, ier, avol, classes, model_params, params, device, rows, examples)
        metrics[name] = result["ier"]
        metrics["baselines"]["avol"][name] = result["avol"]
    metrics["stage1"] = {key: stage1_report[key] for key in ("nmi", "map", "precision", "recall")}
    metrics["detector"] = {"map50": detector_report["map50"]}
    metrics = rounded(metrics)
    write_samples(rows, paths.samples)
    write_examples(examples, classes, paths.examples, params.map_size)
    write_json(metrics, paths.metrics)
    return metrics
