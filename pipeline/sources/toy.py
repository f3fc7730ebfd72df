"""The toy world: procedurally generated videos with sound and ground truth (docs/data.md).

A toy dataset is a list of short videos (`plan_videos`): solo videos, one
sounding object each, then duets, two sounding objects heard together. Each
video shows its sounding objects as OpenMoji glyphs drifting over a cluttered
background among silent distractors, and plays their sounds (toy_sound.py)
over background ambience. The generator knows every object's box in every
frame and whether it sounds: that is the truth table.

Every video draws its random numbers from its own seed,
SeedSequence([seed, crc32(role), crc32(video_id), part]), so a video is the
same whether it is rendered alone or with the others, and the two roles
(music, vggsound) differ even with the same classes.
"""
from __future__ import annotations

import itertools
import multiprocessing
import re
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import ToyWorld
from pipeline.media import ffmpeg_exe
from pipeline.progress import progress
from pipeline.shards import atomic_path
from pipeline.sources import toy_glyphs, toy_sound
from pipeline.sources.toy_sound import SAMPLE_RATE, Soundtrack
from pipeline.stage import StageError

TRUTH_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("class", pa.string()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("sounding", pa.bool_()),
    ]
)

NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # roles and class names end up in video ids
PLACEMENT_TRIES = 50  # positions tried per object before taking the least-overlapping one
WOBBLE_SHARE = 0.25  # share of toy.motion spent on wobble, the rest on linear drift


@dataclass(frozen=True)
class ToyVideo:
    video_id: str  # e.g. "toy-music-violin-003", "toy-music-duet-violin-trumpet-001"; only [a-z0-9-]
    labels: list[str]  # sounding classes (1 for solo, 2 for duet)
    kind: str  # "solo" | "duet"
    seconds: int


# --------------------------------------------------------------------------- the index


def check_world(toy: ToyWorld, seed: int, role: str) -> None:
    """Reject what the generator cannot render, naming the params key."""
    where = f"datasets.{role}.toy"
    if seed < 0:
        raise StageError(f"seed: the toy world needs a seed >= 0, got {seed}")
    if not NAME.match(role):
        raise StageError(f"datasets.{role}: a toy dataset key may use only a-z, 0-9 and '-'")
    if toy.image_size % 2:
        raise StageError(f"{where}.image_size: must be even (yuv420p video), got {toy.image_size}")
    for key, names, registry in (
        ("classes", toy.classes, toy_sound.SOUNDS),
        ("distractor_classes", toy.distractor_classes, toy_glyphs.GLYPHS),
    ):
        for name in names:
            if name not in registry:
                raise StageError(f"{where}.{key}: no toy recipe for {name!r} (have: {', '.join(sorted(registry))})")
            try:
                toy_glyphs.glyph_variants(name)
            except (KeyError, ValueError) as err:
                raise StageError(f"{where}.{key}: {err}") from None
    if toy.new_view_each_second and not toy.new_background_each_second:
        raise StageError(f"{where}.new_view_each_second: a new view comes at a cut, so it needs "
                         "new_background_each_second: true")
    if toy.new_glyph_each_view and not toy.new_view_each_second:
        raise StageError(f"{where}.new_glyph_each_view: a glyph is drawn anew with a new view, so it needs "
                         "new_view_each_second: true")
    if toy.distractors[1] > 0 and not toy.distractor_classes:
        raise StageError(f"{where}.distractor_classes: empty, but distractors is {toy.distractors}")


def plan_videos(toy: ToyWorld, seed: int, role: str) -> list[ToyVideo]:
    """The index, deterministic: solo videos class by class in toy.classes order, then duets.

    Duets spread over ceil(duet_videos / 2) class pairs drawn from the seed, about two
    videos per pair (MUSIC has several duet videos per instrument pair), pair by pair.
    """
    check_world(toy, seed, role)
    seconds = toy.seconds_per_video
    videos = [
        ToyVideo(f"toy-{role}-{name}-{index:03d}", [name], "solo", seconds)
        for name in toy.classes
        for index in range(toy.solo_videos_per_class)
    ]
    if toy.duet_videos:
        pairs = list(itertools.combinations(toy.classes, 2))
        rng = np.random.default_rng([seed, zlib.crc32(role.encode()), zlib.crc32(b"duet pairs")])
        chosen = [pairs[i] for i in rng.permutation(len(pairs))[: min(len(pairs), -(-toy.duet_videos // 2))]]
        for rank, (first, second) in enumerate(chosen):
            count = toy.duet_videos // len(chosen) + (rank < toy.duet_videos % len(chosen))
            for index in range(count):
                video_id = f"toy-{role}-duet-{first}-{second}-{index:03d}"
                videos.append(ToyVideo(video_id, [first, second], "duet", seconds))
    return videos


def video_rng(video: ToyVideo, seed: int, role: str, part: str) -> np.random.Generator:
    """The random stream of one part ("sound", "picture", "glyphs": the variants of the later views) of one
    video."""
    parts = ("sound", "picture", "glyphs")
    return np.random.default_rng([seed, zlib.crc32(role.encode()), zlib.crc32(video.video_id.encode()),
                                  parts.index(part)])


# --------------------------------------------------------------------------- sound


def video_soundtrack(video: ToyVideo, toy: ToyWorld, seed: int, role: str) -> Soundtrack:
    """The video's audio at SAMPLE_RATE: its sounding classes, duet level gap, ambience."""
    rng = video_rng(video, seed, role, "sound")
    return toy_sound.mix_soundtrack(video.labels, video.seconds, toy.ambience, toy.ambience_db, toy.loudness_ratio_db,
                                    rng)


# --------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class SceneObject:
    name: str
    sounding: bool
    pixels: np.ndarray  # RGBA uint8 sprite, cropped to its visible pixels
    left: np.ndarray  # per frame of its view, x of the sprite's left column (int pixels)
    top: np.ndarray  # per frame of its view, y of its top row
    first_frame: int = 0  # the video frame where this view of the object starts (a new view after each cut)
    glyph: str = ""  # the glyph variant drawn (its code points)

    def frames(self) -> np.ndarray:
        """The video frames this view of the object is on."""
        return np.arange(self.first_frame, self.first_frame + len(self.left), dtype=np.int32)


@dataclass(frozen=True)
class Scene:
    backgrounds: list[np.ndarray]  # uint8 (size, size, 3): one per second, or one for the whole video
    frames_per_background: int  # frames shown over each background
    objects: list[SceneObject]  # sounding objects first, then distractors; then the same for each later view
    draw_order: list[int]  # indices into objects, back to front
    frames: int


def path_offsets(rng: np.random.Generator, toy: ToyWorld, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (dx, dy) in pixels from the start: a linear drift plus a slow wobble, within toy.motion."""
    size = toy.image_size
    t = np.arange(frames) / toy.fps
    duration = max(frames / toy.fps, 1e-9)
    drift = rng.uniform(0, (1 - WOBBLE_SHARE) * toy.motion) * size
    direction = rng.uniform(0, 2 * np.pi)
    offsets = []
    for axis in (np.cos(direction), np.sin(direction)):
        wobble = rng.uniform(0, WOBBLE_SHARE * toy.motion) * size
        hertz, phase = rng.uniform(0.2, 1.0), rng.uniform(0, 2 * np.pi)
        offsets.append(drift * axis * t / duration + wobble * (np.sin(2 * np.pi * hertz * t + phase) - np.sin(phase)))
    return offsets[0], offsets[1]


def place(rng: np.random.Generator, offset: np.ndarray, length: int, size: int) -> np.ndarray:
    """Per-frame start pixel on one axis: a random start that keeps the whole path inside the frame."""
    low, high = -offset.min(), size - length - offset.max()
    start = rng.uniform(low, high) if high >= low else (low + high) / 2
    return np.clip(np.round(start + offset), 0, size - length).astype(np.int64)


def covered_share(a: SceneObject, b: SceneObject) -> float:
    """Worst share, over frames, of the smaller relevant box hidden by the other one.

    The share is taken of a sounding object's box (of the smaller box when
    neither or both sound), so sounding objects stay mostly visible.
    """
    (ah, aw), (bh, bw) = a.pixels.shape[:2], b.pixels.shape[:2]
    width = np.minimum(a.left + aw, b.left + bw) - np.maximum(a.left, b.left)
    height = np.minimum(a.top + ah, b.top + bh) - np.maximum(a.top, b.top)
    overlap = np.clip(width, 0, None) * np.clip(height, 0, None)
    if a.sounding != b.sounding:
        area = ah * aw if a.sounding else bh * bw
    else:
        area = min(ah * aw, bh * bw)
    return float(overlap.max() / area)


def layout_objects(
    rng: np.random.Generator, toy: ToyWorld, cast: list[tuple[str, bool]], glyphs: list[str], frames: int,
    first_frame: int
) -> list[SceneObject]:
    """One view of the cast (name, sounding): each object drawn at a random size, tilt, mirror and
    brightness on a path of `frames` frames, placed so that sounding objects stay mostly uncovered.

    glyphs[i] is cast member i's glyph variant; a member without one yet gets it drawn here, just before
    its sprite, so that the first view draws its random numbers in the order the generator always has.
    """
    size = toy.image_size
    objects: list[SceneObject] = []
    for index, (name, sounding) in enumerate(cast):
        if index == len(glyphs):
            glyphs.append(choose_glyph(rng, name))
        pixels = toy_glyphs.sprite(
            glyphs[index],
            side_px=max(8, round(rng.uniform(*toy.object_scale) * size)),
            angle_deg=rng.uniform(-toy.rotation_deg, toy.rotation_deg),
            mirror=bool(rng.random() < 0.5),
            brightness=rng.uniform(0.85, 1.15),
        )
        height, width = pixels.shape[:2]
        dx, dy = path_offsets(rng, toy, frames)
        best, best_cover = None, np.inf
        for _ in range(PLACEMENT_TRIES):
            left, top = place(rng, dx, width, size), place(rng, dy, height, size)
            candidate = SceneObject(name, sounding, pixels, left, top, first_frame, glyphs[index])
            cover = max((covered_share(candidate, other) for other in objects), default=0.0)
            if cover < best_cover:
                best, best_cover = candidate, cover
            if cover <= toy.max_overlap:
                break
        objects.append(best)
    return objects


def choose_glyph(rng: np.random.Generator, name: str) -> str:
    """One of the class's glyph variants, uniformly."""
    variants = toy_glyphs.glyph_variants(name)
    return variants[int(rng.integers(len(variants)))]


def layout_scene(video: ToyVideo, toy: ToyWorld, rng: np.random.Generator,
                 glyph_rng: np.random.Generator) -> Scene:
    """Background, objects (glyph, size, tilt, path) and drawing order of one video.

    With toy.new_view_each_second every cut also shows the same cast anew: new size,
    tilt, mirror, brightness and place, as a new camera angle on the same performance.
    Each object keeps its glyph variant unless toy.new_glyph_each_view, which draws
    the variants of every later view from `glyph_rng`, a stream of their own, so that
    the first view is drawn exactly as without it.
    """
    size, frames = toy.image_size, video.seconds * toy.fps
    background = toy_glyphs.background(rng, size, toy.clutter)
    distractor_count = int(rng.integers(toy.distractors[0], toy.distractors[1] + 1))
    distractors = [str(rng.choice(toy.distractor_classes)) for _ in range(distractor_count)]
    cast = [(label, True) for label in video.labels] + [(name, False) for name in distractors]
    glyphs: list[str] = []
    view_frames = toy.fps if toy.new_view_each_second else frames
    objects = layout_objects(rng, toy, cast, glyphs, view_frames, 0)
    draw_order = [int(i) for i in rng.permutation(len(objects))]
    backgrounds, frames_per_background = [background], frames
    if toy.new_background_each_second:
        # Drawn after everything else, so a world without cuts renders exactly as before the option existed.
        backgrounds += [toy_glyphs.background(rng, size, toy.clutter) for _ in range(video.seconds - 1)]
        frames_per_background = toy.fps
    if toy.new_view_each_second:
        for second in range(1, video.seconds):
            if toy.new_glyph_each_view:
                glyphs = [choose_glyph(glyph_rng, name) for name, _ in cast]
            view = layout_objects(rng, toy, cast, glyphs, toy.fps, second * toy.fps)
            draw_order += [len(objects) + int(i) for i in rng.permutation(len(view))]
            objects += view
    return Scene(backgrounds, frames_per_background, objects, draw_order, frames)


def scene_frames(scene: Scene) -> Iterator[np.ndarray]:
    """The frames, uint8 (size, size, 3), one at a time: glyphs alpha-blended over the background."""
    backgrounds = [background.astype(np.float32) for background in scene.backgrounds]
    sprites = [(obj.pixels[..., :3].astype(np.float32), obj.pixels[..., 3:].astype(np.float32) / 255)
               for obj in scene.objects]
    for frame in range(scene.frames):
        canvas = backgrounds[min(frame // scene.frames_per_background, len(backgrounds) - 1)].copy()
        for index in scene.draw_order:
            obj, (color, alpha) = scene.objects[index], sprites[index]
            view_frame = frame - obj.first_frame
            if not 0 <= view_frame < len(obj.left):
                continue  # this view of the object is on before or after this frame's cut
            x, y = obj.left[view_frame], obj.top[view_frame]
            region = canvas[y : y + color.shape[0], x : x + color.shape[1]]
            region += (color - region) * alpha
        yield np.round(canvas).astype(np.uint8)


def scene_truth(video: ToyVideo, scene: Scene, toy: ToyWorld) -> pa.Table:
    """One row per object per frame: its tight box (normalised, in [0, 1]) and whether it sounds."""
    size = float(toy.image_size)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in TRUTH_SCHEMA.names}
    for obj in scene.objects:
        height, width = obj.pixels.shape[:2]
        frame_index = obj.frames()
        columns["frame"].append(frame_index)
        columns["class"].append(np.full(len(frame_index), obj.name, dtype=object))
        columns["x0"].append(obj.left / size)
        columns["y0"].append(obj.top / size)
        columns["x1"].append((obj.left + width) / size)
        columns["y1"].append((obj.top + height) / size)
        columns["sounding"].append(np.full(len(frame_index), obj.sounding))
    order = np.argsort(np.concatenate(columns["frame"]), kind="stable")  # frame by frame, objects in scene order
    table = {name: np.concatenate(parts)[order] for name, parts in columns.items() if parts}
    for corner in ("x0", "y0", "x1", "y1"):
        table[corner] = np.clip(table[corner], 0.0, 1.0).astype(np.float32)
    table["video_id"] = np.full(len(order), video.video_id, dtype=object)
    table["time_s"] = table["frame"] / float(toy.fps)
    return pa.Table.from_pydict({name: table[name] for name in TRUTH_SCHEMA.names}, schema=TRUTH_SCHEMA)


def video_scene(video: ToyVideo, toy: ToyWorld, seed: int, role: str) -> Scene:
    return layout_scene(video, toy, video_rng(video, seed, role, "picture"), video_rng(video, seed, role, "glyphs"))


# --------------------------------------------------------------------------- encoding


def encode(frames: Iterator[np.ndarray], wav_path: Path, out_path: Path, toy: ToyWorld, seconds: int) -> None:
    """One ffmpeg call: raw RGB frames on stdin plus the WAV -> H.264/AAC mp4, faststart.

    `-threads 1` and the bitexact flags make the bytes depend only on the input
    (x264's output changes with its thread count; muxers stamp versions).
    """
    size = toy.image_size
    command = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-framerate", str(toy.fps), "-i", "pipe:0",
        "-i", str(wav_path),
        "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-g", str(toy.fps),
        "-c:a", "aac", "-b:a", "64k", "-ar", str(SAMPLE_RATE), "-ac", "1",
        "-t", str(seconds), "-threads", "1",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-movflags", "+faststart", "-f", "mp4", str(out_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in frames:
            process.stdin.write(frame.tobytes())
    except BrokenPipeError:
        pass  # ffmpeg stopped early: its error text follows
    finally:
        process.stdin.close()
    error = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        raise StageError(f"{out_path.name}: ffmpeg failed: {error.splitlines()[-1] if error else 'no message'}")


def render_video(video: ToyVideo, toy: ToyWorld, seed: int, role: str, path: Path) -> pa.Table:
    """Write the video's mp4 atomically at `path` (H.264 + AAC 16 kHz mono, toy.fps, image_size square,
    exactly video.seconds long) and return its truth rows (TRUTH_SCHEMA)."""
    path = Path(path)
    scene = video_scene(video, toy, seed, role)
    soundtrack = video_soundtrack(video, toy, seed, role)
    with tempfile.TemporaryDirectory(prefix="toy-audio-") as folder, atomic_path(path) as partial:
        wav_path = Path(folder) / "audio.wav"
        wav_path.write_bytes(toy_sound.wav_bytes(soundtrack.mixture))
        encode(scene_frames(scene), wav_path, partial, toy, video.seconds)
    return scene_truth(video, scene, toy)


def _render_job(job: tuple[ToyVideo, ToyWorld, int, str, Path]) -> pa.Table:
    return render_video(*job)


def render_world(toy: ToyWorld, seed: int, role: str, out_dir: Path,
                 workers: int = 2) -> tuple[list[ToyVideo], pa.Table]:
    """Render every planned video into out_dir/<video_id>.mp4 (`workers` processes);
    return the plan and all truth rows, concatenated in plan order."""
    videos = plan_videos(toy, seed, role)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(video, toy, seed, role, out_dir / f"{video.video_id}.mp4") for video in videos]
    bar = dict(total=len(jobs), desc=f"toy {role}", unit="video")
    if workers <= 1:
        tables = [render_video(*job) for job in progress(jobs, **bar)]
    else:
        # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy half-way
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            tables = list(progress(pool.map(_render_job, jobs), **bar))
    truth = pa.concat_tables(tables) if tables else TRUTH_SCHEMA.empty_table()
    return videos, truth
