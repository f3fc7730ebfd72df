"""params.yaml loading: the real file loads, and every kind of mistake names its key."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from pipeline.config import ConfigError, load_params
from tests.helpers import REPO


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
    # every dataset holds out a val split (thresholds are chosen there); music also val duets
    assert all(dataset.val_videos_per_class >= 1 for dataset in params.datasets.values())
    assert params.datasets["music"].duet_val_videos_per_pair >= 1
    assert isinstance(params.data_seed, int) and params.synth.val_count >= 1


def test_test_and_val_videos_may_leave_exactly_two_training_videos(tmp_path, repo_params):
    data = copy.deepcopy(repo_params)
    solo = data["datasets"]["music"]["toy"]["solo_videos_per_class"]
    data["datasets"]["music"].update(test_videos_per_class=2, val_videos_per_class=solo - 4)
    assert load_params(write(tmp_path, data)).datasets["music"].val_videos_per_class == solo - 4


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["clips"].update(frame_sise=128), "clips.frame_sise: unknown key"),
        (lambda p: p.update(sede=1), "sede: unknown key"),
        (lambda p: p["clips"].update(frame_size="big"), "clips.frame_size: must be an integer"),
        (lambda p: p["clips"].update(frame_size=8), "clips.frame_size: must be >= 16, got 8"),
        (lambda p: p["features"].pop("n_mels"), "features.n_mels: missing"),
        (lambda p: p["datasets"]["music"].update(source="vimeo"),
         "datasets.music.source: must be one of toy | youtube"),
        (lambda p: p["datasets"]["vggsound"]["toy"].update(object_scale=[0.5, 0.2]),
         "datasets.vggsound.toy.object_scale: must be [min, max]"),
        (lambda p: p["synth"]["un"].update(sounding=0), "synth.un.sounding: must be >= 1, got 0"),
        (lambda p: p["download"].update(sleep_s=True), "download.sleep_s: must be a number"),
        # the validation split's keys (issue 21)
        (lambda p: p.pop("data_seed"), "data_seed: missing"),
        (lambda p: p.update(data_seed="x"), "data_seed: must be an integer"),
        (lambda p: p["datasets"]["music"].update(val_videos_per_class=0),
         "datasets.music.val_videos_per_class: must be >= 1, got 0"),
        (lambda p: p["datasets"]["music"].update(duet_val_videos_per_pair=-1),
         "datasets.music.duet_val_videos_per_pair: must be >= 0, got -1"),
        (lambda p: p["datasets"]["music"].update(test_videos_per_class=2, val_videos_per_class=15),
         "datasets.music.test_videos_per_class + val_videos_per_class: must leave at least 2 training videos"),
        (lambda p: p["datasets"]["music"]["youtube"].update(reference_boxes="boxes.json"),
         "datasets.music.youtube.reference_boxes: must be a list"),
        (lambda p: p["synth"].update(val_count=0), "synth.val_count: must be >= 1, got 0"),
        (lambda p: p["evaluate"].update(boxes="gt"), "evaluate.boxes: must be one of auto | truth | detector"),
        (lambda p: p["evaluate"].update(lit_share=1.5), "evaluate.lit_share: must be <= 1.0, got 1.5"),
        (lambda p: p["evaluate"].update(grounded_success=-0.1), "evaluate.grounded_success: must be >= 0.0"),
        (lambda p: p["evaluate"].update(threshold_steps=1), "evaluate.threshold_steps: must be >= 2, got 1"),
        # non-finite numbers, negative seeds and the rules that tie two keys (issue 24)
        (lambda p: p["features"].update(top_db=float("nan")), "features.top_db: must be a finite number, got nan"),
        (lambda p: p["cmr"].update(lr=float("inf")), "cmr.lr: must be a finite number, got inf"),
        (lambda p: p["aii"].update(no_source_dbfs=[float("-inf"), -60.0]),
         "aii.no_source_dbfs[0]: must be a finite number, got -inf"),
        (lambda p: p.update(seed=-1), "seed: must be >= 0, got -1"),
        (lambda p: p.update(data_seed=2**40), "data_seed: must be <= 4294967295"),
        (lambda p: p["stage1"].update(clusters=3), "aii.max_mix: must be <= stage1.clusters (3)"),
        (lambda p: p["features"].update(win_length=2048), "features.win_length: must be <= features.n_fft (1024)"),
        (lambda p: p["features"].update(hop_length=100000),
         "features.hop_length: must be <= features.win_length (160)"),
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


@pytest.mark.parametrize("section, line", [(None, "seed: 3"), ("cmr:", "  lr: 0.5")])
def test_a_key_given_twice_is_an_error_naming_its_line(tmp_path, section, line):
    # PyYAML keeps the last of two equal keys without a word; the loader names the second one
    lines = (REPO / "params.yaml").read_text().splitlines()
    at = len(lines) if section is None else next(i for i, text in enumerate(lines) if text.startswith(section)) + 1
    lines.insert(at, line)
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    key = line.split(":")[0].strip()
    # the second of the two in the file is the one named: the inserted line, or the section's own line after it
    second = at if section is None else next(i for i in range(at + 1, len(lines))
                                             if lines[i].startswith(f"  {key}:"))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: line {second + 1}: duplicate key {key!r}"


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
