"""Model files: `models/<ds>/stage1.pt` and `stage2.pt`, written byte-stably and read back with checks.

A model file is a dict: `state_dict` (the Stage1Model's tensors), `config` (what the networks and their
inputs were built with: widths, clusters, the AII switch, the similarity settings, the input
normalisation; stage 2 adds its switches), `visual_prototypes` P^v, `audio_prototypes` P^a and
`cluster_to_class` (evaluation only); stage 1's also `train_assignment`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch

from pipeline.config import Model
from pipeline.models.ier import Stage1Model
from pipeline.models.inputs import Normalisation
from pipeline.shards import atomic_path
from pipeline.stage import StageError


# The model settings stage 1 recorded that must equal params.yaml's, or the weights would not fit.
SHAPE_SETTINGS = ("width", "dim", "hidden", "audio_mid_stages")


# What a stage-1 or stage-2 model file holds (stage 1's also has train_assignment).
MODEL_FILE_KEYS = ("state_dict", "config", "visual_prototypes", "audio_prototypes", "cluster_to_class")


class Trained(NamedTuple):
    """A stage-1 or stage-2 model file, loaded."""

    model: Stage1Model
    visual_prototypes: torch.Tensor  # P^v (K, D)
    audio_prototypes: torch.Tensor  # P^a (K, D)
    cluster_to_class: list[str]  # cluster k -> majority true class of its training clips ("" for none)
    config: dict  # what the file records (model settings, and stage 2's switches)

    @property
    def normalisation(self) -> Normalisation:
        """The input normalisation the networks were trained with."""
        return Normalisation.from_config(self.config)


def load_trained(path: Path, model_params: Model) -> Trained:
    """Load models/<ds>/stage1.pt or stage2.pt. A missing, unreadable (truncated, corrupt) or unfitting file (other
    model settings, missing entries, weights that do not fit its config) is a one-line StageError naming it."""
    if not path.is_file():
        raise StageError(f"{path}: not found (run the stage that writes it first)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise StageError(f"{path}: truncated or corrupt, torch cannot read it ({load_failure(err)}); "
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
    mismatch = state_mismatch(model.state_dict(), saved["state_dict"])
    if mismatch:
        raise StageError(f"{path}: the weights do not fit the networks its config describes ({mismatch})")
    model.load_state_dict(saved["state_dict"])
    return Trained(model, saved["visual_prototypes"], saved["audio_prototypes"], list(saved["cluster_to_class"]),
                   config)


def load_failure(err: Exception) -> str:
    """torch.load's error in a few words: its first line (the weights-only unpickler's own reason, not its advice)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def state_mismatch(expected: dict, found: dict) -> str:
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


def model_config(model_params: Model, clusters: int, aii_enabled: bool, normalisation: Normalisation) -> dict:
    """A model file's `config`: what `load_trained` rebuilds the networks from and checks against params."""
    return {"width": model_params.width, "dim": model_params.dim, "hidden": model_params.hidden,
            "image_size": model_params.image_size, "audio_mid_stages": list(model_params.audio_mid_stages),
            "clusters": clusters, "aii_enabled": aii_enabled,
            "similarity_temperature": model_params.similarity_temperature,
            "similarity_center": model_params.similarity_center,
            **normalisation.to_config()}
