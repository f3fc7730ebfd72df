"""ResNet-18 backbones (paper section 3, supplement D).

Both encoders use the ResNet-18 layout (a 7x7 stem, then four stages of two
basic blocks) with a base width knob: the paper's width is 64 (512 channels at
the end); the toy default narrows it (16) so CPU training fits the time budget.
The visual trunk keeps its last stage at stride 1, so a 224x224 image gives a
14x14 map (128x128 gives 8x8); the audio trunk takes the log-mel as a
1-channel image (B, 1, n_mels, n_frames).

Module names follow torchvision's `resnet18` (conv1, bn1, layer1..layer4,
downsample), so torchvision's ImageNet state dict loads as it is at width 64.
Nothing is ever downloaded: `load_pretrained` takes a local file.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.stage import StageError


class ShortcutConv(nn.Conv2d):
    """The shortcut's 1x1 convolution (`nn.Conv2d`, so its weights keep torchvision's names).

    With a stride and fewer than 16 input channels on the CPU it runs as a subsample then a stride-1 1x1
    convolution, which is the same convolution: oneDNN's strided 1x1 weight gradient with fewer input channels
    than its block (8 or 16) writes past its workspace, NCHW or channels_last (uxlfoundation/oneDNN#6035: wrong
    weight gradients, and a crashed or corrupted process at some batch sizes, e.g. width 4 with 13 log-mels).
    From 16 channels on, every default width included, the stock kernel runs, so no default number changes.
    """

    SAFE_CHANNELS = 16  # oneDNN's f32 input-channel block is at most this wide on x64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or self.stride == (1, 1) or self.in_channels >= self.SAFE_CHANNELS:
            return super().forward(x)
        return F.conv2d(x[:, :, ::self.stride[0], ::self.stride[1]], self.weight, self.bias)


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs and a shortcut (a 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(ShortcutConv(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class StemMaxPool(nn.Module):
    """The stem's 3x3 stride-2 max pool, computed on a channels_last copy of its input.

    PyTorch's CPU max pool is slower on NCHW maps than on channels_last ones at these shapes (8 canvases of
    16x128x128: 7.8 ms against 1.9 ms forward, 12 against 7 ms with the backward pass, on this project's
    2-core machine). A max is exact, so the output is the same to the bit; the gradient goes to the same
    position too, except between equal inputs, which after the ReLU are zeros, whose gradient the ReLU
    drops anyway. The result is handed back in the input's memory format, so the convolutions after it
    (and their rounding) are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or x.is_contiguous(memory_format=torch.channels_last):
            return F.max_pool2d(x, 3, 2, 1)
        pooled = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1)
        return pooled.contiguous()


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier; `forward` returns the output map of each of the four stages.

    `width` is the base width (channels of stage 1; stages double it: width * [1, 2, 4, 8]).
    `last_stride=1` keeps stage 4 at the resolution of stage 3 (the paper's visual net).
    """

    def __init__(self, in_channels: int, width: int, last_stride: int):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = StemMaxPool()
        self.stage_channels = [width, width * 2, width * 4, width * 8]
        strides = [1, 2, 2, last_stride]
        previous = width
        for number, (channels, stride) in enumerate(zip(self.stage_channels, strides), start=1):
            self.add_module(f"layer{number}", nn.Sequential(BasicBlock(previous, channels, stride),
                                                            BasicBlock(channels, channels, 1)))
            previous = channels
        self.out_channels = previous
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stage_maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stage_maps.append(x)
        return stage_maps


def visual_trunk(width: int) -> ResNet18Trunk:
    """The visual backbone: 3-channel images, last stage at stride 1 (14x14 map at 224 px, 8x8 at 128)."""
    return ResNet18Trunk(in_channels=3, width=width, last_stride=1)


def audio_trunk(width: int) -> ResNet18Trunk:
    """The audio backbone: the log-mel as a 1-channel image (B, 1, n_mels, n_frames), standard strides."""
    return ResNet18Trunk(in_channels=1, width=width, last_stride=2)


def load_pretrained(trunk: ResNet18Trunk, path: str | Path) -> None:
    """Load a local state dict into `trunk` (e.g. torchvision's ImageNet `resnet18` file); no download.

    Accepted: a plain state dict, or one under a "state_dict"/"model" key; "module." prefixes (DDP
    checkpoints) are stripped; the classifier ("fc.*") is dropped. A 3-channel first conv loads
    into a 1-channel trunk (the audio net) summed over its input channels, the usual way to reuse
    RGB filters on a grey image. Every trunk weight must be in the file with the right shape:
    anything else is a StageError naming the file and the first offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: pretrained weights file not found (weights are never downloaded: "
                         f"give a local state dict, or no path to train from scratch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or non-torch file: name it in one line
        raise StageError(f"{path}: not a readable torch state dict ({err})") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise StageError(f"{path}: holds a {type(state).__name__}, not a state dict")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}

    expected = trunk.state_dict()
    first_conv = state.get("conv1.weight")
    if first_conv is not None and first_conv.shape[1] == 3 and expected["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = first_conv.sum(dim=1, keepdim=True)
    for key, value in state.items():
        if key not in expected:
            raise StageError(f"{path}: key {key!r} is not part of this ResNet-18 trunk")
        if value.shape != expected[key].shape:
            raise StageError(f"{path}: {key} has shape {tuple(value.shape)}, the trunk needs "
                             f"{tuple(expected[key].shape)} (is model.width the file's width? ImageNet: 64)")
    # BatchNorm's step counters are absent from older files and unused in training: not required.
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    if missing:
        raise StageError(f"{path}: {len(missing)} trunk weights missing, e.g. {missing[0]!r}")
    trunk.load_state_dict(state, strict=False)
