"""Stage 2 of IEr: the Cross-modal Referrer trained on the unconstrained mosaics (paper section 3.3).

    run_stage2(synth_dir, paths, model_params, cmr_params, seed)

Starts from stage 1's networks and prototypes (models/<ds>/stage1.pt) and trains on
`synth_dir/train` (mosaics of 2 sounding, silent and off-screen clips, made by synth from the
train_mix videos) with L_u (Eq. 6, pipeline/train/referrer.py). The audio side (audio net, AII)
and the prototypes P^v, P^a stay as stage 1 left them: the audio-guided distribution is the
teacher, and the visual net and the correspondence head learn to make class-aware maps that
agree with it (docs/decisions.md, "What stage 2 trains"). `cmr.epochs: 0` keeps the stage-1
networks as they are (the "w/o CMR" ablation).

Mosaics enter at their own size (grid x tile side), so each tile looks to the visual net as a
stage-1 frame does; the map is then grid x 8 positions a side at the toy size.

Randomness, resume and processes work as in stage 1: flips from (seed, epoch, rank) generators,
a checkpoint per epoch, DDP under torchrun with rank 0 writing.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline.config import Cmr, Model
from pipeline.models.files import load_trained
from pipeline.models.ier import CorrespondenceHead, prototype_similarity
from pipeline.models.inputs import prepare_images, prepare_logmel
from pipeline.paths import Stage2Paths
from pipeline.progress import progress
from pipeline.reader import ShardReader, make_loader
from pipeline.runtime import (Processes, autocast, epoch_steps, make_deterministic, make_optimizer,
                              mean_over_ranks, save_torch, start_processes, stop_processes, wrap_for_training)
from pipeline.shards import write_json
from pipeline.stage import StageError
from pipeline.train.checkpoints import file_hash, fingerprint, log_epoch, resume, save_checkpoint, start_log
from pipeline.train.losses import av_loss
from pipeline.train.referrer import ClassMaps, class_aware_maps, distributions, referrer_loss


class Stage2Outputs(NamedTuple):
    maps: ClassMaps
    heard: torch.Tensor  # p^a (B, K)
    visual: torch.Tensor  # f^v (B, D, h, w)
    audio: torch.Tensor  # f^a (B, D) of the mixtures


def stage2_forward(model: nn.Module, head: CorrespondenceHead, images: torch.Tensor, log_mels: torch.Tensor,
                   visual_prototypes: torch.Tensor, audio_prototypes: torch.Tensor, model_params: Model,
                   silent_filter: bool) -> Stage2Outputs:
    """Class maps, p^a, f^v and f^a of a training batch.

    `model` is the Stage1Model or its DDP wrapper (training goes through the wrapper's forward so that
    DDP averages the gradients); `head` the correspondence head, applied to its outputs.
    """
    all_rows = torch.arange(len(log_mels), device=log_mels.device)
    visual, audio, expanded = model(images, log_mels, all_rows)  # f^v, f^a, F^a (B, K, D)
    maps = class_aware_maps(head, visual, expanded, visual_prototypes, silent_filter)
    heard = prototype_similarity(audio_prototypes, expanded, model_params.similarity_temperature,
                                 model_params.similarity_center)
    return Stage2Outputs(maps, heard, visual, audio.embedding)


def run_stage2(synth_dir: str | Path, paths: Stage2Paths, model_params: Model, cmr_params: Cmr, seed: int) -> dict:
    """Train the Cross-modal Referrer on `synth_dir/train`; write `paths`; return the report ({} off rank 0)."""
    synth_dir = Path(synth_dir)
    train_dir = synth_dir / "train"
    if not list(train_dir.glob("shard-*.parquet")):
        raise StageError(f"{train_dir}: no shard-*.parquet files (run the synth stage first)")
    processes = start_processes(cmr_params.device, "cmr.device")
    try:
        # Training runs in its own function so that its DDP wrapper is freed when it returns, before the process
        # group is destroyed: a gloo group torn down by the wrapper's last reference after that can deadlock.
        return _train_and_write(synth_dir, paths, model_params, cmr_params, seed, processes)
    finally:
        stop_processes(processes)


def _train_and_write(synth_dir: Path, paths: Stage2Paths, model_params: Model, cmr_params: Cmr, seed: int,
                     processes: Processes) -> dict:
    """run_stage2 in each process: train, then (rank 0) write the model, report and log; the report ({} elsewhere)."""
    # ==== model (from stage 1), optimiser, data
    train_dir = synth_dir / "train"
    torch.manual_seed(seed)
    device = processes.device
    make_deterministic(device)
    trained = load_trained(paths.stage1_model, model_params)
    model = trained.model.to(device)
    if model_params.channels_last:  # on the CPU too: faster steps there as well (docs/decisions.md)
        model = model.to(memory_format=torch.channels_last)
    # The teacher side stays fixed: audio net, AII (BatchNorm statistics included).
    for module in (model.audio, model.aii):
        module.requires_grad_(False)
    learned = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = make_optimizer(learned, cmr_params.lr, cmr_params.weight_decay)
    reader = ShardReader(train_dir, columns=("image", "logmel", "index", "sample_id"), batch_size=cmr_params.batch_size,
                         shuffle=True, seed=seed, drop_last=True, rank=processes.rank,
                         world_size=processes.world_size)
    loader = make_loader(reader)

    # ==== resume
    expected = stage2_fingerprint(synth_dir, paths.stage1_model, model_params, cmr_params, seed)
    checkpoint = resume(paths.checkpoints, expected, processes, model, optimizer, "stage2")
    start_epoch, history = (checkpoint["epoch"], checkpoint["history"]) if checkpoint is not None else (0, [])
    live = start_log(paths.live, history, processes)

    # ==== the epochs
    model.train()
    model.audio.eval()
    model.aii.eval()
    trainer = wrap_for_training(model, processes) if cmr_params.epochs else model
    for epoch in range(start_epoch, cmr_params.epochs):
        steps = epoch_steps(reader, epoch, processes, f"{train_dir}: {reader.num_rows} mosaics", "cmr.batch_size")
        rng = np.random.default_rng([seed, epoch, processes.rank])
        total = run_epoch(trainer, model.head, optimizer, trained, loader, steps, rng, model_params, cmr_params,
                          f"stage2 epoch {epoch + 1}/{cmr_params.epochs}", processes)
        epoch_log = mean_over_ranks({"referrer_loss": total / steps}, processes)
        history.append(epoch_log)
        if processes.main:
            log_epoch(live, epoch_log)
            print(f"stage2: epoch {epoch + 1}/{cmr_params.epochs}: referrer_loss "
                  f"{epoch_log['referrer_loss']:.4f}", flush=True)
            save_checkpoint(paths.checkpoints, {"fingerprint": expected, "epoch": epoch + 1, "history": history,
                                                "model": model.state_dict(), "optimizer": optimizer.state_dict()})
    if not processes.main:
        return {}
    report = write_outputs(model, trained, history, reader.num_rows, paths, cmr_params, processes)
    live.end()
    # cmr.epochs: 0 (the "w/o CMR" ablation) logs no step, so dvclive makes no curve folder; DVC expects it
    (paths.live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    return report


def dsol_cmr(cmr_params: Cmr) -> Cmr:
    """The DSOL baseline's stage-2 settings (docs/decisions.md, "The DSOL baseline"): `cmr` with IEr's off-screen
    filter off (every heard class counts in p^av, seen or not) and the map L^v_k . l(f^v, F^a_k), which on
    DSOL's stage 1 (no AII: F^a_k = f^a) is DSOL's own: the class maps filtered by the audio-visual map."""
    return dataclasses.replace(cmr_params, silent_filter=True, offscreen_filter=False)


def stage2_fingerprint(synth_dir: Path, stage1_model: Path, model_params: Model, cmr_params: Cmr, seed: int) -> str:
    """What a checkpoint was trained with (stage-1 weights, data, params, the code stage 2 runs)."""
    return fingerprint({"seed": seed, "model": dataclasses.asdict(model_params), "cmr": dataclasses.asdict(cmr_params),
                        "stage1": file_hash(stage1_model), "data": (synth_dir / "summary.json").read_text()}, __name__)


def run_epoch(trainer: nn.Module, head: CorrespondenceHead, optimizer: torch.optim.Optimizer, trained,
              loader, steps: int, rng: np.random.Generator, model_params: Model, cmr_params: Cmr, description: str,
              processes: Processes) -> float:
    """`steps` steps of L_u (Eq. 6) on the training mosaics; the sum of the loss over them."""
    device, channels_last = processes.device, model_params.channels_last
    visual_prototypes = trained.visual_prototypes.to(device)
    audio_prototypes = trained.audio_prototypes.to(device)
    total, batches = 0.0, iter(loader)
    for _ in progress(range(steps), desc=description, disable=not processes.main):
        batch = next(batches)
        flip = rng.random(len(batch["index"])) < 0.5 if cmr_params.flip else None
        side = batch["image"].shape[-1]  # mosaics at their own size
        images = prepare_images(batch["image"], side, device, channels_last, flip)
        log_mels = prepare_logmel(batch["logmel"], device, channels_last)
        with autocast(device, model_params.cpu_precision):
            out = stage2_forward(trainer, head, images, log_mels, visual_prototypes, audio_prototypes,
                                 model_params, cmr_params.silent_filter)
        loss = referrer_loss(distributions(out.maps, out.heard, cmr_params.offscreen_filter, cmr_params.temperature,
                                           cmr_params.seen_mask, cmr_params.class_share))
        if cmr_params.av_loss_weight:  # DSOL's stage 2 keeps its location loss: Eq. 1 on the mosaics and mixtures
            loss = loss + cmr_params.av_loss_weight * av_loss(head, out.visual, out.audio, batch["sample_id"], "all")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    del batches
    return total


def write_outputs(model: nn.Module, trained, history: list[dict], train_mosaics: int, paths: Stage2Paths,
                  cmr_params: Cmr, processes: Processes) -> dict:
    """The model file (stage 1's prototypes and config, with the referrer's switches added) and the report."""
    report = {"epochs": cmr_params.epochs, "train_mosaics": train_mosaics,
              "silent_filter": cmr_params.silent_filter, "offscreen_filter": cmr_params.offscreen_filter,
              "processes": processes.world_size,
              "final_loss": round(history[-1]["referrer_loss"], 6) if history else None}
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    save_torch({"state_dict": state,
                "config": trained.config | {"silent_filter": cmr_params.silent_filter,
                                            "offscreen_filter": cmr_params.offscreen_filter,
                                            "temperature": cmr_params.temperature},
                "visual_prototypes": trained.visual_prototypes, "audio_prototypes": trained.audio_prototypes,
                "cluster_to_class": trained.cluster_to_class}, paths.model)
    write_json(report, paths.report)
    return report
