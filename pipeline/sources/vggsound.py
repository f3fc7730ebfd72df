"""VGGSound index reader: the headerless `vggsound.csv` of the VGG group.

Each row is `youtube_id,start_seconds,label,split`; a clip is the 10-s window
from `start_seconds`. Labels that contain commas are quoted. A UTF-8 byte-order mark is dropped;
a malformed row (an over-long field included) is a one-line error naming its line.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.stage import StageError

START_SECONDS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also accepts "²", which int() rejects


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
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            for row in rows:
                if not row:
                    continue
                if len(row) != 4 or not row[0].strip() or not START_SECONDS.fullmatch(row[1].strip()):
                    raise StageError(f"{path}:{rows.line_num}: expected youtube_id,start_seconds,label,split, "
                                     f"got {_shown(row)}")
                clip = VggsoundClip(row[0].strip(), int(row[1]), row[2].strip(), row[3].strip())
                if clip.video_id not in seen:
                    seen.add(clip.video_id)
                    clips.append(clip)
    except csv.Error as err:  # e.g. a field over csv's 128 KiB limit
        raise StageError(f"{path}:{rows.line_num}: not a VGGSound csv row ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a readable VGGSound csv ({err})") from None
    return clips


def _shown(row: list[str], limit: int = 200) -> str:
    """A bad row for an error line: its repr, cut to `limit` characters."""
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "..."
