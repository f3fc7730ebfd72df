"""Loader benchmark: the Parquet shard reader against DSOL's one-file-per-clip layout.

DSOL keeps each clip as two files (a pickled log-mel array and a JPEG frame) and
loads them per sample in a map-style Dataset: pickle.load, PIL open, ToTensor,
then the DataLoader collates. This script builds that layout from a features
split (once, under data/bench/files/), then times reading N clips both ways,
each producing what its training loop consumes, with the same clips, batch size
and DataLoader workers:

- per-file (DSOL): float image (ToTensor) + log-mel tensor per clip, collated;
- shards: uint8 image (from `pixels`) + log-mel + waveform tensors per batch.

The headline compares per-file with the shard reader STREAMED: its decoded-row-
group cache off, so every epoch reads and decodes the Parquet files. The second
figure is the reader with its default cache (after the first epoch the toy
split is served from memory). Then, for reference: streamed with the images
scaled to floats in the loader as ToTensor does (the trainer would do it on
its device), and streamed decoding the JPEGs instead of reading stored pixels
(`features.store_pixels: false`). Every loader reads warm files (a first
untimed pass puts them in the OS page cache); each rate is the best of a few
runs, the clock starting at the first batch. With workers, it also times a
DataLoader whose workers do nothing but hand over ready batches of the same
shapes: about the most any loader gets through that many workers on that machine.

    python bench/loader.py                      # data/features/music/train_single, 0 workers
    python bench/loader.py --clips 8000 --batch-size 64 --workers 2 --folder data/features/vggsound/test

When the features split is missing (features stage not run), a synthetic split
of toy size is generated under data/bench/synthetic/ and used instead.
It prints figures and asserts nothing.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `python bench/loader.py`

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.utils.data  # noqa: E402
import torchvision.transforms as transforms  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pipeline.arrays import array_layout, array_values, clip_schema
from pipeline.config import load_params  # noqa: E402
from pipeline.features import run_features
from pipeline.reader import ShardReader, make_loader  # noqa: E402
from pipeline.shards import atomic_dir, shard_paths, write_json, write_table  # noqa: E402

BENCH_DIR = ROOT / "data" / "bench"


# --------------------------------------------------------------------------- synthetic split


def write_synthetic_clips(clips_dir: Path, classes: int = 8, videos_per_class: int = 8, clips_per_video: int = 6,
                          frame_size: int = 128, sample_rate: int = 16000, seed: int = 0) -> None:
    """A clips folder (docs/data.md "clips") of toy size: one coloured shape and one tone per class."""
    rng = np.random.default_rng(seed)
    schema = clip_schema(sample_rate)
    index = []
    with atomic_dir(clips_dir) as tmp:
        for video in range(classes * videos_per_class):
            label = f"class{video % classes}"
            video_id = f"synthetic{video:04d}"
            seconds = np.arange(clips_per_video * sample_rate) / sample_rate
            tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * (video % classes)) * seconds)
            audio = ((tone + 0.05 * rng.standard_normal(len(seconds))) * 32767).astype(np.int16)
            frames = []
            for _ in range(clips_per_video):
                background = np.linspace(0, 255, frame_size)[None, :, None] * rng.uniform(0.3, 1.0, 3)
                picture = (np.broadcast_to(background, (frame_size, frame_size, 3))
                           + rng.normal(0, 8, (frame_size,) * 2 + (3,)))
                image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
                x, y = rng.integers(0, frame_size // 2, 2)
                ImageDraw.Draw(image).ellipse([x, y, x + frame_size // 3, y + frame_size // 3],
                                              fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
                jpeg = io.BytesIO()
                image.save(jpeg, format="JPEG", quality=90)
                frames.append(jpeg.getvalue())
            table = pa.Table.from_pydict({
                "clip_id": [f"{video_id}_{k:04d}" for k in range(clips_per_video)],
                "video_id": [video_id] * clips_per_video,
                "clip_index": list(range(clips_per_video)),
                "start_s": [float(k) for k in range(clips_per_video)],
                "labels": [[label]] * clips_per_video,
                "kind": ["solo"] * clips_per_video,
                "waveform": pa.FixedSizeListArray.from_arrays(pa.array(audio), sample_rate),
                "frames": [[jpeg] for jpeg in frames],
                "objects": [[[]] for _ in frames],
            }, schema=schema)
            write_table(table, tmp / "videos" / f"{video_id}.parquet")
            index.append(dict(video_id=video_id, status="ok", reason="", n_clips=clips_per_video))
        write_table(pa.Table.from_pylist(index, schema=pa.schema([
            ("video_id", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("n_clips", pa.int32())])),
            tmp / "videos.parquet")


def synthetic_split() -> Path:
    """data/bench/synthetic/features/train_single, made with the real features code and params.yaml."""
    features_dir = BENCH_DIR / "synthetic" / "features"
    if not (features_dir / "summary.json").is_file():
        params = load_params(ROOT / "params.yaml")
        clips_dir = BENCH_DIR / "synthetic" / "clips"
        write_synthetic_clips(clips_dir)
        run_features(clips_dir, features_dir, params.features, params.datasets["music"], sample_rate=16000)
    return features_dir / "train_single"


# --------------------------------------------------------------------------- DSOL's layout


def build_per_file_copy(folder: Path) -> Path:
    """One `<clip_id>.pkl` (log-mel array) and one `<clip_id>.jpg` per clip, plus `list.txt`; built once."""
    copy_dir = BENCH_DIR / "files" / "_".join(folder.resolve().parts[-3:])
    source = [dict(path=str(path), bytes=path.stat().st_size) for path in shard_paths(folder)]
    recorded = copy_dir / "source.json"
    if recorded.is_file() and json.loads(recorded.read_text()) == {"shards": source}:
        return copy_dir
    print(f"building the per-file copy of {folder} in {copy_dir} ...", flush=True)
    with atomic_dir(copy_dir) as tmp:
        lines = []
        for path in shard_paths(folder):
            table = pq.read_table(path, columns=["clip_id", "logmel", "frames"])
            logmels = array_values(table.column("logmel"), *array_layout(table.schema, "logmel"))
            for clip_id, logmel, frames in zip(table.column("clip_id").to_pylist(), logmels,
                                               table.column("frames").to_pylist()):
                with open(tmp / f"{clip_id}.pkl", "wb") as file:
                    pickle.dump(logmel, file)
                (tmp / f"{clip_id}.jpg").write_bytes(frames[0])
                lines.append(f"{clip_id}.pkl {clip_id}.jpg")
        (tmp / "list.txt").write_text("\n".join(lines) + "\n")
        write_json({"shards": source}, tmp / "source.json")
    return copy_dir


class PerFileClips(torch.utils.data.Dataset):
    """DSOL's way (music-exp/data/MUSIC_dataset.py): per sample, unpickle the log-mel, open the JPEG, ToTensor."""

    def __init__(self, copy_dir: Path):
        self.copy_dir = copy_dir
        self.pairs = [line.split() for line in (copy_dir / "list.txt").read_text().splitlines()]
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        audio_file, image_file = self.pairs[index]
        with open(self.copy_dir / audio_file, "rb") as file:
            logmel = np.expand_dims(pickle.load(file), 0)
        image = Image.open(self.copy_dir / image_file).convert("RGB")
        return logmel, self.to_tensor(image)


# --------------------------------------------------------------------------- timing


class Clock:
    """Steady-state rate: the clock starts when the first batch arrives (worker start-up excluded)."""

    def __init__(self, clips: int):
        self.clips, self.seen, self.start = clips, 0, None

    def tick(self, batch_clips: int) -> bool:
        """Count a batch; True once enough clips are read."""
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.seen += batch_clips
        return self.seen >= self.clips

    def rate(self) -> float:
        return self.seen / (time.perf_counter() - self.start)


def time_per_file(copy_dir: Path, clips: int, batch_size: int, workers: int, seed: int) -> float:
    """clips/s of DSOL's loader reading `clips` clips: one DataLoader, reshuffled every epoch."""
    dataset = PerFileClips(copy_dir)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    clock = Clock(clips)
    while True:
        for logmel, _image in loader:
            if clock.tick(len(logmel)):
                return clock.rate()


def float_images(batch: dict) -> dict:
    """What ToTensor gives the per-file loader: images as floats in [0, 1] (made where batches are made)."""
    batch["image"] = batch["image"].float().div_(255)
    return batch


SHARD_COLUMNS = ("image", "logmel", "waveform")  # what the shard reader hands a training loop


def time_shards(folder: Path, clips: int, batch_size: int, workers: int, seed: int, **reader_options) -> float:
    """clips/s of the shard reader reading `clips` clips: one loader, set_epoch every epoch."""
    reader = ShardReader(folder, columns=SHARD_COLUMNS, batch_size=batch_size, shuffle=True, seed=seed,
                         **reader_options)
    loader = make_loader(reader, num_workers=workers)
    clock = Clock(clips)
    for epoch in itertools.count():
        reader.set_epoch(epoch)
        for batch in loader:
            if clock.tick(len(batch["image"])):
                return clock.rate()


class ReadyBatches(torch.utils.data.IterableDataset):
    """Batches that cost nothing to make: what is left is the DataLoader's worker-to-main transport."""

    def __init__(self, batches: int, batch: dict):
        self.batches, self.batch = batches, batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for _ in range(self.batches // (info.num_workers if info else 1)):
            yield {name: torch.empty_like(value) for name, value in self.batch.items()}


def time_transport(folder: Path, clips: int, batch_size: int, workers: int, seed: int) -> float:
    """clips/s of a DataLoader whose workers only hand over batches shaped like the benchmark's."""
    sample = next(iter(ShardReader(folder, columns=SHARD_COLUMNS, batch_size=batch_size)))
    loader = torch.utils.data.DataLoader(ReadyBatches(clips // batch_size + workers + 1, sample), batch_size=None,
                                         num_workers=workers)
    clock = Clock(clips)
    for batch in loader:
        if clock.tick(len(batch["image"])):
            break
    return clock.rate()


def best_of(repeats: int, timer, *args, **options) -> float:
    """The best rate of `repeats` runs: other processes on a shared machine only ever slow a run down."""
    return max(timer(*args, **options) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=ROOT / "data/features/music/train_single",
                        help="a features split folder (default data/features/music/train_single)")
    parser.add_argument("--clips", type=int, default=8000, help="clips read by each timed run (default 8000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers for both loaders (default 0: the shard reader needs none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loader; the best counts (default 3)")
    args = parser.parse_args()
    # Both loaders do single-threaded work per sample or batch; torch's intra-op threads only add
    # stalls (on a busy 2-core machine a 2-thread torch.stack of one batch took ~1 s).
    torch.set_num_threads(1)

    folder = args.folder if args.folder.is_absolute() else Path.cwd() / args.folder
    if not shard_paths(folder):
        print(f"{folder}: no shards (run `python -m stages.features music` for the real split); "
              f"using a synthetic toy-size split instead", flush=True)
        folder = synthetic_split()
    copy_dir = build_per_file_copy(folder)
    rows = ShardReader(folder).num_rows
    print(f"loader bench: {args.clips} clips from {folder} ({rows} clips, "
          f"read {math.ceil(args.clips / rows)}x), batch {args.batch_size}, workers {args.workers}", flush=True)

    warm = min(rows, args.clips)  # one untimed pass each: both then read from the page cache
    time_per_file(copy_dir, warm, args.batch_size, 0, args.seed)
    time_shards(folder, warm, args.batch_size, 0, args.seed, cache_bytes=0)
    timing = (args.clips, args.batch_size, args.workers, args.seed)
    per_file = best_of(args.repeats, time_per_file, copy_dir, *timing)
    streamed = best_of(args.repeats, time_shards, folder, *timing, cache_bytes=0)
    cached = best_of(args.repeats, time_shards, folder, *timing)
    print(f"  per-file, DSOL: pickle + PIL + ToTensor per clip -> float image, log-mel:  {per_file:7.0f} clips/s")
    print(f"  shards, STREAMED (cache off) -> uint8 image, log-mel, waveform:          {streamed:7.0f} clips/s"
          f"  {streamed / per_file:5.1f}x per-file  <- headline")
    print(f"  shards, cached (reader default) -> uint8 image, log-mel, waveform:       {cached:7.0f} clips/s"
          f"  {cached / per_file:5.1f}x per-file")
    references = [
        ("shards, streamed, images scaled to float in the loader", dict(cache_bytes=0, transform=float_images)),
        ("shards, streamed, JPEG decoded (no stored pixels)", dict(cache_bytes=0, use_pixels=False)),
    ]
    for name, options in references:
        rate = best_of(args.repeats, time_shards, folder, *timing, **options)
        print(f"  {name + ':':73s} {rate:7.0f} clips/s  {rate / per_file:5.1f}x per-file")
    if args.workers:
        ceiling = best_of(args.repeats, time_transport, folder, *timing)
        print(f"  {'DataLoader transport alone (workers only hand over ready batches):':73s} {ceiling:7.0f} clips/s  "
              f"{ceiling / per_file:5.1f}x per-file")
    print(f"  (rates: best of {args.repeats} runs of {args.clips} clips, page cache warm, clock started at the first "
          "batch. Acceptance bar: streamed >= 5x per-file)")


if __name__ == "__main__":
    main()
