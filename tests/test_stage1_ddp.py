"""Stage 1 under DDP: two gloo processes that train on different batches end with the same weights
(without DDP's gradient averaging they would differ after the first step)."""
from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.audio import LogMel
from pipeline.config import Aii, Model, Stage1
from pipeline.models.ier import Stage1Model
from pipeline.runtime import start_processes, stop_processes, wrap_for_training
from pipeline.train.stage1_step import Trainer, aii_phase, av_phase, train_step
from tests.helpers.features import LOGMEL_SETTINGS
from tests.helpers.params import load_repo_params

SAMPLES, SIDE, BATCH = 4000, 32, 8  # 8: two 2x2 canvases (stage1.canvas)


def tiny_settings() -> tuple[Model, Stage1, Aii]:
    params = load_repo_params()
    model = Model(**(params["model"] | dict(width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")))
    stage1 = Stage1(**(params["stage1"] | dict(batch_size=BATCH, clusters=3, device="cpu")))
    return model, stage1, Aii(**params["aii"])


def random_batch(rng: np.random.Generator, logmel: LogMel, waveforms: torch.Tensor) -> dict:
    index = rng.choice(len(waveforms), BATCH, replace=False)
    return {"image": torch.from_numpy(rng.integers(0, 255, (BATCH, 3, SIDE, SIDE), dtype=np.uint8)),
            "logmel": logmel(waveforms[index].float() / 32768.0), "index": torch.from_numpy(index),
            "video_id": [f"video{i}" for i in index]}


def train_a_few_steps(rank: int, port: int, results: dict) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model_params, stage1_params, aii_params = tiny_settings()
    processes = start_processes("cpu", "stage1.device")
    try:
        torch.manual_seed(0)  # the same initial weights in both processes, as in the stage
        model = Stage1Model(model_params, stage1_params.clusters, aii_enabled=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        logmel = LogMel(**LOGMEL_SETTINGS)
        data_rng = np.random.default_rng(rank)  # each process its own data, as with the sharded reader
        waveforms = torch.from_numpy(data_rng.integers(-8000, 8000, (12, SAMPLES), dtype=np.int16))
        # correspondence phase (the AII module frozen, as in the stage), then the AII phase
        model.aii.requires_grad_(False)
        trainer = Trainer(model, wrap_for_training(model, processes), optimizer, model_params, stage1_params,
                          aii_params, processes.device, False, waveforms, logmel)
        for _ in range(2):
            train_step(trainer, av_phase(), random_batch(data_rng, logmel, waveforms), data_rng)
        for module in (model.visual, model.head):
            module.requires_grad_(False)
        model.aii.requires_grad_(True)
        trainer = Trainer(model, wrap_for_training(model, processes), optimizer, model_params, stage1_params,
                          aii_params, processes.device, False, waveforms, logmel)
        phase = aii_phase(0.5, 2, torch.arange(12) % stage1_params.clusters, torch.randn(stage1_params.clusters, 16),
                          processes.device)
        for _ in range(2):
            train_step(trainer, phase, random_batch(data_rng, logmel, waveforms), data_rng)
        # parameters only: BatchNorm statistics are rank 0's at each forward, then each rank's own batch's
        results[rank] = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}
    finally:
        stop_processes(processes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_on_different_batches_keep_equal_weights():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(train_a_few_steps, args=(free_port(), results), nprocs=2, join=True)
    first, second = results[0], results[1]
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=1e-6, msg=name)
    # both phases trained something: the trunks in the first, the AII steps in the second
    torch.manual_seed(0)
    initial = Stage1Model(tiny_settings()[0], 3, aii_enabled=True).state_dict()
    assert not torch.equal(first["visual.project.0.weight"], initial["visual.project.0.weight"])
    assert not torch.equal(first["aii.steps.weight"], initial["aii.steps.weight"])
    assert not dist.is_initialized()
