"""Backbones, encoders, the correspondence head and the Audio-Instance-Identifier (pipeline/models)."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.ier import (AudioEncoder, AudioInstanceIdentifier, CorrespondenceHead, VisualEncoder,
                                 localization_map, localization_map_pairs, pool_object_features, prototype_similarity)
from pipeline.models.nets import ShortcutConv, audio_trunk, load_pretrained, visual_trunk
from pipeline.stage import StageError
from pipeline.train.losses import correspondence_loss, mixture_loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("size, side", [(224, 14), (128, 8)])
def test_visual_encoder_map_size_and_unit_norm(size, side):
    torch.manual_seed(0)
    encoder = VisualEncoder(width=8)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, size, size))
    assert features.embedding.shape == (1, 128, side, side)
    assert features.trunk.shape == (1, 64, side, side)  # 8 * width channels
    assert torch.allclose(features.embedding.norm(dim=1), torch.ones(1, side, side), atol=1e-5)


def test_audio_encoder_shapes_unit_norm_and_mid_level():
    torch.manual_seed(0)
    encoder = AudioEncoder(width=8)
    with torch.no_grad():
        features = encoder(torch.randn(2, 1, 64, 201))
    assert features.embedding.shape == (2, 128)
    assert torch.allclose(features.embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    assert encoder.mid_dims == (16, 32)  # stages 2 and 3: 2 * width, 4 * width
    assert [tuple(level.shape) for level in features.mid_level] == [(2, 16), (2, 32)]


def test_localization_map_is_the_cosine_at_each_position():
    # f^v at 4 positions (D = 2, 2x2 map): (1,0), (0,1) / (1,1), (-1,0); f^a = (3,4), |f^a| = 5.
    visual = torch.tensor([[[1.0, 0.0], [1.0, -1.0]],
                           [[0.0, 1.0], [1.0, 0.0]]])[None]  # (1, D=2, 2, 2)
    audio = torch.tensor([[3.0, 4.0]])
    expected = torch.tensor([[[3 / 5, 4 / 5], [7 / (5 * math.sqrt(2)), -3 / 5]]])
    assert torch.allclose(localization_map(visual, audio), expected, atol=1e-6)
    # All pairs: image 0 against audio 0 and audio 1 = (-3,-4) (the negated cosine).
    pairs = localization_map_pairs(visual, torch.tensor([[3.0, 4.0], [-3.0, -4.0]]))
    assert pairs.shape == (1, 2, 2, 2)
    assert torch.allclose(pairs[0, 0], expected[0], atol=1e-6)
    assert torch.allclose(pairs[0, 1], -expected[0], atol=1e-6)
    # K vectors per clip (the expanded F^a): one map each.
    per_prototype = localization_map(visual, torch.tensor([[[3.0, 4.0], [-6.0, -8.0]]]))
    assert torch.allclose(per_prototype, pairs, atol=1e-6)


def test_correspondence_head_scales_sigmoids_and_takes_the_max():
    head = CorrespondenceHead(init_scale=5.0, init_bias=0.0)
    cosine_map = torch.tensor([[[0.6, -0.2], [0.0, 0.4]]])
    probability, probability_map = head(cosine_map)
    assert math.isclose(probability.item(), sigmoid(5 * 0.6), rel_tol=1e-6)  # 0.9526
    assert math.isclose(probability_map[0, 1, 0].item(), 0.5, rel_tol=1e-6)  # sigmoid(0)
    probability.sum().backward()
    assert head.scale.grad is not None and head.bias.grad is not None


def test_pool_object_features_averages_where_attention_is_high():
    # Attention 0, 1 / 0.2, 0.9 with ratio 0.5: positions (0,1) and (1,1) count.
    attention = torch.tensor([[[0.0, 1.0], [0.2, 0.9]]])
    feature_map = torch.tensor([[[9.0, 1.0], [9.0, 3.0]],
                                [[9.0, 0.0], [9.0, 0.0]]])[None]  # C=2: (1,0) and (3,0) count
    pooled = pool_object_features(feature_map, attention, ratio=0.5)
    assert torch.allclose(pooled, torch.tensor([[1.0, 0.0]]))  # mean (2, 0), normalised
    flat = pool_object_features(feature_map, torch.zeros(1, 2, 2), ratio=0.5)  # constant map: all positions
    assert torch.allclose(flat, torch.nn.functional.normalize(torch.tensor([[22.0, 18.0]]), dim=1))


def test_prototype_similarity_by_hand():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # Plain f^a (1,0): cosines 1 and 0 -> sigmoid((1 - 0.5) / 0.1) = sigmoid(5), sigmoid(-5).
    plain = prototype_similarity(prototypes, torch.tensor([[1.0, 0.0]]), temperature=0.1, center=0.5)
    assert torch.allclose(plain, torch.tensor([[sigmoid(5), sigmoid(-5)]]), atol=1e-6)
    # Expanded F^a: F_1 = (0,1) against P_1, F_2 = (0,1) against P_2 -> cosines 0 and 1.
    expanded = prototype_similarity(prototypes, torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), temperature=0.1)
    assert torch.allclose(expanded, torch.tensor([[sigmoid(-5), sigmoid(5)]]), atol=1e-6)
    # center 0, temperature 0.5: sigmoid(cos / tau).
    centred = prototype_similarity(prototypes, torch.tensor([[1.0, 0.0]]), temperature=0.5, center=0.0)
    assert torch.allclose(centred, torch.tensor([[sigmoid(2), 0.5]]), atol=1e-6)
    with pytest.raises(ValueError, match="features must be"):
        prototype_similarity(prototypes, torch.zeros(1, 3, 2))


def test_aii_disabled_gives_f_a_for_every_prototype():
    aii = AudioInstanceIdentifier(num_prototypes=3, mid_dims=(4, 8), dim=5, enabled=False)
    assert list(aii.parameters()) == []  # nothing unused for DDP to refuse
    embedding = torch.randn(2, 5)
    expanded = aii(embedding, (torch.randn(2, 4), torch.randn(2, 8)))
    assert expanded.shape == (2, 3, 5)
    assert torch.equal(expanded, embedding[:, None, :].expand(2, 3, 5))


def test_aii_starts_at_f_a_and_gradients_reach_its_weights():
    torch.manual_seed(0)
    encoder = AudioEncoder(width=4)
    aii = AudioInstanceIdentifier(num_prototypes=3, mid_dims=encoder.mid_dims, dim=128, enabled=True)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(aii.parameters()), lr=1e-2)
    prototypes = torch.nn.functional.normalize(torch.randn(3, 128), dim=1)
    log_mel = torch.randn(4, 1, 64, 48)
    member_labels = torch.tensor([[0, 1], [1, 2], [0, -1], [2, -1]])

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        audio = encoder(log_mel)
        expanded = aii(audio.embedding, audio.mid_level)
        mixture_loss(prototype_similarity(prototypes, expanded), member_labels).backward()
        return expanded, audio.embedding

    expanded, embedding = step()
    assert torch.allclose(expanded, embedding[:, None, :].expand_as(expanded))  # Delta = 0 at the start
    assert aii.steps.weight.grad.abs().sum() > 0
    optimizer.step()
    step()  # W_n is off zero now: gradients reach the level transforms, their weights and the trunk
    assert all(transform.weight.grad.abs().sum() > 0 for transform in aii.level_transforms)
    assert aii.level_logits.grad.abs().sum() > 0
    assert encoder.trunk.layer2[0].conv1.weight.grad.abs().sum() > 0


def test_models_run_in_channels_last_under_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    visual = VisualEncoder(width=4).to(memory_format=torch.channels_last)
    audio = AudioEncoder(width=4).to(memory_format=torch.channels_last)
    head = CorrespondenceHead()
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    log_mel = torch.randn(2, 1, 64, 48).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        visual_features = visual(images)
        audio_features = audio(log_mel)
        positive, _ = head(localization_map(visual_features.embedding, audio_features.embedding))
        negative, _ = head(localization_map(visual_features.embedding, audio_features.embedding.flip(0)))
        loss = correspondence_loss(positive, negative)
    assert visual_features.trunk.dtype == torch.bfloat16  # the convolutions did run in bf16
    assert visual_features.embedding.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(visual.trunk.conv1.weight.grad).all()


@pytest.mark.gpu
def test_models_train_in_channels_last_under_bf16_autocast_on_cuda():
    torch.manual_seed(0)
    device = torch.device("cuda")
    visual = VisualEncoder(width=16).to(device, memory_format=torch.channels_last)
    audio = AudioEncoder(width=16).to(device, memory_format=torch.channels_last)
    head = CorrespondenceHead().to(device)
    aii = AudioInstanceIdentifier(4, audio.mid_dims).to(device)
    images = torch.randn(8, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    log_mel = torch.randn(8, 1, 64, 201, device=device).contiguous(memory_format=torch.channels_last)
    prototypes = torch.randn(4, 128, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        visual_features = visual(images)
        audio_features = audio(log_mel)
        positive, _ = head(localization_map(visual_features.embedding, audio_features.embedding))
        negative, _ = head(localization_map(visual_features.embedding, audio_features.embedding.roll(1, 0)))
        expanded = aii(audio_features.embedding, audio_features.mid_level)
        labels = torch.tensor([[0, 1], [2, -1]] * 4, device=device)
        probabilities = prototype_similarity(prototypes, expanded)
        loss = correspondence_loss(positive, negative) + mixture_loss(probabilities, labels)
    assert visual_features.embedding.shape == (8, 128, 14, 14)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(visual.trunk.conv1.weight.grad).all()


def test_load_pretrained_takes_torchvision_resnet18_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)

    trunk = visual_trunk(width=64)
    load_pretrained(trunk, path)
    assert torch.equal(trunk.layer4[0].downsample[0].weight, reference["layer4.0.downsample.0.weight"])
    assert torch.equal(trunk.bn1.running_var, reference["bn1.running_var"])

    grey = audio_trunk(width=64)  # 1 input channel: the RGB filters summed
    load_pretrained(grey, path)
    assert torch.allclose(grey.conv1.weight, reference["conv1.weight"].sum(dim=1, keepdim=True))

    with pytest.raises(StageError, match=r"conv1.weight has shape \(64, 3, 7, 7\), the trunk needs \(16, 3, 7, 7\)"):
        load_pretrained(visual_trunk(width=16), path)
    with pytest.raises(StageError, match="not found"):
        load_pretrained(trunk, tmp_path / "missing.pth")
    del reference["layer3.1.bn2.bias"]
    torch.save({"state_dict": {f"module.{key}": value for key, value in reference.items()}}, path)
    with pytest.raises(StageError, match="1 trunk weights missing, e.g. 'layer3.1.bn2.bias'"):
        load_pretrained(trunk, path)


def test_visual_encoder_loads_pretrained_trunk_from_path(tmp_path):
    donor = visual_trunk(width=4)
    path = tmp_path / "trunk.pt"
    torch.save(donor.state_dict(), path)
    encoder = VisualEncoder(width=4, pretrained=path)
    assert torch.equal(encoder.trunk.conv1.weight, donor.conv1.weight)


def test_strided_shortcut_of_few_channels_matches_the_contiguous_convolution():
    # oneDNN's strided 1x1 weight gradient with fewer than 16 input channels writes past its workspace (a width-4
    # audio trunk with 13 log-mels crashed the process); ShortcutConv computes the same convolution another way
    # there, and its values and gradients match torch's own (non-oneDNN) convolution.
    torch.manual_seed(0)
    shortcut = ShortcutConv(8, 16, 1, 2, bias=False).to(memory_format=torch.channels_last)
    images = torch.randn(13, 8, 8, 26)
    output = shortcut(images.contiguous(memory_format=torch.channels_last).requires_grad_())
    output.square().sum().backward()
    reference_weight = shortcut.weight.detach().contiguous().requires_grad_()
    reference_images = images.clone().requires_grad_()
    with torch.backends.mkldnn.flags(enabled=False):  # torch's own kernel: oneDNN's crashes here in NCHW too
        reference = torch.nn.functional.conv2d(reference_images, reference_weight, None, 2)
        reference.square().sum().backward()
    torch.testing.assert_close(output, reference)
    torch.testing.assert_close(shortcut.weight.grad, reference_weight.grad, rtol=1e-5, atol=1e-4)  # summation order
    # from 16 channels on it is the stock convolution, so trained weights and their numbers stay as they were
    wide = ShortcutConv(16, 32, 1, 2, bias=False)
    probe = torch.randn(2, 16, 8, 8)
    assert torch.equal(wide(probe), torch.nn.Conv2d.forward(wide, probe))
