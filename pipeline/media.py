"""ffmpeg wrappers (through ffmpeg-python): the one place that knows how media is read and written."""
from __future__ import annotations

import functools
import os
import shutil


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
