"""Toy ImageNet: labelled pretraining of the visual trunk, the toy world's stand-in for the paper's ImageNet weights.

The paper (and DSOL) start the visual ResNet-18 from ImageNet weights: a net that already tells a violin from
a saxophone before it hears anything. ImageNet cannot be downloaded here, and the toy world's glyphs are not
photographs anyway, so this stage makes the toy equivalent: labelled object-centric stills of the toy glyph
classes (one glyph on a backdrop with clutter, rendered from this stage's own random stream, never a frame of
the datasets' videos), a ResNet-18 trunk of `model.width` trained on them with global average pooling and a
linear classifier (torchvision's ImageNet recipe), and the trunk's state dict saved under torchvision's names,
which `model.visual_pretrained` loads (pipeline.models.nets.load_pretrained). Like ImageNet, whose 1,000
classes include most MUSIC instruments and many VGGSound sources, the label set covers every glyph class of
the toy world, not only one dataset's. docs/decisions.md, "Toy ImageNet", says why.

ImageNet has never seen the test videos' pictures, so the stills draw the same concepts in another design than the
videos (`pretrain.artwork: twemoji`; `openmoji`, the videos' artwork, gives the earlier trunk). The report holds the
held-out accuracy on stills of the training artwork and on stills of the videos' artwork, the transfer between the
two designs (docs/decisions.md, "Toy ImageNet in another design").

Outputs: the trunk's state dict (`visual.pt`) and a report of the held-out accuracies per class.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import Model, Pretrain
from pipeline.models.inputs import prepare_images
from pipeline.models.nets import visual_trunk
from pipeline.progress import progress
from pipeline.runtime import autocast, make_deterministic, make_optimizer, pick_device, save_torch
from pipeline.sources import toy_glyphs, twemoji
from pipeline.stage import StageError


# pretrain.artwork -> (the variants of a class that the artwork has, the sprite of a variant)
ARTWORKS = {
    "openmoji": (toy_glyphs.glyph_variants, toy_glyphs.sprite),
    "twemoji": (twemoji.glyph_variants, twemoji.sprite),
}
VIDEO_ARTWORK = "openmoji"  # what the toy videos draw their objects with (pipeline/sources/toy.py)


def pretrain_classes(pretrain_params: Pretrain) -> list[str]:
    """The label set: `pretrain.classes`, or every glyph class of the toy world when it is empty."""
    classes = list(pretrain_params.classes) or sorted(toy_glyphs.GLYPHS)
    unknown = [name for name in classes if name not in toy_glyphs.GLYPHS]
    if unknown:
        raise StageError(f"pretrain.classes: no toy glyph for {', '.join(unknown)} "
                         f"(have: {', '.join(sorted(toy_glyphs.GLYPHS))})")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise StageError("pretrain.classes: needs at least 2 distinct classes")
    return classes


def render_still(rng: np.random.Generator, name: str, size: int, pretrain_params: Pretrain,
                 artwork: str | None = None) -> np.ndarray:
    """One labelled still: a glyph of class `name` in `artwork` (default `pretrain.artwork`; a random variant,
    size, tilt, mirror and brightness, as the toy videos draw their objects) alpha-blended at a random place over
    a fresh backdrop; uint8 (size, size, 3). The random draws do not depend on the artwork when it has as many
    variants of the class."""
    glyph_variants, sprite = ARTWORKS[artwork or pretrain_params.artwork]
    canvas = toy_glyphs.background(rng, size, pretrain_params.clutter).astype(np.float32)
    variants = glyph_variants(name)
    pixels = sprite(variants[int(rng.integers(len(variants)))],
                    side_px=max(8, round(rng.uniform(*pretrain_params.object_scale) * size)),
                    angle_deg=rng.uniform(-pretrain_params.rotation_deg, pretrain_params.rotation_deg),
                    mirror=bool(rng.random() < 0.5), brightness=rng.uniform(0.85, 1.15))
    color, alpha = pixels[..., :3].astype(np.float32), pixels[..., 3:].astype(np.float32) / 255
    top = int(rng.integers(0, size - color.shape[0] + 1))
    left = int(rng.integers(0, size - color.shape[1] + 1))
    region = canvas[top:top + color.shape[0], left:left + color.shape[1]]
    region += (color - region) * alpha
    return np.round(canvas).astype(np.uint8)


def render_set(classes: list[str], per_class: int, size: int, pretrain_params: Pretrain,
               rng: np.random.Generator, artwork: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` stills of every class in `artwork` (default `pretrain.artwork`): uint8 images
    (N, 3, size, size) and class indices (N,)."""
    images = np.empty((len(classes) * per_class, size, size, 3), np.uint8)
    labels = np.repeat(np.arange(len(classes)), per_class)
    for row, label in enumerate(labels):
        images[row] = render_still(rng, classes[label], size, pretrain_params, artwork)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class Classifier(nn.Module):
    """The visual trunk, global average pooling and a linear layer: an ImageNet classifier at the toy's scale."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.trunk = visual_trunk(width)
        self.fc = nn.Linear(self.trunk.out_channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(images)[-1].float().mean(dim=(2, 3)))


def accuracy_per_class(model: Classifier, images: torch.Tensor, labels: torch.Tensor, classes: int,
                       model_params: Model, device: torch.device, batch_size: int) -> np.ndarray:
    """The share of each class's held-out stills whose top-1 prediction is their class."""
    model.eval()
    predictions = []
    with torch.no_grad(), autocast(device):
        for start in range(0, len(labels), batch_size):
            batch = prepare_images(images[start:start + batch_size], model_params.image_size, device,
                                   model_params.channels_last)
            predictions.append(model(batch).argmax(dim=1).cpu())
    correct = (torch.cat(predictions) == labels).numpy()
    return np.array([correct[labels.numpy() == label].mean() for label in range(classes)])


def run_pretrain(weights_path: Path, report_path: Path, run_path: Path, model_params: Model,
                 pretrain_params: Pretrain, seed: int) -> dict:
    """Render the stills, train the classifier, write the trunk's weights and the report; return the report.

    The report (a DVC metric) holds results only; wall times go to `run_path` (not a metric).
    """
    started = time.perf_counter()
    if pretrain_params.device == "cuda" and not torch.cuda.is_available():
        raise StageError("pretrain.device: cuda asked but torch sees no CUDA device")
    device = pick_device(pretrain_params.device, "pretrain.device")
    make_deterministic(device)
    classes = pretrain_classes(pretrain_params)
    stills = len(classes) * pretrain_params.images_per_class
    if pretrain_params.batch_size > stills:
        raise StageError(f"pretrain.batch_size: {pretrain_params.batch_size} is more than the {stills} training "
                         f"stills (pretrain.images_per_class x {len(classes)} classes)")
    # The stills come from their own stream (not the toy videos' seeds), the training order from another.
    render_rng = np.random.default_rng([seed, 7411])
    size = model_params.image_size
    train_images, train_labels = render_set(classes, pretrain_params.images_per_class, size, pretrain_params,
                                            render_rng)
    val_images, val_labels = render_set(classes, pretrain_params.val_images_per_class, size, pretrain_params,
                                        render_rng)
    # Held-out stills in the videos' artwork from a stream of their own: the same stills whatever the training
    # artwork, so their accuracy compares trunks pretrained on either.
    video_images, video_labels = render_set(classes, pretrain_params.val_images_per_class, size, pretrain_params,
                                            np.random.default_rng([seed, 7413]), VIDEO_ARTWORK)
    rendered = time.perf_counter()

    torch.manual_seed(seed)
    model = Classifier(model_params.width, len(classes)).to(device)
    if model_params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), pretrain_params.lr, pretrain_params.weight_decay)
    order_rng = np.random.default_rng([seed, 7412])
    batch_size = pretrain_params.batch_size
    steps = len(train_labels) // batch_size
    for epoch in range(pretrain_params.epochs):
        model.train()
        order = torch.from_numpy(order_rng.permutation(len(train_labels)))
        total = 0.0
        for step in progress(range(steps), desc=f"pretrain epoch {epoch + 1}/{pretrain_params.epochs}", leave=False):
            rows = order[step * batch_size:(step + 1) * batch_size]
            flip = order_rng.random(len(rows)) < 0.5 if pretrain_params.flip else None
            images = prepare_images(train_images[rows], size, device, model_params.channels_last, flip)
            with autocast(device):
                loss = F.cross_entropy(model(images).float(), train_labels[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"pretrain epoch {epoch + 1}/{pretrain_params.epochs}: loss {total / max(steps, 1):.3f}", flush=True)

    per_class = accuracy_per_class(model, val_images, val_labels, len(classes), model_params, device,
                                   batch_size)
    video_per_class = accuracy_per_class(model, video_images, video_labels, len(classes), model_params, device,
                                         batch_size)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    trunk_state = {key: value.detach().cpu().contiguous() for key, value in model.trunk.state_dict().items()}
    save_torch(trunk_state, weights_path)
    report = {"classes": classes, "artwork": pretrain_params.artwork, "train_images": len(train_labels),
              "val_images": len(val_labels), "accuracy": float(per_class.mean()),
              "accuracy_per_class": {name: float(value) for name, value in zip(classes, per_class)},
              "video_artwork": VIDEO_ARTWORK, "accuracy_video_artwork": float(video_per_class.mean()),
              "accuracy_video_artwork_per_class": {name: float(value)
                                                   for name, value in zip(classes, video_per_class)}}
    run_facts = {"render_seconds": round(rendered - started, 1),
                 "train_seconds": round(time.perf_counter() - rendered, 1)}
    for path, content in ((report_path, report), (run_path, run_facts)):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(content, indent=2) + "\n")
        temporary.replace(path)
    return report
