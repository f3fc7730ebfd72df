"""MUSIC index reader: the json id lists of roudimit/MUSIC_dataset.

Both lists have the shape `{"version": ..., "videos": {key: [youtube_id, ...]}}`.
In the solo list a key is one instrument (`"acoustic_guitar"`); in the duet
list it is two, separated by a space (`"acoustic_guitar violin"`). A UTF-8 byte-order mark is dropped;
a file that is not such json (nested too deep for the parser included) is a one-line error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.stage import StageError


@dataclass(frozen=True)
class MusicVideo:
    youtube_id: str
    labels: list[str]  # one instrument (solo) or two (duet)
    kind: str  # solo | duet


def read_music_index(path: str | Path) -> list[MusicVideo]:
    """Every video of a MUSIC json list, in file order; an id listed twice is kept once."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise StageError(f"{path}: not a MUSIC json index (nested too deep to parse)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageError(f"{path}: not a readable MUSIC json index ({err})") from None
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise StageError(f"{path}: expected {{\"videos\": {{class: [youtube ids]}}}}")
    seen: set[str] = set()
    entries = []
    for key, ids in videos.items():
        labels = key.split()
        if len(labels) not in (1, 2) or not isinstance(ids, list):
            raise StageError(f"{path}: videos.{key}: expected 1 or 2 classes mapping to a list of ids")
        kind = "solo" if len(labels) == 1 else "duet"
        for youtube_id in ids:
            if not isinstance(youtube_id, str):  # a malformed string is the download's recorded skip
                raise StageError(f"{path}: videos.{key}: not a YouTube id: {youtube_id!r}")
            if youtube_id not in seen:
                seen.add(youtube_id)
                entries.append(MusicVideo(youtube_id, labels, kind))
    return entries
