"""Model inputs: stored frames and log-mels turned into the tensors the networks take.

The normalisation is part of a trained model: stage 1 writes it into the model file
(`config`: image_mean, image_std, logmel_offset, logmel_scale) and `Normalisation.from_config`
reads it back, so evaluation prepares its inputs as training did even if the defaults here change.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class Normalisation(NamedTuple):
    # ImageNet statistics: the usual input normalisation, and what a pretrained trunk expects.
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Log-mels are dB values in about [-100, 20]: shifted and scaled to about unit range for the audio net.
    logmel_offset: float = 40.0
    logmel_scale: float = 40.0

    def to_config(self) -> dict:
        """The model file's entries."""
        return {"logmel_offset": self.logmel_offset, "logmel_scale": self.logmel_scale,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    @classmethod
    def from_config(cls, config: dict) -> Normalisation:
        """What a model file's `config` recorded (the defaults for a file written before it recorded them)."""
        default = cls()
        return cls(tuple(config.get("image_mean", default.image_mean)),
                   tuple(config.get("image_std", default.image_std)),
                   config.get("logmel_offset", default.logmel_offset),
                   config.get("logmel_scale", default.logmel_scale))


DEFAULT_NORMALISATION = Normalisation()


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
                   rng: np.random.Generator | None = None,
                   normalisation: Normalisation = DEFAULT_NORMALISATION) -> torch.Tensor:
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
    mean = torch.tensor(normalisation.image_mean, device=device)[:, None, None]
    std = torch.tensor(normalisation.image_std, device=device)[:, None, None]
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


def prepare_logmel(log_mel: torch.Tensor, device: torch.device, channels_last: bool,
                   normalisation: Normalisation = DEFAULT_NORMALISATION) -> torch.Tensor:
    """float (B, n_mels, n_frames) dB -> (B, 1, n_mels, n_frames) scaled, on `device`."""
    log_mel = log_mel.to(device, non_blocking=True).float()[:, None]
    log_mel = (log_mel + normalisation.logmel_offset) / normalisation.logmel_scale
    return log_mel.contiguous(memory_format=torch.channels_last) if channels_last else log_mel
