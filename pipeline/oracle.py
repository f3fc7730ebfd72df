"""The oracle stage: IEr's networks trained with the true labels, the ceiling evaluation scores IEr against
(pipeline/models/oracle.py; docs/decisions.md, "The oracle: the same networks trained with the true labels").

    run_oracle(features_dir, paths, model_params, oracle_params, seed)

On `train_single`, the clips IEr's stage 1 trains on, with their true classes:
- visual: each step's clips tiled into canvas x canvas canvases (as stage 1's Eq. 1 does); per canvas and class,
  BCE of the max of the class's logit map against "a clip of this class is on the canvas" (multiple-instance
  learning); and, where a clip's frame has boxes (the toy generator's), BCE at every position of its tile
  against "inside a box of this class" (the class maps are told where the objects are, which no unsupervised
  method is: a ceiling);
- audio: the step's single clips plus `mix_share` of as many mixtures of 2..max_mix clips of distinct classes
  (the mixtures IEr's AII phase makes, here labelled with the true classes); BCE against the multi-hot classes.
Starts from the pretrained visual trunk that IEr starts from (`model.visual_pretrained`). Writes the model file
and reports/<ds>/oracle.json: the final losses and the val split's single-clip accuracies.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.audio import LogMel, mixture_logmels, read_logmel_settings
from pipeline.config import Model, Oracle
from pipeline.metrics import boxes_mask
from pipeline.models.inputs import DEFAULT_NORMALISATION, from_canvases, prepare_images, prepare_logmel, to_canvases
from pipeline.models.oracle import OracleModel, oracle_config
from pipeline.paths import OraclePaths
from pipeline.progress import progress
from pipeline.reader import ShardReader
from pipeline.runtime import autocast, make_deterministic, make_optimizer, pick_device, save_torch
from pipeline.shards import write_json
from pipeline.stage import StageError
from pipeline.train.curriculum import plan_mixtures
from pipeline.train.embed import read_split


class Batch(NamedTuple):
    images: torch.Tensor  # (B / canvas^2, 3, canvas S, canvas S) prepared canvases
    image_targets: torch.Tensor  # (B / canvas^2, C) multi-hot: the classes on each canvas
    boxes: list[list[dict]]  # per clip: the sounding objects' boxes, mirrored with the image ([] for none)
    labels: np.ndarray  # (B,) class index of each clip
    log_mels: torch.Tensor  # (B + mixtures, 1, n_mels, n_frames) prepared
    audio_targets: torch.Tensor  # (B + mixtures, C) multi-hot


def run_oracle(features_dir: str | Path, paths: OraclePaths, model_params: Model, oracle_params: Oracle,
               seed: int) -> dict:
    """Train the oracle on `features_dir/train_single`; write `paths`; return the report."""
    features_dir = Path(features_dir)
    train_dir = features_dir / "train_single"
    for split in ("train_single", "val"):
        if not list((features_dir / split).glob("shard-*.parquet")):
            raise StageError(f"{features_dir / split}: no shard-*.parquet files (run the features stage first)")
    if oracle_params.batch_size % oracle_params.canvas**2:
        raise StageError(f"oracle.batch_size = {oracle_params.batch_size} does not fill canvases of "
                         f"oracle.canvas^2 = {oracle_params.canvas**2} clips")
    device = pick_device(oracle_params.device, "oracle.device")
    torch.manual_seed(seed)
    make_deterministic(device)
    logmel = LogMel(**read_logmel_settings(features_dir))
    train = read_split(train_dir)
    classes = sorted(set(train.classes))
    if len(classes) < 2:
        raise StageError(f"{train_dir}: clips of {len(classes)} class(es); the oracle needs at least 2")
    labels = np.array([classes.index(name) for name in train.classes])

    model = OracleModel(model_params, len(classes)).to(device)
    if model_params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), oracle_params.lr, oracle_params.weight_decay)
    reader = ShardReader(train_dir, columns=("image", "logmel", "index", "objects"),
                         batch_size=oracle_params.batch_size, shuffle=True, seed=seed, drop_last=True, rank=0,
                         world_size=1)
    history = []
    model.train()
    for epoch in range(oracle_params.epochs):
        reader.set_epoch(epoch)
        rng = np.random.default_rng([seed, epoch])
        with_images = epoch < oracle_params.visual_epochs
        history.append(train_epoch(model, optimizer, reader, labels, len(classes), train.waveforms, logmel,
                                   model_params, oracle_params, device, rng, with_images,
                                   f"oracle epoch {epoch + 1}/{oracle_params.epochs}"))
        if not history[-1]:
            raise StageError(f"{train_dir}: {reader.num_rows} clips make no full batch of oracle.batch_size = "
                             f"{oracle_params.batch_size}")
        print(f"oracle: epoch {epoch + 1}/{oracle_params.epochs}: "
              + ", ".join(f"{name} {value:.4f}" for name, value in history[-1].items()), flush=True)

    report = {"classes": classes, "train_clips": len(labels), "epochs": oracle_params.epochs,
              "val": val_accuracy(model, features_dir / "val", classes, model_params, device),
              "final_losses": {name: round(value, 6) for name, value in history[-1].items()}}
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    save_torch({"state_dict": state, "classes": classes,
                "config": oracle_config(model_params, classes, DEFAULT_NORMALISATION)}, paths.model)
    write_json(report, paths.report)
    return report


def train_epoch(model: OracleModel, optimizer: torch.optim.Optimizer, reader: ShardReader, labels: np.ndarray,
                class_count: int, waveforms: torch.Tensor, logmel: LogMel, model_params: Model, oracle_params: Oracle,
                device: torch.device, rng: np.random.Generator, with_images: bool, description: str) -> dict:
    """One pass over the training clips; the mean of each loss over its steps ({} when it had none). Without
    images (after `oracle.visual_epochs`) only the audio side trains: its steps are much cheaper."""
    sums, steps = {"audio_loss": 0.0, **({"visual_loss": 0.0} if with_images else {})}, 0
    for batch in progress(reader, desc=description):
        prepared = prepare_batch(batch, labels, class_count, waveforms, logmel, model_params, oracle_params, device,
                                 rng, with_images)
        with autocast(device, model_params.cpu_precision):
            losses = {"audio_loss": F.binary_cross_entropy_with_logits(model.heard_logits(prepared.log_mels),
                                                                       prepared.audio_targets)}
            if with_images:
                losses["visual_loss"] = visual_loss(model, prepared, oracle_params.canvas, device)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        for name, value in losses.items():
            sums[name] += value.item()
        steps += 1
    return {name: value / steps for name, value in sums.items()} if steps else {}


def visual_loss(model: OracleModel, prepared: Batch, canvas: int, device: torch.device) -> torch.Tensor:
    """BCE of each canvas's class maxima against the classes on it, plus, for the clips with boxes, BCE at every
    position of their tiles against the boxes of their class."""
    class_logits = model.class_logits(prepared.images)
    loss = F.binary_cross_entropy_with_logits(class_logits.flatten(2).amax(dim=2), prepared.image_targets)
    has_boxes = torch.tensor([bool(boxes) for boxes in prepared.boxes], device=device)
    if has_boxes.any():
        tiles = from_canvases(class_logits, canvas) if canvas > 1 else class_logits
        targets = box_targets(prepared.boxes, prepared.labels, tiles.shape[1:]).to(device)
        loss = loss + F.binary_cross_entropy_with_logits(tiles[has_boxes], targets[has_boxes])
    return loss


def prepare_batch(batch: dict, labels: np.ndarray, class_count: int, waveforms: torch.Tensor, logmel: LogMel,
                  model_params: Model, oracle_params: Oracle, device: torch.device,
                  rng: np.random.Generator, with_images: bool = True) -> Batch:
    """A reader batch -> canvases with their classes (none when not `with_images`), and single clips plus mixtures
    with theirs."""
    rows = batch["index"].numpy()
    batch_size, grid = len(rows), oracle_params.canvas
    flip = rng.random(batch_size) < 0.5
    images = (prepare_images(batch["image"], model_params.image_size, device, model_params.channels_last, flip)
              if with_images else torch.zeros(0))
    one_hot = F.one_hot(torch.from_numpy(labels[rows]), class_count).float()
    image_targets = one_hot.reshape(batch_size // grid**2, grid**2, class_count).amax(dim=1)
    boxes = [[mirrored(box) if flipped else box for box in (frames[0] if frames else []) if box["sounding"]]
             for frames, flipped in zip(batch["objects"], flip)]
    log_mels, audio_targets = batch["logmel"], one_hot
    mixtures = round(oracle_params.mix_share * batch_size)
    if mixtures:
        # at most as many members as there are classes (a 2- or 3-class dataset with max_mix 4)
        members = int(rng.integers(2, min(oracle_params.max_mix, class_count) + 1))
        plan = plan_mixtures(labels, mixtures, members, rng)
        log_mels = torch.cat([log_mels, mixture_logmels(waveforms, plan, logmel)])
        mixture_targets = F.one_hot(torch.from_numpy(labels[plan]), class_count).float().amax(dim=1)
        audio_targets = torch.cat([audio_targets, mixture_targets])
    return Batch(to_canvases(images, grid) if grid > 1 and with_images else images, image_targets.to(device),
                 boxes, labels[rows], prepare_logmel(log_mels, device, model_params.channels_last),
                 audio_targets.to(device))


def mirrored(box: dict) -> dict:
    """A normalised box after a horizontal flip of its image."""
    return {**box, "x0": 1.0 - box["x1"], "x1": 1.0 - box["x0"]}


def box_targets(boxes: list[list[dict]], labels: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, h, w) targets of the class maps: 1 at the positions whose centre lies in a box of the clip's class;
    a box narrower than the map's cells, which may hold no centre, marks the cell its own centre falls in."""
    height, width = shape[1:]
    targets = torch.zeros(len(boxes), *shape)
    for row, (clip_boxes, label) in enumerate(zip(boxes, labels)):
        for box in clip_boxes:
            mask = torch.from_numpy(boxes_mask([box], height, width)).float()
            if not mask.any():
                centre_row = min(int((box["y0"] + box["y1"]) / 2 * height), height - 1)
                centre_col = min(int((box["x0"] + box["x1"]) / 2 * width), width - 1)
                mask[centre_row, centre_col] = 1.0
            targets[row, label] = torch.maximum(targets[row, label], mask)
    return targets


@torch.no_grad()
def val_accuracy(model: OracleModel, folder: Path, classes: list[str], model_params: Model,
                 device: torch.device) -> dict:
    """Single-clip top-1 accuracy of the audio logits and of the visual maps' maxima on the val clips."""
    model.eval()
    reader = ShardReader(folder, columns=("image", "logmel", "labels"), batch_size=128, rank=0, world_size=1)
    audio_hits = visual_hits = total = 0
    for batch in reader:
        truth = torch.tensor([classes.index(labels[0]) if labels[0] in classes else -1 for labels in batch["labels"]])
        with autocast(device, model_params.cpu_precision):
            images = prepare_images(batch["image"], model_params.image_size, device, model_params.channels_last)
            visual = model.class_logits(images).flatten(2).amax(dim=2).argmax(dim=1).cpu()
            audio = model.heard_logits(prepare_logmel(batch["logmel"], device, model_params.channels_last))
        audio_hits += int((audio.argmax(dim=1).cpu() == truth).sum())
        visual_hits += int((visual == truth).sum())
        total += len(truth)
    model.train()
    return {"audio_accuracy": round(audio_hits / max(total, 1), 6),
            "visual_accuracy": round(visual_hits / max(total, 1), 6), "clips": total}
