"""Stage 2 of IEr: the Cross-modal Referrer trained on the unconstrained mosaics (DESIGN section 6).

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
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import Cmr, Model
from pipeline.models.ier import CorrespondenceHead, prototype_similarity
from pipeline.reader import ShardReader, make_loader
from pipeline.shards import write_json
from pipeline.stage import StageError
from pipeline.train.referrer import ClassMaps, class_aware_maps, distributions, referrer_loss
from pipeline.train.stage1 import (Processes, Stage1Model, autocast, last_checkpoint, make_deterministic,
                                   make_optimizer, mean_over_ranks, prepare_images, prepare_logmel, save_checkpoint,
                                   save_torch, start_processes, stop_processes, wrap_for_training)

# The model settings stage 1 recorded that must equal params.yaml's, or the weights would not fit.
SHAPE_SETTINGS = ("width", "dim", "hidden", "audio_mid_stages")
# What a stage-1 or stage-2 model file holds (stage 1's also has train_assignment).
MODEL_FILE_KEYS = ("state_dict", "config", "visual_prototypes", "audio_prototypes", "cluster_to_class")


class Stage2Paths(NamedTuple):
    stage1_model: Path  # models/<ds>/stage1.pt (input)
    model: Path  # models/<ds>/stage2.pt
    report: Path  # reports/<ds>/stage2.json
    checkpoints: Path  # models/<ds>/stage2-checkpoints/
    live: Path  # reports/<ds>/stage2-live/ (dvclive)


class Trained(NamedTuple):
    """A stage-1 or stage-2 model file, loaded."""

    model: Stage1Model
    visual_prototypes: torch.Tensor  # P^v (K, D)
    audio_prototypes: torch.Tensor  # P^a (K, D)
    cluster_to_class: list[str]  # cluster k -> majority true class of its training clips ("" for none)
    config: dict  # what the file records (model settings, and stage 2's switches)


def load_trained(path: Path, model_params: Model) -> Trained:
    """Load models/<ds>/stage1.pt or stage2.pt. A missing, unreadable (truncated, corrupt) or unfitting file (other
    model settings, missing entries, weights that do not fit its config) is a one-line StageError naming it."""
    if not path.is_file():
        raise StageError(f"{path}: not found (run the stage that writes it first)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise StageError(f"{path}: truncated or corrupt, torch cannot read it ({_load_failure(err)}); "
                         f"rerun the stage that writes it") from None
    missing = [key for key in MODEL_FILE_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise StageError(f"{path}: not a stage-1 or stage-2 model file (no {', '.join(map(repr, missing))})")
    config = saved["config"]
    for name in (*SHAPE_SETTINGS, "clusters", "aii_enabled"):
        if not isinstance(config, dict) or name not in config:
            raise StageError(f"{path}: no config[{name!r}] (written by another version of the stage)")
    for name in SHAPE_SETTINGS:
        wanted = getattr(model_params, name)
        wanted = list(wanted) if isinstance(wanted, (list, tuple)) else wanted
        if config[name] != wanted:
            raise StageError(f"{path}: trained with model.{name} = {config[name]}, params.yaml has {wanted}")
    # Every weight comes from the file: the pretrained trunks named in params are not read (nor needed).
    from_file = dataclasses.replace(model_params, visual_pretrained="", audio_pretrained="")
    model = Stage1Model(from_file, config["clusters"], config["aii_enabled"])
    mismatch = _state_mismatch(model.state_dict(), saved["state_dict"])
    if mismatch:
        raise StageError(f"{path}: the weights do not fit the networks its config describes ({mismatch})")
    model.load_state_dict(saved["state_dict"])
    return Trained(model, saved["visual_prototypes"], saved["audio_prototypes"], list(saved["cluster_to_class"]),
                   config)


def _load_failure(err: Exception) -> str:
    """torch.load's error in a few words: its first line (the weights-only unpickler's own reason, not its advice)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def _state_mismatch(expected: dict, found: dict) -> str:
    """How a saved state dict differs from the networks' (the first difference), or "" when it fits."""
    missing = [name for name in expected if name not in found]
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"
    unexpected = [name for name in found if name not in expected]
    if unexpected:
        return f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}"
    for name, tensor in expected.items():
        if not isinstance(found[name], torch.Tensor) or found[name].shape != tensor.shape:
            shape = tuple(found[name].shape) if isinstance(found[name], torch.Tensor) else type(found[name]).__name__
            return f"{name} is {shape} in the file, the networks want {tuple(tensor.shape)}"
    return ""


def fingerprint(synth_dir: Path, stage1_model: Path, model_params: Model, cmr_params: Cmr, seed: int) -> str:
    """What a checkpoint was trained with (stage-1 weights, data, params, code): anything else starts over."""
    package = Path(__file__).resolve().parents[1]
    code = {str(path.relative_to(package)): path.read_text()
            for folder in ("train", "models") for path in sorted((package / folder).glob("*.py"))}
    settings = {"seed": seed, "model": dataclasses.asdict(model_params), "cmr": dataclasses.asdict(cmr_params),
                "stage1": hashlib.sha256(stage1_model.read_bytes()).hexdigest(),
                "data": (synth_dir / "summary.json").read_text(), "code": code}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def stage2_forward(model: nn.Module, head: CorrespondenceHead, images: torch.Tensor, log_mels: torch.Tensor,
                   visual_prototypes: torch.Tensor, audio_prototypes: torch.Tensor, model_params: Model,
                   silent_filter: bool) -> tuple[ClassMaps, torch.Tensor]:
    """Class maps and p^a of a batch: (ClassMaps, p^a (B, K)), for training and evaluation alike.

    `model` is the Stage1Model or its DDP wrapper (training goes through the wrapper's forward so that
    DDP averages the gradients); `head` the correspondence head, applied to its outputs.
    """
    all_rows = torch.arange(len(log_mels), device=log_mels.device)
    visual, _, expanded = model(images, log_mels, all_rows)  # f^v, F^a (B, K, D)
    maps = class_aware_maps(head, visual, expanded, visual_prototypes, silent_filter)
    heard = prototype_similarity(audio_prototypes, expanded, model_params.similarity_temperature,
                                 model_params.similarity_center)
    return maps, heard


def run_stage2(synth_dir: str | Path, paths: Stage2Paths, model_params: Model, cmr_params: Cmr, seed: int) -> dict:
    """Train the Cross-modal Referrer on `synth_dir/train`; write `paths`; return the report ({} off rank 0)."""
    synth_dir = Path(synth_dir)
    train_dir = synth_dir / "train"
    if not list(train_dir.glob("shard-*.parquet")):
        raise StageError(f"{train_dir}: no shard-*.parquet files (run the synth stage first)")
    processes = start_processes(cmr_params.device)
    try:
        # Training runs in its own function so that its DDP wrapper is freed when it returns, before the process
        # group is destroyed: a gloo group torn down by the wrapper's last reference after that can deadlock.
        return _train_and_write(synth_dir, paths, model_params, cmr_params, seed, processes)
    finally:
        stop_processes(processes)


def _train_and_write(synth_dir: Path, paths: Stage2Paths, model_params: Model, cmr_params: Cmr, seed: int,
                     processes: Processes) -> dict:
    """run_stage2 in each process: train, then (rank 0) write the model, report and log; the report ({} elsewhere)."""
    from dvclive import Live  # imported here: dvclive pulls in much, and only the stage needs it

    train_dir = synth_dir / "train"
    torch.manual_seed(seed)
    device = processes.device
    make_deterministic(device)
    channels_last = model_params.channels_last  # on the CPU too: faster steps there as well (docs/decisions.md)
    trained = load_trained(paths.stage1_model, model_params)
    model = trained.model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    visual_prototypes = trained.visual_prototypes.to(device)
    audio_prototypes = trained.audio_prototypes.to(device)
    # The teacher side stays fixed: audio net, AII (BatchNorm statistics included).
    for module in (model.audio, model.aii):
        module.requires_grad_(False)
    learned = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = make_optimizer(learned, cmr_params.lr, cmr_params.weight_decay)
    reader = ShardReader(train_dir, columns=("image", "logmel", "index"), batch_size=cmr_params.batch_size,
                         shuffle=True, seed=seed, drop_last=True, rank=processes.rank,
                         world_size=processes.world_size)
    loader = make_loader(reader)

    expected = fingerprint(synth_dir, paths.stage1_model, model_params, cmr_params, seed)
    checkpoint = last_checkpoint(paths.checkpoints, expected) if processes.main else None
    if processes.world_size > 1:
        torch.distributed.barrier()
        if not processes.main:
            checkpoint = last_checkpoint(paths.checkpoints, expected)
    start_epoch, history = 0, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, history = checkpoint["epoch"], checkpoint["history"]
        if processes.main:
            print(f"stage2: resuming from the checkpoint of epoch {start_epoch}", flush=True)
    live = Live(dir=str(paths.live), dvcyaml=False, save_dvc_exp=False) if processes.main else None
    for past in history if live else []:
        for name, value in past.items():
            live.log_metric(name, value)
        live.next_step()

    model.train()
    model.audio.eval()
    model.aii.eval()
    trainer = wrap_for_training(model, processes) if cmr_params.epochs else model
    for epoch in range(start_epoch, cmr_params.epochs):
        reader.set_epoch(epoch)
        steps = min(reader.num_batches(rank=rank) for rank in range(processes.world_size))
        if steps == 0:
            raise StageError(f"{train_dir}: {reader.num_rows} mosaics give no full batch of cmr.batch_size = "
                             f"{cmr_params.batch_size} for each of {processes.world_size} process(es)")
        rng = np.random.default_rng([seed, epoch, processes.rank])
        total, batches = 0.0, iter(loader)
        for _ in tqdm(range(steps), desc=f"stage2 epoch {epoch + 1}/{cmr_params.epochs}", leave=False,
                      disable=not processes.main):
            batch = next(batches)
            flip = rng.random(len(batch["index"])) < 0.5 if cmr_params.flip else None
            side = batch["image"].shape[-1]  # mosaics at their own size
            images = prepare_images(batch["image"], side, device, channels_last, flip)
            log_mels = prepare_logmel(batch["logmel"], device, channels_last)
            with autocast(device):
                maps, heard = stage2_forward(trainer, model.head, images, log_mels, visual_prototypes,
                                             audio_prototypes, model_params, cmr_params.silent_filter)
            loss = referrer_loss(distributions(maps, heard, cmr_params.offscreen_filter, cmr_params.temperature))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        del batches
        epoch_log = mean_over_ranks({"referrer_loss": total / steps}, processes)
        history.append(epoch_log)
        if processes.main:
            live.log_metric("referrer_loss", epoch_log["referrer_loss"])
            live.next_step()
            print(f"stage2: epoch {epoch + 1}/{cmr_params.epochs}: referrer_loss "
                  f"{epoch_log['referrer_loss']:.4f}", flush=True)
            save_checkpoint(paths.checkpoints, {"fingerprint": expected, "epoch": epoch + 1, "history": history,
                                                "model": model.state_dict(), "optimizer": optimizer.state_dict()})
    if not processes.main:
        return {}
    report = {"epochs": cmr_params.epochs, "train_mosaics": reader.num_rows,
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
    live.end()
    # cmr.epochs: 0 (the "w/o CMR" ablation) logs no step, so dvclive makes no curve folder; DVC expects it
    (paths.live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    return report
