"""The oracle: IEr's visual and audio networks trained with the TRUE class labels (docs/decisions.md, "The
oracle: the same networks trained with the true labels").

It is the ceiling of the architecture on the toy world, not a method: evaluation scores it beside IEr so that
a number of IEr reads against what the same networks reach when they are told the classes.

- Visual: `VisualEncoder` (f^v, as IEr's) and a cosine classifier at every position -> one logit map per class
  (scale x cos(f^v, w_c) + b_c, as IEr's correspondence head scales its cosine map); sigmoid gives the class maps on
  an absolute [0, 1] scale. Trained as multiple-instance learning: the max of a class's map over a
  canvas of clips must say whether a clip of that class is on it.
- Audio: `AudioEncoder` (f^a, as IEr's) and a cosine classifier f^a -> one logit per class: the heard scores, trained
  on single clips and on mixtures of clips of distinct classes (multi-hot targets).

The model file: `state_dict`, `config` (model settings, normalisation, `kind: oracle`), `classes`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import Model
from pipeline.models.files import SHAPE_SETTINGS, load_failure, state_mismatch
from pipeline.models.ier import AudioEncoder, VisualEncoder
from pipeline.models.inputs import Normalisation
from pipeline.stage import StageError


class CosineClasses(nn.Module):
    """scale x cos(feature, w_c) + b_c for C classes, on (B, D) vectors or (B, D, h, w) maps.

    A plain linear layer on unit-length features starts with logits near 0 and needs many steps to grow its
    weights; the scale starts where a sigmoid spans most of (0, 1), and the bias where most classes are absent.
    """

    def __init__(self, dim: int, classes: int, init_scale: float = 10.0, init_bias: float = -2.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / dim**0.5)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.full((classes,), float(init_bias)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            weight = F.normalize(self.weight.float(), dim=1)
            features = F.normalize(features.float(), dim=1)
            if features.dim() == 4:
                cosine = torch.einsum("bdhw,cd->bchw", features, weight)
                return self.scale * cosine + self.bias[None, :, None, None]
            return self.scale * features @ weight.T + self.bias


class OracleModel(nn.Module):
    """f^v -> class logit maps, f^a -> class logits: the IEr encoders with a class layer each."""

    def __init__(self, model: Model, classes: int):
        super().__init__()
        self.visual = VisualEncoder(model.width, model.dim, model.hidden, model.visual_pretrained or None)
        self.audio = AudioEncoder(model.width, model.dim, model.hidden, model.audio_mid_stages,
                                  model.audio_pretrained or None)
        self.visual_classes = CosineClasses(model.dim, classes)
        self.audio_classes = CosineClasses(model.dim, classes)

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> class logit maps (B, C, h, w), float32."""
        return self.visual_classes(self.visual(images).embedding).float()

    def heard_logits(self, log_mels: torch.Tensor) -> torch.Tensor:
        """Log-mels (B, 1, n_mels, n_frames) -> class logits (B, C), float32."""
        return self.audio_classes(self.audio(log_mels).embedding).float()


class TrainedOracle(NamedTuple):
    model: OracleModel
    classes: list[str]  # output c of both layers is classes[c]
    config: dict

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation.from_config(self.config)


def oracle_config(model_params: Model, classes: list[str], normalisation: Normalisation) -> dict:
    """The oracle file's `config`: what `load_oracle` rebuilds the networks from and checks against params."""
    return {"kind": "oracle", "width": model_params.width, "dim": model_params.dim, "hidden": model_params.hidden,
            "image_size": model_params.image_size, "audio_mid_stages": list(model_params.audio_mid_stages),
            "classes": len(classes), **normalisation.to_config()}


def load_oracle(path: Path, model_params: Model) -> TrainedOracle:
    """models/<ds>/oracle.pt, with the checks of `load_trained`: a missing, damaged or unfitting file is a one-line
    StageError naming it."""
    if not path.is_file():
        raise StageError(f"{path}: not found (run the oracle stage first)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise StageError(f"{path}: truncated or corrupt, torch cannot read it ({load_failure(err)}); "
                         f"rerun the oracle stage") from None
    if not isinstance(saved, dict) or not {"state_dict", "config", "classes"} <= set(saved) \
            or saved["config"].get("kind") != "oracle":
        raise StageError(f"{path}: not an oracle model file (rerun the oracle stage)")
    config = saved["config"]
    for name in SHAPE_SETTINGS:
        wanted = getattr(model_params, name)
        wanted = list(wanted) if isinstance(wanted, (list, tuple)) else wanted
        if config.get(name) != wanted:
            raise StageError(f"{path}: trained with model.{name} = {config.get(name)}, params.yaml has {wanted}")
    from_file = dataclasses.replace(model_params, visual_pretrained="", audio_pretrained="")
    model = OracleModel(from_file, len(saved["classes"]))
    mismatch = state_mismatch(model.state_dict(), saved["state_dict"])
    if mismatch:
        raise StageError(f"{path}: the weights do not fit the networks its config describes ({mismatch})")
    model.load_state_dict(saved["state_dict"])
    return TrainedOracle(model, list(saved["classes"]), config)
