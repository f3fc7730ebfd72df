"""Reader of DSOL's human-checked MUSIC test boxes (`solotest.json`, `duettest.json`).

DSOL (DTaoo/Discriminative-Sounding-Objects-Localization, MIT) ships boxes for
frames of the MUSIC solo and duet test videos, one json object keyed by frame:

    "<youtube_id>_0_1000/frame_<SSS>/<NNNNN>.jpg": {
        "bbox": [{"box": [x, y, w, h] px, "normbox": [x, y, w, h] in 0..1, "category_id": k}, ...],
        "wdith": W, "height": H}

`SSS` is the second of the video, `NNNNN` the frame number at 30 fps (DSOL kept
every 7th frame, so a second has about four frames). Every box is of an instrument
that plays: DSOL annotated sounding objects only.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from pipeline.stage import StageError

# DSOL's category ids, from its evaluation code (`duetkeys` in music-exp/eval.py, eval_duet.py and
# test_stage_two*.py at commit 7f40207). The box files use exactly these seven; the other four MUSIC
# instruments (clarinet, erhu, tuba, xylophone) have no id anywhere in DSOL's code or data: its test
# boxes cover only these classes.
CATEGORY_CLASSES: dict[int, str] = {
    1: "cello",
    3: "acoustic_guitar",
    8: "saxophone",
    10: "trumpet",
    11: "violin",
    12: "flute",
    13: "accordion",
}
CLASS_CATEGORIES: dict[str, int] = {name: category for category, name in CATEGORY_CLASSES.items()}

FRAME_RATE = 30  # DSOL cut its frames at 30 fps: frame NNNNN of second SSS lies in [30 SSS, 30 SSS + 30)
KEY = re.compile(r"(?P<video_id>[A-Za-z0-9_-]+)_0_1000/frame_(?P<second>\d{3})/(?P<frame>\d{5})\.jpg")
EDGE_SLACK = 1e-6  # normbox is pixels / size in floating point: allow rounding at the image's edges

Box = dict  # {"class": MUSIC class name, "x0", "y0", "x1", "y1": normalised corners}


def parse_key(key: str) -> tuple[str, int, int]:
    """(youtube id, second, frame number at 30 fps) of a DSOL key; ValueError when it is not one."""
    match = KEY.fullmatch(key)
    if match is None:
        raise ValueError("not a key like '<youtube_id>_0_1000/frame_SSS/NNNNN.jpg'")
    second, frame = int(match["second"]), int(match["frame"])
    if not FRAME_RATE * second <= frame < FRAME_RATE * (second + 1):
        raise ValueError(f"frame {frame} at {FRAME_RATE} fps is not in second {second}")
    return match["video_id"], second, frame


def parse_box(item: object) -> Box:
    """One entry of a frame's `bbox` list as a box with MUSIC's class name; ValueError when malformed."""
    if not isinstance(item, dict) or "normbox" not in item or "category_id" not in item:
        raise ValueError("a box must be {\"normbox\": [x, y, w, h], \"category_id\": k, ...}")
    category, normbox = item["category_id"], item["normbox"]
    if isinstance(category, bool) or not isinstance(category, int) or category not in CATEGORY_CLASSES:
        known = ", ".join(f"{k} {name}" for k, name in CATEGORY_CLASSES.items())
        raise ValueError(f"unknown category_id {category!r} (DSOL's ids: {known})")
    if (not isinstance(normbox, list) or len(normbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in normbox)):
        raise ValueError(f"normbox must be 4 numbers [x, y, w, h], got {normbox!r}")
    x, y, width, height = (float(v) for v in normbox)
    x0, y0, x1, y1 = x, y, x + width, y + height
    if not (width > 0 and height > 0 and -EDGE_SLACK <= x0 and -EDGE_SLACK <= y0
            and x1 <= 1 + EDGE_SLACK and y1 <= 1 + EDGE_SLACK):
        raise ValueError(f"normbox {normbox} is empty or outside [0, 1]")
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))  # the slack, clipped away
    return {"class": CATEGORY_CLASSES[category], "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def read_dsol_boxes(path: str | Path) -> dict[tuple[str, int], list[Box]]:
    """The boxes of a DSOL box file by (youtube id, whole second): one frame's boxes per second.

    A second has several annotated frames; the first by frame number that has at least one box
    is kept, as the pipeline's clip of that second shows one frame (its first). Frames with an
    empty `bbox` list are skipped, as DSOL's own evaluation skips them, so a second whose frames
    are all empty has no entry. Anything malformed raises a one-line StageError naming the file
    and the entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageError(f"{path}: not a readable DSOL box file ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a json object {{\"<id>_0_1000/frame_SSS/NNNNN.jpg\": {{\"bbox\": [...]}}}}")
    chosen: dict[tuple[str, int], tuple[int, list[Box]]] = {}
    for key, entry in data.items():
        try:
            video_id, second, frame = parse_key(key)
            if not isinstance(entry, dict) or not isinstance(entry.get("bbox"), list):
                raise ValueError("expected {\"bbox\": [boxes], ...}")
            boxes = []
            for index, item in enumerate(entry["bbox"]):
                try:
                    boxes.append(parse_box(item))
                except ValueError as err:
                    raise ValueError(f"bbox[{index}]: {err}") from None
        except ValueError as err:
            raise StageError(f"{path}: {key}: {err}") from None
        earlier = chosen.get((video_id, second))
        if boxes and (earlier is None or frame < earlier[0]):
            chosen[(video_id, second)] = (frame, boxes)
    return {place: boxes for place, (_, boxes) in sorted(chosen.items())}
