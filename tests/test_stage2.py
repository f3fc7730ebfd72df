"""Stage 2 (the Cross-modal Referrer): the stage end to end on tiny mosaics, determinism, resuming after a
kill, torchrun, stale checkpoints, the "w/o CMR" run (cmr.epochs: 0), and load_trained's one-line errors.

A tiny stage-1 model (tests/test_stage1.py's data, 1 + 1 epochs) and tiny stage-2 training mosaics
(tests/test_synth.py's features, run through the synth) are built once for the module.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import Cmr, MixSet, Model
from pipeline.models.files import load_trained
from pipeline.paths import Stage2Paths
from pipeline.stage import StageError
from pipeline.synth import run_synth
from pipeline.train.stage2 import run_stage2, stage2_fingerprint
from tests.helpers.params import load_repo_params
from tests.helpers.processes import stage_environment
from tests.test_stage1 import make_workdir, tiny_params
from tests.test_synth import small_synth, write_features

MOSAICS = 16  # stage-2 training mosaics, in 4 row groups of 4: each of 2 torchrun processes gets 2 groups
BATCH = 4  # mosaics per step: 4 steps an epoch in one process, 2 in each of two
EPOCHS = 3
LIVE_LOSS = Path("reports") / "tiny" / "stage2-live" / "plots" / "metrics" / "referrer_loss.tsv"


# --------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def module_env() -> dict:
    """conftest's stage_env, module-scoped: the runs are shared by several tests."""
    return stage_environment()


@pytest.fixture(scope="module")
def repo_params_module() -> dict:
    """conftest's repo_params, module-scoped."""
    return load_repo_params()


def tiny_stage2_params(repo_params: dict, **cmr) -> dict:
    """test_stage1's tiny params (the model settings stage 1 trained with) and a tiny stage 2 on the CPU."""
    params = tiny_params(repo_params, av_epochs=1, aii_epochs=1)
    params["datasets"]["tiny"] = params["datasets"]["music"]
    params["cmr"].update(dict(epochs=EPOCHS, batch_size=BATCH, device="cpu") | cmr)
    return params


def model_settings(params: dict) -> Model:
    return Model(**params["model"])


@pytest.fixture(scope="module")
def stage1_model(tmp_path_factory, repo_params_module, module_env) -> Path:
    """models/tiny/stage1.pt of a tiny stage-1 run (1 correspondence + 1 AII epoch)."""
    workdir = make_workdir(tmp_path_factory.mktemp("stage1"), tiny_params(repo_params_module, 1, 1))
    run = subprocess.run([sys.executable, "-m", "stages.stage1", "tiny", "--params", "test-params.yaml"],
                         cwd=workdir, env=module_env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir / "models" / "tiny" / "stage1.pt"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """data/synth/<ds> with MOSAICS training mosaics (2 sounding, 1 silent, 1 off-screen; 32-px tiles, 2x2)."""
    root = tmp_path_factory.mktemp("synth")
    write_features(root / "features")
    out = root / "synth"
    run_synth(root / "features", out, small_synth(train=MixSet(count=MOSAICS, sounding=2, silent=1, offscreen=1),
                                                  shard_rows=8, row_group_rows=4), seed=0)
    return out


def make_stage2_workdir(path: Path, params: dict, stage1_model: Path, synth_dir: Path) -> Path:
    """A folder laid out like the repo with the synth output, stage 1's model and test-params.yaml."""
    shutil.copytree(synth_dir, path / "data" / "synth" / "tiny")
    (path / "models" / "tiny").mkdir(parents=True)
    shutil.copy(stage1_model, path / "models" / "tiny" / "stage1.pt")
    (path / "test-params.yaml").write_text(yaml.safe_dump(params))
    return path


def stage_command() -> list[str]:
    return [sys.executable, "-m", "stages.stage2", "tiny", "--params", "test-params.yaml"]


def run_stage(workdir: Path, env: dict) -> subprocess.CompletedProcess:
    run = subprocess.run(stage_command(), cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def report_of(workdir: Path) -> dict:
    return json.loads((workdir / "reports" / "tiny" / "stage2.json").read_text())


def saved_model(workdir: Path, stage: str = "stage2") -> dict:
    return torch.load(workdir / "models" / "tiny" / f"{stage}.pt", weights_only=True)


def assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(second[name], tensor), name


@pytest.fixture(scope="module")
def finished(tmp_path_factory, repo_params_module, stage1_model, synth_dir, module_env) -> Path:
    """An uninterrupted stage-2 run of EPOCHS epochs."""
    workdir = make_stage2_workdir(tmp_path_factory.mktemp("stage2-a"), tiny_stage2_params(repo_params_module),
                                  stage1_model, synth_dir)
    run_stage(workdir, module_env)
    return workdir


# --------------------------------------------------------------------------- the stage


@pytest.mark.slow
def test_stage_writes_a_loadable_model_and_a_report(finished, stage1_model, repo_params_module):
    report = report_of(finished)
    assert report["epochs"] == EPOCHS and report["train_mosaics"] == MOSAICS and report["processes"] == 1
    assert report["silent_filter"] is True and report["offscreen_filter"] is True
    assert isinstance(report["final_loss"], float) and report["final_loss"] > 0
    saved, stage1 = saved_model(finished), torch.load(stage1_model, weights_only=True)
    assert saved["config"]["silent_filter"] is True and saved["config"]["offscreen_filter"] is True
    assert saved["config"]["temperature"] == repo_params_module["cmr"]["temperature"]
    assert saved["config"]["clusters"] == 5 and saved["config"]["width"] == 4
    # the prototypes and the cluster names are stage 1's
    assert torch.equal(saved["visual_prototypes"], stage1["visual_prototypes"])
    assert torch.equal(saved["audio_prototypes"], stage1["audio_prototypes"])
    assert saved["cluster_to_class"] == stage1["cluster_to_class"]
    # the teacher side (audio net, AII, BatchNorm statistics included) is stage 1's; the visual net has learned
    state, before = saved["state_dict"], stage1["state_dict"]
    assert state.keys() == before.keys()
    teacher = [name for name in state if name.startswith(("audio.", "aii."))]
    assert teacher and all(torch.equal(state[name], before[name]) for name in teacher)
    assert any(not torch.equal(state[name], before[name]) for name in state if name.startswith("visual."))
    # load_trained reads it back into a working model
    trained = load_trained(finished / "models" / "tiny" / "stage2.pt",
                           model_settings(tiny_stage2_params(repo_params_module)))
    assert trained.visual_prototypes.shape == (5, 16) and len(trained.cluster_to_class) == 5
    assert torch.equal(trained.model.state_dict()["visual.project.2.weight"], state["visual.project.2.weight"])
    # one dvclive row per epoch, and only the last checkpoint is kept
    assert len((finished / LIVE_LOSS).read_text().strip().splitlines()) == 1 + EPOCHS
    checkpoints = sorted(path.name for path in (finished / "models" / "tiny" / "stage2-checkpoints").iterdir())
    assert checkpoints == [f"epoch-{EPOCHS:04d}.pt"]


@pytest.mark.slow
def test_two_runs_give_the_same_report_and_weights(finished, tmp_path, repo_params_module, stage1_model, synth_dir,
                                                   module_env):
    workdir = make_stage2_workdir(tmp_path, tiny_stage2_params(repo_params_module), stage1_model, synth_dir)
    run_stage(workdir, module_env)
    assert (workdir / "reports" / "tiny" / "stage2.json").read_text() == \
        (finished / "reports" / "tiny" / "stage2.json").read_text()
    assert_same_state(saved_model(finished)["state_dict"], saved_model(workdir)["state_dict"])
    assert (workdir / "models" / "tiny" / "stage2.pt").read_bytes() == \
        (finished / "models" / "tiny" / "stage2.pt").read_bytes()


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(finished, tmp_path, repo_params_module, stage1_model,
                                                      synth_dir, module_env):
    workdir = make_stage2_workdir(tmp_path, tiny_stage2_params(repo_params_module), stage1_model, synth_dir)
    checkpoints = workdir / "models" / "tiny" / "stage2-checkpoints"
    process = subprocess.Popen(stage_command(), cwd=workdir, env=module_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("epoch-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # in the second epoch: the first one's checkpoint has just appeared
    process.wait()
    assert not (workdir / "reports" / "tiny" / "stage2.json").exists(), "the run ended before it was killed"
    killed_at = int(sorted(checkpoints.glob("epoch-*.pt"))[-1].stem.split("-")[1])
    assert 1 <= killed_at < EPOCHS

    rerun = run_stage(workdir, module_env)
    assert f"stage2: resuming from the checkpoint of epoch {killed_at}" in rerun.stdout
    assert f"epoch {killed_at}/{EPOCHS}" not in rerun.stdout and f"epoch {EPOCHS}/{EPOCHS}" in rerun.stdout
    assert report_of(workdir) == report_of(finished)
    assert_same_state(saved_model(finished)["state_dict"], saved_model(workdir)["state_dict"])
    # the resumed run's dvclive log replays the first epochs: one row per epoch, as uninterrupted
    assert (workdir / LIVE_LOSS).read_text() == (finished / LIVE_LOSS).read_text()


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_trains_to_the_end(tmp_path, repo_params_module, stage1_model, synth_dir,
                                                            module_env):
    workdir = make_stage2_workdir(tmp_path, tiny_stage2_params(repo_params_module, epochs=2), stage1_model,
                                  synth_dir)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "stages.stage2", "tiny", "--params", "test-params.yaml"]
    # in a session of its own, so that a hung run's ranks are killed with it (one hung at exit when the DDP wrapper
    # outlived the process group)
    process = subprocess.Popen(command, cwd=workdir, env=module_env | {"OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun did not end in 240 s; its output ends with: {(stdout + stderr)[-2000:]}")
    assert process.returncode == 0, stderr[-3000:]
    run = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    report = report_of(workdir)
    assert report["processes"] == 2 and report["train_mosaics"] == MOSAICS and report["epochs"] == 2
    assert isinstance(report["final_loss"], float)
    assert run.stdout.count(f"stage2@tiny: {MOSAICS} training mosaics") == 1  # rank 0 reports, rank 1 does not
    assert run.stdout.count("stage2: epoch 2/2") == 1
    assert "visual.project.2.weight" in saved_model(workdir)["state_dict"]


@pytest.mark.slow
def test_checkpoints_of_other_params_are_not_resumed(finished, tmp_path, repo_params_module, stage1_model, synth_dir,
                                                     module_env):
    params = tiny_stage2_params(repo_params_module, epochs=1, lr=repo_params_module["cmr"]["lr"] * 2)
    workdir = make_stage2_workdir(tmp_path, params, stage1_model, synth_dir)
    # a finished run's checkpoint (epoch 3 of 3) of other params
    shutil.copytree(finished / "models" / "tiny" / "stage2-checkpoints", workdir / "models" / "tiny" /
                    "stage2-checkpoints")
    run = run_stage(workdir, module_env)
    assert "come from other params, data or code: starting over" in run.stdout
    assert "resuming" not in run.stdout and "stage2: epoch 1/1" in run.stdout
    report = report_of(workdir)
    assert report["epochs"] == 1 and report["final_loss"] != report_of(finished)["final_loss"]
    checkpoints = sorted(path.name for path in (workdir / "models" / "tiny" / "stage2-checkpoints").iterdir())
    assert checkpoints == ["epoch-0001.pt"]


def test_fingerprint_follows_the_stage1_model_params_and_seed(tmp_path, stage1_model, synth_dir, repo_params_module):
    params = tiny_stage2_params(repo_params_module)
    model, cmr = model_settings(params), Cmr(**params["cmr"])
    other_stage1 = tmp_path / "stage1.pt"
    saved = torch.load(stage1_model, weights_only=True)
    saved["visual_prototypes"] = saved["visual_prototypes"] + 1e-3  # another stage-1 result, same shapes
    torch.save(saved, other_stage1)
    same = stage2_fingerprint(synth_dir, stage1_model, model, cmr, 0)
    assert stage2_fingerprint(synth_dir, stage1_model, model, cmr, 0) == same
    assert stage2_fingerprint(synth_dir, other_stage1, model, cmr, 0) != same
    assert stage2_fingerprint(synth_dir, stage1_model, model, Cmr(**(params["cmr"] | {"epochs": 4})), 0) != same
    no_filter = Cmr(**(params["cmr"] | {"silent_filter": False}))
    assert stage2_fingerprint(synth_dir, stage1_model, model, no_filter, 0) != same
    assert stage2_fingerprint(synth_dir, stage1_model, model, cmr, 1) != same


@pytest.mark.slow
def test_zero_epochs_writes_the_stage1_networks_unchanged(tmp_path, repo_params_module, stage1_model, synth_dir,
                                                          module_env):
    params = tiny_stage2_params(repo_params_module, epochs=0, silent_filter=False)
    workdir = make_stage2_workdir(tmp_path, params, stage1_model, synth_dir)
    run = run_stage(workdir, module_env)
    assert "stage2: epoch" not in run.stdout
    report = report_of(workdir)
    assert report["epochs"] == 0 and report["final_loss"] is None and report["train_mosaics"] == MOSAICS
    saved, stage1 = saved_model(workdir), torch.load(stage1_model, weights_only=True)
    assert_same_state(stage1["state_dict"], saved["state_dict"])  # every weight and BatchNorm statistic
    assert torch.equal(saved["visual_prototypes"], stage1["visual_prototypes"])
    assert torch.equal(saved["audio_prototypes"], stage1["audio_prototypes"])
    assert saved["cluster_to_class"] == stage1["cluster_to_class"]
    # stage 1's config, with stage 2's switches recorded as asked
    assert saved["config"] == stage1["config"] | {"silent_filter": False, "offscreen_filter": True,
                                                  "temperature": params["cmr"]["temperature"]}
    assert not list((workdir / "models" / "tiny").glob("stage2-checkpoints/epoch-*.pt"))
    # no curve, but the folder dvc.yaml declares as stage 2's plots output exists (DVC fails on a missing one)
    assert (workdir / LIVE_LOSS).parent.is_dir() and not (workdir / LIVE_LOSS).exists()


def test_missing_training_mosaics_is_one_line_naming_the_folder(tmp_path, repo_params_module, stage1_model):
    (tmp_path / "synth" / "train").mkdir(parents=True)
    params = tiny_stage2_params(repo_params_module)
    paths = Stage2Paths(stage1_model, tmp_path / "stage2.pt", tmp_path / "stage2.json", tmp_path / "checkpoints",
                        tmp_path / "live")
    with pytest.raises(StageError) as caught:
        run_stage2(tmp_path / "synth", paths, model_settings(params), Cmr(**params["cmr"]), 0)
    assert str(caught.value) == f"{tmp_path / 'synth' / 'train'}: no shard-*.parquet files (run the synth stage first)"
    assert not paths.model.exists() and not paths.checkpoints.exists()


# --------------------------------------------------------------------------- load_trained's errors


def load_error(path: Path, model: Model) -> str:
    with pytest.raises(StageError) as caught:
        load_trained(path, model)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message


@pytest.fixture
def tiny_model(repo_params_module) -> Model:
    return model_settings(tiny_stage2_params(repo_params_module))


def test_load_trained_reads_a_stage1_model(stage1_model, tiny_model):
    trained = load_trained(stage1_model, tiny_model)
    saved = torch.load(stage1_model, weights_only=True)
    assert_same_state(saved["state_dict"], trained.model.state_dict())
    assert trained.config == saved["config"] and trained.cluster_to_class == saved["cluster_to_class"]


def test_load_trained_missing_file(tmp_path, tiny_model):
    path = tmp_path / "models" / "stage2.pt"
    assert load_error(path, tiny_model) == f"{path}: not found (run the stage that writes it first)"


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0])
def test_load_trained_truncated_file(tmp_path, stage1_model, tiny_model, keep):
    data = stage1_model.read_bytes()
    path = tmp_path / "stage1.pt"
    path.write_bytes(data[:int(len(data) * keep)])
    message = load_error(path, tiny_model)
    assert "truncated or corrupt" in message, message


def test_load_trained_corrupt_file(tmp_path, stage1_model, tiny_model):
    data = bytearray(stage1_model.read_bytes())
    data[:64] = bytes(64)  # the zip's first local header zeroed
    path = tmp_path / "stage1.pt"
    path.write_bytes(bytes(data))
    message = load_error(path, tiny_model)
    assert "truncated or corrupt" in message and "weights_only" not in message, message
    path.write_text("not a model\n")
    assert "truncated or corrupt" in load_error(path, tiny_model)


@pytest.mark.parametrize("name, value, shown", [("width", 8, "8"), ("dim", 32, "32"),
                                                ("audio_mid_stages", [3, 4], "[3, 4]")])
def test_load_trained_other_model_settings(stage1_model, repo_params_module, name, value, shown):
    params = tiny_stage2_params(repo_params_module)
    trained_value = params["model"][name]
    params["model"][name] = value
    message = load_error(stage1_model, model_settings(params))
    assert message == f"{stage1_model}: trained with model.{name} = {trained_value}, params.yaml has {shown}"


def test_load_trained_file_that_is_not_a_model_file(tmp_path, stage1_model, tiny_model):
    # a torch file of another kind: a stage-1 checkpoint-like dict without "state_dict" / "config"
    path = tmp_path / "epoch-0001.pt"
    torch.save({"epoch": 1, "model": {}}, path)
    message = load_error(path, tiny_model)
    assert "not a stage-1 or stage-2 model file" in message and "state_dict" in message, message


def test_load_trained_config_that_does_not_fit_the_weights(tmp_path, stage1_model, tiny_model):
    saved = torch.load(stage1_model, weights_only=True)
    saved["config"] = copy.deepcopy(saved["config"]) | {"clusters": saved["config"]["clusters"] + 2}
    path = tmp_path / "stage1.pt"
    torch.save(saved, path)
    message = load_error(path, tiny_model)
    assert "weights do not fit" in message, message
    saved["config"].pop("clusters")
    torch.save(saved, path)
    assert "no config['clusters']" in load_error(path, tiny_model)


@pytest.mark.slow
def test_eq1_next_to_l_u_changes_what_stage2_learns(finished, tmp_path, repo_params_module, stage1_model, synth_dir,
                                                    module_env):
    # cmr.av_loss_weight > 0 adds Eq. 1 on the mosaics (DSOL's stage 2 keeps its location loss): the same run
    # otherwise, so any difference in the weights is that term's gradient; the teacher side stays stage 1's
    params = tiny_stage2_params(repo_params_module, av_loss_weight=0.5)
    workdir = make_stage2_workdir(tmp_path, params, stage1_model, synth_dir)
    run_stage(workdir, module_env)
    with_eq1, alone = saved_model(workdir)["state_dict"], saved_model(finished)["state_dict"]
    assert any(not torch.equal(with_eq1[name], alone[name]) for name in with_eq1 if name.startswith("visual."))
    assert not torch.equal(with_eq1["head.scale"], alone["head.scale"])
    teacher = [name for name in with_eq1 if name.startswith(("audio.", "aii."))]
    assert all(torch.equal(with_eq1[name], alone[name]) for name in teacher)
    assert report_of(workdir)["final_loss"] != report_of(finished)["final_loss"]
