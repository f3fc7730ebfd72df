"""Stage 1 of IEr on the single-source clips (DESIGN section 6; paper section 3.1-3.2).

    run_stage1(features_dir, out_paths, model_params, stage1_params, aii_params, seed)

Three phases, one epoch counter:
1. Correspondence (Eq. 1), `stage1.av_epochs` epochs on `train_single`: an image with its own
   clip's log-mel is a positive, with the log-mel of the next clip of the batch (the batch rolled by
   one, or with `stage1.negatives: all` every other video's clip in the batch; pairs from the same
   video left out) a negative; BCE on the max-pooled head score. With `stage1.canvas: 2` the images
   enter the visual net as 2x2 canvases of four clips and each clip's map is its tile of the
   canvas's map: the other tiles are other videos, so a map that spreads a clip's sound over the
   whole canvas scores as a false match (docs/decisions.md, "Canvases for Eq. 1").
2. Clustering, after the last correspondence epoch: the object feature of every `train_single`
   clip (f^v pooled where the image's map with its own audio is high) goes into faiss k-means;
   the centroids are the visual prototypes P^v and each clip's cluster its pseudo-class. With
   `stage1.cluster_pass: epoch` the features are those the epoch's own steps computed (no extra
   pass over the split); with `eval`, a separate eval-mode pass computes them.
   Then `stage1.class_epochs` epochs of DSOL's localization-classification alternation: Eq. 1 plus
   a cross-entropy of each clip's pseudo-class on its object feature (classifier weights P^v) and
   on its f^a (weights: the mean f^a of each cluster), and clustering again after each epoch, so
   the features and the clusters sharpen each other (DeepCluster's loop; docs/decisions.md).
3. AII, `aii.epochs` epochs: every epoch recomputes the audio prototypes P^a (mean f^a per
   pseudo-class); a batch holds single clips (Eq. 8) and mixtures of clips of different
   pseudo-classes (Eq. 2 / 10: the average of their int16 waveforms, log-mel computed on the
   mixture), their share and size following the curriculum. Eq. 1 keeps training on the batch's
   single clips (`aii.av_loss_weight`) so that f^v stays aligned with the moving f^a.

Randomness: the model is initialised from torch.manual_seed(seed); the reader's order from
(seed, epoch); flips, crops and mixture plans from numpy generators seeded with (seed, epoch,
rank). Nothing random is carried from one epoch to the next, so a checkpoint needs no generator
state: model, optimizer, prototypes, pseudo-classes and the loss history are enough for a resumed
run to end exactly where an uninterrupted one does.

Processes: started by `torchrun --nproc_per_node=N`, each process trains on its share of the
batches under DDP; rank 0 clusters, computes P^a and broadcasts them, and writes every output.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.config import Aii, Model, Stage1
from pipeline.features import LogMel
from pipeline.models.ier import (AudioEncoder, AudioFeatures, AudioInstanceIdentifier, CorrespondenceHead,
                                 VisualEncoder, localization_map, localization_map_pairs, pool_object_features,
                                 prototype_similarity)
from pipeline.reader import ShardReader, make_loader
from pipeline.shards import atomic_path, write_json
from pipeline.stage import StageError
from pipeline.train.cluster import audio_prototypes, cluster_to_class, kmeans, nmi
from pipeline.train.curriculum import members, mix_share, plan_mixtures
from pipeline.train.losses import correspondence_loss, mixture_loss, pseudo_class_loss, sibling_prototypes

# ImageNet statistics: the usual input normalisation, and what a pretrained trunk expects.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# Log-mels are dB values in about [-100, 20]: shifted and scaled to about unit range for the audio net.
LOGMEL_OFFSET, LOGMEL_SCALE = 40.0, 40.0
EMBED_BATCH = 128  # clips per forward pass when embedding a whole split (no gradients)
MIXTURE_SIZES = (2, 3, 4)  # members of the evaluation mixtures (Table 2), equal shares
THRESHOLD = 0.5  # a class is predicted when its similarity reaches this (Table 2)


class Stage1Paths(NamedTuple):
    model: Path  # models/<ds>/stage1.pt
    report: Path  # reports/<ds>/stage1.json
    checkpoints: Path  # models/<ds>/stage1-checkpoints/
    live: Path  # reports/<ds>/stage1-live/ (dvclive)


class Stage1Model(nn.Module):
    """The stage-1 networks in one module, so one state dict and one optimizer cover them."""

    def __init__(self, model: Model, clusters: int, aii_enabled: bool):
        super().__init__()
        self.visual = VisualEncoder(model.width, model.dim, model.hidden, model.visual_pretrained or None)
        self.audio = AudioEncoder(model.width, model.dim, model.hidden, model.audio_mid_stages,
                                  model.audio_pretrained or None)
        self.head = CorrespondenceHead(model.head_init_scale, model.head_init_bias)
        self.aii = AudioInstanceIdentifier(clusters, self.audio.mid_dims, model.dim, enabled=aii_enabled)

    def forward(self, images: torch.Tensor, log_mels: torch.Tensor,
                aii_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, AudioFeatures, torch.Tensor | None]:
        """One training pass: f^v of the images, f^a (and mid-level features) of the log-mels and, when
        `aii_rows` is given, the expanded features F^a of those rows. Training calls the networks through
        here, so that under DDP the call goes through the wrapper's forward, which readies the gradient
        averaging (the correspondence head, a scale and a bias, is applied to the outputs by the loss)."""
        visual = self.visual(images).embedding
        audio = self.audio(log_mels)
        expanded = None
        if aii_rows is not None:
            expanded = self.aii(audio.embedding[aii_rows], [level[aii_rows] for level in audio.mid_level])
        return visual, audio, expanded


# --------------------------------------------------------------------------- inputs


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("stage1.device: cuda asked but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def random_crops(images: torch.Tensor, min_scale: float, rng: np.random.Generator) -> torch.Tensor:
    """Each image cropped to a random square of side in [min_scale, 1] of its own at a random place,
    resized back to its size (the toy objects then vary in size and place more than the few training
    videos show)."""
    size = images.shape[-1]
    crops = []
    for image in images:
        side = max(1, round(size * rng.uniform(min_scale, 1.0)))
        top, left = rng.integers(0, size - side + 1, size=2)
        crop = image[None, :, top:top + side, left:left + side]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops)


def prepare_images(images: torch.Tensor, image_size: int, device: torch.device, channels_last: bool,
                   flip: np.ndarray | None = None, crop_scale: float = 1.0,
                   rng: np.random.Generator | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float on `device`, resized to image_size; for training, rows with
    flip[i] mirrored and random crops of at least `crop_scale` of the side (drawn from `rng`)."""
    images = images.to(device, non_blocking=True).float().div_(255.0)
    if crop_scale < 1.0:
        images = random_crops(images, crop_scale, rng)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    if flip is not None and flip.any():
        flip_rows = torch.from_numpy(flip).to(device)
        images = torch.where(flip_rows[:, None, None, None], images.flip(-1), images)
    mean = torch.tensor(IMAGE_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGE_STD, device=device)[:, None, None]
    images = (images - mean) / std
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def to_canvases(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B / grid^2, 3, grid S, grid S): consecutive rows tiled row-major into canvases."""
    batch, channels, size, _ = images.shape
    tiles = images.reshape(batch // grid**2, grid, grid, channels, size, size)
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(batch // grid**2, channels, grid * size, grid * size)


def from_canvases(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """The inverse of to_canvases on a feature map: (N, D, grid h, grid w) -> (N grid^2, D, h, w)."""
    count, channels, height, width = feature_map.shape
    tiles = feature_map.reshape(count, channels, grid, height // grid, grid, width // grid)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(count * grid**2, channels, height // grid, width // grid)


def prepare_logmel(log_mel: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """float (B, n_mels, n_frames) dB -> (B, 1, n_mels, n_frames) scaled, on `device`."""
    log_mel = (log_mel.to(device, non_blocking=True).float()[:, None] + LOGMEL_OFFSET) / LOGMEL_SCALE
    return log_mel.contiguous(memory_format=torch.channels_last) if channels_last else log_mel


def mixture_logmels(waveforms: torch.Tensor, plan: np.ndarray, logmel: LogMel) -> torch.Tensor:
    """The log-mel of each planned mixture: the average of its members' int16 waveforms.

    waveforms (N, samples) int16; plan (M, members) indices into them -> (M, n_mels, n_frames).
    """
    members_waveforms = waveforms[torch.from_numpy(plan)].float() / 32768.0  # (M, members, samples)
    with torch.no_grad():
        return logmel(members_waveforms.mean(dim=1))


def aii_labels(assignment: torch.Tensor, single_rows: torch.Tensor, plan: np.ndarray) -> torch.Tensor:
    """Member labels (rows, M) for `mixture_loss`: a single clip's pseudo-class then -1 padding, then each
    mixture's members' pseudo-classes. assignment (N,) pseudo-class per clip; single_rows (S,) clip
    indices; plan (P, M) member clip indices."""
    width = max(plan.shape[1], 1)
    single_labels = torch.full((len(single_rows), width), -1, dtype=torch.long)
    single_labels[:, 0] = assignment[single_rows]
    return torch.cat([single_labels, assignment[torch.from_numpy(plan)].reshape(len(plan), width)])


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


# --------------------------------------------------------------------------- model passes


def make_deterministic(device: torch.device) -> None:
    """Bit-reproducible runs on the CPU: deterministic kernels only. The mode would also fill every new
    tensor with NaN (a guard against reading memory before writing it, which no kernel here does); that
    fill cost about 5 % of a stage-1 step, so it is off. On CUDA this would need CUBLAS_WORKSPACE_CONFIG
    and slower kernels: not asked for."""
    torch.use_deterministic_algorithms(device.type == "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False


def make_optimizer(parameters, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its multi-tensor ("foreach") update, which torch picks by itself only on CUDA: on the CPU
    it gives the same values to the bit as the per-tensor loop, in fewer steps of Python."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, foreach=True)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; off on CPU (fp32 there, and deterministic)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def av_loss(model: Stage1Model, visual: torch.Tensor, audio: torch.Tensor, video_ids: list[str],
            negatives: str) -> torch.Tensor:
    """Eq. 1 on a batch: each image with its own audio is a positive; with the audio of another video
    a negative: the next row's audio (`roll`, DSOL's one negative per positive) or every other row's (`all`).
    Pairs of two clips of the same video are never negatives."""
    positive, _ = model.head(localization_map(visual, audio))
    if negatives == "roll":
        negative, _ = model.head(localization_map(visual, audio.roll(1, dims=0)))
        other_video = torch.tensor([a != b for a, b in zip(video_ids, video_ids[-1:] + video_ids[:-1])],
                                   device=negative.device)
    else:
        negative, _ = model.head(localization_map_pairs(visual, audio))  # (B images, B audios)
        other_video = torch.tensor([[a != b for b in video_ids] for a in video_ids], device=negative.device)
    return correspondence_loss(positive, negative[other_video])


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
        with autocast(device):
            audio_features = model.audio(prepare_logmel(batch["logmel"], device, channels_last))
            audio[batch["index"]] = audio_features.embedding.float().cpu()
            if with_images:
                images = prepare_images(batch["image"], model_params.image_size, device, channels_last)
                visual = model.visual(images).embedding
                attention = localization_map(visual, audio_features.embedding)
                objects[batch["index"]] = pool_object_features(visual, attention, object_ratio).cpu()
    model.train()
    return Embeddings(objects, audio)


# --------------------------------------------------------------------------- processes


class Processes(NamedTuple):
    """This process's place in a `torchrun` launch (rank 0 of 1 when started plainly)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device_name: str) -> Processes:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU; each
    CUDA process takes the GPU of its LOCAL_RANK. Started plainly: one process on `pick_device`'s device."""
    device = pick_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def stop_processes(processes: Processes) -> None:
    if processes.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (CPU in, CPU out; through the device, where NCCL needs it).
    The other ranks pass a buffer of the same shape and dtype."""
    if processes.world_size == 1:
        return tensor
    on_device = tensor.to(processes.device)
    dist.broadcast(on_device, src=0)
    return on_device.cpu()


def sum_over_ranks(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The sum of `tensor` over the ranks, on every rank (CPU in, CPU out)."""
    on_device = tensor.to(processes.device)
    dist.all_reduce(on_device)
    return on_device.cpu()


def mean_over_ranks(values: dict[str, float], processes: Processes) -> dict[str, float]:
    """The mean of each value over the ranks (epoch losses for the log)."""
    if processes.world_size == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=processes.device)
    dist.all_reduce(stacked)
    return {name: float(total) / processes.world_size for name, total in zip(values, stacked.tolist())}


def wrap_for_training(model: Stage1Model, processes: Processes) -> nn.Module:
    """DDP over the parameters that train now (frozen ones are left out: DDP would wait for their
    gradients), or the model itself in a single process."""
    if processes.world_size == 1:
        return model
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


# --------------------------------------------------------------------------- one training step


class TrainStep:
    """One optimiser step of stage 1 on a reader batch (columns image, logmel, index, video_id).

    Correspondence phase: Eq. 1 on the batch. Classification epochs (after `set_classes`): Eq. 1 plus the
    pseudo-class cross-entropies of the object features and of f^a, weighted by `stage1.class_weight`.
    AII phase: the batch's first (1 - share) clips stay single (Eq. 8), and `share` of its size are replaced
    by mixtures of `mixture_members` clips of different pseudo-classes drawn from the whole split (Eq. 2 / 10);
    Eq. 1 keeps training on the single clips.
    """

    def __init__(self, model: Stage1Model, trainer: nn.Module, optimizer: torch.optim.Optimizer,
                 model_params: Model, stage1_params: Stage1, aii_params: Aii, device: torch.device,
                 channels_last: bool, train_waveforms: torch.Tensor, logmel: LogMel):
        self.model, self.trainer, self.optimizer = model, trainer, optimizer
        self.model_params, self.stage1_params, self.aii_params = model_params, stage1_params, aii_params
        self.device, self.channels_last = device, channels_last
        self.train_waveforms, self.logmel = train_waveforms, logmel
        self.in_aii = self.in_class = False
        self.share, self.mixture_members = 0.0, 0
        self.assignment = self.prototypes = self.visual_prototypes = None
        self.collected: Embeddings | None = None
        self.seen: torch.Tensor | None = None

    def collect(self, clips: int) -> None:
        """Keep each clip's object feature and f^a as this epoch's steps compute them (`stage1.cluster_pass:
        epoch`): rows of `collected`, in folder order, `seen` marking the clips this process's batches held."""
        self.collected = Embeddings(torch.zeros(clips, self.model_params.dim), torch.zeros(clips, self.model_params.dim))
        self.seen = torch.zeros(clips, dtype=torch.bool)

    def set_classes(self, assignment: torch.Tensor, visual_prototypes: torch.Tensor,
                    audio_centroids: torch.Tensor) -> None:
        """Switch to a classification epoch: the pseudo-classes and both classifiers' weights (P^v, mean f^a)."""
        self.in_class, self.assignment = True, assignment
        self.visual_prototypes, self.prototypes = visual_prototypes.to(self.device), audio_centroids.to(self.device)

    def set_aii(self, share: float, mixture_members: int, assignment: torch.Tensor, prototypes: torch.Tensor) -> None:
        """Switch to the AII phase with this epoch's curriculum, pseudo-classes and P^a."""
        self.in_aii, self.share, self.mixture_members = True, share, mixture_members
        self.assignment, self.prototypes = assignment, prototypes.to(self.device)
        unit = F.normalize(self.prototypes.float(), dim=1)
        self.prototype_cosines = (unit @ unit.T).clamp(max=1.0)

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict[str, float]:
        batch_size = len(batch["index"])
        flip = rng.random(batch_size) < 0.5 if self.stage1_params.flip else None
        images = prepare_images(batch["image"], self.model_params.image_size, self.device, self.channels_last,
                                flip, self.stage1_params.crop_scale, rng)
        grid = self.stage1_params.canvas
        if grid > 1:
            images = to_canvases(images, grid)
        audio_input, aii_rows, plan, mixtures = batch["logmel"], None, None, 0
        if self.in_aii:
            mixtures = round(self.share * batch_size)
            plan = plan_mixtures(self.assignment.numpy(), mixtures, self.mixture_members, rng)
            mixed = mixture_logmels(self.train_waveforms, plan, self.logmel) if mixtures else audio_input[:0]
            audio_input = torch.cat([audio_input, mixed.to(audio_input.device)])
            aii_rows = torch.arange(batch_size, batch_size + mixtures, device=self.device)  # the mixtures' F^a
        log_mels = prepare_logmel(audio_input, self.device, self.channels_last)
        with autocast(self.device):
            visual, audio, expanded = self.trainer(images, log_mels, aii_rows)
        if grid > 1:
            visual = from_canvases(visual, grid)
        loss_av = av_loss(self.model, visual, audio.embedding[:batch_size], batch["video_id"],
                          self.stage1_params.negatives)
        losses = {"av_loss": loss_av}
        loss = loss_av
        own_audio = audio.embedding[:batch_size]
        objects = None
        if self.in_class or self.collected is not None:
            # Each clip's object feature: f^v pooled where its map with its own audio is high.
            objects = pool_object_features(visual, localization_map(visual, own_audio).detach(),
                                           self.stage1_params.object_ratio)
        if self.collected is not None:
            self.collected.objects[batch["index"]] = objects.detach().float().cpu()
            self.collected.audio[batch["index"]] = own_audio.detach().float().cpu()
            self.seen[batch["index"]] = True
        if self.in_class:
            # DSOL's classification task: each clip's pseudo-class from its object feature and from its f^a.
            labels = self.assignment[batch["index"]].to(self.device)
            temperature = self.model_params.similarity_temperature
            losses["class_loss"] = (pseudo_class_loss(objects, self.visual_prototypes, labels, temperature)
                                    + pseudo_class_loss(own_audio, self.prototypes, labels, temperature))
            loss = loss + self.stage1_params.class_weight * losses["class_loss"]
        if self.in_aii:
            # Eq. 8 on the single clips' f^a, Eq. 10 on the mixtures' expanded F^a, in one BCE: the distinguishing
            # steps learn only from mixtures (docs/decisions.md, "Eq. 8 on f^a").
            singles = batch_size - mixtures
            labels = aii_labels(self.assignment, batch["index"][:singles], plan).to(self.device)
            similarity = prototype_similarity(self.prototypes, torch.cat([
                audio.embedding[:singles, None, :].expand(singles, *self.prototypes.shape), expanded]),
                self.model_params.similarity_temperature, self.model_params.similarity_center)
            ignore = (sibling_prototypes(labels, self.prototype_cosines, self.aii_params.sibling_cos)
                      if self.aii_params.sibling_cos < 1.0 else None)  # None: the paper's loss, bit for bit
            losses["aii_loss"] = mixture_loss(similarity, labels, ignore)
            loss = self.aii_params.av_loss_weight * loss_av + losses["aii_loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {name: value.item() for name, value in losses.items()}


def epoch_features(step: TrainStep, processes: Processes, previous: Embeddings | None, train_dir: Path) -> Embeddings:
    """The object features and f^a of every training clip as the epoch's steps computed them, on every rank
    (each clip reached exactly one rank: the sum over ranks puts every row together). A clip no batch held
    this epoch (the remainder that `drop_last` leaves out) keeps its row from the previous clustering; at the
    first clustering there is none, and such rows come from an eval-mode pass over the split."""
    objects, audio, seen = step.collected.objects, step.collected.audio, step.seen.to(torch.int64)
    if processes.world_size > 1:
        objects, audio, seen = (sum_over_ranks(tensor, processes) for tensor in (objects, audio, seen))
    missing = seen == 0
    if missing.any() and processes.main:  # rank 0 clusters: only it needs every row
        if previous is None:
            previous = embed_split(step.model, train_dir, step.model_params, step.stage1_params.object_ratio,
                                   step.device, step.channels_last)
        objects[missing], audio[missing] = previous.objects[missing], previous.audio[missing]
    step.collected = step.seen = None
    return Embeddings(objects, audio)


# --------------------------------------------------------------------------- checkpoints


def fingerprint(features_dir: Path, model_params: Model, stage1_params: Stage1, aii_params: Aii, seed: int) -> str:
    """What a checkpoint was trained with: a rerun with other params, data or training code starts over
    (DVC keeps the persisted checkpoints when it reruns the stage for a code change)."""
    package = Path(__file__).resolve().parents[1]
    code = {str(path.relative_to(package)): path.read_text()
            for folder in ("train", "models") for path in sorted((package / folder).glob("*.py"))}
    settings = {"seed": seed, "model": dataclasses.asdict(model_params), "stage1": dataclasses.asdict(stage1_params),
                "aii": dataclasses.asdict(aii_params), "data": (features_dir / "summary.json").read_text(),
                "code": code,
                # the pretrained trunks' contents: a new pretrain output under the same path starts over too
                "pretrained": [hashlib.sha256(Path(name).read_bytes()).hexdigest() if name else ""
                               for name in (model_params.visual_pretrained, model_params.audio_pretrained)]}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def last_checkpoint(folder: Path, expected_fingerprint: str) -> dict | None:
    """The newest checkpoint of this training, or None (old ones of other params are removed)."""
    paths = sorted(folder.glob("epoch-*.pt"))
    if not paths:
        return None
    checkpoint = torch.load(paths[-1], map_location="cpu", weights_only=True)
    if checkpoint["fingerprint"] != expected_fingerprint:
        print(f"checkpoints in {folder} come from other params, data or code: starting over", flush=True)
        for path in paths:
            path.unlink()
        return None
    return checkpoint


def save_torch(obj: object, path: Path) -> None:
    """torch.save to `path` atomically, the same object always to the same bytes. Given a file name, torch.save
    names the zip's inner folder after it, here a temporary name with a pid and random letters, so equal
    weights gave other bytes and another DVC hash in every run; through a file object the folder is torch's
    fixed "archive"."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def save_checkpoint(folder: Path, checkpoint: dict) -> None:
    """Write epoch-NNNN.pt atomically, then drop the older ones."""
    path = folder / f"epoch-{checkpoint['epoch']:04d}.pt"
    save_torch(checkpoint, path)
    for old in folder.glob("epoch-*.pt"):
        if old != path:
            old.unlink()


# --------------------------------------------------------------------------- evaluation


def evaluate(model: Stage1Model, test_dir: Path, test: Split, visual_prototypes: torch.Tensor,
             prototypes: torch.Tensor, cluster_classes: dict[int, str], logmel: LogMel, model_params: Model,
             stage1_params: Stage1, seed: int, device: torch.device, channels_last: bool) -> dict:
    """NMI of the test clips' clusters, and Table 2's multi-label metrics on mixtures of test clips."""
    embeddings = embed_split(model, test_dir, model_params, stage1_params.object_ratio, device, channels_last)
    # A test clip's pseudo-class: the k whose prototypes best match its frame and its sound, cos(object, P^v_k) +
    # cos(f^a, P^a_k); and, as `nmi_visual`, the nearest P^v by the object feature alone (docs/decisions.md).
    visual_scores = embeddings.objects @ F.normalize(visual_prototypes, dim=1).T
    visual_clusters = visual_scores.argmax(dim=1).numpy()
    test_clusters = (visual_scores + embeddings.audio @ F.normalize(prototypes, dim=1).T).argmax(dim=1).numpy()
    class_names = sorted(set(test.classes))
    class_ids = np.array([class_names.index(name) for name in test.classes])

    # Mixtures of 2, 3, 4 test clips of distinct true classes, equal shares.
    rng = np.random.default_rng([seed, 7])
    sizes = [size for size in MIXTURE_SIZES if size <= len(class_names)]
    counts = [stage1_params.eval_mixtures // len(sizes) + (i < stage1_params.eval_mixtures % len(sizes))
              for i in range(len(sizes))]
    truth, scores = [], []
    model.eval()
    with torch.no_grad():
        for size, count in zip(sizes, counts):
            plan = plan_mixtures(class_ids, count, size, rng)
            for start in range(0, count, EMBED_BATCH):
                chunk = plan[start:start + EMBED_BATCH]
                log_mel = prepare_logmel(mixture_logmels(test.waveforms, chunk, logmel), device, channels_last)
                with autocast(device):
                    audio = model.audio(log_mel)
                    expanded = model.aii(audio.embedding, audio.mid_level)
                similarity = prototype_similarity(prototypes.to(device), expanded, model_params.similarity_temperature,
                                                  model_params.similarity_center).cpu()
                # A class scores the best similarity of its clusters (0 for a class no cluster maps to).
                class_scores = torch.zeros(len(chunk), len(class_names))
                for cluster, name in cluster_classes.items():
                    if name in class_names:
                        column = class_names.index(name)
                        class_scores[:, column] = torch.maximum(class_scores[:, column], similarity[:, cluster])
                scores.append(class_scores.numpy())
                member_truth = np.zeros((len(chunk), len(class_names)), dtype=np.int64)
                np.put_along_axis(member_truth, class_ids[chunk], 1, axis=1)
                truth.append(member_truth)
    model.train()
    truth, scores = np.concatenate(truth), np.concatenate(scores)
    predicted = scores >= THRESHOLD
    hits = int((predicted & (truth == 1)).sum())
    present = truth.sum(axis=0) > 0  # AP is defined only for classes that occur in some mixture
    return {
        "nmi": nmi(test_clusters, class_ids),
        "nmi_visual": nmi(visual_clusters, class_ids),
        "map": float(average_precision_score(truth[:, present], scores[:, present], average="macro")),
        "precision": hits / int(predicted.sum()) if predicted.any() else 0.0,
        "recall": hits / int(truth.sum()),
        "test_clips": len(test.classes),
        "test_mixtures": int(len(truth)),
        "test_clusters_used": int(len(np.unique(test_clusters))),
    }


# --------------------------------------------------------------------------- the stage


def run_stage1(features_dir: str | Path, paths: Stage1Paths, model_params: Model, stage1_params: Stage1,
               aii_params: Aii, seed: int) -> dict:
    """Train stage 1 on `features_dir/train_single`, evaluate on `features_dir/val` and `features_dir/test`, write
    `paths`; the report (the test numbers at the top level, the val numbers that settings are chosen on under `val`).

    Under `torchrun --nproc_per_node=N` each process trains on its share of every epoch's batches (DDP);
    rank 0 clusters, writes and evaluates, and only it returns the report (the others return {}).
    """
    features_dir = Path(features_dir)
    train_dir, val_dir, test_dir = features_dir / "train_single", features_dir / "val", features_dir / "test"
    summary_path = features_dir / "summary.json"
    if not summary_path.is_file():
        raise StageError(f"{summary_path}: not found (run the features stage first)")
    logmel_settings = json.loads(summary_path.read_text()).get("logmel")
    if not logmel_settings:
        raise StageError(f"{summary_path}: no `logmel` settings")
    for folder in (train_dir, val_dir, test_dir):
        if not list(folder.glob("shard-*.parquet")):
            raise StageError(f"{folder}: no shard-*.parquet files (run the features stage first)")

    processes = start_processes(stage1_params.device)
    try:
        return _train_and_evaluate(features_dir, paths, model_params, stage1_params, aii_params, seed, processes,
                                   logmel_settings)
    finally:
        stop_processes(processes)


def _train_and_evaluate(features_dir: Path, paths: Stage1Paths, model_params: Model, stage1_params: Stage1,
                        aii_params: Aii, seed: int, processes: Processes, logmel_settings: dict) -> dict:
    """run_stage1 in each process; rank 0 clusters, writes and evaluates, and returns the report ({} elsewhere)."""
    from dvclive import Live  # imported here: dvclive pulls in much, and only the stage needs it

    train_dir, test_dir = features_dir / "train_single", features_dir / "test"
    torch.manual_seed(seed)  # the same initial weights in every process
    device = processes.device
    make_deterministic(device)
    channels_last = model_params.channels_last  # on the CPU too: faster steps there as well (docs/decisions.md)
    logmel = LogMel(**logmel_settings)  # on the CPU, where the waveforms are mixed
    clusters = stage1_params.clusters

    train = read_split(train_dir)
    if len(set(train.video_ids)) < 2:
        raise StageError(f"{train_dir}: clips of {len(set(train.video_ids))} video(s); negatives need at least 2")
    if stage1_params.batch_size % stage1_params.canvas**2:
        raise StageError(f"stage1.batch_size = {stage1_params.batch_size} does not fill canvases of "
                         f"stage1.canvas^2 = {stage1_params.canvas**2} clips")
    if len(train.classes) < clusters:
        raise StageError(f"{train_dir}: {len(train.classes)} clips cannot make stage1.clusters = {clusters} clusters")

    model = Stage1Model(model_params, clusters, aii_params.enabled).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), stage1_params.lr, stage1_params.weight_decay)
    # Each process reads its own share of the row groups; stage1.batch_size clips per process and step.
    reader = ShardReader(train_dir, columns=("image", "logmel", "index", "video_id"),
                         batch_size=stage1_params.batch_size, shuffle=True, seed=seed, drop_last=True,
                         rank=processes.rank, world_size=processes.world_size)
    loader = make_loader(reader)

    # Resume from the last complete epoch of the same training, if any (rank 0 removes stale ones first).
    expected_fingerprint = fingerprint(features_dir, model_params, stage1_params, aii_params, seed)
    checkpoint = last_checkpoint(paths.checkpoints, expected_fingerprint) if processes.main else None
    if processes.world_size > 1:
        dist.barrier()
        if not processes.main:
            checkpoint = last_checkpoint(paths.checkpoints, expected_fingerprint)
    start_epoch, history = 0, []
    visual_prototypes = assignment = prototypes = None
    collected = None  # the features of the last clustering, with `stage1.cluster_pass: epoch`
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, history = checkpoint["epoch"], checkpoint["history"]
        visual_prototypes, assignment, prototypes = (checkpoint["visual_prototypes"], checkpoint["assignment"],
                                                     checkpoint["audio_prototypes"])
        collected = Embeddings(*checkpoint["collected"]) if checkpoint["collected"] is not None else None
        if processes.main:
            print(f"stage1: resuming from the checkpoint of epoch {start_epoch}", flush=True)

    live = Live(dir=str(paths.live), dvcyaml=False, save_dvc_exp=False) if processes.main else None
    for past in history if live else []:  # the resumed run's log equals an uninterrupted one's
        for name, value in past.items():
            live.log_metric(name, value)
        live.next_step()

    clustered_epochs = stage1_params.av_epochs + stage1_params.class_epochs  # the epochs before the AII phase
    total_epochs = clustered_epochs + aii_params.epochs
    trainer, trainer_phase = None, None
    for epoch in range(start_epoch, total_epochs):
        reader.set_epoch(epoch)
        # Every rank steps as often as the one with the fewest batches (DDP needs equal step counts).
        steps = min(reader.num_batches(rank=rank) for rank in range(processes.world_size))
        if steps == 0:
            raise StageError(f"{train_dir}: {reader.num_rows} clips give no full batch of stage1.batch_size = "
                             f"{stage1_params.batch_size} for each of {processes.world_size} process(es)")
        rng = np.random.default_rng([seed, epoch, processes.rank])
        in_aii = epoch >= clustered_epochs
        in_class = stage1_params.av_epochs <= epoch < clustered_epochs
        phase = "aii" if in_aii else "class" if in_class else "av"
        if in_aii:
            # P^a of this epoch (rank 0 embeds, every rank gets them), and the curriculum at its progress.
            progress = (epoch - clustered_epochs) / aii_params.epochs
            prototypes_now = torch.zeros(clusters, model_params.dim)
            if processes.main:
                audio_features = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device,
                                             channels_last, with_images=False).audio
                prototypes_now = audio_prototypes(audio_features, assignment, clusters, previous=prototypes).vectors
            prototypes = broadcast(prototypes_now, processes)
        # The AII phase leaves the visual side as clustering saw it (P^v are its centroids): frozen weights,
        # BatchNorm statistics included; Eq. 1 then only pulls f^a towards the fixed visual space. The AII
        # module trains only in its phase.
        model.train()
        for module in (model.visual, model.head):
            module.train(not in_aii)
            module.requires_grad_(not in_aii)
        model.aii.requires_grad_(in_aii)
        if trainer_phase != phase:
            trainer, trainer_phase = wrap_for_training(model, processes), phase
        step = TrainStep(model, trainer, optimizer, model_params, stage1_params, aii_params, device, channels_last,
                         train.waveforms, logmel)
        if in_class:
            step.set_classes(assignment, visual_prototypes, prototypes)
        clusters_after = stage1_params.av_epochs - 1 <= epoch < clustered_epochs
        if clusters_after and stage1_params.cluster_pass == "epoch":
            step.collect(len(train.classes))
        if in_aii:
            step.set_aii(mix_share(progress, aii_params.p_start, aii_params.p_end, aii_params.curriculum),
                         members(progress, aii_params.min_mix, aii_params.max_mix, aii_params.curriculum),
                         assignment, prototypes)

        sums = {"av_loss": 0.0, **({"class_loss": 0.0} if in_class else {}), **({"aii_loss": 0.0} if in_aii else {})}
        batches = iter(loader)
        for _ in tqdm(range(steps), desc=f"stage1 {phase} epoch {epoch + 1}/{total_epochs}", leave=False,
                      disable=not processes.main):
            for name, value in step(next(batches), rng).items():
                sums[name] += value
        del batches  # a rank with a batch to spare leaves it unread

        if clusters_after:
            # Clustering on rank 0 after Eq. 1's phase and after every classification epoch: object features of
            # every training clip -> k-means -> P^v and pseudo-classes; the mean f^a of each cluster.
            centroids = torch.zeros(clusters, model_params.dim)
            clip_clusters = torch.zeros(len(train.classes), dtype=torch.int64)
            audio_centroids = torch.zeros(clusters, model_params.dim)
            if stage1_params.cluster_pass == "epoch":
                collected = epoch_features(step, processes, collected, train_dir)
            if processes.main:
                if stage1_params.cluster_pass == "epoch":
                    embeddings = collected
                else:
                    embeddings = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device,
                                             channels_last)
                features = embeddings.objects
                if stage1_params.cluster_features == "audiovisual":
                    features = torch.cat([embeddings.objects, embeddings.audio], dim=1)
                centroids, clip_clusters = map(torch.from_numpy, kmeans(
                    features.numpy(), clusters, stage1_params.kmeans_niter, seed, init=stage1_params.kmeans_init))
                if stage1_params.cluster_features == "audiovisual":  # P^v lives in f^v's space (stage 2's L^v_k)
                    centroids = audio_prototypes(embeddings.objects, clip_clusters, clusters).vectors
                audio_centroids = audio_prototypes(embeddings.audio, clip_clusters, clusters).vectors
                print(f"stage1: {clusters} clusters, {len(np.unique(clip_clusters))} used; train NMI "
                      f"{nmi(clip_clusters.numpy(), train.classes):.3f}", flush=True)
            visual_prototypes, assignment = broadcast(centroids, processes), broadcast(clip_clusters, processes)
            prototypes = broadcast(audio_centroids, processes)

        epoch_log = mean_over_ranks({name: value / steps for name, value in sums.items()}, processes)
        history.append(epoch_log)
        if processes.main:
            for name, value in epoch_log.items():
                live.log_metric(name, value)
            live.next_step()
            print(f"stage1: epoch {epoch + 1}/{total_epochs} ({phase}): "
                  + ", ".join(f"{name} {value:.4f}" for name, value in epoch_log.items()), flush=True)
            save_checkpoint(paths.checkpoints, {
                "fingerprint": expected_fingerprint, "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "visual_prototypes": visual_prototypes, "assignment": assignment, "audio_prototypes": prototypes,
                "collected": None if collected is None else list(collected)})

    if not processes.main:
        return {}
    # Final audio prototypes from the trained audio net; the cluster -> class map (evaluation only).
    test = read_split(test_dir)
    audio_features = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device, channels_last,
                                 with_images=False).audio
    final_prototypes = audio_prototypes(audio_features, assignment, clusters, previous=prototypes)
    cluster_classes = cluster_to_class(assignment.numpy(), np.array(train.classes))
    report = evaluate(model, test_dir, test, visual_prototypes, final_prototypes.vectors, cluster_classes,
                      logmel, model_params, stage1_params, seed, device, channels_last)
    val = evaluate(model, features_dir / "val", read_split(features_dir / "val"), visual_prototypes,
                   final_prototypes.vectors, cluster_classes, logmel, model_params, stage1_params, seed, device,
                   channels_last)
    report |= {
        "val": {key: round(val[key], 6) for key in ("nmi", "nmi_visual", "map", "precision", "recall")},
        "clusters": clusters,
        "empty_clusters": len(final_prototypes.empty),
        "train_clips": len(train.classes),
        "train_nmi": nmi(assignment.numpy(), train.classes),
        "epochs": {"av": stage1_params.av_epochs, "class": stage1_params.class_epochs, "aii": aii_params.epochs},
        "aii_enabled": aii_params.enabled,
        "processes": processes.world_size,
        "final_losses": {name: round(value, 6) for name, value in history[-1].items()},
    }
    report = {key: round(value, 6) if isinstance(value, float) else value for key, value in report.items()}

    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    save_torch({
        "state_dict": state,
        "config": {"width": model_params.width, "dim": model_params.dim, "hidden": model_params.hidden,
                   "image_size": model_params.image_size, "audio_mid_stages": list(model_params.audio_mid_stages),
                   "clusters": clusters, "aii_enabled": aii_params.enabled,
                   "similarity_temperature": model_params.similarity_temperature,
                   "similarity_center": model_params.similarity_center,
                   "logmel_offset": LOGMEL_OFFSET, "logmel_scale": LOGMEL_SCALE,
                   "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)},
        "visual_prototypes": visual_prototypes.cpu(),
        "audio_prototypes": final_prototypes.vectors.cpu(),
        "train_assignment": assignment.cpu(),
        # cluster k -> its majority true class ("" for a cluster with no training clip): evaluation only
        "cluster_to_class": [cluster_classes.get(k, "") for k in range(clusters)],
    }, paths.model)
    write_json(report, paths.report)
    live.end()
    return report
