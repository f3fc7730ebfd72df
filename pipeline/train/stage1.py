"""Stage 1 of IEr on the single-source clips (paper sections 3.1-3.2; docs/architecture.md).

    run_stage1(features_dir, paths, model_params, stage1_params, aii_params, seed)

Three phases of epochs, one epoch counter (`schedule`; the steps: pipeline/train/stage1_step.py):
1. Correspondence (Eq. 1), `stage1.av_epochs` epochs on `train_single`: an image with its own
   clip's log-mel is a positive, with the log-mel of another video's clip a negative (`stage1.negatives`);
   BCE on the max-pooled head score. With `stage1.canvas: 2` the images enter the visual net as 2x2
   canvases of four clips and each clip's map is its tile of the canvas's map (docs/decisions.md,
   "Canvases for Eq. 1").
2. Clustering after the last correspondence epoch: the object feature of every `train_single` clip
   (f^v pooled where the image's map with its own audio is high) goes into faiss k-means; the centroids
   are the visual prototypes P^v and each clip's cluster its pseudo-class (`stage1.cluster_pass`: the
   features the epoch's own steps computed, or a separate eval-mode pass). Then `stage1.class_epochs`
   epochs of DSOL's localization-classification alternation, clustering again after each, so the features
   and the clusters sharpen each other (DeepCluster's loop).
3. AII, `aii.epochs` epochs: every epoch recomputes the audio prototypes P^a (mean f^a per pseudo-class);
   a batch holds single clips (Eq. 8) and mixtures of clips of different pseudo-classes (Eq. 2 / 10),
   their share and size following the curriculum, and inputs in which nothing sounds; single clips learn to take
   no distinguishing step. The visual side is frozen as clustering saw it.

Randomness: the model is initialised from torch.manual_seed(seed); the reader's order from (seed, epoch);
flips, crops and mixture plans from numpy generators seeded with (seed, epoch, rank). Nothing random is
carried from one epoch to the next, so a checkpoint needs no generator state: a resumed run ends exactly
where an uninterrupted one does.

Processes: started by `torchrun --nproc_per_node=N`, each process trains on its share of the batches under
DDP; rank 0 clusters, computes P^a and broadcasts them, and writes every output.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pipeline.audio import LogMel
from pipeline.config import Aii, Model, Stage1
from pipeline.models.files import model_config
from pipeline.models.ier import Stage1Model
from pipeline.models.inputs import DEFAULT_NORMALISATION
from pipeline.paths import Stage1Paths
from pipeline.progress import progress
from pipeline.reader import ShardReader, make_loader
from pipeline.runtime import (Processes, epoch_steps, make_deterministic, make_optimizer, mean_over_ranks,
                              save_torch, start_processes, stop_processes, wrap_for_training)
from pipeline.shards import write_json
from pipeline.stage import StageError
from pipeline.train.checkpoints import file_hash, fingerprint, log_epoch, resume, save_checkpoint, start_log
from pipeline.train.cluster import audio_prototypes, cluster_to_class, nmi
from pipeline.train.curriculum import members, mix_share
from pipeline.train.embed import Embeddings, embed_split, read_split
from pipeline.train.prototypes import Clusters, cluster_clips, epoch_audio_prototypes
from pipeline.train.stage1_metrics import evaluate_split
from pipeline.train.stage1_step import (Collected, Phase, Trainer, aii_phase, av_phase, class_phase, epoch_features,
                                        train_step)


def schedule(stage1_params: Stage1, aii_params: Aii) -> list[str]:
    """The phase of every epoch, in order."""
    return ["av"] * stage1_params.av_epochs + ["class"] * stage1_params.class_epochs + ["aii"] * aii_params.epochs


def run_stage1(features_dir: str | Path, paths: Stage1Paths, model_params: Model, stage1_params: Stage1,
               aii_params: Aii, seed: int) -> dict:
    """Train stage 1 on `features_dir/train_single`, evaluate on `features_dir/val` and `features_dir/test`, write
    `paths`; the report (the test numbers at the top level, the val numbers that settings are chosen on under `val`).
    Under torchrun only rank 0 writes and returns the report (the others return {})."""
    features_dir = Path(features_dir)
    summary_path = features_dir / "summary.json"
    if not summary_path.is_file():
        raise StageError(f"{summary_path}: not found (run the features stage first)")
    logmel_settings = json.loads(summary_path.read_text()).get("logmel")
    if not logmel_settings:
        raise StageError(f"{summary_path}: no `logmel` settings")
    for split in ("train_single", "val", "test"):
        if not list((features_dir / split).glob("shard-*.parquet")):
            raise StageError(f"{features_dir / split}: no shard-*.parquet files (run the features stage first)")
    if stage1_params.batch_size % stage1_params.canvas**2:
        raise StageError(f"stage1.batch_size = {stage1_params.batch_size} does not fill canvases of "
                         f"stage1.canvas^2 = {stage1_params.canvas**2} clips")
    processes = start_processes(stage1_params.device, "stage1.device")
    try:
        # Training runs in its own function so that its DDP wrapper is freed before the process group is.
        return train_stage1(features_dir, paths, model_params, stage1_params, aii_params, seed, processes,
                            LogMel(**logmel_settings))  # on the CPU, where the waveforms are mixed
    finally:
        stop_processes(processes)


def train_stage1(features_dir: Path, paths: Stage1Paths, model_params: Model, stage1_params: Stage1,
                 aii_params: Aii, seed: int, processes: Processes, logmel: LogMel) -> dict:
    """The training loop in each process; rank 0 writes and returns the report ({} elsewhere)."""
    # ==== data and model
    train_dir = features_dir / "train_single"
    torch.manual_seed(seed)  # the same initial weights in every process
    device, channels_last = processes.device, model_params.channels_last
    make_deterministic(device)
    train = read_split(train_dir)
    model, optimizer, reader, loader = build(train, train_dir, model_params, stage1_params, aii_params, seed,
                                             processes)

    # ==== resume from the last complete epoch of the same training, if any
    expected = stage1_fingerprint(features_dir, model_params, stage1_params, aii_params, seed)
    checkpoint = resume(paths.checkpoints, expected, processes, model, optimizer, "stage1")
    start_epoch, history, clusters, dsol = 0, [], Clusters(), None
    if checkpoint is not None:
        start_epoch, history, dsol = checkpoint["epoch"], checkpoint["history"], checkpoint.get("dsol")
        clusters = Clusters(checkpoint["visual_prototypes"], checkpoint["assignment"],
                            checkpoint["audio_prototypes"],
                            Embeddings(*checkpoint["collected"]) if checkpoint["collected"] is not None else None)
    live = start_log(paths.live, history, processes)

    # ==== the epochs
    phases = schedule(stage1_params, aii_params)
    clustered_epochs = stage1_params.av_epochs + stage1_params.class_epochs  # the epochs before the AII phase
    embed_train = partial(embed_split, model, train_dir, model_params, stage1_params.object_ratio, device,
                          channels_last)  # an eval-mode pass over the training split
    forward, forward_phase = None, None
    for epoch in range(start_epoch, len(phases)):
        name = phases[epoch]
        steps = epoch_steps(reader, epoch, processes, f"{train_dir}: {reader.num_rows} clips", "stage1.batch_size")
        rng = np.random.default_rng([seed, epoch, processes.rank])
        if name == "aii":  # P^a of this epoch: rank 0 embeds, every rank gets them
            clusters.prototypes = epoch_audio_prototypes(model, clusters, train_dir, model_params, stage1_params,
                                                          processes)
        set_trainable(model, name)
        if forward_phase != name:
            forward, forward_phase = wrap_for_training(model, processes), name
        trainer = Trainer(model, forward, optimizer, model_params, stage1_params, aii_params, device, channels_last,
                          train.waveforms, logmel)
        phase = make_phase(name, epoch, clusters, stage1_params, aii_params, device)
        # Clustering after the last Eq. 1 epoch and after every classification epoch.
        recluster = stage1_params.av_epochs - 1 <= epoch < clustered_epochs
        collected = (Collected.empty(len(train.classes), model_params.dim)
                     if recluster and stage1_params.cluster_pass == "epoch" else None)

        sums = run_epoch(trainer, phase, loader, steps, rng, collected,
                         f"stage1 {name} epoch {epoch + 1}/{len(phases)}", processes.main)

        if recluster:
            features = None  # `stage1.cluster_pass: eval`: cluster_clips embeds the split itself
            if collected is not None:
                clusters.features = features = epoch_features(collected, clusters.features, processes, embed_train)
            cluster_clips(clusters, features, embed_train, train.classes, stage1_params, model_params.dim, seed,
                          processes)
            if epoch == clustered_epochs - 1 and processes.main:
                dsol = dsol_model_file(model, clusters, train, train_dir, model_params, stage1_params, device)

        epoch_log = mean_over_ranks({loss_name: value / steps for loss_name, value in sums.items()}, processes)
        history.append(epoch_log)
        if processes.main:
            log_epoch(live, epoch_log)
            print(f"stage1: epoch {epoch + 1}/{len(phases)} ({name}): "
                  + ", ".join(f"{loss_name} {value:.4f}" for loss_name, value in epoch_log.items()), flush=True)
            save_checkpoint(paths.checkpoints, {
                "fingerprint": expected, "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "visual_prototypes": clusters.visual_prototypes, "assignment": clusters.assignment,
                "audio_prototypes": clusters.prototypes,
                "collected": None if clusters.features is None else list(clusters.features), "dsol": dsol})

    if not processes.main:
        return {}
    report = write_outputs(model, clusters, train, history, features_dir, paths, logmel, model_params, stage1_params,
                           aii_params, seed, processes)
    save_torch(dsol, paths.dsol_model)
    live.end()
    return report


def stage1_fingerprint(features_dir: Path, model_params: Model, stage1_params: Stage1, aii_params: Aii,
                       seed: int) -> str:
    """What a checkpoint was trained with: params, data, the pretrained trunks' bytes, the code stage 1 runs."""
    return fingerprint({"seed": seed, "model": dataclasses.asdict(model_params),
                        "stage1": dataclasses.asdict(stage1_params), "aii": dataclasses.asdict(aii_params),
                        "data": (features_dir / "summary.json").read_text(),
                        "pretrained": [file_hash(model_params.visual_pretrained),
                                       file_hash(model_params.audio_pretrained)]}, __name__)


def build(train, train_dir: Path, model_params: Model, stage1_params: Stage1, aii_params: Aii, seed: int,
          processes: Processes):
    """The networks, the optimiser, and this process's reader of the training split (and its loader)."""
    if len(set(train.video_ids)) < 2:
        raise StageError(f"{train_dir}: clips of {len(set(train.video_ids))} video(s); negatives need at least 2")
    if len(train.classes) < stage1_params.clusters:
        raise StageError(f"{train_dir}: {len(train.classes)} clips cannot make stage1.clusters = "
                         f"{stage1_params.clusters} clusters")
    model = Stage1Model(model_params, stage1_params.clusters, aii_params.enabled).to(processes.device)
    if model_params.channels_last:  # on the CPU too: faster steps there as well (docs/decisions.md)
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), stage1_params.lr, stage1_params.weight_decay)
    # Each process reads its own share of the row groups; stage1.batch_size clips per process and step.
    reader = ShardReader(train_dir, columns=("image", "logmel", "index", "video_id"),
                         batch_size=stage1_params.batch_size, shuffle=True, seed=seed, drop_last=True,
                         rank=processes.rank, world_size=processes.world_size)
    return model, optimizer, reader, make_loader(reader)


def make_phase(name: str, epoch: int, clusters: Clusters, stage1_params: Stage1, aii_params: Aii,
               device: torch.device) -> Phase:
    """What an epoch of phase `name` trains with: the pseudo-classes and prototypes, and in the AII phase the
    curriculum at the epoch's progress through the phase."""
    if name == "av":
        return av_phase()
    if name == "class":
        return class_phase(clusters.assignment, clusters.visual_prototypes, clusters.prototypes, device)
    progress_share = (epoch - stage1_params.av_epochs - stage1_params.class_epochs) / aii_params.epochs
    return aii_phase(mix_share(progress_share, aii_params.p_start, aii_params.p_end, aii_params.curriculum),
                     members(progress_share, aii_params.min_mix, aii_params.max_mix, aii_params.curriculum),
                     clusters.assignment, clusters.prototypes, device)


def run_epoch(trainer: Trainer, phase: Phase, loader, steps: int, rng: np.random.Generator,
              collected: Collected | None, description: str, main: bool) -> dict[str, float]:
    """`steps` training steps; the sum of each loss term over them."""
    sums: dict[str, float] = {}
    batches = iter(loader)
    for _ in progress(range(steps), desc=description, disable=not main):
        for name, value in train_step(trainer, phase, next(batches), rng, collected).items():
            sums[name] = sums.get(name, 0.0) + value
    del batches  # a rank with a batch to spare leaves it unread
    return sums


def set_trainable(model: Stage1Model, phase: str) -> None:
    """The AII phase leaves the visual side as clustering saw it (P^v are its centroids): frozen weights,
    BatchNorm statistics included; Eq. 1 then only pulls f^a towards the fixed visual space. The AII
    module trains only in its phase."""
    in_aii = phase == "aii"
    model.train()
    for module in (model.visual, model.head):
        module.train(not in_aii)
        module.requires_grad_(not in_aii)
    model.aii.requires_grad_(in_aii)


def dsol_model_file(model: Stage1Model, clusters: Clusters, train, train_dir: Path, model_params: Model,
                    stage1_params: Stage1, device: torch.device) -> dict:
    """DSOL's stage 1 as a model file: the networks, P^v and pseudo-classes after the last cluster-classify epoch
    (DSOL's own loop), before the AII phase, which DSOL does not have; P^a from the audio net as it is then. The
    AII's weights are left out (`aii_enabled: false`: F^a_n = f^a). The DSOL baseline's stage 2 starts from it
    (docs/decisions.md, "The DSOL baseline")."""
    audio = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device,
                        model_params.channels_last, with_images=False).audio
    count = stage1_params.clusters
    prototypes = audio_prototypes(audio, clusters.assignment, count, previous=clusters.prototypes)
    cluster_classes = cluster_to_class(clusters.assignment.numpy(), np.array(train.classes))
    return {"state_dict": {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()
                           if not name.startswith("aii.")},
            "config": model_config(model_params, count, False, DEFAULT_NORMALISATION),
            "visual_prototypes": clusters.visual_prototypes.cpu().clone(),
            "audio_prototypes": prototypes.vectors.cpu(), "train_assignment": clusters.assignment.cpu().clone(),
            "cluster_to_class": [cluster_classes.get(k, "") for k in range(count)]}


def write_outputs(model: Stage1Model, clusters: Clusters, train, history: list[dict], features_dir: Path,
                  paths: Stage1Paths, logmel: LogMel, model_params: Model, stage1_params: Stage1, aii_params: Aii,
                  seed: int, processes: Processes) -> dict:
    """Final P^a from the trained audio net, the cluster -> class map (evaluation only), the val and test
    numbers; write the model file and the report."""
    device, channels_last, count = processes.device, model_params.channels_last, stage1_params.clusters
    train_dir = features_dir / "train_single"
    test = read_split(features_dir / "test")
    audio = embed_split(model, train_dir, model_params, stage1_params.object_ratio, device, channels_last,
                        with_images=False).audio
    final_prototypes = audio_prototypes(audio, clusters.assignment, count, previous=clusters.prototypes)
    cluster_classes = cluster_to_class(clusters.assignment.numpy(), np.array(train.classes))
    report = evaluate_split(model, features_dir / "test", test, clusters.visual_prototypes, final_prototypes.vectors,
                            cluster_classes, logmel, model_params, stage1_params, seed, device, channels_last)
    val = evaluate_split(model, features_dir / "val", read_split(features_dir / "val"), clusters.visual_prototypes,
                         final_prototypes.vectors, cluster_classes, logmel, model_params, stage1_params, seed,
                         device, channels_last)
    report |= {
        "val": {key: round(val[key], 6) for key in ("nmi", "nmi_visual", "map", "precision", "recall")},
        "clusters": count,
        "empty_clusters": len(final_prototypes.empty),
        "train_clips": len(train.classes),
        "train_nmi": nmi(clusters.assignment.numpy(), train.classes),
        "epochs": {"av": stage1_params.av_epochs, "class": stage1_params.class_epochs, "aii": aii_params.epochs},
        "aii_enabled": aii_params.enabled,
        "processes": processes.world_size,
        "final_losses": {name: round(value, 6) for name, value in history[-1].items()},
    }
    report = {key: round(value, 6) if isinstance(value, float) else value for key, value in report.items()}
    save_torch({
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "config": model_config(model_params, count, aii_params.enabled, DEFAULT_NORMALISATION),
        "visual_prototypes": clusters.visual_prototypes.cpu(),
        "audio_prototypes": final_prototypes.vectors.cpu(),
        "train_assignment": clusters.assignment.cpu(),
        # cluster k -> its majority true class ("" for a cluster with no training clip): evaluation only
        "cluster_to_class": [cluster_classes.get(k, "") for k in range(count)],
    }, paths.model)
    write_json(report, paths.report)
    return report
