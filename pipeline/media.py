"""ffmpeg wrappers (through ffmpeg-python): the one place that knows how media is read and written.

Only the `ffmpeg` binary is needed (no ffprobe): `probe` reads what
`ffmpeg -i` prints about the input, and the decoders pipe raw samples and
pixels out of ffmpeg. Timing convention of the decoders: audio sample n is
at time n / sample_rate and frame i at time i / fps, both counted from the
start of the file, whatever the streams' own start offsets are.
"""
from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary: $IER_FFMPEG, else `ffmpeg` on PATH, else the imageio-ffmpeg wheel's."""
    if os.environ.get("IER_FFMPEG"):
        return os.environ["IER_FFMPEG"]
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class MediaError(RuntimeError):
    """A media file cannot be read or decoded; the message is a short reason."""


@dataclass(frozen=True)
class MediaInfo:
    duration_s: float | None  # container duration; None when ffmpeg cannot tell
    has_audio: bool
    has_video: bool  # a cover picture (`attached pic`) is not a video
    width: int | None
    height: int | None


_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.M)
_STREAM = re.compile(r"^\s*Stream #0:\d+.*?: (Video|Audio): (.*)$", re.M)
_SIZE = re.compile(r", (\d+)x(\d+)[ ,]")
_LOG_PREFIX = re.compile(r"^\[[^\]]*\] ")  # "[in#0 @ 0x55...] " before ffmpeg's messages


def _reason(stderr: str) -> str:
    """The most telling line of ffmpeg's error output, without its log prefix."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if line.startswith("Error opening input:"):
            return line.removeprefix("Error opening input:").strip()
    return lines[-1] if lines else "ffmpeg failed with no message"


def probe(path: str | Path) -> MediaInfo:
    """Duration, streams and frame size of a media file, from `ffmpeg -i`'s report."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                            capture_output=True, text=True, errors="replace")
    report = result.stderr
    if not re.search(r"^Input #0", report, re.M):
        raise MediaError(_reason(report))
    duration = _DURATION.search(report)
    streams = _STREAM.findall(report)
    video = [desc for kind, desc in streams if kind == "Video" and "(attached pic)" not in desc]
    size = _SIZE.search(video[0]) if video else None
    return MediaInfo(
        duration_s=int(duration[1]) * 3600 + int(duration[2]) * 60 + float(duration[3]) if duration else None,
        has_audio=any(kind == "Audio" for kind, _ in streams),
        has_video=bool(video),
        width=int(size[1]) if size else None,
        height=int(size[2]) if size else None,
    )


def _run(output: ffmpeg.nodes.OutputStream) -> bytes:
    """Run an ffmpeg-python graph that writes to stdout; its bytes, or MediaError."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    try:
        stdout, _ = output.run(cmd=cmd, capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as err:
        raise MediaError(_reason(err.stderr.decode(errors="replace"))) from None
    return stdout


def _input(path: str | Path, max_seconds: float | None) -> ffmpeg.nodes.FilterableStream:
    return ffmpeg.input(str(path), **({"t": max_seconds} if max_seconds else {}))


def decode_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """The first audio stream as mono int16 at `sample_rate` (the first `max_seconds` only, if given)."""
    # async=1:first_pts=0 pads a late-starting stream with silence, so sample n is at n / sample_rate.
    audio = _input(path, max_seconds)["a:0"].filter("aresample", **{"async": 1, "first_pts": 0})
    pcm = _run(audio.output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate))
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


def decode_frames(path: str | Path, fps: Fraction | float, size: int,
                  max_seconds: float | None = None) -> np.ndarray:
    """Frames at times 0, 1/fps, 2/fps, ... as uint8 RGB (n, size, size, 3), stretched to a square.

    A plain resize (no crop) keeps boxes that are normalised to the frame valid.
    """
    rate = Fraction(fps).limit_denominator(10_000)
    # start_time=0: a stream that starts late repeats its first frame, keeping frame i at i / fps.
    video = (_input(path, max_seconds)["v:0"]
             .filter("fps", fps=f"{rate.numerator}/{rate.denominator}", start_time=0)
             .filter("scale", size, size))
    pixels = _run(video.output("pipe:", format="rawvideo", pix_fmt="rgb24"))
    return np.frombuffer(pixels, dtype=np.uint8).reshape(-1, size, size, 3)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One uint8 RGB frame (h, w, 3) as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes as a uint8 RGB array (h, w, 3)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
