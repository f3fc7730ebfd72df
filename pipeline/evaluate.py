"""Evaluation of IEr, the AVOL and DSOL baselines and the oracle on one dataset (docs/architecture.md).

    run_evaluate(features_dir, synth_dir, paths, model_params, params, source, reference_boxes, seed)

Two protocols, on the test split, with every choice made on the val split first:

- **DSOL's protocol** (the paper-comparison columns; the true sounding classes are handed to the metric):
  single (the `test` clips): the map of each clip's image with its own audio, min-max normalised, above
  `single_threshold` x max, IoU with the sounding object's box: iou50 and auc. syn, un, duet: the class-aware
  maps, IoU per sounding class with that class's boxes, CIoU = their mean (Eq. 7): ciou30 and auc; NSA of the
  classes that are not sounding. IEr: the stage-2 model's L^av_k of every pseudo-class turned into class maps as
  DSOL does (a softmax across the clusters of the logit-scale maps, summed per class by the cluster -> class map,
  `pipeline.metrics.class_maps`; L^av_k's logit form is the sum of its two factors' logits, softmaxed with scale
  1, docs/decisions.md). AVOL ("Objects that sound"): the stage-1 map of the image with the whole (mixed) audio,
  min-max normalised, the same map for every class. DSOL: as IEr, from its own model file (stage 2 as DSOL trains
  it, on the stage-1 networks before the AII phase: F^a_k = f^a). The oracle (the same networks trained with the
  true classes, pipeline/models/oracle.py): its class logit maps through the same softmax; its single-source map
  is its sound map (each class map weighted by its heard score, the max over classes).
- **The audio-grounded protocol** (`pipeline.grounded`): the model's own "where is the sound" map with no true
  classes, thresholds chosen on val, scored on test under the true audio, deranged audio and digital silence.
  IEr's candidate maps are its L^av_k (probabilities, the silent filter inside) gated by the heard score p^a_k of
  their pseudo-class; AVOL's is its head's probability map, ungated; both give per-class heard scores (IEr:
  p^a_k = sim(P^a_k, F^a_k); AVOL: sim(P^a_k, f^a)), a class's score the max over its clusters. DSOL's are IEr's
  with F^a_k = f^a; the oracle's are its class maps gated by its own heard scores (sigmoids of its audio logits).

Boxes (`evaluate.boxes`): toy `auto` scores against the generator's truth and repeats every number against the
detector's boxes (`detector_boxes`); youtube `auto` uses `datasets.<ds>.youtube.reference_boxes` (DSOL's
human-checked boxes) for the clips they cover and the detector's boxes elsewhere. A set with no sounding box at
all stops the stage with one line. stage1 / detector: NMI and Table 2 from reports/<ds>/stage1.json, mAP50 from
reports/<ds>/detector.json.

Outputs: metrics.json (results only, values in [0, 1]; `split`, `thresholds_split` and `boxes` say where the
numbers come from), samples.csv (one row per test image, set and method), success.csv (the success-rate curves,
`dvc plots`), and examples.npz / .json (the first `examples` images of each class-aware test set with IEr's class
maps and its sound map under each audio condition, for the report's figures).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.audio import LogMel, read_logmel_settings
from pipeline.config import Evaluate, Model
from pipeline.grounded import (CONDITIONS, Outputs, Thresholds, Truth, choose_thresholds, derangement, lit, set_metrics,
                               sound_maps, success_curve)
from pipeline.metrics import (AUC_THRESHOLDS, auc, boxes_mask, class_aware_iou, class_maps, iou, non_sounding_area,
                              resize_map, success_rate)
from pipeline.models.files import Trained, load_trained
from pipeline.models.ier import localization_map, prototype_similarity
from pipeline.models.inputs import Normalisation, prepare_images, prepare_logmel
from pipeline.models.oracle import TrainedOracle, load_oracle
from pipeline.paths import EvaluatePaths
from pipeline.reader import ShardReader
from pipeline.runtime import autocast, pick_device
from pipeline.shards import atomic_path, write_json
from pipeline.stage import StageError
from pipeline.train.referrer import class_aware_maps

CLASS_AWARE_SETS = ("syn", "un", "duet")
SETS = ("single", *CLASS_AWARE_SETS)
METHODS = ("ier", "avol", "dsol", "oracle")  # IEr first: metrics.json's top level; the others under `baselines`


# --------------------------------------------------------------------------- the sets, in memory


class EvalSet(NamedTuple):
    """One evaluation set: images, audio and what is known of them (single clips are 1x1 'mosaics')."""

    name: str  # single | syn | un | duet
    sample_ids: list[str]
    images: torch.Tensor  # (N, 3, H, W) uint8
    log_mels: torch.Tensor  # (N, n_mels, n_frames) dB
    tiles: list[list[dict]]  # per image: {"clip_id", "class", "x0", "y0", "x1", "y1", "sounding"} per shown clip
    objects: list[list[dict]]  # per image: the generator's boxes ({"class", box, "sounding"}); [] for youtube
    sounding: list[list[str]]  # visible and heard classes
    silent: list[list[str]]  # visible, not heard
    offscreen: list[list[str]]  # heard, not visible


def batches(folder: Path, columns: tuple[str, ...], batch_size: int):
    """Every row of `folder` once, in order."""
    return ShardReader(folder, columns=columns, batch_size=batch_size, rank=0, world_size=1)


def prepared(batch: dict, device: torch.device, normalisation: Normalisation) -> tuple[torch.Tensor, torch.Tensor]:
    """Images at their own size (frames, mosaics grid x tile) and log-mels, normalised as the model file says."""
    images = prepare_images(batch["image"], batch["image"].shape[-1], device, False, normalisation=normalisation)
    return images, prepare_logmel(batch["logmel"], device, False, normalisation)


def sounding_boxes(objects: list[dict], name: str | None = None) -> list[dict]:
    """The boxes of the sounding objects (of class `name`, when given)."""
    return [box for box in objects if box["sounding"] and (name is None or box["class"] == name)]


def set_folder(features_dir: Path, synth_dir: Path, name: str, split: str) -> Path:
    """Where a set lives: single clips in the features split, the others in synth (val twins prefixed `val_`)."""
    if name == "single":
        return features_dir / split
    return synth_dir / (name if split == "test" else f"val_{name}")


def read_set(folder: Path, name: str, batch_size: int) -> EvalSet | None:
    """Every row of a set folder in order; None when it has no shard."""
    if not list(folder.glob("shard-*.parquet")):
        return None
    single = name == "single"
    columns = (("image", "logmel", "clip_id", "objects", "labels") if single else
               ("image", "logmel", "sample_id", "objects", "sounding", "silent", "offscreen", "tiles"))
    rows: dict[str, list] = {key: [] for key in ("ids", "images", "log_mels", "tiles", "objects", "sounding",
                                                  "silent", "offscreen")}
    for batch in batches(folder, columns, batch_size):
        rows["images"].append(batch["image"])
        rows["log_mels"].append(batch["logmel"])
        if single:
            for clip_id, frames, labels in zip(batch["clip_id"], batch["objects"], batch["labels"]):
                rows["ids"].append(clip_id)
                rows["tiles"].append([{"clip_id": clip_id, "class": label, "x0": 0.0, "y0": 0.0, "x1": 1.0,
                                       "y1": 1.0, "sounding": True} for label in labels])
                rows["objects"].append(list(frames[0]) if frames else [])
                rows["sounding"].append(list(labels))
                rows["silent"].append([])
                rows["offscreen"].append([])
        else:
            rows["ids"] += list(batch["sample_id"])
            for key in ("tiles", "objects", "sounding", "silent", "offscreen"):
                rows[key] += [list(value) for value in batch[key]]
    return EvalSet(name, rows["ids"], torch.cat(rows["images"]), torch.cat(rows["log_mels"]), rows["tiles"],
                   rows["objects"], rows["sounding"], rows["silent"], rows["offscreen"])


# --------------------------------------------------------------------------- boxes


def detector_boxes_by_clip(path: Path) -> dict[str, list[dict]]:
    """data/boxes/<ds>.parquet -> {clip_id: [{"class", "x0", "y0", "x1", "y1"}]}; {} when the file is missing."""
    if not path.is_file():
        return {}
    found: dict[str, list[dict]] = {}
    for row in pd.read_parquet(path).to_dict("records"):
        found.setdefault(row["clip_id"], []).append({"class": row["class"], **{key: float(row[key]) for key in
                                                                                ("x0", "y0", "x1", "y1")}})
    return found


def reference_boxes_by_clip(features_dir: Path, files: list[str]) -> dict[str, list[dict]]:
    """DSOL-format human-checked boxes (`datasets.<ds>.youtube.reference_boxes`) -> {clip_id: boxes}, matched by
    (video id, whole second of the clip's start) over every evaluation split of the features."""
    if not files:
        return {}
    from pipeline.sources.dsol_boxes import read_dsol_boxes  # only the youtube path needs it

    by_second: dict[tuple[str, int], list[dict]] = {}
    for name in files:
        by_second.update(read_dsol_boxes(Path(name)))
    found = {}
    for split in ("val", "test", "duet_val", "duet"):
        folder = features_dir / split
        if not list(folder.glob("shard-*.parquet")):
            continue
        for batch in batches(folder, ("clip_id", "video_id", "start_s"), 1024):
            for clip_id, video_id, start in zip(batch["clip_id"], batch["video_id"], batch["start_s"].tolist()):
                boxes = by_second.get((video_id, int(round(start))))
                if boxes:
                    found[clip_id] = boxes
    return found


def objects_from_clip_boxes(tiles: list[dict], clip_boxes: dict[str, list[dict]]) -> list[dict]:
    """An image's objects from boxes found on its clips' frames: each box moved into its tile; it sounds when its
    class is the class of a sounding tile of the same clip (a duet's clip has one tile per instrument)."""
    objects = []
    for clip_id in dict.fromkeys(tile["clip_id"] for tile in tiles):
        clip_tiles = [tile for tile in tiles if tile["clip_id"] == clip_id]
        sounding_classes = {tile["class"] for tile in clip_tiles if tile["sounding"]}
        frame = clip_tiles[0]
        width, height = frame["x1"] - frame["x0"], frame["y1"] - frame["y0"]
        for box in clip_boxes.get(clip_id, []):
            objects.append({"class": box["class"], "x0": frame["x0"] + box["x0"] * width,
                            "y0": frame["y0"] + box["y0"] * height, "x1": frame["x0"] + box["x1"] * width,
                            "y1": frame["y0"] + box["y1"] * height, "sounding": box["class"] in sounding_classes})
    return objects


class BoxSources(NamedTuple):
    main: str  # what metrics.json's top level is scored against: truth | detector | reference+detector
    detector: dict[str, list[dict]]  # clip_id -> detector boxes
    reference: dict[str, list[dict]]  # clip_id -> human-checked boxes (youtube)
    second_detector_column: bool  # toy auto: also score against the detector's boxes


def box_sources(boxes: str, source: str, paths: EvaluatePaths, features_dir: Path, reference_files: list[str]
                ) -> BoxSources:
    """Which boxes the numbers are scored against (module docstring)."""
    if source == "youtube" and boxes == "truth":
        raise StageError("evaluate.boxes: truth needs the toy generator's boxes, and source youtube has none "
                         "(use auto or detector)")
    detector = detector_boxes_by_clip(paths.boxes)
    reference = reference_boxes_by_clip(features_dir, reference_files) if source == "youtube" else {}
    if source == "toy":
        main = "detector" if boxes == "detector" else "truth"
        return BoxSources(main, detector, {}, boxes == "auto")
    main = "reference+detector" if boxes == "auto" and reference else "detector"
    return BoxSources(main, detector, reference if boxes == "auto" else {}, False)


def set_objects(eval_set: EvalSet, which: str, sources: BoxSources) -> list[list[dict]]:
    """The objects of every image of a set under one box source (truth | detector | reference+detector)."""
    if which == "truth":
        return eval_set.objects
    boxes = sources.detector if which == "detector" else {**sources.detector, **sources.reference}
    return [objects_from_clip_boxes(tiles, boxes) for tiles in eval_set.tiles]


def has_sounding_boxes(objects: list[list[dict]]) -> bool:
    return any(obj["sounding"] for image in objects for obj in image)


def check_has_boxes(objects: list[list[dict]], name: str, split: str, which: str) -> None:
    if not has_sounding_boxes(objects):
        raise StageError(f"evaluate: the {split} {name} set has no sounding box from the {which} boxes "
                         f"(run detect, or list reference_boxes); refusing to report zeros")


# --------------------------------------------------------------------------- the methods


class MethodBatch(NamedTuple):
    grounded: Outputs  # candidate maps, gates, per-class heard scores
    dsol: list[np.ndarray]  # per image (C, h, w): the DSOL-protocol class maps
    correspondence: np.ndarray  # (B, h, w): head(l(f^v, f^a)) min-max normalised (single-source, DSOL)


def per_class(cluster_scores: np.ndarray, cluster_to_class: list[str], classes: list[str]) -> np.ndarray:
    """(B, K) scores of pseudo-classes -> (B, C) per true class: the max over the class's clusters (0 for none)."""
    scores = np.zeros((len(cluster_scores), len(classes)), dtype=np.float32)
    for column, name in enumerate(classes):
        clusters = [k for k, owner in enumerate(cluster_to_class) if owner == name]
        if clusters:
            scores[:, column] = cluster_scores[:, clusters].max(axis=1)
    return scores


def min_max(maps: torch.Tensor) -> np.ndarray:
    """(B, h, w) -> [0, 1] per image (the head's sigmoid never reaches 0, so DSOL's relative threshold needs it)."""
    maps = maps.float().cpu().numpy()
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - low, 1e-8)


def run_oracle(oracle: TrainedOracle, visual: torch.Tensor, log_mels: torch.Tensor, classes: list[str],
               with_dsol: bool) -> MethodBatch:
    """The oracle on a batch: its class maps gated by its heard scores (both trained with the true classes).
    Under DSOL's protocol its class logit maps go through DSOL's softmax over classes, and its single-source map
    is the sound map, the pixelwise max of the class maps weighted by the heard scores."""
    logits = oracle.model.visual_classes(visual).float()  # (B, C', h, w)
    maps = torch.sigmoid(logits)
    heard = torch.sigmoid(oracle.model.heard_logits(log_mels)).float()  # (B, C')
    outputs = Outputs(list(maps.cpu().numpy()), heard.cpu().numpy(),
                      per_class(heard.cpu().numpy(), oracle.classes, classes))
    if not with_dsol:
        return MethodBatch(outputs, [], np.zeros(0))
    dsol = [class_maps(row, oracle.classes, classes, scale=1.0) for row in logits.cpu().numpy()]
    return MethodBatch(outputs, dsol, min_max((maps * heard[:, :, None, None]).amax(dim=1)))


def run_method(method: str, trained: Trained | TrainedOracle, visual: torch.Tensor, log_mels: torch.Tensor,
               classes: list[str], model_params: Model, with_dsol: bool) -> MethodBatch:
    """One method on a batch: its grounded outputs and (with_dsol) its DSOL-protocol maps. `visual` is f^v."""
    if isinstance(trained, TrainedOracle):
        return run_oracle(trained, visual, log_mels, classes, with_dsol)
    model, device = trained.model, visual.device
    audio = model.audio(log_mels)
    _, head_map = model.head(localization_map(visual, audio.embedding))
    correspondence = min_max(head_map) if with_dsol else np.zeros(0)
    audio_prototypes = trained.audio_prototypes.to(device)
    if method == "avol":
        probability = head_map.float().cpu().numpy()[:, None]  # (B, 1, h, w): one map, no classes, no gate
        heard = prototype_similarity(audio_prototypes, audio.embedding, model_params.similarity_temperature,
                                     model_params.similarity_center)
        outputs = Outputs(list(probability), np.ones((len(probability), 1), np.float32),
                          per_class(heard.float().cpu().numpy(), trained.cluster_to_class, classes))
        dsol = [np.repeat(correspondence[row][None], len(classes), 0) for row in range(len(probability))] \
            if with_dsol else []
        return MethodBatch(outputs, dsol, correspondence)
    expanded = model.aii(audio.embedding, list(audio.mid_level))  # F^a (B, K, D)
    maps = class_aware_maps(model.head, visual, expanded, trained.visual_prototypes.to(device),
                            bool(trained.config.get("silent_filter", True)))
    heard = prototype_similarity(audio_prototypes, expanded, model_params.similarity_temperature,
                                 model_params.similarity_center).float().cpu().numpy()
    outputs = Outputs(list(maps.audio_visual.float().cpu().numpy()), heard,
                      per_class(heard, trained.cluster_to_class, classes))
    dsol = []
    if with_dsol:  # DSOL's softmax across clusters on the logit scale, summed per class
        logits = maps.audio_visual_logit.float().cpu().numpy()
        dsol = [class_maps(row, trained.cluster_to_class, classes, scale=1.0) for row in logits]
    return MethodBatch(outputs, dsol, correspondence)


class SetRun(NamedTuple):
    outputs: dict[str, dict[str, Outputs]]  # method -> condition -> outputs
    dsol: dict[str, list[np.ndarray]]  # method -> per image DSOL class maps (true audio)
    correspondence: dict[str, np.ndarray]  # method -> (N, h, w)
    deranged_from: np.ndarray  # image i heard the audio of image deranged_from[i]


def same_normalisation(trained_by_file: dict[Path, Trained | TrainedOracle]) -> Normalisation:
    """The input normalisation the model files share (the images are prepared once for every method); a
    StageError naming the files when they disagree (a model file left from an older stage 1)."""
    found = {path: trained.normalisation for path, trained in trained_by_file.items()}
    if len(set(found.values())) > 1:
        listed = "; ".join(f"{path}: {normalisation}" for path, normalisation in found.items())
        raise StageError(f"the model files normalise their inputs differently ({listed}); rerun stage 1 and stage 2")
    return next(iter(found.values()))


def run_set(eval_set: EvalSet, models: dict[str, Trained | TrainedOracle], classes: list[str], model_params: Model,
            silence: torch.Tensor, seed: int, batch_size: int, device: torch.device, with_dsol: bool,
            normalisation: Normalisation) -> SetRun:
    """Every method under every audio condition on one set (the visual features computed once per batch)."""
    count = len(eval_set.sample_ids)
    permutation = derangement(count, seed, eval_set.name)
    audio_of = {"true": eval_set.log_mels, "deranged": eval_set.log_mels[torch.from_numpy(permutation)],
                "silence": silence.expand(count, *silence.shape)}
    collected = {method: {condition: [] for condition in CONDITIONS} for method in models}
    for start in range(0, count, batch_size):
        rows = slice(start, start + batch_size)
        images = prepare_images(eval_set.images[rows], eval_set.images.shape[-1], device, False,
                                normalisation=normalisation)
        with torch.no_grad(), autocast(device, model_params.cpu_precision):
            visuals = {method: trained.model.visual(images).embedding for method, trained in models.items()}
            for condition in CONDITIONS:
                log_mels = prepare_logmel(audio_of[condition][rows], device, False, normalisation)
                for method, trained in models.items():
                    collected[method][condition].append(run_method(
                        method, trained, visuals[method], log_mels, classes, model_params,
                        with_dsol and condition == "true"))
    outputs, dsol, correspondence = {}, {}, {}
    for method, by_condition in collected.items():
        outputs[method] = {condition: Outputs([m for batch in batches for m in batch.grounded.maps],
                                              np.concatenate([batch.grounded.gates for batch in batches]),
                                              np.concatenate([batch.grounded.heard for batch in batches]))
                           for condition, batches in by_condition.items()}
        dsol[method] = [m for batch in by_condition["true"] for m in batch.dsol]
        correspondence[method] = (np.concatenate([batch.correspondence for batch in by_condition["true"]])
                                  if with_dsol else np.zeros(0))
    return SetRun(outputs, dsol, correspondence, permutation)


def silence_log_mel(features_dir: Path, log_mel_shape: tuple[int, ...]) -> torch.Tensor:
    """The log-mel of digital silence (an all-zero waveform of one clip), computed as the features' log-mels are."""
    summary = json.loads((features_dir / "summary.json").read_text())
    samples = round(summary["sample_rate"] * summary["clip_seconds"])
    with torch.no_grad():
        silent = LogMel(**read_logmel_settings(features_dir))(torch.zeros(1, samples))[0]
    if tuple(silent.shape) != tuple(log_mel_shape):
        raise StageError(f"{features_dir / 'summary.json'}: the log-mel of {samples} silent samples is "
                         f"{tuple(silent.shape)}, the sets' is {tuple(log_mel_shape)}")
    return silent


# --------------------------------------------------------------------------- scoring


def audible_matrix(eval_set: EvalSet, classes: list[str]) -> np.ndarray:
    """(N, C) bool: the classes heard in each image's mixture (sounding on screen and off-screen)."""
    index = {name: column for column, name in enumerate(classes)}
    audible = np.zeros((len(eval_set.sample_ids), len(classes)), dtype=bool)
    for row, (sounding, offscreen) in enumerate(zip(eval_set.sounding, eval_set.offscreen)):
        for name in [*sounding, *offscreen]:
            if name in index:
                audible[row, index[name]] = True
    return audible


def dsol_scores(eval_set: EvalSet, run: SetRun, method: str, objects: list[list[dict]], classes: list[str],
                params: Evaluate) -> tuple[list[float], list[float]]:
    """Per image: DSOL-protocol IoU (single) or CIoU, and NSA (nan for single / where every class sounds)."""
    ious, quiet = [], []
    if eval_set.name == "single":
        for row, image_objects in enumerate(objects):
            truth = boxes_mask(sounding_boxes(image_objects), params.map_size, params.map_size)
            ious.append(iou(resize_map(run.correspondence[method][row], params.map_size), truth,
                            params.single_threshold))
            quiet.append(float("nan"))
        return ious, quiet
    threshold = params.duet_threshold if eval_set.name == "duet" else params.class_threshold
    for row, image_objects in enumerate(objects):
        sounding = eval_set.sounding[row]
        boxes = {label: sounding_boxes(image_objects, label) for label in sounding}
        maps = dict(zip(classes, run.dsol[method][row]))
        ious.append(class_aware_iou(maps, boxes, sounding, threshold, params.map_size))
        quiet.append(non_sounding_area(maps, sounding, size=params.map_size))
    return ious, quiet


def dsol_summary(name: str, ious: list[float], quiet: list[float], params: Evaluate) -> dict:
    if name == "single":
        return {"iou50": success_rate(ious, params.iou_success), "auc": auc(ious)}
    return {"ciou30": success_rate(ious, params.ciou_success), "auc": auc(ious),
            "nsa": float(np.nanmean(quiet)) if not np.isnan(quiet).all() else None}


class Scored(NamedTuple):
    metrics: dict  # {"single": dsol, ..., "grounded": {...}, "baselines": {"avol": {... same ...}}}
    rows: list[dict]  # samples.csv rows
    curves: dict[str, list[float]]  # success.csv columns


def score(test: dict[str, EvalSet], runs: dict[str, SetRun], thresholds: dict[str, Thresholds], classes: list[str],
          which: str, sources: BoxSources, params: Evaluate) -> Scored:
    """Both protocols on every test set against one box source, all methods."""
    by_method: dict[str, dict] = {method: {"grounded": {"thresholds": thresholds[method]._asdict()}}
                                  for method in METHODS}
    rows, curves = [], {}
    for name, eval_set in test.items():
        run, objects = runs[name], set_objects(eval_set, which, sources)
        check_has_boxes(objects, name, "test", which)
        truth = Truth(objects, audible_matrix(eval_set, classes))
        for method in METHODS:
            ious, quiet = dsol_scores(eval_set, run, method, objects, classes, params)
            by_method[method][name] = dsol_summary(name, ious, quiet, params)
            group, images = set_metrics(run.outputs[method], truth, thresholds[method], params.map_size,
                                        params.lit_share, params.grounded_success)
            by_method[method]["grounded"][name] = group
            curves[f"dsol_{name}_{method}"] = success_curve(ious)
            curves[f"grounded_{name}_{method}"] = success_curve([image.iou for image in images["true"]])
            for row, sample_id in enumerate(eval_set.sample_ids):
                rows.append({"set": name, "sample_id": sample_id, "method": method, "iou": ious[row],
                             "nsa": "" if np.isnan(quiet[row]) else quiet[row],
                             **{f"grounded_iou_{condition}": images[condition][row].iou for condition in CONDITIONS},
                             "silence_empty": int(images["silence"][row].empty)})
    metrics = dict(by_method["ier"])
    metrics["baselines"] = {method: by_method[method] for method in METHODS if method != "ier"}
    return Scored(metrics, rows, curves)


def val_metrics(val: dict[str, EvalSet], runs: dict[str, SetRun], thresholds: dict[str, Thresholds],
                classes: list[str], sources: BoxSources, params: Evaluate) -> dict:
    """The grounded group of every method on the val sets, at the thresholds chosen there: the numbers that settings
    (epochs, thresholds, any tuning) are chosen by, so that test is scored once. Shaped like metrics.json."""
    by_method = {}
    for method in METHODS:
        by_method[method] = {"grounded": {}}
        for name, eval_set in val.items():
            truth = Truth(set_objects(eval_set, sources.main, sources), audible_matrix(eval_set, classes))
            by_method[method]["grounded"][name] = set_metrics(runs[name].outputs[method], truth, thresholds[method],
                                                              params.map_size, params.lit_share,
                                                              params.grounded_success)[0]
    return {**by_method["ier"], "baselines": {method: by_method[method] for method in METHODS if method != "ier"}}


# --------------------------------------------------------------------------- outputs


def write_samples(rows: list[dict], path: Path) -> None:
    """samples.csv: set, sample_id, method, iou (DSOL protocol: IoU or CIoU), nsa (blank where undefined), the
    grounded IoU under each audio condition, and whether the region is empty under silence."""
    buffer = io.StringIO()
    fields = ["set", "sample_id", "method", "iou", "nsa", *(f"grounded_iou_{c}" for c in CONDITIONS),
              "silence_empty"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: (round(value, 6) if isinstance(value, float) else value) for key, value in row.items()}
                     for row in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def write_curves(curves: dict[str, list[float]], path: Path) -> None:
    """success.csv: one row per IoU threshold, one column per protocol, set and method (`dvc plots`)."""
    frame = pd.DataFrame({"threshold": AUC_THRESHOLDS, **curves}).round(6)
    with atomic_path(path) as tmp:
        tmp.write_text(frame.to_csv(index=False, lineterminator="\n"))


def example_entries(test: dict[str, EvalSet], runs: dict[str, SetRun], threshold: Thresholds, classes: list[str],
                    which: str, sources: BoxSources, params: Evaluate) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                                list[np.ndarray], list[dict]]:
    """The first `examples` images of each class-aware test set: image, IEr's class maps, its sound map under each
    audio condition, and what they show, with the objects of the box source `which` the metrics used."""
    images, maps, regions, info = [], [], [], []
    for name in CLASS_AWARE_SETS:
        if name not in test:
            continue
        eval_set, run = test[name], runs[name]
        objects = set_objects(eval_set, which, sources)
        for row in range(min(params.examples, len(eval_set.sample_ids))):
            image = Image.fromarray(eval_set.images[row].permute(1, 2, 0).numpy())
            images.append(np.asarray(image.resize((params.map_size, params.map_size), Image.BILINEAR)))
            maps.append(np.stack([resize_map(class_map, params.map_size)
                                  for class_map in run.dsol["ier"][row]]).astype(np.float32))
            per_condition = {condition: sound_maps(Outputs(run.outputs["ier"][condition].maps[row:row + 1],
                                                           run.outputs["ier"][condition].gates[row:row + 1],
                                                           run.outputs["ier"][condition].heard[row:row + 1]),
                                                   threshold.heard, params.map_size)[0]
                             for condition in CONDITIONS}
            regions.append(np.stack([per_condition[condition] for condition in CONDITIONS]))
            heard_true = run.outputs["ier"]["true"].heard[row]
            info.append({
                "sample_id": eval_set.sample_ids[row], "set": name, "sounding": eval_set.sounding[row],
                "silent": eval_set.silent[row], "offscreen": eval_set.offscreen[row],
                "objects": objects[row],
                "audio_distribution": {label: float(score) for label, score in zip(classes, heard_true)},
                "threshold": threshold.map, "conditions": list(CONDITIONS),
                "lit": {condition: [index for index, flag in enumerate(
                    lit(per_condition[condition] > threshold.map, objects[row], params.lit_share)) if flag]
                    for condition in CONDITIONS},
                "heard": {condition: [label for label, score in zip(classes, run.outputs["ier"][condition].heard[row])
                                      if score >= threshold.heard] for condition in CONDITIONS},
                "deranged_from": eval_set.sample_ids[int(run.deranged_from[row])]})
    return images, maps, regions, info


def write_examples(entries, classes: list[str], path: Path, size: int) -> None:
    """examples.npz (images, maps, regions, classes) and examples.json (one dict per example) for the report."""
    images, maps, regions, info = entries
    arrays = {"images": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
              "maps": np.stack(maps) if maps else np.zeros((0, len(classes), size, size), np.float32),
              "regions": (np.stack(regions).astype(np.float32) if regions
                          else np.zeros((0, len(CONDITIONS), size, size), np.float32))}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, classes=np.array(classes, dtype=str), **arrays)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(rounded(info), indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise StageError(f"{path}: not found (run the stage that writes it first)")
    return json.loads(path.read_text())


def rounded(value):
    """Floats rounded to 6 digits, through nested dicts and lists (reruns give the same bytes)."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return round(value, 6) if isinstance(value, float) else value


# --------------------------------------------------------------------------- the stage


def run_evaluate(features_dir: str | Path, synth_dir: str | Path, paths: EvaluatePaths, model_params: Model,
                 params: Evaluate, source: str, reference_boxes: list[str] | None = None, seed: int = 0) -> dict:
    """Evaluate IEr (stage 2) and AVOL (stage 1) on one dataset: thresholds on val, scores on test; write `paths`."""
    features_dir, synth_dir = Path(features_dir), Path(synth_dir)
    for split in ("val", "test"):
        if not list((features_dir / split).glob("shard-*.parquet")):
            raise StageError(f"{features_dir / split}: no shard-*.parquet files (run the features stage first)")
    device = pick_device(params.device, "evaluate.device")
    files = {"ier": paths.stage2_model, "avol": paths.stage1_model, "dsol": paths.dsol_model,
             "oracle": paths.oracle_model}
    models = {method: (load_oracle if method == "oracle" else load_trained)(files[method], model_params)
              for method in METHODS}
    normalisation = same_normalisation({files[method]: models[method] for method in METHODS})
    for trained in models.values():
        trained.model.to(device).eval()
    stage1_report, detector_report = read_json(paths.stage1_report), read_json(paths.detector_report)
    read_json(synth_dir / "summary.json")
    classes = sorted({label for label in models["ier"].cluster_to_class if label}
                     | set(read_json(features_dir / "summary.json").get("classes", [])))
    sources = box_sources(params.boxes, source, paths, features_dir, reference_boxes or [])

    loaded = {split: {name: read_set(set_folder(features_dir, synth_dir, name, split), name, params.batch_size)
                      for name in SETS} for split in ("val", "test")}
    loaded = {split: {name: eval_set for name, eval_set in sets.items() if eval_set is not None}
              for split, sets in loaded.items()}
    silence = silence_log_mel(features_dir, tuple(loaded["test"]["single"].log_mels.shape[1:]))
    runs = {split: {name: run_set(eval_set, models, classes, model_params, silence, seed, params.batch_size, device,
                                  with_dsol=split == "test", normalisation=normalisation)
                    for name, eval_set in sets.items()} for split, sets in loaded.items()}

    # every threshold is chosen on val, against the main box source
    val_truths = []
    for name, eval_set in loaded["val"].items():
        objects = set_objects(eval_set, sources.main, sources)
        check_has_boxes(objects, name, "val", sources.main)
        val_truths.append(Truth(objects, audible_matrix(eval_set, classes)))
    thresholds = {method: choose_thresholds([runs["val"][name].outputs[method]["true"] for name in loaded["val"]],
                                            val_truths, params.map_size, params.threshold_steps)
                  for method in METHODS}

    scored = score(loaded["test"], runs["test"], thresholds, classes, sources.main, sources, params)
    metrics = {"source": source, "split": "test", "thresholds_split": "val", "boxes": sources.main, **scored.metrics,
               "val": val_metrics(loaded["val"], runs["val"], thresholds, classes, sources, params)}
    if sources.second_detector_column:
        missing = [name for name, eval_set in loaded["test"].items()
                   if not has_sounding_boxes(set_objects(eval_set, "detector", sources))]
        if missing:  # e.g. a detector trained for one epoch: no column rather than a column of zeros
            print(f"evaluate: no detector_boxes column: the detector found no sounding object in the test "
                  f"set(s) {', '.join(missing)}", flush=True)
        else:
            metrics["detector_boxes"] = score(loaded["test"], runs["test"], thresholds, classes, "detector",
                                              sources, params).metrics
    metrics["stage1"] = {key: stage1_report[key] for key in ("nmi", "map", "precision", "recall")}
    if "val" in stage1_report:  # a stage-1 model file from before stage 1 scored val has none
        metrics["val"]["stage1"] = {key: stage1_report["val"][key] for key in ("nmi", "map", "precision", "recall")}
    metrics["detector"] = {"map50": detector_report["map50"]}
    metrics = rounded(metrics)
    write_samples(scored.rows, paths.samples)
    write_curves(scored.curves, paths.success)
    write_examples(example_entries(loaded["test"], runs["test"], thresholds["ier"], classes, sources.main, sources,
                                   params), classes, paths.examples, params.map_size)
    write_json(metrics, paths.metrics)
    return metrics
