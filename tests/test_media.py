"""pipeline.media on real small media made by ffmpeg: probe, audio and frame decoding, JPEG."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.media import MediaError, decode_audio, decode_frames, decode_jpeg, encode_jpeg, ffmpeg_exe, probe

LEVEL_STEP = 40  # grey level added at every colour step of `make_video`


def make_video(path: Path, video_seconds: float | None, audio_seconds: float | None, *, size: int = 32,
               fps: int = 10, colour_steps_per_second: int = 1, audio_delay: float = 0.0) -> Path:
    """An mp4 (h264 + aac) with None for a missing stream.

    Video: a grey frame whose level is LEVEL_STEP * step, the step rising
    `colour_steps_per_second` times a second. Audio: a 440 Hz sine whose
    amplitude is 0.1 * (1 + whole seconds elapsed), starting `audio_delay` s late.
    """
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y"]
    if video_seconds:
        level = f"{LEVEL_STEP}*floor({colour_steps_per_second}*T)"
        command += ["-f", "lavfi", "-i", f"color=c=black:s={size}x{size}:r={fps}:d={video_seconds},"
                    f"format=rgb24,geq=r='{level}':g='{level}':b='{level}'"]
    if audio_seconds:
        command += ["-itsoffset", str(audio_delay)] if audio_delay else []
        command += ["-f", "lavfi", "-i", f"aevalsrc=0.1*(1+floor(t))*sin(2*PI*440*t):s=16000:d={audio_seconds}"]
    command += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)]
    subprocess.run(command, check=True)
    return path


def grey_level(frame: np.ndarray) -> float:
    return float(frame.astype(np.float64).mean())


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {
        "av": make_video(folder / "av.mp4", 3.4, 3.4, colour_steps_per_second=2),
        "silent": make_video(folder / "silent.mp4", 2.0, None),
        "audio_only": make_video(folder / "audio_only.mp4", None, 2.0),
        "late_audio": make_video(folder / "late_audio.mp4", 2.0, 1.5, audio_delay=0.5),
    }


def test_probe_reads_duration_streams_and_size(media):
    info = probe(media["av"])
    assert info.duration_s == pytest.approx(3.4, abs=0.05)
    assert (info.has_audio, info.has_video, info.width, info.height) == (True, True, 32, 32)
    silent = probe(media["silent"])
    assert (silent.has_audio, silent.has_video) == (False, True)
    audio_only = probe(media["audio_only"])
    assert (audio_only.has_audio, audio_only.has_video, audio_only.width) == (True, False, None)


def test_probe_rejects_unreadable_files(media, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(media["av"].read_bytes()[:2000])
    for path in (garbage, truncated):
        with pytest.raises(MediaError, match="Invalid data found"):
            probe(path)
    with pytest.raises(MediaError, match="No such file"):
        probe(tmp_path / "absent.mp4")


def test_decode_audio_is_mono_int16_in_time(media):
    audio = decode_audio(media["av"], 16000)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert len(audio) == pytest.approx(3.4 * 16000, abs=1100)
    # The sine's amplitude is 0.1 * (k + 1) in second k: RMS = amplitude / sqrt(2).
    for second in range(3):
        middle = audio[second * 16000 + 2000:(second + 1) * 16000 - 2000].astype(np.float64) / 32768
        assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.1 * (second + 1) / np.sqrt(2), rel=0.05)


def test_decode_audio_pads_a_late_stream_to_keep_time(media):
    audio = decode_audio(media["late_audio"], 16000)
    assert len(audio) == pytest.approx(2.0 * 16000, abs=1100)  # aac pads up to one 1024-sample frame
    assert np.abs(audio[:7000]).max() < 50  # the first 0.44 s: silence put in front
    assert np.abs(audio[9000:15000]).max() > 2000  # the sine from 0.5 s on


def test_decode_audio_without_audio_stream_fails(media):
    with pytest.raises(MediaError):
        decode_audio(media["silent"], 16000)


def test_decode_frames_at_times_i_over_fps(media):
    frames = decode_frames(media["av"], 2, 16)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (16, 16, 3)
    assert len(frames) in (6, 7)  # 3.4 s at 2 fps: frames at 0, 0.5, ..., 3.0 (the last one is at the end)
    # The grey level rises every 0.5 s, so frame i (time i / 2) shows step i.
    assert [round(grey_level(frame) / LEVEL_STEP) for frame in frames] == list(range(len(frames)))


def test_decode_frames_stops_after_max_seconds(media):
    assert len(decode_frames(media["av"], 2, 16, max_seconds=1.5)) == 3


def test_jpeg_round_trip():
    ramp = np.linspace(0, 255, 48 * 48 * 3).reshape(48, 48, 3).astype(np.uint8)
    data = encode_jpeg(ramp, 90)
    assert data[:2] == b"\xff\xd8"
    decoded = decode_jpeg(data)
    assert decoded.shape == (48, 48, 3)
    assert np.abs(decoded.astype(int) - ramp.astype(int)).mean() < 4
