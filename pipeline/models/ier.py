"""The IEr networks of stage 1 (paper section 3, supplement D).

- `VisualEncoder`: ResNet-18 trunk (last stage stride 1) -> 1x1 convs C->128->128 -> f^v,
  L2-normalised at every position: (B, D, h, w).
- `AudioEncoder`: ResNet-18 trunk on the log-mel -> global max pool -> FC C->128->128 -> f^a,
  L2-normalised: (B, D); it also hands out mid-level features for the AII.
- `localization_map`: l(f^v, f^a), the cosine at every position.
- `CorrespondenceHead`: learnable scale and bias on the map, sigmoid, global max pool (Eq. 1's score).
- `AudioInstanceIdentifier`: the distinguishing steps Delta^n(a) = W_n f_m(a) + b_n and the
  expanded features F^a_n = f^a + Delta^n(a) (Eq. 2 / supplement Eq. 10).
- `prototype_similarity`: sim(P^a_n, F^a_n) as a probability for the BCE losses (Eqs. 2, 8, 10).
- `Stage1Model`: all of the above in one module (one state dict, one optimizer), as stage 1 trains them.

Precision: similarities, the head and the pooled features are computed in float32 with autocast
off (they are tiny next to the convolutions, and a bf16 cosine carries only ~3 digits, which
sigmoid(cos / 0.1) would amplify); the convolutions run in whatever autocast / memory format the
caller chose (bf16 on CUDA, fp32 on the CPU; channels_last on both by default).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import Model
from pipeline.models.nets import audio_trunk, load_pretrained, visual_trunk


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    """A context that turns autocast off on `tensor`'s device, so the ops inside run in float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class VisualFeatures(NamedTuple):
    embedding: torch.Tensor  # f^v (B, D, h, w), float32, unit norm at every position
    trunk: torch.Tensor  # the trunk's last map (B, C, h, w), C = 8 * width


class VisualEncoder(nn.Module):
    """Images (B, 3, H, W) -> f^v (B, D, H/16, W/16) L2-normalised per position (14x14 at 224 px).

    `width` is the ResNet-18 base width (paper 64: C = 512); `pretrained` a local state dict for
    the trunk (None: train from scratch).
    """

    def __init__(self, width: int = 64, dim: int = 128, hidden: int = 128, pretrained: str | Path | None = None):
        super().__init__()
        self.trunk = visual_trunk(width)
        if pretrained:
            load_pretrained(self.trunk, pretrained)
        self.project = nn.Sequential(nn.Conv2d(self.trunk.out_channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, dim, 1))
        self.dim = dim

    def forward(self, images: torch.Tensor) -> VisualFeatures:
        trunk_map = self.trunk(images)[-1]
        embedding = self.project(trunk_map)
        with _no_autocast(embedding):
            embedding = F.normalize(embedding.float(), dim=1)
        return VisualFeatures(embedding, trunk_map)


class AudioFeatures(NamedTuple):
    embedding: torch.Tensor  # f^a (B, D), float32, unit norm
    mid_level: tuple[torch.Tensor, ...]  # global max pools of the `mid_stages` maps, (B, C_l) each


class AudioEncoder(nn.Module):
    """Log-mels (B, 1, n_mels, n_frames) -> f^a (B, D) L2-normalised, plus mid-level features.

    f^a: the trunk's last map, global max pooled (C = 8 * width), then FC C->hidden->D.
    Mid-level features (for the AII): the global max pool of the maps of `mid_stages`
    (1-based ResNet stages; default 2 and 3, i.e. 2 * width and 4 * width channels).
    """

    def __init__(self, width: int = 64, dim: int = 128, hidden: int = 128, mid_stages: Sequence[int] = (2, 3),
                 pretrained: str | Path | None = None):
        super().__init__()
        if not mid_stages or any(stage not in (1, 2, 3, 4) for stage in mid_stages):
            raise ValueError(f"mid_stages must be ResNet stages among 1..4, got {list(mid_stages)}")
        self.trunk = audio_trunk(width)
        if pretrained:
            load_pretrained(self.trunk, pretrained)
        self.mid_stages = tuple(mid_stages)
        self.mid_dims = tuple(self.trunk.stage_channels[stage - 1] for stage in self.mid_stages)
        self.project = nn.Sequential(nn.Linear(self.trunk.out_channels, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, dim))
        self.dim = dim

    def forward(self, log_mel: torch.Tensor) -> AudioFeatures:
        stage_maps = self.trunk(log_mel)
        pooled = stage_maps[-1].amax(dim=(2, 3))
        embedding = self.project(pooled)
        with _no_autocast(embedding):
            embedding = F.normalize(embedding.float(), dim=1)
        mid_level = tuple(stage_maps[stage - 1].amax(dim=(2, 3)) for stage in self.mid_stages)
        return AudioFeatures(embedding, mid_level)


def localization_map(visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """l(f^v, f^a): cosine similarity between each clip's audio vector and its own image at every position.

    visual (B, D, h, w) with audio (B, D) -> (B, h, w), or with K vectors per clip, e.g. the expanded
    F^a (B, K, D) -> (B, K, h, w). Float32 in [-1, 1]. Both sides are normalised here, so it is a true
    cosine also for vectors that are not unit length (F^a_n = f^a + Delta^n, prototypes).
    """
    with _no_autocast(visual):
        visual = F.normalize(visual.float(), dim=1)
        audio = F.normalize(audio.float(), dim=-1)
        if audio.dim() == 3:
            return torch.einsum("bdhw,bkd->bkhw", visual, audio)
        return torch.einsum("bdhw,bd->bhw", visual, audio)


def localization_map_pairs(visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """All pairs: every image against every audio vector. visual (B, D, h, w), audio (N, D) -> (B, N, h, w).

    For negatives (image i with the audio of clip j) and for maps against prototypes (audio = P, N = K).
    """
    with _no_autocast(visual):
        visual = F.normalize(visual.float(), dim=1)
        audio = F.normalize(audio.float(), dim=1)
        return torch.einsum("bdhw,nd->bnhw", visual, audio)


def pool_object_features(feature_map: torch.Tensor, attention: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """The visual object feature of each image: `feature_map` averaged where `attention` is high, L2-normalised.

    feature_map (B, C, h, w); attention (B, h, w), e.g. the correspondence map of the image with its own
    audio. A position counts when its attention is at least `ratio` of the way from the image's minimum
    to its maximum (relative, so it does not depend on the head's calibration; the peak always counts).
    Returns (B, C) float32, unit norm: the inputs of the visual k-means (stage 1, step 2).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    with _no_autocast(feature_map):
        attention = attention.float()
        low = attention.amin(dim=(1, 2), keepdim=True)
        high = attention.amax(dim=(1, 2), keepdim=True)
        mask = (attention - low >= ratio * (high - low)).float()
        pooled = torch.einsum("bchw,bhw->bc", feature_map.float(), mask) / mask.sum(dim=(1, 2))[:, None]
        return F.normalize(pooled, dim=1)


class CorrespondenceHead(nn.Module):
    """Eq. 1's score: sigmoid(scale * l + bias) at every position, then the global max.

    Input: cosine maps of any leading shape (..., h, w). Returns (probability (...), probability map
    (..., h, w)). The scale starts at 5 (DSOL's initialisation of its 1x1 conv on the map) so the
    sigmoid spans [0.007, 0.993] over the cosine's range from the start; the bias starts at 0.
    """

    def __init__(self, init_scale: float = 5.0, init_bias: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def logits(self, cosine_map: torch.Tensor) -> torch.Tensor:
        """The map before the sigmoid, scale * l + bias, float32 (the logit scale DSOL's class maps use)."""
        with _no_autocast(cosine_map):
            return self.scale * cosine_map.float() + self.bias

    def forward(self, cosine_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability_map = torch.sigmoid(self.logits(cosine_map))
        return probability_map.flatten(-2).amax(dim=-1), probability_map


class AudioInstanceIdentifier(nn.Module):
    """The Audio-Instance-Identifier (paper section 3.2, Eq. 2; supplement Eq. 10).

    f_m(a) = sum_l softmax(w)_l * A_l g_l(a): a learned weighted combination of linearly transformed
    mid-level audio features g_l (one Linear A_l: C_l -> dim per level, weights w over the levels).
    Delta^n(a) = W_n f_m(a) + b_n for n = 1..K, all K in one Linear dim -> K * dim.
    Output: the expanded features F^a (B, K, D) with F^a_n = f^a + Delta^n(a).

    W and b start at zero, so training starts from F^a_n = f^a (the single-source solution of
    Eq. 8) instead of random steps that would swamp the unit-length f^a; the level transforms get
    gradients as soon as W moves off zero.

    `enabled=False` (the "w/o AII" ablation, `aii.enabled`) makes Delta = 0: F^a is f^a repeated K
    times, and the module has no parameters (DDP refuses parameters that get no gradient).
    """

    def __init__(self, num_prototypes: int, mid_dims: Sequence[int], dim: int = 128, enabled: bool = True):
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
        self.num_prototypes = num_prototypes
        self.dim = dim
        self.enabled = enabled
        if not enabled:
            return
        self.level_transforms = nn.ModuleList(nn.Linear(channels, dim) for channels in mid_dims)
        self.level_logits = nn.Parameter(torch.zeros(len(mid_dims)))  # equal weights at the start
        self.steps = nn.Linear(dim, num_prototypes * dim)
        nn.init.zeros_(self.steps.weight)
        nn.init.zeros_(self.steps.bias)

    def mid_feature(self, mid_level: Sequence[torch.Tensor]) -> torch.Tensor:
        """f_m (B, dim): the softmax-weighted sum of the per-level linear transforms."""
        if not self.enabled:
            raise RuntimeError("the Audio-Instance-Identifier is disabled (aii.enabled: false): it has no f_m")
        if len(mid_level) != len(self.level_transforms):
            raise ValueError(f"expected {len(self.level_transforms)} mid-level features, got {len(mid_level)}")
        level_weights = torch.softmax(self.level_logits, dim=0)
        transformed = [transform(features) for transform, features in zip(self.level_transforms, mid_level)]
        return sum(weight * features for weight, features in zip(level_weights, transformed))

    def forward(self, embedding: torch.Tensor, mid_level: Sequence[torch.Tensor]) -> torch.Tensor:
        batch = embedding.shape[0]
        expanded = embedding[:, None, :].expand(batch, self.num_prototypes, self.dim)
        if not self.enabled:
            return expanded
        steps = self.steps(self.mid_feature(mid_level)).view(batch, self.num_prototypes, self.dim)
        return expanded + steps.float()


def prototype_similarity(prototypes: torch.Tensor, features: torch.Tensor, temperature: float = 0.1,
                         center: float = 0.5) -> torch.Tensor:
    """sim(P^a_n, F^a_n) as a probability: sigmoid((cos(P^a_n, F^a_n) - center) / temperature).

    prototypes (K, D); features either the expanded F^a (B, K, D) (each F^a_n against its own P^a_n)
    or a plain f^a (B, D) (against every prototype). Returns (B, K) float32 in (0, 1).

    Why this form: the losses (Eqs. 2, 8, 10) are BCEs, which need a probability, but a cosine lies
    in [-1, 1]. The temperature turns the cosine into a logit with a useful range (tau = 0.1: cosine
    1 vs 0 is 10 logits apart). The center decides which cosine reads as "even odds": with center 0,
    an unrelated (orthogonal) prototype would score 0.5, and K spread-out prototypes cannot all lie at
    strongly negative cosine to one feature (their average pairwise cosine is >= -1/(K-1)), so the
    single-source BCE of the absent classes could never go down. With center 0.5, cosine 1 gives
    0.993, 0.5 gives 0.5 and 0 gives 0.007, and thresholding at 0.5 (Table 2's precision and recall)
    means "closer than 60 degrees". center = 0 gives the plain sigmoid(cos / tau).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with _no_autocast(features):
        prototypes = F.normalize(prototypes.float(), dim=-1)
        features = F.normalize(features.float(), dim=-1)
        if features.dim() == 2:
            cosine = features @ prototypes.T
        elif features.dim() == 3 and features.shape[1:] == prototypes.shape:
            cosine = (features * prototypes[None]).sum(dim=-1)
        else:
            raise ValueError(f"features must be (B, D) or (B, K, D) with (K, D) = {tuple(prototypes.shape)}, "
                             f"got {tuple(features.shape)}")
        return torch.sigmoid((cosine - center) / temperature)


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
