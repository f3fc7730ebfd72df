"""Stage 1 of IEr on the single-source clips (DESIGN section 6; paper section 3.1-3.2).

    run_stage1(features_dir, out_paths, model_params, stage1_params, aii_params, seed)

Three phases, one epoch counter:
1. Correspondence (Eq. 1), `stage1.av_epochs` epochs on `train_single`: an image with its own
   clip's log-mel is a positive, with the log-mel of the next clip of the batch (the batch rolled by
   one, or with `stage1.negatives: all` every other video's clip in the batch; pairs from the same
   video left out) a negative; BCE on the max-pooled head score.
2. Clustering, after the last correspondence epoch: the object feature of every `train_single`
   clip (f^v pooled where the image's map with its own audio is high) goes into faiss k-means;
   the centroids are the visual prototypes P^v and each clip's cluster its pseudo-class.
3. AII, `aii.epochs` epochs: every epoch recomputes the audio prototypes P^a (mean f^a per
   pseudo-class); a batch holds single clips (Eq. 8) and mixtures of clips of different
   pseudo-classes (Eq. 2 / 10: the average of their int16 waveforms, log-mel computed on the
   mixture), their share and size following the curriculum. Eq. 1 keeps training on the batch's
   single clips (`aii.av_loss_weight`) so that f^v stays aligned with the moving f^a.

Randomness: the model is initialised from torch.manual_seed(seed); the reader's order from
(seed, epoch); flips and mixture plans from numpy generators seeded with (seed, epoch). Nothing
random is carried from one epoch to the next, so a checkpoint needs no generator state: model,
optimizer, prototypes, pseudo-classes and the loss history are enough for a resumed run to end
exactly where an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import nn
from tqdm import tqdm

from pipeline.config import Aii, Model, Stage1
from pipeline.features import LogMel
from pipeline.models.ier import (AudioEncoder, AudioInstanceIdentifier, CorrespondenceHead, VisualEncoder,
                                 localization_map, localization_map_pairs, pool_object_features, prototype_similarity)
from pipeline.reader import ShardReader, make_loader
from pipeline.shards import atomic_path, write_json
from pipeline.stage import StageError
from pipeline.train.cluster import audio_prototypes, cluster_to_class, kmeans, nmi
from pipeline.train.curriculum import members, mix_share, plan_mixtures
from pipeline.train.losses import correspondence_loss, mixture_loss

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
    reader = ShardReader(folder, columns=("waveform", "labels", "video_id"), batch_size=EMBED_BATCH)
    waveforms, classes, video_ids = [], [], []
    for batch in reader:
        waveforms.append(batch["waveform"].clone())  # the reader reuses its batch memory
        classes += [labels[0] for labels in batch["labels"]]
        video_ids += batch["video_id"]
    return Split(torch.cat(waveforms), classes, video_ids)


# --------------------------------------------------------------------------- model passes


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
    reader = ShardReader(folder, columns=columns, batch_size=EMBED_BATCH)
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


# --------------------------------------------------------------------------- checkpoints


def fingerprint(features_dir: Path, model_params: Model, stage1_params: Stage1, aii_params: Aii, seed: int) -> str:
    """What a checkpoint was trained with: a rerun with other params, data or training code starts over
    (DVC keeps the persisted checkpoints when it reruns the stage for a code change)."""
    package = Path(__file__).resolve().parents[1]
    code = {str(path.relative_to(package)): path.read_text()
            for folder in ("train", "models") for path in sorted((package / folder).glob("*.py"))}
    settings = {"seed": seed, "model": dataclasses.asdict(model_params), "stage1": dataclasses.asdict(stage1_params),
                "aii": dataclasses.asdict(aii_params), "data": (features_dir / "summary.json").read_text(),
                "code": code}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def last_checkpoint(folder: Path, expected_fingerprint: str) -> dict | None:
    """The newest checkpoint of this training, or None (old ones of other params are removed)."""
    paths = sorted(folder.glob("epoch-*.pt"))
    if not paths:
        return None
    checkpoint = torch.load(paths[-1], map_location="cpu", weights_only=True)
    if checkpoint["fingerprint"] != expected_fingerprint:
        print(f"stage1: checkpoints in {folder} come from other params, data or code: starting over", flush=True)
        for path in paths:
            path.unlink()
        return None
    return checkpoint


def save_checkpoint(folder: Path, checkpoint: dict) -> None:
    """Write epoch-NNNN.pt atomically, then drop the older ones."""
    path = folder / f"epoch-{checkpoint['epoch']:04d}.pt"
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    for old in folder.glob("epoch-*.pt"):
        if old != path:
            old.unlink()


# --------------------------------------------------------------------------- evaluation


def evaluate(model: Stage1Model, test_dir: Path, test: Split, visual_prototypes: torch.Tensor,
             prototypes: torch.Tensor, cluster_classes: dict[int, str], logmel: LogMel, model_params: Model,
             stage1_params: Stage1, seed: int, device: torch.device, channels_last: bool) -> dict:
    """NMI of the test clips' clusters, and Table 2's multi-label metrics on mixtures of test clips."""
    embeddings = embed_split(model, test_dir, model_params, stage1_params.object_ratio, device, channels_last)
    test_clusters = (embeddings.objects @ F.normalize(visual_prototypes, dim=1).T).argmax(dim=1).numpy()
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
    """Train stage 1 on `features_dir/train_single`, evaluate on `features_dir/test`, write `paths`; the report."""
    from dvclive import Live  # imported here: dvclive pulls in much, and only the stage needs it

    features_dir = Path(features_dir)
    train_dir, test_dir = features_dir / "train_single", features_dir / "test"
    summary_path = features_dir / "summary.json"
    if not summary_path.is_file():
        raise StageError(f"{summary_path}: not found (run the features stage first)")
    logmel_settings = json.loads(summary_path.read_text()).get("logmel")
    if not logmel_settings:
        raise StageError(f"{summary_path}: no `logmel` settings")
    for folder in (train_dir, test_dir):
        if not list(folder.glob("shard-*.parquet")):
            raise StageError(f"{folder}: no shard-*.parquet files (run the features stage first)")

    torch.manual_seed(seed)
    device = pick_device(stage1_params.device)
    # CPU runs are bit-reproducible; on CUDA this would need CUBLAS_WORKSPACE_CONFIG and slower kernels.
    torch.use_deterministic_algorithms(device.type == "cpu")
    channels_last = model_params.channels_last and device.type == "cuda"
    logmel = LogMel(**logmel_settings)  # on the CPU, where the waveforms are mixed
    clusters = stage1_params.clusters

    train = read_split(train_dir)
    test = read_split(test_dir)
    if len(set(train.video_ids)) < 2:
        raise StageError(f"{train_dir}: clips of {len(set(train.video_ids))} video(s); negatives need at least 2")
    if len(train.classes) < clusters:
        raise StageError(f"{train_dir}: {len(train.classes)} clips cannot make stage1.clusters = {clusters} clusters")

    model = Stage1Model(model_params, clusters, aii_params.enabled).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage1_params.lr, weight_decay=stage1_params.weight_decay)
    reader = ShardReader(train_dir, columns=("image", "logmel", "index", "video_id"),
                         batch_size=stage1_params.batch_size, shuffle=True, seed=seed, drop_last=True)
    if reader.num_batches() == 0:
        raise StageError(f"{train_dir}: {reader.num_rows} clips give no full batch of stage1.batch_size = "
                         f"{stage1_params.batch_size}")
    loader = make_loader(reader)

    # Resume from the last complete epoch of the same training, if any.
    expected_fingerprint = fingerprint(features_dir, model_params, stage1_params, aii_params, seed)
    checkpoint = last_checkpoint(paths.checkpoints, expected_fingerprint)
    start_epoch, history = 0, []
    visual_prototypes = assignment = prototypes = None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, history = checkpoint["epoch"], checkpoint["history"]
        visual_prototypes, assignment, prototypes = (checkpoint["visual_prototypes"], checkpoint["assignment"],
                                                     checkpoint["audio_prototypes"])
        print(f"stage1: resuming from the checkpoint of epoch {start_epoch}", flush=True)

    live = Live(dir=str(paths.live), dvcyaml=False, save_dvc_exp=False)
    for past in history:  # the resumed run's log equals an uninterrupted one's
        for name, value in past.items():
            live.log_metric(name, value)
        live.next_step()

    total_epochs = stage1_params.av_epochs + aii_params.epochs
    model.train()
    for epoch in range(start_epoch, total_epochs):
        reader.set_epoch(epoch)
        rng = np.random.default_rng([seed, epoch])
        in_aii = epoch >= stage1_params.av_epochs
        sums = {"av_loss": 0.0, "aii_loss": 0.0} if in_aii else {"av_loss": 0.0}
        if in_aii:
            # P^a of this epoch, and the curriculum at its progress through the AII phase.
            progress = (epoch - stage1_params.av_epochs) / aii_params.epochs
            share = mix_share(progress, aii_params.p_start, aii_params.p_end, aii_params.curriculum)
            mixture_members = members(progress, aii_params.min_mix, aii_params.max_mix, aii_params.curriculum)
            audio_features = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device,
                                         channels_last, with_images=False).audio
            prototypes = audio_prototypes(audio_features, assignment, clusters, previous=prototypes).vectors
        # The AII phase leaves the visual side as clustering saw it (P^v are its centroids): frozen weights,
        # BatchNorm statistics included; Eq. 1 then only pulls f^a towards the fixed visual space.
        model.train()
        for module in (model.visual, model.head):
            module.train(not in_aii)
            module.requires_grad_(not in_aii)
        steps = 0
        phase = "aii" if in_aii else "av"
        for batch in tqdm(loader, desc=f"stage1 {phase} epoch {epoch + 1}/{total_epochs}", leave=False,
                          total=reader.num_batches()):
            batch_size = len(batch["index"])
            flip = rng.random(batch_size) < 0.5 if stage1_params.flip else None
            images = prepare_images(batch["image"], model_params.image_size, device, channels_last, flip,
                                    stage1_params.crop_scale, rng)
            single_logmels = batch["logmel"]
            if in_aii:
                mixtures = round(share * batch_size)
                plan = plan_mixtures(assignment.numpy(), mixtures, mixture_members, rng)
                mixed = mixture_logmels(train.waveforms, plan, logmel) if mixtures else single_logmels[:0]
                audio_input = torch.cat([single_logmels, mixed.to(single_logmels.device)])
            else:
                audio_input = single_logmels
            with autocast(device):
                visual = model.visual(images).embedding
                audio = model.audio(prepare_logmel(audio_input, device, channels_last))
            loss_av = av_loss(model, visual, audio.embedding[:batch_size], batch["video_id"], stage1_params.negatives)
            loss = loss_av
            sums["av_loss"] += loss_av.item()
            if in_aii:
                # Eq. 8 on the first (batch - mixtures) single clips, Eq. 10 on the mixtures, in one BCE.
                singles = batch_size - mixtures
                keep = torch.cat([torch.arange(singles), torch.arange(batch_size, batch_size + mixtures)]).to(device)
                labels = aii_labels(assignment, batch["index"][:singles], plan).to(device)
                with autocast(device):
                    expanded = model.aii(audio.embedding[keep], [level[keep] for level in audio.mid_level])
                similarity = prototype_similarity(prototypes.to(device), expanded,
                                                  model_params.similarity_temperature, model_params.similarity_center)
                loss_aii = mixture_loss(similarity, labels)
                loss = aii_params.av_loss_weight * loss_av + loss_aii
                sums["aii_loss"] += loss_aii.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1

        if epoch == stage1_params.av_epochs - 1:
            # Clustering: object features of every training clip -> k-means -> P^v and pseudo-classes.
            objects = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device,
                                  channels_last).objects
            centroids, clip_clusters = kmeans(objects.numpy(), clusters, stage1_params.kmeans_niter, seed,
                                              init=stage1_params.kmeans_init)
            visual_prototypes, assignment = torch.from_numpy(centroids), torch.from_numpy(clip_clusters)
            print(f"stage1: {clusters} clusters, {len(np.unique(clip_clusters))} used; train NMI "
                  f"{nmi(clip_clusters, train.classes):.3f}", flush=True)

        epoch_log = {name: value / steps for name, value in sums.items()}
        history.append(epoch_log)
        for name, value in epoch_log.items():
            live.log_metric(name, value)
        live.next_step()
        print(f"stage1: epoch {epoch + 1}/{total_epochs} ({phase}): "
              + ", ".join(f"{name} {value:.4f}" for name, value in epoch_log.items()), flush=True)
        save_checkpoint(paths.checkpoints, {
            "fingerprint": expected_fingerprint, "epoch": epoch + 1, "history": history,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "visual_prototypes": visual_prototypes, "assignment": assignment, "audio_prototypes": prototypes})

    # Final audio prototypes from the trained audio net; the cluster -> class map (evaluation only).
    audio_features = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device, channels_last,
                                 with_images=False).audio
    final_prototypes = audio_prototypes(audio_features, assignment, clusters, previous=prototypes)
    cluster_classes = cluster_to_class(assignment.numpy(), np.array(train.classes))
    report = evaluate(model, test_dir, test, visual_prototypes, final_prototypes.vectors, cluster_classes,
                      logmel, model_params, stage1_params, seed, device, channels_last)
    report |= {
        "clusters": clusters,
        "empty_clusters": len(final_prototypes.empty),
        "train_clips": len(train.classes),
        "train_nmi": nmi(assignment.numpy(), train.classes),
        "epochs": {"av": stage1_params.av_epochs, "aii": aii_params.epochs},
        "aii_enabled": aii_params.enabled,
        "final_losses": {name: round(value, 6) for name, value in history[-1].items()},
    }
    report = {key: round(value, 6) if isinstance(value, float) else value for key, value in report.items()}

    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(paths.model) as tmp:
        torch.save({
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
        }, tmp)
    write_json(report, paths.report)
    live.end()
    return report
