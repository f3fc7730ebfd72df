"""DSOL's MUSIC test boxes: real entries (tests/fixtures/dsol-music-boxes-sample.json, copied from DSOL's
solotest.json and duettest.json) and hand-broken files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.sources.dsol_boxes import CATEGORY_CLASSES, read_dsol_boxes
from pipeline.stage import StageError

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "dsol-music-boxes-sample.json"


@pytest.fixture(scope="module")
def sample() -> dict:
    return read_dsol_boxes(SAMPLE)


def test_keys_are_youtube_id_and_whole_second(sample):
    assert set(sample) == {("4Oy5VmaacaI", 13), ("1Ju4S0qeDqw", 49), ("vEOyhF8KLPE", 52), ("lm51ySOO71o", 39),
                           ("ZRpsKMe5dSg", 30), ("eHbxLcoLWYY", 13), ("iB17xqmFw3A", 69)}
    assert list(sample) == sorted(sample)


def test_normbox_becomes_corners_and_the_category_a_music_class(sample):
    # 4Oy5VmaacaI second 13 has frames 00390 00397 00404 00411 (listed 00411 first); 00390 is kept
    [box] = sample[("4Oy5VmaacaI", 13)]
    assert box["class"] == "cello"
    assert [box[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx([0.340625, 0.0, 0.340625 + 0.321875,
                                                                          0.9972222222222222])
    duet = sample[("vEOyhF8KLPE", 52)]  # frame 01560 of 01560..01581
    assert [b["class"] for b in duet] == ["acoustic_guitar", "violin"]
    assert duet[1]["y1"] == pytest.approx(0.17222222222222222 + 0.34444444444444444)
    assert {b["class"] for boxes in sample.values() for b in boxes} == set(CATEGORY_CLASSES.values())


def test_a_second_keeps_its_first_frame_with_boxes(sample):
    # 1Ju4S0qeDqw second 49: frame 01470 has an empty bbox list (DSOL's evaluation skips such frames), 01477 is kept
    [box] = sample[("1Ju4S0qeDqw", 49)]
    assert box["x0"] == pytest.approx(0.3645833333333333)
    assert box["y1"] == pytest.approx(0.43333333333333335 + 0.4388888888888889)
    # 5_NsbkyLO2Q second 0: all four frames empty, no entry
    assert ("5_NsbkyLO2Q", 0) not in sample


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "boxes.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def entry(*boxes) -> dict:
    return {"bbox": [{"box": [0, 0, 1, 1], "normbox": normbox, "category_id": category} for normbox, category in boxes],
            "wdith": 640, "height": 360}


GOOD_KEY = "abcdefghijk_0_1000/frame_002/00067.jpg"


@pytest.mark.parametrize("data, message", [
    ("{not json", r"boxes.json: not a readable DSOL box file \(Expecting property name"),
    ([1, 2], r"boxes.json: expected a json object"),
    ({GOOD_KEY: [1]}, r"boxes.json: abcdefghijk_0_1000/frame_002/00067.jpg: expected \{\"bbox\""),
    ({GOOD_KEY: {"boxes": []}}, r"00067.jpg: expected \{\"bbox\""),
    ({GOOD_KEY: entry(([0.1, 0.1, 0.2, 0.2], 2))},
     r"00067.jpg: bbox\[0\]: unknown category_id 2 \(DSOL's ids: 1 cello"),
    ({GOOD_KEY: entry(([0.1, 0.1, 0.2, 0.2], 1), ([0.9, 0.1, 0.2, 0.2], 3))},
     r"bbox\[1\]: normbox .* outside \[0, 1\]"),
    ({GOOD_KEY: entry(([-0.1, 0.1, 0.2, 0.2], 1))}, r"bbox\[0\]: normbox .* outside \[0, 1\]"),
    ({GOOD_KEY: entry(([0.1, 0.1, 0.0, 0.2], 1))}, r"bbox\[0\]: normbox .* empty"),
    ({GOOD_KEY: entry(([0.1, 0.1, 0.2], 1))}, r"bbox\[0\]: normbox must be 4 numbers"),
    ({GOOD_KEY: {"bbox": [{"category_id": 1}]}}, r"bbox\[0\]: a box must be"),
    ({"abcdefghijk/frame_002/00067.jpg": entry()}, r"abcdefghijk/frame_002/00067.jpg: not a key like"),
    ({"abcdefghijk_0_1000/frame_002/00095.jpg": entry()}, r"00095.jpg: frame 95 at 30 fps is not in second 2"),
])
def test_bad_input_is_one_line_naming_file_and_entry(tmp_path, data, message):
    with pytest.raises(StageError, match=message) as caught:
        read_dsol_boxes(write(tmp_path, data))
    assert "\n" not in str(caught.value) and "boxes.json" in str(caught.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(StageError, match=r"nothing.json: not a readable DSOL box file"):
        read_dsol_boxes(tmp_path / "nothing.json")
