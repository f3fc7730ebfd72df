"""The download stage: real yt-dlp against a loopback HTTP server, index readers, resume and backoff."""
from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import media
from pipeline.config import load_params
from pipeline.download import (
    FetchError,
    RateLimitStop,
    VideoRequest,
    YtDlpFetcher,
    download_videos,
    fetch_index,
    is_gone,
    is_rate_limited,
    read_manifest,
    require_min_ok,
    serve_folder,
    youtube_requests,
)
from pipeline.sources.music import read_music_index
from pipeline.sources.vggsound import read_vggsound_csv
from pipeline.stage import StageError
from tests.helpers import REPO
from tests.helpers.params import replace

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A loopback HTTP server with a good 4-s clip, a clip with no sound, and random bytes named .mp4."""
    folder = tmp_path_factory.mktemp("served")
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=4"]
    sine = ["-f", "lavfi", "-i", "sine=frequency=440:duration=4:sample_rate=16000"]
    encode = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
    subprocess.run([media.ffmpeg_exe(), "-v", "error", *lavfi, *sine, *encode, "-c:a", "aac", "-shortest",
                    str(folder / "clip.mp4")], check=True)
    subprocess.run([media.ffmpeg_exe(), "-v", "error", *lavfi, *encode, str(folder / "mute.mp4")], check=True)
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "solo.json").write_bytes((FIXTURES / "MUSIC_solo_videos.json").read_bytes())
    with serve_folder(folder) as base_url:
        yield base_url


@pytest.fixture
def settings():
    download = load_params(REPO / "params.yaml").download
    return replace(download, retries=1, sleep_s=5.0, rate_limit_backoff_s=10.0, max_rate_limit_waits=3)


def request(base_url: str, name: str, **extra) -> VideoRequest:
    return VideoRequest(name, f"{base_url}/{name}.mp4", ["violin"], "solo", **extra)


def test_fetch_whole_video(served, settings, tmp_path):
    dest = tmp_path / "videos" / "clip.mp4"
    with YtDlpFetcher(settings, tmp_path / ".incoming") as fetcher:
        fetcher.fetch(request(served, "clip"), dest)
    info = media.probe(dest)
    assert info.has_audio and info.has_video
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    assert not (tmp_path / ".incoming").exists()


def test_fetch_section_cuts_the_window(served, settings, tmp_path):
    dest = tmp_path / "videos" / "clip_000001.mp4"
    with YtDlpFetcher(settings, tmp_path / ".incoming") as fetcher:
        fetcher.fetch(request(served, "clip", start_s=1.0, section_s=2.0), dest)
    audio_s = len(media.decode_audio(dest, 16000)) / 16000
    assert audio_s == pytest.approx(2.0, abs=0.15)
    assert len(media.decode_frames(dest, 10, 16)) == pytest.approx(20, abs=2)


def test_failures_become_manifest_rows(served, settings, tmp_path):
    requests = [request(served, name) for name in ("clip", "missing", "corrupt", "mute")]
    with YtDlpFetcher(settings, tmp_path / ".incoming") as fetcher:
        result = download_videos(requests, tmp_path, fetcher.fetch, settings, pace_s=0.0, resume=False)
    rows = {row["video_id"]: row for row in result.rows}
    assert rows["clip"]["status"] == "ok" and rows["clip"]["error"] == "" and rows["clip"]["attempts"] == 1
    assert rows["clip"]["path"] == "videos/clip.mp4" and (tmp_path / "videos/clip.mp4").is_file()
    # a 404 is gone: no retry
    assert rows["missing"]["status"] == "failed" and rows["missing"]["attempts"] == 1
    assert "HTTP Error 404" in rows["missing"]["error"]
    # yt-dlp "succeeds" on random bytes; the decode check fails them, and they are retried once
    assert rows["corrupt"]["status"] == "failed" and rows["corrupt"]["attempts"] == 2
    assert "not usable media" in rows["corrupt"]["error"]
    assert rows["mute"]["error"] == "not usable media: no audio stream"
    for name in ("missing", "corrupt", "mute"):
        assert rows[name]["path"] == "" and not (tmp_path / f"videos/{name}.mp4").exists()
    manifest = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert manifest == result.rows
    assert [row["video_id"] for row in manifest] == ["clip", "missing", "corrupt", "mute"]


def test_resume_keeps_ok_and_gone_rows(served, settings, tmp_path):
    requests = [request(served, name) for name in ("clip", "missing", "corrupt")]
    settings = replace(settings, retries=0)
    with YtDlpFetcher(settings, tmp_path / ".incoming") as fetcher:
        download_videos(requests, tmp_path, fetcher.fetch, settings, 0.0, resume=False)
        fetched = []

        def counting_fetch(video, dest):
            fetched.append(video.video_id)
            fetcher.fetch(video, dest)

        again = download_videos(requests, tmp_path, counting_fetch, settings, 0.0, resume=True)
        # ok (file present) and gone (404) rows stand; a corrupt download is tried again
        assert fetched == ["corrupt"] and again.kept == 2 and again.fetched == 1
        (tmp_path / "videos/clip.mp4").unlink()
        fetched.clear()
        download_videos(requests, tmp_path, counting_fetch, settings, 0.0, resume=True)
        assert fetched == ["clip", "corrupt"]
    assert read_manifest(tmp_path)["clip"]["status"] == "ok"


def test_rate_limit_backs_off_then_stops_keeping_the_manifest(settings, tmp_path):
    waits = []
    calls = {"b": 0}

    def fake_fetch(video, dest):
        if video.video_id == "a":
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"video")
            return
        calls["b"] += 1
        raise FetchError("[youtube] b: HTTP Error 429: Too Many Requests")

    requests = [VideoRequest(name, f"https://www.youtube.com/watch?v={name}", ["dog"], "solo")
                for name in ("a", "b", "c")]
    with pytest.raises(RateLimitStop, match="3 waits in a row"):
        download_videos(requests, tmp_path, fake_fetch, settings, pace_s=5.0, resume=True, sleep=waits.append)
    assert waits == [5.0, 10.0, 20.0, 40.0]  # the pace before b, then doubling backoff waits
    assert calls["b"] == 4
    assert list(read_manifest(tmp_path)) == ["a"]


def test_rate_limit_waits_reset_after_a_good_answer(settings, tmp_path):
    waits = []
    answers = {"a": ["429", "429", "ok"], "b": ["bot", "ok"]}

    def fake_fetch(video, dest):
        answer = answers[video.video_id].pop(0)
        if answer == "429":
            raise FetchError("HTTP Error 429: Too Many Requests")
        if answer == "bot":
            raise FetchError("[youtube] b: Sign in to confirm you’re not a bot. Use --cookies")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"video")

    requests = [VideoRequest(name, name, ["dog"], "solo") for name in ("a", "b")]
    result = download_videos(requests, tmp_path, fake_fetch, settings, pace_s=5.0, resume=False,
                             sleep=waits.append)
    assert waits == [10.0, 20.0, 5.0, 10.0]
    assert [row["attempts"] for row in result.rows] == [3, 2] and result.ok == 2


def test_too_few_ok_videos_fail_naming_count_and_reasons(served, settings, tmp_path):
    requests = [request(served, name) for name in ("clip", "missing")]
    with YtDlpFetcher(settings, tmp_path / ".incoming") as fetcher:
        result = download_videos(requests, tmp_path, fetcher.fetch, settings, 0.0, resume=False)
    require_min_ok(result, 1, tmp_path / "manifest.parquet")
    with pytest.raises(StageError, match=r"only 1 of 2 videos downloaded, download.min_ok is 2 "
                                         r"\(first failures: missing: .*HTTP Error 404"):
        require_min_ok(result, 2, tmp_path / "manifest.parquet")


def test_error_classes():
    assert is_rate_limited("ERROR: [youtube] x: Sign in to confirm you're not a bot")
    assert is_rate_limited("This content isn't available, try again later. Your account has been rate-limited")
    assert not is_rate_limited("[youtube] x: Sign in to confirm your age. This video may be inappropriate")
    assert is_gone("[youtube] x: Sign in to confirm your age. This video may be inappropriate")
    assert is_gone("[youtube] x: Video unavailable. This video is private")
    assert not is_gone("HTTP Error 429: Too Many Requests")
    assert not is_gone("[youtube] x429y: Unable to download webpage: timed out")


def test_music_index_reader():
    solo = read_music_index(FIXTURES / "MUSIC_solo_videos.json")
    assert len(solo) == 9 and {video.kind for video in solo} == {"solo"}
    assert solo[0].youtube_id == "jW_AuF6dQYY" and solo[0].labels == ["flute"]
    duet = read_music_index(FIXTURES / "MUSIC_duet_videos.json")
    assert [video.labels for video in duet[:1]] == [["flute", "violin"]] and duet[0].kind == "duet"


def test_vggsound_csv_reader():
    clips = read_vggsound_csv(FIXTURES / "vggsound.csv")
    assert len(clips) == 9
    heart = [clip for clip in clips if clip.youtube_id == "0_8-g2rof7E"][0]
    assert heart.label == "heart sounds, heartbeat" and heart.start_s == 49 and heart.split == "test"
    assert heart.video_id == "0_8-g2rof7E_000049"


def test_bad_index_rows_name_the_line(tmp_path):
    bad = tmp_path / "vggsound.csv"
    bad.write_text("abc,30,dog,train\nabc,thirty,dog,train\n")
    with pytest.raises(StageError, match=r"vggsound.csv:2: expected youtube_id,start_seconds"):
        read_vggsound_csv(bad)
    (tmp_path / "music.json").write_text('{"videos": ["x"]}')
    with pytest.raises(StageError, match="music.json"):
        read_music_index(tmp_path / "music.json")


def youtube_source(params, **changes):
    return replace(params.datasets["music"].youtube, **changes)


def test_music_requests_filter_and_cap(tmp_path):
    params = load_params(REPO / "params.yaml")
    source = youtube_source(params, index_url=str(FIXTURES / "MUSIC_solo_videos.json"),
                            duet_index_url=str(FIXTURES / "MUSIC_duet_videos.json"), classes=["flute", "violin"])
    requests = youtube_requests(source, 10, tmp_path, "datasets.music.youtube")
    assert [" ".join(r.labels) for r in requests] == ["flute"] * 3 + ["violin"] * 3 + ["flute violin"] * 2
    assert requests[0].url == "https://www.youtube.com/watch?v=jW_AuF6dQYY"
    assert requests[0].section_s is None and requests[-1].kind == "duet"
    capped = youtube_requests(replace(source, classes=[], max_videos_per_class=1), 10, tmp_path, "x")
    assert len(capped) == 3 + 2  # one per solo class, one per duet pair
    with pytest.raises(StageError, match=r"datasets.music.youtube.classes: not in the index: trombone"):
        youtube_requests(replace(source, classes=["trombone"]), 10, tmp_path, "datasets.music.youtube")


def test_vggsound_requests_windows_and_test_split_first(tmp_path):
    params = load_params(REPO / "params.yaml")
    index = tmp_path / "vggsound.csv"
    index.write_text('trainvid001,5,dog,train\n' + (FIXTURES / "vggsound.csv").read_text())
    source = replace(params.datasets["vggsound"].youtube, index_url=str(index), classes=["dog", "car passing by"],
                     index_sha256=hashlib.sha256(index.read_bytes()).hexdigest())
    requests = youtube_requests(source, 10, tmp_path, "datasets.vggsound.youtube")
    assert [r.video_id for r in requests] == ["cRlp5v9BHeE_000011", "asKuYgAcyIk_000030",
                                              "QJDLZ53UsLk_000320", "trainvid001_000005"]
    assert requests[0].url == "https://www.youtube.com/watch?v=cRlp5v9BHeE"
    assert (requests[0].start_s, requests[0].section_s) == (11.0, 10.0)
    with pytest.raises(StageError, match="index_url: .*sha256 is"):
        youtube_requests(replace(source, index_sha256="0" * 64), 10, tmp_path, "datasets.vggsound.youtube")


def test_index_fetched_over_http_once_and_checked(served, tmp_path):
    url = f"{served}/solo.json"
    pinned = hashlib.sha256((FIXTURES / "MUSIC_solo_videos.json").read_bytes()).hexdigest()
    cached = fetch_index(url, pinned, tmp_path / "index", "datasets.music.youtube.index_url")
    assert cached.parent == tmp_path / "index" and len(read_music_index(cached)) == 9
    assert fetch_index(url, "", tmp_path / "index", "x") == cached
    with pytest.raises(StageError, match="sha256 is"):
        fetch_index(url, "f" * 64, tmp_path / "index", "x")
    with pytest.raises(StageError, match="cannot fetch"):
        fetch_index(f"{served}/nothing.json", "", tmp_path / "index", "x")


def tiny_toy_params(repo_params: dict, tmp_path: Path) -> Path:
    music = repo_params["datasets"]["music"]
    music["test_videos_per_class"] = 1
    music["val_videos_per_class"] = 1  # with the test video, leaves the 2 training videos config asks for
    music["toy"].update(classes=["violin", "guitar"], solo_videos_per_class=4, duet_videos=1,
                        seconds_per_video=2, image_size=64, fps=4)
    repo_params["download"]["min_ok"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(repo_params))
    return path


def test_toy_stage_end_to_end(repo_params, stage_env, tmp_path):
    from pipeline.sources import toy

    # the toy world draws from data_seed; `seed` (training and evaluation) must not reach it
    repo_params.update(seed=5, data_seed=3)
    params_path = tiny_toy_params(repo_params, tmp_path)
    run = subprocess.run([sys.executable, "-m", "stages.download", "music", "--params", str(params_path)],
                         cwd=tmp_path, env=stage_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    raw = tmp_path / "data/raw/music"
    manifest = pq.read_table(raw / "manifest.parquet").to_pylist()
    world = load_params(params_path).datasets["music"].toy
    planned = toy.plan_videos(world, 3, "music")
    assert [row["video_id"] for row in manifest] == [video.video_id for video in planned]
    assert all(row["status"] == "ok" and row["url"] == f"http://127.0.0.1/{row['video_id']}.mp4" for row in manifest)
    assert {row["kind"] for row in manifest} == {"solo", "duet"}
    for row in manifest:
        assert media.probe(raw / row["path"]).duration_s == pytest.approx(2.0, abs=0.3)
    truth = pq.read_table(raw / "truth.parquet")
    assert truth.schema.equals(toy.TRUTH_SCHEMA) and truth.num_rows > 0
    assert set(truth.column("video_id").to_pylist()) == {row["video_id"] for row in manifest}
    first = planned[0]
    rendered = [row for row in truth.to_pylist() if row["video_id"] == first.video_id]
    assert rendered == toy.scene_truth(first, toy.video_scene(first, world, 3, "music"), world).to_pylist()
    assert rendered != toy.scene_truth(first, toy.video_scene(first, world, 5, "music"), world).to_pylist()
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.parquet", "truth.parquet", "videos"]
    assert f"{len(manifest)} ok, 0 failed" in run.stdout


# --------------------------------------------------------------------------- index files that try to break the readers


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    csv_file = tmp_path / "vggsound.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "vggsound.csv").read_bytes())
    assert read_vggsound_csv(csv_file) == read_vggsound_csv(FIXTURES / "vggsound.csv")
    json_file = tmp_path / "solo.json"
    json_file.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "MUSIC_solo_videos.json").read_bytes())
    assert read_music_index(json_file) == read_music_index(FIXTURES / "MUSIC_solo_videos.json")


@pytest.mark.parametrize("text, message", [
    ("abc,30,dog,train\nabc,\u00b2,dog,train\n", r"vggsound.csv:2: expected youtube_id,start_seconds"),  # "²"
    ("abc,30,dog,train\nabc,-5,dog,train\n", r"vggsound.csv:2: expected youtube_id,start_seconds"),
    ("abc,30,dog,train\nabc,30,\"" + "x" * 140_000 + "\",train\n", r"vggsound.csv:2: not a VGGSound csv row"),
])
def test_bad_vggsound_rows_are_one_line_errors(tmp_path, text, message):
    bad = tmp_path / "vggsound.csv"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(StageError, match=message) as err:
        read_vggsound_csv(bad)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_json_nested_too_deep_is_a_one_line_error(tmp_path):
    deep = tmp_path / "music.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StageError, match="music.json: not a MUSIC json index \\(nested too deep"):
        read_music_index(deep)


def test_sha256_pin_in_upper_case_or_with_a_prefix(tmp_path):
    index = FIXTURES / "MUSIC_solo_videos.json"
    digest = hashlib.sha256(index.read_bytes()).hexdigest()
    for pin in (digest.upper(), f"sha256:{digest}", f"  SHA256:{digest.upper()} "):
        assert fetch_index(str(index), pin, tmp_path, "x") == index
    with pytest.raises(StageError, match=r"x: the sha256 pin must be 64 hex digits .* got 'md5:abc'"):
        fetch_index(str(index), "md5:abc", tmp_path, "x")


@pytest.fixture
def dripping_server():
    """A server that promises 1 MB and sends one byte every 50 ms: each read is quick, the whole is not."""
    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            try:
                for _ in range(1 << 20):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_index_server_that_drips_bytes_is_given_up_at_the_deadline(dripping_server, tmp_path):
    started = time.monotonic()
    with pytest.raises(StageError, match=r"x: .*/vggsound.csv: not fetched within 1 s \(\d+ bytes read\)"):
        fetch_index(f"{dripping_server}/vggsound.csv", "", tmp_path, "x", deadline_s=1.0)
    assert time.monotonic() - started < 5
    assert not list(tmp_path.iterdir())  # nothing half-written in the cache


def test_malformed_ids_are_recorded_skips_outside_the_cap_and_never_fetched(tmp_path):
    params = load_params(REPO / "params.yaml")
    index = tmp_path / "solo.json"
    good = ["aaaaaaaaaaa", "bbbbbbbbbbb"]
    bad = ["../../../../x", "nul\x00nul-id", "y" * 300, ""]
    index.write_text(json.dumps({"videos": {"flute": [good[0], *bad, good[1]], "violin": ["../violin1"]}}))
    source = youtube_source(params, index_url=str(index), duet_index_url="", classes=["flute"],
                            max_videos_per_class=2)
    requests = youtube_requests(source, 10, tmp_path, "datasets.music.youtube")
    # both good flute ids despite the cap of 2 (skips do not count), then the flute skips; violin is not chosen
    assert [r.video_id for r in requests] == good + bad
    assert [bool(r.skip) for r in requests] == [False, False, True, True, True, True]
    assert "not a YouTube id (300 characters" in requests[4].skip and len(requests[4].skip) < 200

    fetched = []

    def fetch(request, dest):
        fetched.append(request.video_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"video")

    raw_dir = tmp_path / "data" / "raw" / "music"
    result = download_videos(requests, raw_dir, fetch, params.download, 0.0, resume=False)
    assert fetched == good and result.ok == 2
    rows = read_manifest(raw_dir)
    for video_id in bad:
        row = rows[video_id]
        assert row["status"] == "failed" and row["attempts"] == 0 and row["path"] == ""
        assert row["error"].startswith("skipped: not a YouTube id")
    assert sorted(path.name for path in (raw_dir / "videos").iterdir()) == [f"{v}.mp4" for v in good]
    assert not list(tmp_path.rglob("x.mp4"))
    # a resumed run records them again and finishes
    again = download_videos(requests, raw_dir, fetch, params.download, 0.0, resume=True)
    assert fetched == good and again.ok == 2 and len(again.rows) == 6
