"""The toy world generator: plan, pictures, sounds, mp4 encoding, truth, determinism."""
from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.config import load_params
from pipeline.features import assign_splits
from pipeline.media import ffmpeg_exe
from pipeline.sources import toy, toy_glyphs, toy_sound
from pipeline.stage import StageError

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
SEED = 7


def tiny_world(**changes) -> toy.ToyWorld:
    """The real music toy params shrunk: 2 classes, 2 solo videos each, 1 duet, 2 s at 64 px."""
    base = dict(
        classes=["violin", "drum"],
        solo_videos_per_class=2,
        duet_videos=1,
        seconds_per_video=2,
        image_size=64,
        fps=4,
        distractors=[1, 2],
        distractor_classes=["person", "tree"],
    )
    return dataclasses.replace(PARAMS.datasets["music"].toy, **{**base, **changes})


def decode_audio(path: Path) -> np.ndarray:
    pcm = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(toy_sound.SAMPLE_RATE),
         "pipe:"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(pcm, np.int16).astype(np.float64) / 32768


def decode_frames(path: Path, size: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


def rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(signal**2)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world rendered twice: in 2 worker processes, and in this process."""
    tiny = tiny_world()
    parallel_dir = tmp_path_factory.mktemp("parallel")
    serial_dir = tmp_path_factory.mktemp("serial")
    videos, truth = toy.render_world(tiny, SEED, "music", parallel_dir, workers=2)
    again_videos, again_truth = toy.render_world(tiny, SEED, "music", serial_dir, workers=1)
    return dict(toy=tiny, videos=videos, truth=truth, dir=parallel_dir, again=(again_videos, again_truth, serial_dir))


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize("role", sorted(PARAMS.datasets))
def test_default_worlds_fill_every_split_and_leave_no_duet_unused(role):
    """params.yaml's toy defaults, split as the features stage splits them (cheap: the plan only)."""
    dataset = PARAMS.datasets[role]
    videos = toy.plan_videos(dataset.toy, PARAMS.data_seed, role)
    splits = assign_splits([dict(video_id=v.video_id, kind=v.kind, labels=v.labels) for v in videos],
                           dataset.test_videos_per_class, dataset.duet_test_videos_per_pair,
                           dataset.val_videos_per_class, dataset.duet_val_videos_per_pair)
    for name in dataset.toy.classes:
        solo = [splits[v.video_id] for v in videos if v.kind == "solo" and v.labels == [name]]
        assert solo.count("test") == dataset.test_videos_per_class and solo.count("val") == dataset.val_videos_per_class
        assert solo.count("train_single") >= 2 and solo.count("train_mix") >= 2, (name, solo)
    duets = [splits[v.video_id] for v in videos if v.kind == "duet"]
    assert "unused" not in duets
    if dataset.toy.duet_videos:  # music: every duet pair has its test and its val videos
        pairs = {tuple(v.labels) for v in videos if v.kind == "duet"}
        assert duets.count("duet") == dataset.duet_test_videos_per_pair * len(pairs)
        assert duets.count("duet_val") == dataset.duet_val_videos_per_pair * len(pairs)


def test_plan_is_solo_by_class_then_duets_with_clean_ids():
    tiny = tiny_world(solo_videos_per_class=3, duet_videos=3, classes=["violin", "drum", "piano"])
    videos = toy.plan_videos(tiny, SEED, "music")
    assert [v.labels for v in videos[:9]] == [["violin"]] * 3 + [["drum"]] * 3 + [["piano"]] * 3
    assert [v.video_id for v in videos[:2]] == ["toy-music-violin-000", "toy-music-violin-001"]
    duets = videos[9:]
    assert len(duets) == 3 and all(v.kind == "duet" and len(v.labels) == 2 for v in duets)
    assert [v.video_id[-3:] for v in duets] == ["000", "001", "000"]  # two pairs, pair by pair
    assert duets[0].labels == duets[1].labels != duets[2].labels
    for v in duets:  # pair members in toy.classes order, id names them
        assert tiny.classes.index(v.labels[0]) < tiny.classes.index(v.labels[1])
        assert v.video_id.startswith(f"toy-music-duet-{v.labels[0]}-{v.labels[1]}-")
    assert len({v.video_id for v in videos}) == len(videos)
    assert all(re.fullmatch(r"[a-z0-9-]+", v.video_id) and v.seconds == 2 for v in videos)
    assert videos == toy.plan_videos(tiny, SEED, "music")


def test_plan_rejects_what_it_cannot_render():
    with pytest.raises(StageError, match=r"datasets\.music\.toy\.classes: no toy recipe for 'kazoo'"):
        toy.plan_videos(tiny_world(classes=["violin", "kazoo"]), SEED, "music")
    with pytest.raises(StageError, match=r"datasets\.music\.toy\.distractor_classes: no toy recipe for 'ghost'"):
        toy.plan_videos(tiny_world(distractor_classes=["ghost"]), SEED, "music")
    with pytest.raises(StageError, match=r"image_size: must be even"):
        toy.plan_videos(tiny_world(image_size=65), SEED, "music")


def test_a_class_without_a_glyph_in_the_font_fails_loudly(monkeypatch):
    monkeypatch.setitem(toy_glyphs.GLYPHS, "unassigned", ("\u0378",))  # no font has a glyph here
    with pytest.raises(ValueError, match=r"no glyph for class 'unassigned' \(tried U\+0378\)"):
        toy_glyphs.glyph_variants("unassigned")


# --------------------------------------------------------------------------- rendered world


def test_render_world_is_deterministic_in_processes_and_bytes(world):
    again_videos, again_truth, serial_dir = world["again"]
    assert again_videos == world["videos"]
    assert again_truth.equals(world["truth"])
    for video in world["videos"]:  # x264 runs with -threads 1 and bitexact flags: identical files
        name = f"{video.video_id}.mp4"
        assert (world["dir"] / name).read_bytes() == (serial_dir / name).read_bytes(), name
    assert sorted(p.name for p in world["dir"].iterdir()) == sorted(f"{v.video_id}.mp4" for v in world["videos"])


def test_mp4_has_the_right_duration_size_frames_and_audio(world):
    tiny = world["toy"]
    for video in world["videos"]:
        path = world["dir"] / f"{video.video_id}.mp4"
        info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
        assert "Duration: 00:00:02.00" in info
        assert re.search(r"Video: h264 .*yuv420p.*64x64", info) and re.search(r"Audio: aac .*16000 Hz, mono", info)
        frames = decode_frames(path, tiny.image_size)
        assert len(frames) == video.seconds * tiny.fps
        audio = decode_audio(path)
        assert abs(len(audio) - video.seconds * toy_sound.SAMPLE_RATE) <= 64


def test_decoded_media_matches_what_was_rendered(world):
    """The pipe to ffmpeg keeps pixel layout (RGB, frame order) and audio alignment."""
    tiny = world["toy"]
    video = world["videos"][-1]  # the duet
    path = world["dir"] / f"{video.video_id}.mp4"
    rendered = np.stack(list(toy.scene_frames(toy.video_scene(video, tiny, SEED, "music"))))
    decoded = decode_frames(path, tiny.image_size)
    psnr = 10 * np.log10(255**2 / np.mean((rendered.astype(np.float64) - decoded) ** 2))
    assert psnr > 22
    mixture = toy.video_soundtrack(video, tiny, SEED, "music").mixture
    audio = decode_audio(path)[: len(mixture)]
    snr = 10 * np.log10(np.sum(mixture**2) / np.sum((mixture[: len(audio)] - audio) ** 2))
    assert snr > 15


def test_truth_rows_boxes_and_sounding_flags(world):
    tiny, truth = world["toy"], world["truth"]
    assert truth.schema.equals(toy.TRUTH_SCHEMA)
    rows = truth.to_pandas()
    assert list(rows["video_id"].drop_duplicates()) == [v.video_id for v in world["videos"]]  # plan order
    assert rows[["x0", "y0", "x1", "y1"]].stack().between(0, 1).all()
    assert ((rows.x1 > rows.x0) & (rows.y1 > rows.y0)).all()
    assert np.allclose(rows.time_s, rows.frame / tiny.fps)
    for video in world["videos"]:
        mine = rows[rows.video_id == video.video_id]
        assert sorted(mine.frame.unique()) == list(range(video.seconds * tiny.fps))
        for _, frame in mine.groupby("frame"):
            assert sorted(frame[frame.sounding]["class"]) == sorted(video.labels)
            silent = frame[~frame.sounding]
            assert set(silent["class"]) <= set(tiny.distractor_classes)
            assert tiny.distractors[0] <= len(silent) <= tiny.distractors[1]


def test_objects_move_and_stay_mostly_visible(world):
    tiny = world["toy"]
    for video in world["videos"]:
        scene = toy.video_scene(video, tiny, SEED, "music")
        moved = [np.ptp(obj.left) + np.ptp(obj.top) for obj in scene.objects]
        assert max(moved) > 0
        for i, obj in enumerate(scene.objects):
            for other in scene.objects[i + 1 :]:
                if (obj.sounding or other.sounding) and obj.first_frame == other.first_frame:  # on screen together
                    assert toy.covered_share(obj, other) <= tiny.max_overlap + 1e-9


def test_new_background_each_second_cuts_only_the_backdrop():
    one_view = dict(new_view_each_second=False, new_glyph_each_view=False, distractors=[0, 0])
    cut = tiny_world(new_background_each_second=True, **one_view)
    still = tiny_world(new_background_each_second=False, **one_view)
    video = toy.plan_videos(cut, SEED, "music")[0]
    cut_scene, still_scene = toy.video_scene(video, cut, SEED, "music"), toy.video_scene(video, still, SEED, "music")
    assert len(cut_scene.backgrounds) == video.seconds and len(still_scene.backgrounds) == 1
    # the same objects on the same paths, and the first second as without cuts
    assert np.array_equal(cut_scene.backgrounds[0], still_scene.backgrounds[0])
    for cut_object, still_object in zip(cut_scene.objects, still_scene.objects, strict=True):
        assert np.array_equal(cut_object.left, still_object.left) and np.array_equal(cut_object.top, still_object.top)
    cut_frames, still_frames = list(toy.scene_frames(cut_scene)), list(toy.scene_frames(still_scene))
    fps = cut.fps
    assert np.array_equal(cut_frames[0], still_frames[0]) and np.array_equal(cut_frames[fps - 1], still_frames[fps - 1])
    # a new backdrop at each second: far apart across the cut, close within a second (only the glyph moves)
    assert np.abs(cut_frames[fps].astype(int) - cut_frames[fps - 1]).mean() > 10
    assert np.abs(cut_frames[fps + 1].astype(int) - cut_frames[fps]).mean() < 5
    assert np.abs(still_frames[fps].astype(int) - still_frames[fps - 1]).mean() < 5


def test_new_view_each_second_shows_the_same_cast_anew_after_each_cut():
    viewed = tiny_world(new_background_each_second=True, new_view_each_second=True, distractors=[1, 1])
    still = tiny_world(new_background_each_second=True, new_view_each_second=False, new_glyph_each_view=False,
                       distractors=[1, 1])
    video = toy.plan_videos(viewed, SEED, "music")[0]
    scene = toy.video_scene(video, viewed, SEED, "music")
    fps, cast = viewed.fps, len(video.labels) + 1
    assert len(scene.objects) == cast * video.seconds and sorted(scene.draw_order) == list(range(len(scene.objects)))
    first, second = scene.objects[:cast], scene.objects[cast:]
    assert [o.first_frame for o in first] == [0] * cast and [o.first_frame for o in second] == [fps] * cast
    assert [(o.name, o.sounding) for o in first] == [(o.name, o.sounding) for o in second]
    assert all(len(o.left) == fps for o in scene.objects)
    # the same object seen anew: another sprite (size, tilt or mirror) or another place
    assert any(a.pixels.shape != b.pixels.shape or not np.array_equal(a.pixels, b.pixels)
               for a, b in zip(first, second))
    # the truth follows the views: frame fps has the second view's boxes, each object once per frame
    rows = toy.scene_truth(video, scene, viewed).to_pandas()
    assert (rows.groupby("frame").size() == cast).all() and rows.frame.nunique() == video.seconds * fps
    sounding = rows[rows.sounding].set_index("frame")
    size = float(viewed.image_size)
    assert sounding.loc[fps, "x0"] == pytest.approx(second[0].left[0] / size)
    assert sounding.loc[fps - 1, "x0"] == pytest.approx(first[0].left[-1] / size)
    # without new views: one view of each object for the whole video
    still_scene = toy.video_scene(video, still, SEED, "music")
    assert [len(o.left) for o in still_scene.objects] == [video.seconds * fps] * cast
    with pytest.raises(StageError,
                       match=r"datasets\.music\.toy\.new_view_each_second: .* needs new_background_each_second"):
        toy.plan_videos(dataclasses.replace(viewed, new_background_each_second=False), SEED, "music")


def test_new_glyph_each_view_draws_every_variant_and_leaves_the_first_view_alone():
    # siren has 4 glyph variants, dog 3; 12 views of each object
    changes = dict(classes=["siren", "dog"], duet_videos=0, seconds_per_video=12, new_background_each_second=True,
                   new_view_each_second=True, distractors=[1, 1], distractor_classes=["tree"])
    redrawn, kept = tiny_world(**changes, new_glyph_each_view=True), tiny_world(**changes, new_glyph_each_view=False)
    for video in toy.plan_videos(redrawn, SEED, "music"):
        scene = toy.video_scene(video, redrawn, SEED, "music")
        kept_scene = toy.video_scene(video, kept, SEED, "music")
        # the first view draws the same random numbers either way
        for a, b in zip(scene.objects[:2], kept_scene.objects[:2], strict=True):
            assert a.glyph == b.glyph and np.array_equal(a.pixels, b.pixels) and np.array_equal(a.left, b.left)
        assert len({o.glyph for o in kept_scene.objects if o.sounding}) == 1  # one variant for the whole video
        sounding = [o.glyph for o in scene.objects if o.sounding]
        assert len(sounding) == video.seconds and len(set(sounding)) >= 2
        assert set(sounding) <= set(toy_glyphs.glyph_variants(video.labels[0]))
        assert {o.glyph for o in scene.objects if not o.sounding} <= set(toy_glyphs.glyph_variants("tree"))
    with pytest.raises(StageError, match=r"datasets\.music\.toy\.new_glyph_each_view: .* needs new_view_each_second"):
        toy.plan_videos(dataclasses.replace(redrawn, new_view_each_second=False), SEED, "music")


def test_clutter_draws_boxes_that_pillow_rejects_at_fractional_pixels():
    # seed 797 draws a small rounded rectangle at fractional corners, which Pillow 13 refuses ("x1 must be >= x0")
    image = Image.new("RGB", (128, 128))
    toy_glyphs.draw_clutter(ImageDraw.Draw(image, "RGBA"), np.random.default_rng(797), 128, 12)
    assert np.asarray(image).any()


def test_a_different_role_gives_different_videos():
    tiny = tiny_world()
    music, wild = toy.plan_videos(tiny, SEED, "music"), toy.plan_videos(tiny, SEED, "vggsound")
    assert music[0].video_id == "toy-music-violin-000" and wild[0].video_id == "toy-vggsound-violin-000"
    music_scene = toy.video_scene(music[0], tiny, SEED, "music")
    wild_scene = toy.video_scene(wild[0], tiny, SEED, "vggsound")
    assert not np.array_equal(music_scene.backgrounds[0], wild_scene.backgrounds[0])
    music_audio = toy.video_soundtrack(music[0], tiny, SEED, "music").mixture
    wild_audio = toy.video_soundtrack(wild[0], tiny, SEED, "vggsound").mixture
    assert not np.allclose(music_audio, wild_audio)
    other_seed = toy.video_soundtrack(music[0], tiny, SEED + 1, "music").mixture
    assert not np.allclose(music_audio, other_seed)
    assert np.array_equal(music_audio, toy.video_soundtrack(music[0], tiny, SEED, "music").mixture)


# --------------------------------------------------------------------------- glyphs and sounds


def all_param_classes() -> tuple[set[str], set[str]]:
    sounding, distractors = set(), set()
    for dataset in PARAMS.datasets.values():
        sounding |= set(dataset.toy.classes)
        distractors |= set(dataset.toy.distractor_classes)
    return sounding, distractors


def test_every_default_and_registered_class_has_a_tight_colour_glyph():
    sounding, distractors = all_param_classes()
    assert sounding <= set(toy_sound.SOUNDS) and (sounding | distractors) <= set(toy_glyphs.GLYPHS)
    for name in toy_glyphs.GLYPHS:
        for sequence in toy_glyphs.glyph_variants(name):
            pixels = toy_glyphs.sprite(sequence, side_px=40, angle_deg=10.0, mirror=True, brightness=1.0)
            assert max(pixels.shape[:2]) == 40, name
            visible = pixels[..., 3] >= toy_glyphs.ALPHA_VISIBLE
            # tight: every edge row and column has a visible pixel
            assert visible[0].any() and visible[-1].any() and visible[:, 0].any() and visible[:, -1].any(), name
    guitar = toy_glyphs.sprite(toy_glyphs.glyph_variants("guitar")[0], 64, 0.0, False, 1.0)
    opaque = guitar[guitar[..., 3] == 255, :3].astype(int)
    assert (opaque.max(axis=1) - opaque.min(axis=1)).max() > 100  # drawn in colour, not as a mask


@pytest.mark.parametrize("name", sorted(toy_sound.SOUNDS))
def test_every_sound_is_heard_in_every_second(name):
    sound = toy_sound.render_sound(name, 3.0, np.random.default_rng(SEED))
    assert len(sound) == 3 * toy_sound.SAMPLE_RATE and np.isfinite(sound).all()
    assert rms(sound) == pytest.approx(1.0)
    second, hop = toy_sound.SAMPLE_RATE, toy_sound.SAMPLE_RATE // 2
    windows = [rms(sound[start : start + second]) for start in range(0, len(sound) - second + 1, hop)]
    assert min(windows) > 10 ** (-25 / 20), f"{name}: a quiet second at {20 * np.log10(min(windows)):.1f} dB"


@pytest.mark.parametrize("kind", ["room", "street"])
def test_ambience_sits_at_the_configured_level(kind):
    for ambience_db in (-35.0, -10.0):
        track = toy_sound.mix_soundtrack(["violin"], 2.0, kind, ambience_db, 10.0, np.random.default_rng(SEED))
        sources = np.sum(track.sources, axis=0)
        assert np.allclose(track.mixture, sources + track.ambience)
        assert 20 * np.log10(rms(track.ambience) / rms(sources)) == pytest.approx(ambience_db, abs=0.1)
        assert np.abs(track.mixture).max() <= 0.98


def test_ambience_kinds_differ_in_colour():
    """street (brown noise, hum) is darker than room (pinkish noise)."""

    def low_share(signal: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(signal)) ** 2
        frequencies = np.fft.rfftfreq(len(signal), 1 / toy_sound.SAMPLE_RATE)
        return float(power[frequencies < 200].sum() / power.sum())

    room = toy_sound.ambience("room", 2.0, np.random.default_rng(SEED))
    street = toy_sound.ambience("street", 2.0, np.random.default_rng(SEED))
    assert low_share(street) > low_share(room) + 0.1


def test_duet_level_gap_stays_within_loudness_ratio():
    gaps = []
    for seed in range(6):
        track = toy_sound.mix_soundtrack(["violin", "dog"], 2.0, "room", -60.0, 12.0, np.random.default_rng(seed))
        gaps.append(20 * np.log10(rms(track.sources[0]) / rms(track.sources[1])))
    assert max(abs(g) for g in gaps) <= 12.0 + 1e-6
    assert max(abs(g) for g in gaps) > 1.0  # the gap is drawn, not fixed at 0
    assert min(gaps) < 0 < max(gaps)  # either source can be the louder one


def test_extreme_knobs_still_give_valid_scenes():
    """Huge objects that must overlap, fast motion, a tiny frame: boxes stay in the frame, non-empty."""
    crowded = tiny_world(object_scale=[0.9, 1.0], motion=1.0, distractors=[8, 8], image_size=32, fps=1, clutter=100,
                         max_overlap=0.0, rotation_deg=180.0)
    for video in toy.plan_videos(crowded, SEED, "music"):
        scene = toy.video_scene(video, crowded, SEED, "music")
        frames = np.stack(list(toy.scene_frames(scene)))
        assert frames.shape == (video.seconds, 32, 32, 3)
        rows = toy.scene_truth(video, scene, crowded).to_pandas()
        assert len(rows) == video.seconds * (len(video.labels) + 8)
        assert rows[["x0", "y0", "x1", "y1"]].stack().between(0, 1).all()
        assert ((rows.x1 > rows.x0) & (rows.y1 > rows.y0)).all()
