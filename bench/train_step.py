"""Training-step benchmark: how much of a stage-1 step the input pipeline costs.

Times the same stage-1 steps (`pipeline.train.stage1_step.train_step`, the code the stage runs) fed two ways:

- reader: batches straight from the Parquet shard reader through its DataLoader, as the stage does,
  epoch after epoch (the first epoch reads the files, later ones come from the reader's cache);
- memory: the very same batches, taken from the reader beforehand and kept in a list.

Both runs start from the same weights, optimizer state and random generators, so they compute the
same steps; the difference is the time spent getting batches. Each reader run uses a fresh reader, so
its first epoch reads the files. The two ways alternate `--repeats` times; the best run of each counts.
Prints the mean step time of each and the overhead of the reader in percent: (reader - memory) / memory.

    python bench/train_step.py                     # data/features/music/train_single, AV phase, 3 epochs
    python bench/train_step.py --phase aii --epochs 2 --folder data/features/vggsound/train_single
    python bench/train_step.py --contiguous        # NCHW tensors instead of the stage's channels_last

Needs the features stage's output (`dvc repro features@music`) and the pretrain stage's
(`model.visual_pretrained`). The model and batch size are those of params.yaml (`model`, `stage1`).
It prints figures and asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `python bench/train_step.py`

import numpy as np
import torch

from pipeline.audio import LogMel
from pipeline.config import load_params
from pipeline.models.ier import Stage1Model
from pipeline.reader import ShardReader, make_loader
from pipeline.runtime import make_deterministic, make_optimizer, pick_device
from pipeline.train.embed import read_split
from pipeline.train.stage1_step import Trainer, aii_phase, av_phase, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="data/features/music/train_single", help="a features split")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed each way")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each way, alternating; the best counts")
    parser.add_argument("--phase", choices=("av", "aii"), default="av",
                        help="av: Eq. 1 steps; aii: mixtures too (p_end share of max_mix clips, random pseudo-classes)")
    parser.add_argument("--contiguous", action="store_true",
                        help="NCHW tensors even where model.channels_last is true (to time the difference)")
    args = parser.parse_args()

    folder = ROOT / args.folder
    summary = folder.parent / "summary.json"
    if not summary.is_file():
        sys.exit(f"{summary}: not found (run `dvc repro features@<dataset>` first)")
    params = load_params(ROOT / args.params)
    model_params, stage1_params, aii_params = params.model, params.stage1, params.aii
    device = pick_device(stage1_params.device, "stage1.device")
    channels_last = model_params.channels_last and not args.contiguous
    logmel = LogMel(**json.loads(summary.read_text())["logmel"])
    waveforms = read_split(folder).waveforms

    def new_reader() -> ShardReader:
        return ShardReader(folder, columns=("image", "logmel", "index", "video_id"),
                           batch_size=stage1_params.batch_size, shuffle=True, seed=params.seed, drop_last=True)

    make_deterministic(device)  # as the stage runs
    torch.manual_seed(params.seed)
    model = Stage1Model(model_params, stage1_params.clusters, aii_params.enabled).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), stage1_params.lr, stage1_params.weight_decay)
    start_state = ({k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict())
    trainer = Trainer(model, model, optimizer, model_params, stage1_params, aii_params, device, channels_last,
                      waveforms, logmel)
    phase = av_phase()
    if args.phase == "aii":
        assignment = torch.from_numpy(np.arange(len(waveforms)) % stage1_params.clusters)
        phase = aii_phase(aii_params.p_end, aii_params.max_mix, assignment,
                          torch.nn.functional.normalize(torch.randn(stage1_params.clusters, model_params.dim), dim=1),
                          device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(batches_of_epoch) -> tuple[float, int]:
        """Train args.epochs epochs from the start state; (seconds, steps)."""
        model.load_state_dict(start_state[0])
        optimizer.load_state_dict(start_state[1])
        steps = 0
        synchronize()
        start = time.perf_counter()
        for epoch in range(args.epochs):
            rng = np.random.default_rng([params.seed, epoch])
            for batch in batches_of_epoch(epoch):
                train_step(trainer, phase, batch, rng)
                steps += 1
        synchronize()
        return time.perf_counter() - start, steps

    def reader_run() -> tuple[float, int]:
        """A fresh reader each time, so every timed run includes its first epoch's file reads."""
        reader = new_reader()
        loader = make_loader(reader)

        def batches_of_epoch(epoch: int):
            reader.set_epoch(epoch)
            return loader
        return run(batches_of_epoch)

    # The same batches, read beforehand (the reader reuses batch memory, hence the clones).
    twin = new_reader()
    kept = []
    for epoch in range(args.epochs):
        twin.set_epoch(epoch)
        kept.append([{name: value.clone() if torch.is_tensor(value) else list(value) for name, value in batch.items()}
                     for batch in make_loader(twin)])

    run(lambda epoch: kept[epoch][:2])  # warm-up: allocator, kernels, thread pools
    memory, reader = [], []
    for _ in range(args.repeats):
        memory.append(run(lambda epoch: kept[epoch]))
        reader.append(reader_run())
    steps = memory[0][1]
    assert all(count == steps for _, count in memory + reader), "both ways must run the same steps"
    memory_ms, reader_ms = (1000 * min(seconds for seconds, _ in runs) / steps for runs in (memory, reader))
    print(f"{args.folder}: {twin.num_rows} clips, batch {stage1_params.batch_size}, {args.phase} phase, "
          f"{args.epochs} epochs = {steps} steps on {device} (torch threads: {torch.get_num_threads()}"
          f"{', channels_last' if channels_last else ''}), "
          f"best of {args.repeats}")
    print(f"step fed from memory:      {memory_ms:8.2f} ms")
    print(f"step fed by shard reader:  {reader_ms:8.2f} ms")
    print(f"input pipeline overhead:   {100 * (reader_ms - memory_ms) / memory_ms:+8.2f} %")


if __name__ == "__main__":
    main()
