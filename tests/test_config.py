"""params.yaml loading: the real file loads, and every kind of mistake names its key."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from pipeline.config import ConfigError, load_params
from tests.conftest import REPO


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    assert set(params.datasets) == {"music", "vggsound"}
    assert params.datasets["music"].source == "toy"
    assert len(params.datasets["music"].toy.classes) >= 8
    assert len(params.datasets["vggsound"].toy.classes) >= 8


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["clips"].update(frame_sise=128), "clips.frame_sise: unknown key"),
        (lambda p: p.update(sede=1), "sede: unknown key"),
        (lambda p: p["clips"].update(frame_size="big"), "clips.frame_size: must be an integer"),
        (lambda p: p["clips"].update(frame_size=8), "clips.frame_size: must be >= 16, got 8"),
        (lambda p: p["features"].pop("n_mels"), "features.n_mels: missing"),
        (lambda p: p["datasets"]["music"].update(source="vimeo"), "datasets.music.source: must be one of toy | youtube"),
        (lambda p: p["datasets"]["vggsound"]["toy"].update(object_scale=[0.5, 0.2]), "datasets.vggsound.toy.object_scale: must be [min, max]"),
        (lambda p: p["synth"]["un"].update(sounding=0), "synth.un.sounding: must be >= 1, got 0"),
        (lambda p: p["download"].update(sleep_s=True), "download.sleep_s: must be a number"),
    ],
)
def test_errors_name_the_key(tmp_path, repo_params, edit, message):
    data = copy.deepcopy(repo_params)
    edit(data)
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, data))
    assert message in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "params.yaml"))
    assert "\n" not in str(err.value)


def test_stage_prints_one_line_and_exits_2(tmp_path, repo_params, stage_env):
    data = copy.deepcopy(repo_params)
    data["features"]["hop_length"] = -5
    write(tmp_path, data)
    run = subprocess.run([sys.executable, "-m", "stages.features", "music"], cwd=tmp_path,
                         env=stage_env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "features@music: error: params.yaml: features.hop_length: must be >= 8, got -5"]


def test_unknown_dataset(tmp_path, repo_params, stage_env):
    write(tmp_path, repo_params)
    run = subprocess.run([sys.executable, "-m", "stages.features", "audioset"], cwd=tmp_path,
                         env=stage_env, capture_output=True, text=True)
    assert run.returncode == 2
    assert "datasets.audioset: no such dataset" in run.stderr
