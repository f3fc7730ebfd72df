"""Resume points of the training stages (stage 1, stage 2): one checkpoint per finished epoch.

A checkpoint holds the model, the optimizer, the loss history and whatever else the stage needs to
go on (stage 1: its prototypes and pseudo-classes), plus a fingerprint of what the training was
started with: params, data, the pretrained or stage-1 weights, and the source of every project module
the stage runs (`pipeline/code.py`). A checkpoint with another fingerprint is removed and the stage
starts over; DVC keeps the folder (`persist: true`) across reruns so that a killed run resumes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline.code import ROOT, imported_files
from pipeline.runtime import Processes, save_torch


def fingerprint(settings: dict, module: str) -> str:
    """sha256 of `settings` (JSON-able) and of the source of `module` and everything it imports."""
    code = {str(path.relative_to(ROOT)): path.read_text() for path in imported_files(module)}
    return hashlib.sha256(json.dumps({**settings, "code": code}, sort_keys=True).encode()).hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes ("" for no file): weights a training starts from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""


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


def resume(folder: Path, expected_fingerprint: str, processes: Processes, model: nn.Module,
           optimizer: torch.optim.Optimizer, stage: str) -> dict | None:
    """Load the last checkpoint of this training into `model` and `optimizer`, on every rank, and return it
    (its "epoch", "history" and the stage's own entries), or None to start from epoch 0. Rank 0 looks
    first, so that stale checkpoints are gone before the other ranks look."""
    checkpoint = last_checkpoint(folder, expected_fingerprint) if processes.main else None
    if processes.world_size > 1:
        dist.barrier()
        if not processes.main:
            checkpoint = last_checkpoint(folder, expected_fingerprint)
    if checkpoint is None:
        return None
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if processes.main:
        print(f"{stage}: resuming from the checkpoint of epoch {checkpoint['epoch']}", flush=True)
    return checkpoint


def save_checkpoint(folder: Path, checkpoint: dict) -> None:
    """Write epoch-NNNN.pt atomically, then drop the older ones."""
    path = folder / f"epoch-{checkpoint['epoch']:04d}.pt"
    save_torch(checkpoint, path)
    for old in folder.glob("epoch-*.pt"):
        if old != path:
            old.unlink()


def start_log(folder: Path, history: list[dict], processes: Processes):
    """dvclive's logger on rank 0 (None elsewhere), with a resumed run's past epochs replayed so that its log
    equals an uninterrupted run's."""
    if not processes.main:
        return None
    from dvclive import Live  # imported here: dvclive pulls in much, and only the training stages need it

    live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False)
    for past in history:
        log_epoch(live, past)
    return live


def log_epoch(live, values: dict[str, float]) -> None:
    for name, value in values.items():
        live.log_metric(name, value)
    live.next_step()
