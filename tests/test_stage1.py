"""Stage 1: the stage end to end on tiny shards, determinism, resuming after a kill, mixture inputs and labels."""
from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.audio import LogMel, mixture_logmels
from pipeline.config import Aii, Model, load_params
from pipeline.models.files import load_trained
from pipeline.models.ier import Stage1Model
from pipeline.models.inputs import from_canvases, to_canvases
from pipeline.runtime import Processes
from pipeline.train.stage1 import set_trainable
from pipeline.train.embed import Embeddings
from pipeline.train.losses import multi_hot
from pipeline.train.stage1_step import Collected, Trainer, aii_labels, aii_phase, av_phase, epoch_features, train_step
from tests.helpers import REPO
from tests.helpers.features import LOGMEL_SETTINGS, write_feature_split
from tests.helpers.params import load_repo_params, replace
from tests.helpers.processes import stage_environment

SAMPLES = 4000  # 0.25-s clips: 51 log-mel frames
SIDE = 32
CLASSES = ["class0", "class1", "class2", "class3"]
COLOURS = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (230, 230, 40)]
FREQUENCIES = [300.0, 700.0, 1500.0, 3100.0]


def make_split(folder: Path, videos_per_class: int, clips_per_video: int, seed: int) -> None:
    """A features split (docs/data.md array columns): each class a coloured square at a random place
    on a noisy frame and a tone of its own frequency."""
    rng = np.random.default_rng(seed)
    clips = []
    for label, (colour, frequency) in enumerate(zip(COLOURS, FREQUENCIES)):
        for video in range(videos_per_class):
            for _clip in range(clips_per_video):
                pixels = rng.integers(0, 80, size=(3, SIDE, SIDE), dtype=np.uint8)
                x, y = rng.integers(0, SIDE - 12, size=2)
                pixels[:, y:y + 12, x:x + 12] = np.array(colour, dtype=np.uint8)[:, None, None]
                time_s = np.arange(SAMPLES) / 16000
                wave = np.sin(2 * np.pi * frequency * time_s) * rng.uniform(3000, 9000) + rng.normal(0, 300, SAMPLES)
                clips.append({"video_id": f"{CLASSES[label]}-v{video}", "labels": [CLASSES[label]],
                              "waveform": np.rint(wave).astype(np.int16), "pixels": pixels})
    write_feature_split(folder, clips, logmel_settings=LOGMEL_SETTINGS, rows_per_shard=64, row_group_rows=16)


def tiny_params(repo_params: dict, av_epochs: int, aii_epochs: int, class_epochs: int = 0) -> dict:
    params = copy.deepcopy(repo_params)
    params["model"].update(width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")
    params["stage1"].update(batch_size=8, av_epochs=av_epochs, class_epochs=class_epochs, clusters=5,
                            kmeans_niter=5, eval_mixtures=12, device="cpu")
    params["aii"].update(epochs=aii_epochs)
    return params


def make_workdir(path: Path, params: dict, train_videos_per_class: int = 3, train_clips_per_video: int = 3) -> Path:
    features = path / "data" / "features" / "tiny"
    make_split(features / "train_single", train_videos_per_class, train_clips_per_video, seed=1)
    make_split(features / "val", videos_per_class=2, clips_per_video=2, seed=3)
    make_split(features / "test", videos_per_class=2, clips_per_video=2, seed=2)
    (features / "summary.json").write_text(json.dumps({"logmel": LOGMEL_SETTINGS}))
    params["datasets"]["tiny"] = params["datasets"]["music"]
    (path / "test-params.yaml").write_text(yaml.safe_dump(params))
    return path


def stage_command() -> list[str]:
    return [sys.executable, "-m", "stages.stage1", "tiny", "--params", "test-params.yaml"]


def run_stage1(workdir: Path, env: dict) -> subprocess.CompletedProcess:
    run = subprocess.run(stage_command(), cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def module_env():
    """conftest's stage_env, module-scoped: the runs are shared by several tests."""
    return stage_environment()


@pytest.fixture(scope="module")
def repo_params_module() -> dict:
    """conftest's repo_params, module-scoped."""
    return load_repo_params()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, repo_params_module, module_env) -> Path:
    """An uninterrupted run of 2 correspondence + 1 classification + 3 AII epochs."""
    params = tiny_params(repo_params_module, 2, 3, class_epochs=1)
    workdir = make_workdir(tmp_path_factory.mktemp("stage1-a"), params)
    run_stage1(workdir, module_env)
    return workdir


@pytest.mark.slow
def test_stage_writes_a_loadable_model_and_a_report(finished):
    report = json.loads((finished / "reports" / "tiny" / "stage1.json").read_text())
    for key in ("nmi", "map", "precision", "recall"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["train_clips"] == 36 and report["test_clips"] == 16 and report["test_mixtures"] == 12
    # the val clips scored the same way (what settings are chosen by), apart from the test numbers
    assert set(report["val"]) == {"nmi", "nmi_visual", "map", "precision", "recall"}
    assert all(0.0 <= value <= 1.0 for value in report["val"].values())
    saved = torch.load(finished / "models" / "tiny" / "stage1.pt", weights_only=True)
    assert saved["config"]["clusters"] == 5 and saved["config"]["width"] == 4
    assert saved["visual_prototypes"].shape == (5, 16) and saved["audio_prototypes"].shape == (5, 16)
    assert saved["train_assignment"].shape == (36,)
    assert set(saved["cluster_to_class"]) <= set(CLASSES) | {""}
    assert any(key.startswith("aii.steps") for key in saved["state_dict"])
    # one dvclive step per epoch, for each loss of its phase
    metrics = finished / "reports" / "tiny" / "stage1-live" / "plots" / "metrics"
    assert len((metrics / "av_loss.tsv").read_text().strip().splitlines()) == 1 + 6
    assert len((metrics / "class_loss.tsv").read_text().strip().splitlines()) == 1 + 1
    assert len((metrics / "aii_loss.tsv").read_text().strip().splitlines()) == 1 + 3
    assert report["epochs"] == {"av": 2, "class": 1, "aii": 3}


@pytest.mark.slow
def test_dsols_stage1_is_the_model_before_the_aii_phase(finished, repo_params_module):
    """stage1-dsol.pt: the networks after the cluster-classify epochs, without the AII. The AII phase trains only
    the audio side, so the visual side and the head are those of stage1.pt to the bit, and P^v are its P^v."""
    model_dir = finished / "models" / "tiny"
    dsol = torch.load(model_dir / "stage1-dsol.pt", weights_only=True)
    final = torch.load(model_dir / "stage1.pt", weights_only=True)
    assert dsol["config"] == final["config"] | {"aii_enabled": False}
    assert not any(key.startswith("aii.") for key in dsol["state_dict"])
    for name, tensor in dsol["state_dict"].items():
        same = torch.equal(tensor, final["state_dict"][name])
        assert same if name.startswith(("visual.", "head.")) else True, name
    assert any(not torch.equal(tensor, final["state_dict"][name]) for name, tensor in dsol["state_dict"].items()
               if name.startswith("audio.") and tensor.is_floating_point())  # the AII phase moved the audio net
    assert torch.equal(dsol["visual_prototypes"], final["visual_prototypes"])
    assert torch.equal(dsol["train_assignment"], final["train_assignment"])
    assert dsol["audio_prototypes"].shape == final["audio_prototypes"].shape
    trained = load_trained(model_dir / "stage1-dsol.pt", Model(**tiny_params(repo_params_module, 2, 3, 1)["model"]))
    assert not trained.model.aii.enabled


@pytest.mark.slow
def test_two_runs_give_the_same_report_and_model_bytes(finished, tmp_path, repo_params_module, module_env):
    workdir = make_workdir(tmp_path, tiny_params(repo_params_module, 2, 3, class_epochs=1))
    run_stage1(workdir, module_env)
    assert (workdir / "reports" / "tiny" / "stage1.json").read_text() == \
        (finished / "reports" / "tiny" / "stage1.json").read_text()
    # The same bytes, so DVC records the same hash (torch.save once named the zip's folder after the temp file).
    for name in ("stage1.pt", "stage1-dsol.pt"):
        assert (workdir / "models" / "tiny" / name).read_bytes() == (finished / "models" / "tiny" / name).read_bytes()


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(finished, tmp_path, repo_params_module, module_env):
    workdir = make_workdir(tmp_path, tiny_params(repo_params_module, 2, 3, class_epochs=1))
    checkpoints = workdir / "models" / "tiny" / "stage1-checkpoints"
    process = subprocess.Popen(stage_command(), cwd=workdir, env=module_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("epoch-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (workdir / "reports" / "tiny" / "stage1.json").exists(), "the run ended before it was killed"
    killed_at = int(sorted(checkpoints.glob("epoch-*.pt"))[-1].stem.split("-")[1])
    assert 1 <= killed_at < 6

    rerun = run_stage1(workdir, module_env)
    assert f"stage1: resuming from the checkpoint of epoch {killed_at}" in rerun.stdout
    assert f"epoch {killed_at}/6" not in rerun.stdout and "epoch 6/6" in rerun.stdout
    assert (workdir / "reports" / "tiny" / "stage1.json").read_text() == \
        (finished / "reports" / "tiny" / "stage1.json").read_text()
    resumed = torch.load(workdir / "models" / "tiny" / "stage1.pt", weights_only=True)
    uninterrupted = torch.load(finished / "models" / "tiny" / "stage1.pt", weights_only=True)
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    # DSOL's stage 1 (after epoch 3) too, whether the kill came before it (computed by the rerun) or after it
    # (carried in the checkpoints)
    assert (workdir / "models" / "tiny" / "stage1-dsol.pt").read_bytes() == \
        (finished / "models" / "tiny" / "stage1-dsol.pt").read_bytes()
    # the resumed run's dvclive log replays the first epochs: one row per epoch, as uninterrupted
    live = Path("reports") / "tiny" / "stage1-live" / "plots" / "metrics" / "av_loss.tsv"
    assert len((workdir / live).read_text().strip().splitlines()) == 1 + 6


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_trains_to_the_end(tmp_path, repo_params_module, module_env):
    # 64 training clips in 4 row groups of 16: each of the 2 processes gets 2 groups, 4 batches of 8
    workdir = make_workdir(tmp_path, tiny_params(repo_params_module, 2, 2, class_epochs=1),
                           train_videos_per_class=4, train_clips_per_video=4)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "stages.stage1", "tiny", "--params", "test-params.yaml"]
    run = subprocess.run(command, cwd=workdir, env=module_env | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((workdir / "reports" / "tiny" / "stage1.json").read_text())
    assert report["processes"] == 2 and report["train_clips"] == 64
    assert report["epochs"] == {"av": 2, "class": 1, "aii": 2}
    assert run.stdout.count("stage1@tiny: 64 training clips") == 1  # rank 0 reports, rank 1 does not
    assert "epoch 3/5 (class)" in run.stdout and "epoch 5/5 (aii)" in run.stdout
    saved = torch.load(workdir / "models" / "tiny" / "stage1.pt", weights_only=True)
    assert saved["train_assignment"].shape == (64,)


def test_checkpoints_of_other_params_are_not_resumed(finished, tmp_path, repo_params_module, module_env):
    workdir = make_workdir(tmp_path, tiny_params(repo_params_module, 1, 0))
    shutil.copytree(finished / "models", workdir / "models")  # a finished checkpoint of other params
    run = run_stage1(workdir, module_env)
    assert "come from other params, data or code: starting over" in run.stdout
    assert "resuming" not in run.stdout
    report = json.loads((workdir / "reports" / "tiny" / "stage1.json").read_text())
    assert report["epochs"] == {"av": 1, "class": 0, "aii": 0}


def test_missing_features_is_one_line_naming_the_file(tmp_path, repo_params_module, module_env):
    params = tiny_params(repo_params_module, 1, 0)
    params["datasets"]["tiny"] = params["datasets"]["music"]
    (tmp_path / "test-params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run(stage_command(), cwd=tmp_path, env=module_env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "stage1@tiny: error: data/features/tiny/summary.json: not found (run the features stage first)")


def test_mixture_logmel_is_the_logmel_of_the_averaged_waveforms():
    rng = np.random.default_rng(0)
    waveforms = torch.from_numpy(rng.integers(-8000, 8000, size=(5, SAMPLES), dtype=np.int16))
    logmel = LogMel(**LOGMEL_SETTINGS)
    plan = np.array([[0, 3], [4, 1]])
    mixed = mixture_logmels(waveforms, plan, logmel)
    expected = logmel((waveforms[0].double() + waveforms[3].double()).float() / 2 / 32768.0)
    assert mixed.shape == (2, 64, SAMPLES // 80 + 1)
    torch.testing.assert_close(mixed[0], expected, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(mixed[0], logmel(waveforms[0]), atol=1.0)


def test_aii_labels_are_the_pseudo_classes_of_the_members():
    assignment = torch.tensor([3, 0, 2, 2, 1, 0])
    labels = aii_labels(assignment, torch.tensor([4, 2]), np.array([[0, 1, 4], [5, 2, 0]]))
    assert labels.tolist() == [[1, -1, -1], [2, -1, -1], [3, 0, 1], [0, 2, 3]]
    # the BCE targets: one-hot for single clips, the members' classes for mixtures
    assert multi_hot(labels, 4).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1]]


def test_canvases_tile_clips_row_major_and_maps_split_back_per_clip():
    images = torch.arange(8 * 3 * 4 * 4, dtype=torch.float32).reshape(8, 3, 4, 4)
    canvases = to_canvases(images, 2)
    assert canvases.shape == (2, 3, 8, 8)
    # canvas 1 holds clips 4..7: 4 top left, 5 top right, 6 bottom left, 7 bottom right
    assert torch.equal(canvases[1, :, :4, :4], images[4]) and torch.equal(canvases[1, :, :4, 4:], images[5])
    assert torch.equal(canvases[1, :, 4:, :4], images[6]) and torch.equal(canvases[1, :, 4:, 4:], images[7])
    # a feature map at a quarter of the canvas's resolution splits into each clip's own quarter
    feature_map = torch.nn.functional.avg_pool2d(canvases, 2)
    per_clip = from_canvases(feature_map, 2)
    assert per_clip.shape == (8, 3, 2, 2)
    torch.testing.assert_close(per_clip, torch.nn.functional.avg_pool2d(images, 2))
    assert torch.equal(from_canvases(canvases, 2), images)


def test_a_batch_that_does_not_fill_the_canvases_is_one_line(tmp_path, repo_params_module, module_env):
    params = tiny_params(repo_params_module, 1, 0)
    params["stage1"].update(batch_size=6, canvas=2)
    workdir = make_workdir(tmp_path, params)
    run = subprocess.run(stage_command(), cwd=workdir, env=module_env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "stage1@tiny: error: stage1.batch_size = 6 does not fill canvases of stage1.canvas^2 = 4 clips")


@pytest.mark.slow
def test_audiovisual_clusters_keep_visual_prototypes_in_the_object_space(tmp_path, repo_params_module, module_env):
    params = tiny_params(repo_params_module, 1, 1, class_epochs=1)
    params["stage1"]["cluster_features"] = "audiovisual"
    params["stage1"]["cluster_pass"] = "eval"  # the separate eval-mode pass (the other tests use the default, epoch)
    workdir = make_workdir(tmp_path, params)
    run_stage1(workdir, module_env)
    report = json.loads((workdir / "reports" / "tiny" / "stage1.json").read_text())
    assert 0.0 <= report["nmi"] <= 1.0 and 0.0 <= report["nmi_visual"] <= 1.0
    saved = torch.load(workdir / "models" / "tiny" / "stage1.pt", weights_only=True)
    # P^v: the mean object feature of each cluster, unit length and of f^v's size (not the 2 x dim k-means space)
    assert saved["visual_prototypes"].shape == (5, 16)
    used = torch.unique(saved["train_assignment"])
    torch.testing.assert_close(saved["visual_prototypes"][used].norm(dim=1), torch.ones(len(used)))


def aii_trainer(aii: Aii, seed: int = 0) -> tuple[Trainer, dict]:
    """A tiny stage-1 model in its AII phase (8 clips, 4 pseudo-classes) and one batch of it."""
    params = load_params(REPO / "params.yaml")
    model_params = replace(params.model, width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")
    stage1_params = replace(params.stage1, canvas=2, batch_size=8, clusters=4)
    torch.manual_seed(seed)
    model = Stage1Model(model_params, clusters=4, aii_enabled=True)
    set_trainable(model, "aii")
    rng = np.random.default_rng(seed)
    waveforms = torch.from_numpy(rng.integers(-8000, 8000, size=(8, SAMPLES), dtype=np.int16))
    logmel = LogMel(**LOGMEL_SETTINGS)
    batch = {"image": torch.from_numpy(rng.integers(0, 255, size=(8, 3, SIDE, SIDE), dtype=np.uint8)),
             "logmel": logmel(waveforms), "index": torch.arange(8), "video_id": [f"v{row}" for row in range(8)]}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return Trainer(model, model, optimizer, model_params, stage1_params, aii, torch.device("cpu"), False,
                   waveforms, logmel), batch


def test_single_clips_learn_to_take_no_distinguishing_step():
    # aii.single_step_weight > 0: a single clip's F^a_n is pulled to its f^a. Steps set off zero shrink over steps
    # on single clips alone (no mixtures, no no-source inputs), and the loss names the term.
    params = load_params(REPO / "params.yaml")
    trainer, batch = aii_trainer(replace(params.aii, single_step_weight=1.0, no_source_share=0.0))
    torch.nn.init.normal_(trainer.model.aii.steps.weight, std=0.5)
    phase = aii_phase(0.0, 2, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),
                      torch.nn.functional.normalize(torch.randn(4, 16)), torch.device("cpu"))
    first = [train_step(trainer, phase, batch, np.random.default_rng(step))["single_step_loss"] for step in range(30)]
    assert first[0] > 0.05 and first[-1] < 0.3 * first[0]


def test_no_source_inputs_reach_the_aii_with_every_target_zero():
    # aii.no_source_share > 0: noise near silence goes through the AII with all-zero targets, so the steps get a
    # gradient even in a batch without mixtures; without them (and with the paper's loss) they get none.
    params = load_params(REPO / "params.yaml")
    gradients = {}
    for share in (0.0, 0.25):
        trainer, batch = aii_trainer(replace(params.aii, single_step_weight=0.0, no_source_share=share))
        phase = aii_phase(0.0, 2, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),
                          torch.nn.functional.normalize(torch.randn(4, 16)), torch.device("cpu"))
        losses = train_step(trainer, phase, batch, np.random.default_rng(1))
        assert set(losses) == {"av_loss", "aii_loss"} and np.isfinite(losses["aii_loss"])
        gradients[share] = trainer.model.aii.steps.weight.grad
    assert gradients[0.0] is None or not gradients[0.0].any()
    assert gradients[0.25] is not None and gradients[0.25].abs().sum() > 0


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_single_clips_train_eq8_on_f_a_and_only_mixtures_reach_the_aii(share):
    # The paper's loss (aii.single_step_weight 0, no no-source inputs): supplement Eq. 8 scores the plain f^a of
    # a single clip; only Eq. 10's mixtures use the expanded F^a. So with no mixtures in the batch the
    # distinguishing steps get no gradient, and with some they do.
    params = load_params(REPO / "params.yaml")
    params = replace(params, aii=replace(params.aii, single_step_weight=0.0, no_source_share=0.0))
    model_params = replace(params.model, width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")
    stage1_params = replace(params.stage1, canvas=2, batch_size=8, clusters=4)
    torch.manual_seed(0)
    model = Stage1Model(model_params, clusters=4, aii_enabled=True)
    rng = np.random.default_rng(0)
    waveforms = torch.from_numpy(rng.integers(-8000, 8000, size=(8, SAMPLES), dtype=np.int16))
    logmel = LogMel(**LOGMEL_SETTINGS)
    batch = {"image": torch.from_numpy(rng.integers(0, 255, size=(8, 3, SIDE, SIDE), dtype=np.uint8)),
             "logmel": logmel(waveforms), "index": torch.arange(8), "video_id": [f"v{row}" for row in range(8)]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(model, model, optimizer, model_params, stage1_params, params.aii, torch.device("cpu"), False,
                      waveforms, logmel)
    phase = aii_phase(share, 2, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),
                      torch.nn.functional.normalize(torch.randn(4, 16)), torch.device("cpu"))
    losses = train_step(trainer, phase, batch, np.random.default_rng(1))
    assert set(losses) == {"av_loss", "aii_loss"} and np.isfinite(losses["aii_loss"])
    steps_gradient = model.aii.steps.weight.grad
    if share == 0.0:
        assert steps_gradient is None or not steps_gradient.any()
    else:
        assert steps_gradient is not None and steps_gradient.abs().sum() > 0


def test_epoch_features_fill_the_clips_no_batch_held_from_the_previous_clustering():
    # stage1.cluster_pass: epoch clusters the features the steps computed; the clips that drop_last left out of
    # this epoch keep their rows from the previous clustering.
    params = load_params(REPO / "params.yaml")
    model_params = replace(params.model, width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")
    stage1_params = replace(params.stage1, canvas=2, batch_size=4, clusters=2, cluster_pass="epoch")
    torch.manual_seed(0)
    model = Stage1Model(model_params, clusters=2, aii_enabled=True)
    rng = np.random.default_rng(0)
    waveforms = torch.from_numpy(rng.integers(-8000, 8000, size=(6, SAMPLES), dtype=np.int16))
    logmel = LogMel(**LOGMEL_SETTINGS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(model, model, optimizer, model_params, stage1_params, params.aii, torch.device("cpu"), False,
                      waveforms, logmel)
    collected = Collected.empty(6, 16)
    held = torch.tensor([4, 0, 2, 5])  # one batch; clips 1 and 3 are not in it
    train_step(trainer, av_phase(),
               {"image": torch.from_numpy(rng.integers(0, 255, size=(4, 3, SIDE, SIDE), dtype=np.uint8)),
                "logmel": logmel(waveforms[held]), "index": held, "video_id": [f"v{row}" for row in range(4)]},
               np.random.default_rng(1), collected)
    previous = Embeddings(torch.full((6, 16), 7.0), torch.full((6, 16), 9.0))
    features = epoch_features(collected, previous, Processes(0, 1, torch.device("cpu")), lambda: None)
    assert torch.equal(features.objects[[1, 3]], previous.objects[[1, 3]])
    assert torch.equal(features.audio[[1, 3]], previous.audio[[1, 3]])
    # the held clips: unit-length object features and f^a from this step, not the previous rows
    torch.testing.assert_close(features.objects[held].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(features.audio[held].norm(dim=1), torch.ones(4))


def test_aii_loss_leaves_out_sibling_prototypes_only_when_asked():
    # aii.sibling_cos < 1: a prototype whose P^a nearly equals a member's (a class split into two visual clusters)
    # is left out of Eqs. 8/10; with every P^a apart, or at 1.0 (the paper's targets), the loss is unchanged.
    params = load_params(REPO / "params.yaml")
    model_params = replace(params.model, width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")
    stage1_params = replace(params.stage1, canvas=2, batch_size=8, clusters=4)
    rng = np.random.default_rng(0)
    waveforms = torch.from_numpy(rng.integers(-8000, 8000, size=(8, SAMPLES), dtype=np.int16))
    logmel = LogMel(**LOGMEL_SETTINGS)
    batch = {"image": torch.from_numpy(rng.integers(0, 255, size=(8, 3, SIDE, SIDE), dtype=np.uint8)),
             "logmel": logmel(waveforms), "index": torch.arange(8), "video_id": [f"v{row}" for row in range(8)]}
    apart = torch.eye(4, 16)  # four orthogonal prototypes
    siblings = apart.clone()
    siblings[1] = siblings[0]  # prototypes 0 and 1 sound the same

    def aii_loss(sibling_cos: float, prototypes: torch.Tensor) -> float:
        torch.manual_seed(0)
        model = Stage1Model(model_params, clusters=4, aii_enabled=True)
        trainer = Trainer(model, model, torch.optim.AdamW(model.parameters(), lr=1e-3), model_params, stage1_params,
                          replace(params.aii, sibling_cos=sibling_cos), torch.device("cpu"), False, waveforms, logmel)
        phase = aii_phase(0.5, 2, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), prototypes, torch.device("cpu"))
        return train_step(trainer, phase, batch, np.random.default_rng(1))["aii_loss"]

    assert aii_loss(0.9, apart) == aii_loss(1.0, apart)
    assert aii_loss(0.9, siblings) != aii_loss(1.0, siblings)
