"""VGGSound index reader: the headerless `vggsound.csv` of the VGG group.

Each row is `youtube_id,start_seconds,label,split`; a clip is the 10-s window
from `start_seconds`. Labels that contain commas are quoted.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline.stage import StageError


@dataclass(frozen=True)
class VggsoundClip:
    youtube_id: str
    start_s: int  # start of the clip in the source video
    label: str
    split: str  # train | test, as the csv says

    @property
    def video_id(self) -> str:
        """The file stem: VGGSound's own clip naming, `<id>_<start:06d>`."""
        return f"{self.youtube_id}_{self.start_s:06d}"


def read_vggsound_csv(path: str | Path) -> list[VggsoundClip]:
    """Every row of a VGGSound csv, in file order; a clip listed twice is kept once."""
    path = Path(path)
    clips = []
    seen: set[str] = set()
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row:
                    continue
                if len(row) != 4 or not row[0] or not row[1].strip().isdigit():
                    raise StageError(f"{path}:{line}: expected youtube_id,start_seconds,label,split, got {row!r}")
                clip = VggsoundClip(row[0].strip(), int(row[1]), row[2].strip(), row[3].strip())
                if clip.video_id not in seen:
                    seen.add(clip.video_id)
                    clips.append(clip)
    except (OSError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a readable VGGSound csv ({err})") from None
    return clips
