"""Whole-split passes of the stage-1 networks, without gradients: what clustering, the audio prototypes
and evaluation read."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from pipeline.config import Model
from pipeline.models.ier import Stage1Model, localization_map, pool_object_features
from pipeline.models.inputs import prepare_images, prepare_logmel
from pipeline.reader import ShardReader
from pipeline.runtime import autocast

EMBED_BATCH = 128  # clips per forward pass when embedding a whole split (no gradients)


class Split(NamedTuple):
    """What stage 1 keeps of a split in memory: one row per clip, in folder order."""

    waveforms: torch.Tensor  # (N, samples) int16
    classes: list[str]  # labels[0] of each clip
    video_ids: list[str]


def read_split(folder: Path) -> Split:
    """Waveforms, classes and video ids of every clip of `folder` (one unshuffled pass)."""
    reader = ShardReader(folder, columns=("waveform", "labels", "video_id"), batch_size=EMBED_BATCH,
                         rank=0, world_size=1)  # the whole split, also in a torchrun process
    waveforms, classes, video_ids = [], [], []
    for batch in reader:
        waveforms.append(batch["waveform"].clone())  # the reader reuses its batch memory
        classes += [labels[0] for labels in batch["labels"]]
        video_ids += batch["video_id"]
    return Split(torch.cat(waveforms), classes, video_ids)


class Embeddings(NamedTuple):
    objects: torch.Tensor  # (N, D) pooled object features, unit norm (CPU)
    audio: torch.Tensor  # (N, D) f^a, unit norm (CPU)


@torch.no_grad()
def embed_split(model: Stage1Model, folder: Path, model_params: Model, object_ratio: float,
                device: torch.device, channels_last: bool, with_images: bool = True) -> Embeddings:
    """Object features and f^a of every clip of `folder`, in folder order, in eval mode."""
    model.eval()
    columns = ("image", "logmel", "index") if with_images else ("logmel", "index")
    reader = ShardReader(folder, columns=columns, batch_size=EMBED_BATCH, rank=0, world_size=1)  # the whole split
    objects = torch.zeros(reader.num_rows, model_params.dim) if with_images else torch.zeros(0)
    audio = torch.zeros(reader.num_rows, model_params.dim)
    for batch in reader:
        with autocast(device, model_params.cpu_precision):
            audio_features = model.audio(prepare_logmel(batch["logmel"], device, channels_last))
            audio[batch["index"]] = audio_features.embedding.float().cpu()
            if with_images:
                images = prepare_images(batch["image"], model_params.image_size, device, channels_last)
                visual = model.visual(images).embedding
                attention = localization_map(visual, audio_features.embedding)
                objects[batch["index"]] = pool_object_features(visual, attention, object_ratio).cpu()
    model.train()
    return Embeddings(objects, audio)
