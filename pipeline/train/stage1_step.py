"""One optimiser step of stage 1, and what each phase of epochs hands it.

Phases (pipeline/train/stage1.py runs them in this order):
- `av`: Eq. 1 on the batch.
- `class`: Eq. 1 plus the pseudo-class cross-entropies of the object features and of f^a
  (DSOL's localization-classification alternation), weighted by `stage1.class_weight`.
- `aii`: the batch's first (1 - share) clips stay single (Eq. 8), and `share` of its size are replaced by
  mixtures of `mixture_members` clips of different pseudo-classes drawn from the whole split (Eq. 2 / 10);
  `aii.no_source_share` of its size more are inputs in which nothing sounds (every target 0); every single clip's
  steps are pulled to zero (`aii.single_step_weight`); Eq. 1 keeps training on the single clips, weighted by
  `aii.av_loss_weight`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.audio import LogMel, mixture_logmels, no_source_logmels
from pipeline.config import Aii, Model, Stage1
from pipeline.models.ier import Stage1Model, localization_map, pool_object_features
from pipeline.models.inputs import from_canvases, prepare_images, prepare_logmel, to_canvases
from pipeline.runtime import Processes, autocast, sum_over_ranks
from pipeline.train.curriculum import plan_mixtures
from pipeline.train.embed import Embeddings
from pipeline.train.losses import aii_loss, av_loss, class_loss, single_step_loss


class Phase(NamedTuple):
    """What the steps of one epoch train, and their targets (tensors on the training device)."""

    name: str  # av | class | aii
    assignment: torch.Tensor | None = None  # class, aii: the pseudo-class of every training clip (CPU)
    visual_prototypes: torch.Tensor | None = None  # class: P^v, the object features' classifier
    prototypes: torch.Tensor | None = None  # class: the mean f^a of each cluster; aii: P^a
    share: float = 0.0  # aii: share of the batch that mixtures replace (the curriculum's p)
    mixture_members: int = 0  # aii: clips per mixture (the curriculum's n)
    prototype_cosines: torch.Tensor | None = None  # aii: cosines between the P^a (sibling prototypes)


def av_phase() -> Phase:
    return Phase("av")


def class_phase(assignment: torch.Tensor, visual_prototypes: torch.Tensor, audio_centroids: torch.Tensor,
                device: torch.device) -> Phase:
    return Phase("class", assignment, visual_prototypes.to(device), audio_centroids.to(device))


def aii_phase(share: float, mixture_members: int, assignment: torch.Tensor, prototypes: torch.Tensor,
              device: torch.device) -> Phase:
    prototypes = prototypes.to(device)
    unit = F.normalize(prototypes.float(), dim=1)
    return Phase("aii", assignment, None, prototypes, share, mixture_members, (unit @ unit.T).clamp(max=1.0))


class Trainer(NamedTuple):
    """What every step of a run uses."""

    model: Stage1Model
    forward: nn.Module  # the model, or its DDP wrapper (training goes through the wrapper's forward)
    optimizer: torch.optim.Optimizer
    model_params: Model
    stage1_params: Stage1
    aii_params: Aii
    device: torch.device
    channels_last: bool
    train_waveforms: torch.Tensor  # (N, samples) int16, every training clip: the mixtures' members
    logmel: LogMel  # the features' log-mel, for the mixtures


class Collected(NamedTuple):
    """Each clip's object feature and f^a as an epoch's steps compute them (`stage1.cluster_pass: epoch`):
    rows in folder order, `seen` marking the clips this process's batches held."""

    objects: torch.Tensor  # (N, D)
    audio: torch.Tensor  # (N, D)
    seen: torch.Tensor  # (N,) bool

    @classmethod
    def empty(cls, clips: int, dim: int) -> Collected:
        return cls(torch.zeros(clips, dim), torch.zeros(clips, dim), torch.zeros(clips, dtype=torch.bool))

    def embeddings(self) -> Embeddings:
        return Embeddings(self.objects, self.audio)


def aii_labels(assignment: torch.Tensor, single_rows: torch.Tensor, plan: np.ndarray) -> torch.Tensor:
    """Member labels (rows, M) for `mixture_loss`: a single clip's pseudo-class then -1 padding, then each
    mixture's members' pseudo-classes. assignment (N,) pseudo-class per clip; single_rows (S,) clip
    indices; plan (P, M) member clip indices."""
    width = max(plan.shape[1], 1)
    single_labels = torch.full((len(single_rows), width), -1, dtype=torch.long)
    single_labels[:, 0] = assignment[single_rows]
    return torch.cat([single_labels, assignment[torch.from_numpy(plan)].reshape(len(plan), width)])


def train_step(trainer: Trainer, phase: Phase, batch: dict, rng: np.random.Generator,
               collected: Collected | None = None) -> dict[str, float]:
    """One optimiser step on a reader batch (columns image, logmel, index, video_id); the loss terms' values."""
    params, device, channels_last = trainer.stage1_params, trainer.device, trainer.channels_last
    batch_size = len(batch["index"])
    flip = rng.random(batch_size) < 0.5 if params.flip else None
    images = prepare_images(batch["image"], trainer.model_params.image_size, device, channels_last, flip,
                            params.crop_scale, rng)
    if params.canvas > 1:
        images = to_canvases(images, params.canvas)
    audio_input, aii_rows, plan, mixtures, no_source, first_stepped = batch["logmel"], None, None, 0, 0, batch_size
    if phase.name == "aii":
        aii = trainer.aii_params
        mixtures = round(phase.share * batch_size)
        plan = plan_mixtures(phase.assignment.numpy(), mixtures, phase.mixture_members, rng)
        mixed = mixture_logmels(trainer.train_waveforms, plan, trainer.logmel) if mixtures else audio_input[:0]
        no_source = round(aii.no_source_share * batch_size)
        quiet = (no_source_logmels(no_source, trainer.train_waveforms.shape[1], aii.no_source_dbfs, trainer.logmel,
                                   rng) if no_source else audio_input[:0])
        audio_input = torch.cat([audio_input, mixed.to(audio_input.device), quiet.to(audio_input.device)])
        # Rows through the AII: the mixtures and the no-source inputs; the single clips too when they learn to
        # take no step (aii.single_step_weight > 0).
        first_stepped = 0 if aii.single_step_weight > 0 else batch_size
        aii_rows = torch.arange(first_stepped, batch_size + mixtures + no_source, device=device)
    log_mels = prepare_logmel(audio_input, device, channels_last)
    with autocast(device, trainer.model_params.cpu_precision):
        visual, audio, expanded = trainer.forward(images, log_mels, aii_rows)
    if params.canvas > 1:
        visual = from_canvases(visual, params.canvas)
    losses = {"av_loss": av_loss(trainer.model.head, visual, audio.embedding[:batch_size], batch["video_id"],
                                 params.negatives)}
    loss = losses["av_loss"]
    # A second slice of the same rows, not the one Eq. 1 took: autograd sums the two paths' gradients in another
    # order through one slice than through two, and the run's numbers would move in their last bits.
    own_audio = audio.embedding[:batch_size]

    objects = None
    if phase.name == "class" or collected is not None:
        # Each clip's object feature: f^v pooled where its map with its own audio is high.
        objects = pool_object_features(visual, localization_map(visual, own_audio).detach(), params.object_ratio)
    if collected is not None:
        collected.objects[batch["index"]] = objects.detach().float().cpu()
        collected.audio[batch["index"]] = own_audio.detach().float().cpu()
        collected.seen[batch["index"]] = True
    if phase.name == "class":
        labels = phase.assignment[batch["index"]].to(device)
        losses["class_loss"] = class_loss(objects, own_audio, phase.visual_prototypes, phase.prototypes, labels,
                                          trainer.model_params.similarity_temperature)
        loss = loss + params.class_weight * losses["class_loss"]
    if phase.name == "aii":
        singles = batch_size - mixtures
        labels = aii_labels(phase.assignment, batch["index"][:singles], plan).to(device)
        mixed_rows = slice(batch_size - first_stepped, None)  # the mixtures' and the no-source inputs' F^a
        losses["aii_loss"] = aii_loss(phase.prototypes, audio.embedding[:singles], expanded[mixed_rows], labels,
                                      trainer.model_params.similarity_temperature,
                                      trainer.model_params.similarity_center, phase.prototype_cosines,
                                      aii.sibling_cos, audio.embedding[batch_size + mixtures:])
        loss = aii.av_loss_weight * losses["av_loss"] + losses["aii_loss"]
        if first_stepped == 0:
            losses["single_step_loss"] = single_step_loss(expanded[:batch_size], own_audio)
            loss = loss + aii.single_step_weight * losses["single_step_loss"]

    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    return {name: value.item() for name, value in losses.items()}


def epoch_features(collected: Collected, previous: Embeddings | None, processes: Processes,
                   embed_all: Callable[[], Embeddings]) -> Embeddings:
    """The object features and f^a of every training clip as the epoch's steps computed them, on every rank
    (each clip reached exactly one rank: the sum over ranks puts every row together). A clip no batch held
    this epoch (the remainder that `drop_last` leaves out) keeps its row from the previous clustering; at the
    first clustering there is none, and such rows come from `embed_all`, an eval-mode pass over the split."""
    objects, audio, seen = collected.objects, collected.audio, collected.seen.to(torch.int64)
    if processes.world_size > 1:
        objects, audio, seen = (sum_over_ranks(tensor, processes) for tensor in (objects, audio, seen))
    missing = seen == 0
    if missing.any() and processes.main:  # rank 0 clusters: only it needs every row
        if previous is None:
            previous = embed_all()
        objects[missing], audio[missing] = previous.objects[missing], previous.audio[missing]
    return Embeddings(objects, audio)
