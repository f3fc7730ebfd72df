"""The real params.yaml as plain data or typed params, shrunk for tests."""
from __future__ import annotations

import dataclasses

import yaml

from tests.helpers import REPO


def load_repo_params() -> dict:
    """The real params.yaml as plain data, for tests to shrink and write elsewhere."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def replace(obj, **changes):
    """dataclasses.replace, re-exported so tests shrink typed params in one call."""
    return dataclasses.replace(obj, **changes)


def tiny_pipeline_params() -> dict:
    """The real params.yaml shrunk until the whole pipeline of both datasets runs in a few minutes."""
    params = load_repo_params()
    for name, dataset in params["datasets"].items():
        toy = dataset["toy"]
        # 8 classes: the un-3-3-2 ablation (tests/test_ablations.py) needs 3 + 3 + 2 distinct ones
        toy["classes"] = toy["classes"][:8]
        toy.update(solo_videos_per_class=4, seconds_per_video=2, image_size=64, duet_videos=4 if name == "music" else 0)
        dataset["test_videos_per_class"] = 1
        dataset["val_videos_per_class"] = 1
        dataset["duet_test_videos_per_pair"] = 1 if name == "music" else 0
        dataset["duet_val_videos_per_pair"] = 1 if name == "music" else 0
    params["clips"]["frame_size"] = 64
    for mix_set in ("syn", "un", "train"):
        params["synth"][mix_set]["count"] = 16
    params["synth"]["val_count"] = 16
    params["detect"].update(epochs=1, image_size=64, max_train_images=32)
    params["model"].update(width=4, dim=16, hidden=16, image_size=64)
    params["pretrain"].update(images_per_class=2, val_images_per_class=1, epochs=1)  # every glyph class, 2 stills
    params["stage1"].update(batch_size=8, av_epochs=2, class_epochs=1, clusters=6, eval_mixtures=12)
    params["aii"]["epochs"] = 2
    params["cmr"].update(epochs=1, batch_size=8)
    params["oracle"].update(epochs=1, batch_size=8)
    params["evaluate"].update(batch_size=16, threshold_steps=10)
    return params
