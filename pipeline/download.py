"""The download stage: fetch every video of a dataset's index with yt-dlp.

One code path serves both sources. `source: youtube` reads the MUSIC json or
VGGSound csv index and fetches from YouTube, pacing itself and backing off
when YouTube rate-limits; `source: toy` renders the toy world, serves it on a
loopback HTTP server and fetches it through the very same yt-dlp session, so
the offline pipeline exercises the real download code.

Every video becomes one manifest row (docs/data.md). A video is fetched into
`.incoming/`, checked by decoding it, and only then renamed to
`videos/<video_id>.mp4`, so a file under `videos/` is always whole. YouTube
runs resume: rows that are `ok` (file present) or that failed because the
video is gone are kept, the rest are fetched again.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yt_dlp
from tqdm import tqdm
from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

from pipeline import media
from pipeline.config import Dataset, Download, Params, YoutubeSource
from pipeline.progress import progress
from pipeline.shards import atomic_path, write_table
from pipeline.sources import toy
from pipeline.sources.music import read_music_index
from pipeline.sources.vggsound import read_vggsound_csv
from pipeline.stage import StageError

MANIFEST_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("url", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("kind", pa.string()),
    ("start_s", pa.float64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("attempts", pa.int32()),
    ("path", pa.string()),
])

MANIFEST_EVERY = 5  # videos between two manifest writes: an interrupted run loses at most these

# YouTube's answers when it throttles this client: wait and retry, the video is not gone.
# "Sign in to confirm you're not a bot" is a throttle; "Sign in to confirm your age" is not.
RATE_LIMIT = re.compile(r"rate[- ]limit|HTTP Error 429|Too Many Requests|Sign in to confirm (?!your age)", re.I)
# Answers that will not change on a retry: the video is private, removed or blocked.
GONE = re.compile(
    r"Video unavailable|Private video|video is private|has been removed|no longer available"
    r"|account associated with this video has been terminated|copyright|members-only"
    r"|Sign in to confirm your age|HTTP Error 404|HTTP Error 410",
    re.I,
)
YOUTUBE_WATCH = "https://www.youtube.com/watch?v={}"
LOOPBACK = "http://127.0.0.1"  # where the toy world is served from (on a free port)
SHA256 = re.compile(r"[0-9a-f]{64}")
YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")  # the alphabet and length of every YouTube video id
INDEX_DEADLINE_S = 300.0  # an index fetch stops after this long in all (MUSIC's json and VGGSound's csv take seconds)
MIN_AUDIO_COVER = 0.9  # share of the container duration the decoded audio must cover


@dataclass(frozen=True)
class VideoRequest:
    """One video to fetch: what the manifest says about it and where yt-dlp gets it."""

    video_id: str  # file stem under videos/
    url: str
    labels: list[str]
    kind: str  # solo | duet
    start_s: float = 0.0  # start of the wanted window in the source video
    section_s: float | None = None  # length of the window; None fetches the whole video
    manifest_url: str = ""  # the manifest's url when it is not `url` (toy: no per-run port)
    skip: str = ""  # why the video is not fetched (a malformed index id): a failed manifest row, no file, no path


class FetchError(Exception):
    """One video could not be fetched; the message is yt-dlp's (or the media check's) reason."""


class RateLimitStop(StageError):
    """YouTube kept rate-limiting: the stage stops, keeping its manifest for the next run."""


@dataclass
class DownloadResult:
    rows: list[dict]  # manifest rows, index order
    fetched: int = 0  # videos fetched by this run (ok or failed)
    kept: int = 0  # rows taken over from an earlier run's manifest

    @property
    def ok(self) -> int:
        return sum(row["status"] == "ok" for row in self.rows)

    @property
    def failures(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]

    def summary(self) -> str:
        return (f"{self.ok} ok, {len(self.failures)} failed of {len(self.rows)} videos "
                f"({self.fetched} fetched now, {self.kept} kept from an earlier run)")


# --------------------------------------------------------------------------- yt-dlp


def is_rate_limited(error: str) -> bool:
    return bool(RATE_LIMIT.search(error))


def is_gone(error: str) -> bool:
    return bool(GONE.search(error)) and not is_rate_limited(error)


def check_media(path: Path) -> str:
    """Why `path` is not usable media ("" when it is): it must decode, with sound and pictures."""
    try:
        info = media.probe(path)
        if not info.has_video:
            return "no video stream"
        if not info.has_audio:
            return "no audio stream"
        audio_s = len(media.decode_audio(path, 16000)) / 16000
        if info.duration_s and audio_s < MIN_AUDIO_COVER * info.duration_s:
            return f"truncated: audio decodes to {audio_s:.1f} s of {info.duration_s:.1f} s"
        if len(media.decode_frames(path, 1, 16, max_seconds=1)) == 0:
            return "no decodable video frame"
    except media.MediaError as err:
        return str(err)
    return ""


class _CaptureLog:
    """yt-dlp logger that keeps the current video's messages instead of printing them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, message: str) -> None:
        self.lines.append(message)

    info = debug

    def warning(self, message: str) -> None:
        self.lines.append(f"WARNING: {message}")

    def error(self, message: str) -> None:
        self.lines.append(message)


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.removeprefix("ERROR: ").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _deno_runtime() -> dict:
    """yt-dlp's JavaScript runtime for YouTube: deno on PATH, else the one pip put next to python."""
    if shutil.which("deno"):
        return {"deno": {}}
    beside_python = Path(sys.executable).parent / "deno"
    return {"deno": {"path": str(beside_python)}} if beside_python.exists() else {"deno": {}}


class YtDlpFetcher:
    """One yt-dlp session for a whole stage run; `fetch` gets one video into its final place.

    yt-dlp writes into `incoming_dir` (cleared before every video); the result
    is decoded by `check_media` and renamed to the destination only when good.
    """

    def __init__(self, settings: Download, incoming_dir: Path):
        self.incoming_dir = Path(incoming_dir)
        self.log = _CaptureLog()
        self._request: VideoRequest | None = None
        ffmpeg = media.ffmpeg_exe()
        # yt-dlp's section downloader asks for ffmpeg without its options, through this
        # variable (its CLI sets it too); ffmpeg_location alone serves only the post-processors.
        self._ffmpeg_token = FFmpegPostProcessor._ffmpeg_location.set(ffmpeg)
        options = {
            "format": settings.format,
            "outtmpl": str(self.incoming_dir / "%(ier_video_id)s.%(ext)s"),
            "merge_output_format": "mp4",
            # a single-file format in another container (webm) is remuxed, not re-encoded
            "postprocessors": [{"key": "FFmpegVideoRemuxer", "preferedformat": "mp4"}],
            "ffmpeg_location": ffmpeg,
            "download_ranges": self._sections,
            "force_keyframes_at_cuts": True,
            "retries": settings.retries,
            "fragment_retries": settings.retries,
            "noplaylist": True,
            "quiet": True,
            "noprogress": True,
            "logger": self.log,
            "js_runtimes": _deno_runtime(),
        }
        if settings.cookies:
            options["cookiefile"] = settings.cookies
        self.ydl = yt_dlp.YoutubeDL(options)

    def _sections(self, info_dict: dict, ydl: yt_dlp.YoutubeDL) -> Iterator[dict]:
        """download_ranges callback: the current request's window, or the whole video."""
        request = self._request
        if request is None or request.section_s is None:
            yield {}
        else:
            yield {"start_time": request.start_s, "end_time": request.start_s + request.section_s}

    def fetch(self, request: VideoRequest, dest: Path) -> None:
        """Fetch `request` to `dest` (an .mp4), or raise FetchError with the reason."""
        shutil.rmtree(self.incoming_dir, ignore_errors=True)
        self.incoming_dir.mkdir(parents=True)
        self.log.lines.clear()
        self._request = request
        try:
            info = self.ydl.extract_info(request.url, download=True,
                                         extra_info={"ier_video_id": request.video_id})
        except Exception as err:  # yt-dlp raises DownloadError, and on rare bugs anything else
            raise FetchError(_one_line(str(err) or type(err).__name__)) from None
        finally:
            self._request = None
        downloads = (info or {}).get("requested_downloads") or []
        written = Path(downloads[-1]["filepath"]) if downloads and downloads[-1].get("filepath") else None
        if written is None or not written.exists():
            tail = self.log.lines[-1] if self.log.lines else "no message"
            raise FetchError(_one_line(f"yt-dlp wrote no file ({tail})"))
        problem = check_media(written)
        if problem:
            raise FetchError(_one_line(f"not usable media: {problem}"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, dest)

    def close(self) -> None:
        self.ydl.close()
        FFmpegPostProcessor._ffmpeg_location.reset(self._ffmpeg_token)
        shutil.rmtree(self.incoming_dir, ignore_errors=True)

    def __enter__(self) -> YtDlpFetcher:
        return self

    def __exit__(self, *_) -> None:
        self.close()


# --------------------------------------------------------------------------- manifest and loop


def read_manifest(raw_dir: Path) -> dict[str, dict]:
    """An earlier run's manifest rows by video id ({} when there is none)."""
    path = Path(raw_dir) / "manifest.parquet"
    if not path.exists():
        return {}
    try:
        rows = pq.read_table(path).cast(MANIFEST_SCHEMA).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise StageError(f"{path}: unreadable manifest ({err}); delete it to start the download over") from None
    return {row["video_id"]: row for row in rows}


def write_manifest(rows: list[dict], raw_dir: Path) -> None:
    write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), Path(raw_dir) / "manifest.parquet")


def _keep(row: dict | None, raw_dir: Path) -> bool:
    """Whether an earlier run's row stands: a video on disk, or one that is gone for good."""
    if row is None:
        return False
    if row["status"] == "ok":
        return bool(row["path"]) and (raw_dir / row["path"]).is_file()
    return is_gone(row["error"])


def manifest_row(request: VideoRequest, error: str, attempts: int) -> dict:
    """The manifest's row of a fetched video ("" error: ok) or of a failed one."""
    return {
        "video_id": request.video_id,
        "url": request.manifest_url or request.url,
        "labels": list(request.labels),
        "kind": request.kind,
        "start_s": float(request.start_s),
        "status": "failed" if error else "ok",
        "error": error,
        "attempts": attempts,
        "path": "" if error else f"videos/{request.video_id}.mp4",
    }


def download_videos(
    requests: list[VideoRequest],
    raw_dir: Path,
    fetch: Callable[[VideoRequest, Path], None],
    settings: Download,
    pace_s: float,
    resume: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Fetch every request, one manifest row each, written to `raw_dir/manifest.parquet` as it goes.

    `fetch(request, dest)` puts the video at `dest` or raises FetchError. Between
    two fetches the loop sleeps `pace_s`. A failure is retried `settings.retries`
    times unless the video is gone. A rate-limit answer is retried after a wait
    (`rate_limit_backoff_s`, doubled each time in a row) that spends no retry; after
    `max_rate_limit_waits` waits in a row the manifest is written and RateLimitStop
    raised. With `resume`, rows of an earlier manifest that stand are kept as they are.
    """
    raw_dir = Path(raw_dir)
    previous = read_manifest(raw_dir) if resume else {}
    order = [request.video_id for request in requests]
    rows = {video_id: previous[video_id] for video_id in order if _keep(previous.get(video_id), raw_dir)}
    result = DownloadResult(rows=[], kept=len(rows))

    def save() -> None:
        write_manifest([rows[video_id] for video_id in order if video_id in rows], raw_dir)

    waits_in_a_row = 0
    fetched_before = False  # no pause before the first fetch of a run
    todo = [request for request in requests if request.video_id not in rows]
    for request in progress(todo, desc=f"download {raw_dir.name}", unit="video", disable=not todo):
        if request.skip:  # never joined into a path: the id may hold "/", ".." or a NUL
            rows[request.video_id] = manifest_row(request, f"skipped: {request.skip}", 0)
            continue
        attempts, failures, error = 0, 0, ""
        just_waited = False
        dest = raw_dir / "videos" / f"{request.video_id}.mp4"
        while True:
            if fetched_before and pace_s > 0 and not just_waited:
                sleep(pace_s)
            fetched_before, just_waited = True, False
            attempts += 1
            try:
                fetch(request, dest)
                error = ""
                waits_in_a_row = 0
                break
            except FetchError as err:
                error = str(err)
            if is_rate_limited(error):
                if waits_in_a_row >= settings.max_rate_limit_waits:
                    save()
                    raise RateLimitStop(
                        f"{request.url}: YouTube still rate-limits after {waits_in_a_row} waits in a row "
                        f"({error}); {len(rows)} of {len(requests)} videos are in {raw_dir / 'manifest.parquet'}; "
                        f"rerun later (or with download.cookies) to resume")
                wait_s = settings.rate_limit_backoff_s * 2 ** waits_in_a_row
                waits_in_a_row += 1
                tqdm.write(f"{request.video_id}: rate-limited, waiting {wait_s:.0f} s ({waits_in_a_row}/"
                           f"{settings.max_rate_limit_waits}): {error}")
                sleep(wait_s)
                just_waited = True
                continue
            waits_in_a_row = 0
            failures += 1
            if is_gone(error) or failures > settings.retries:
                break
        rows[request.video_id] = manifest_row(request, error, attempts)
        if error:
            dest.unlink(missing_ok=True)  # an older copy must not outlive its failed row
        result.fetched += 1
        if result.fetched % MANIFEST_EVERY == 0:
            save()
    save()
    result.rows = [rows[video_id] for video_id in order]
    return result


# --------------------------------------------------------------------------- indexes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pinned_sha256(pin: str, where: str) -> str:
    """A params sha256 pin as 64 lower-case hex digits ("" for none): upper case and a `sha256:` prefix are
    accepted, anything else is a StageError naming `where`."""
    digest = pin.strip().lower().removeprefix("sha256:")
    if digest and not SHA256.fullmatch(digest):
        raise StageError(f"{where}: the sha256 pin must be 64 hex digits (optionally after 'sha256:'), got {pin!r}")
    return digest


def fetch_index(url: str, sha256: str, cache_dir: Path, where: str, deadline_s: float = INDEX_DEADLINE_S) -> Path:
    """The index file named by `url`: a local path, or http(s) fetched once into `cache_dir`.

    A pinned `sha256` is checked (a cached copy that does not match is fetched
    again); `where` names the params key in errors. A fetch that takes longer
    than `deadline_s` in all (a server that drips bytes) stops with a StageError.
    """
    sha256 = pinned_sha256(sha256, where)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in ("http", "https"):
        name = Path(urllib.parse.urlparse(url).path).name or "index"
        path = Path(cache_dir) / f"{hashlib.sha256(url.encode()).hexdigest()[:8]}-{name}"
        if not path.is_file() or (sha256 and _sha256(path) != sha256):
            body = _fetch_within(url, deadline_s, where)
            with atomic_path(path) as tmp:
                tmp.write_bytes(body)
    else:
        path = Path(url).expanduser()
        if not path.is_file():
            raise StageError(f"{where}: {url}: no such file")
    got = _sha256(path) if sha256 else ""
    if got != sha256:
        if scheme in ("http", "https"):
            path.unlink()
        raise StageError(f"{where}: {url}: sha256 is {got}, pinned {sha256} (the list changed?)")
    return path


def _fetch_within(url: str, deadline_s: float, where: str) -> bytes:
    """The body at `url`, read in pieces so that the whole fetch, not each read, is bounded by `deadline_s`
    (a server that drips a byte now and then would otherwise be read forever). A read waits at most the
    socket timeout, min(60 s, deadline_s), so the fetch stops at most that long after the deadline.
    A StageError naming `where` when the fetch fails or runs out of time."""
    deadline, pieces = time.monotonic() + deadline_s, []
    try:
        with urllib.request.urlopen(url, timeout=min(60.0, deadline_s)) as answer:
            while piece := answer.read1(1 << 16):
                pieces.append(piece)
                if time.monotonic() > deadline:
                    raise StageError(f"{where}: {url}: not fetched within {deadline_s:g} s "
                                     f"({sum(map(len, pieces))} bytes read); is the server stalling?")
    except (urllib.error.URLError, OSError) as err:
        raise StageError(f"{where}: cannot fetch {url} ({err})") from None
    return b"".join(pieces)


def _select(requests: list[VideoRequest], classes: list[str], cap: int, where: str) -> list[VideoRequest]:
    """Keep videos whose every label is in `classes` ([] keeps all), at most `cap` per label set."""
    if classes:
        known = {label for request in requests for label in request.labels}
        unknown = sorted(set(classes) - known)
        if unknown:
            raise StageError(f"{where}.classes: not in the index: {', '.join(unknown)}")
        requests = [request for request in requests if set(request.labels) <= set(classes)]
    if cap:
        taken: dict[str, int] = {}
        capped = []
        for request in requests:
            key = " ".join(request.labels)
            if taken.get(key, 0) < cap:
                taken[key] = taken.get(key, 0) + 1
                capped.append(request)
        requests = capped
    return requests


def youtube_requests(source: YoutubeSource, section_s: float, index_dir: Path, where: str) -> list[VideoRequest]:
    """The videos to fetch for a real dataset, in index order, after the class filter and cap.

    VGGSound rows of the csv's test split come first (stable order otherwise), so
    the videos that later stages hold out for evaluation come from VGGSound's test split.
    """
    index = fetch_index(source.index_url, source.index_sha256, index_dir, f"{where}.index_url")
    if source.index_format == "music_json":
        videos = read_music_index(index)
        if source.duet_index_url:
            duets = fetch_index(source.duet_index_url, source.duet_index_sha256, index_dir,
                                f"{where}.duet_index_url")
            seen = {video.youtube_id for video in videos}
            videos += [video for video in read_music_index(duets) if video.youtube_id not in seen]
        requests = [VideoRequest(video.youtube_id, YOUTUBE_WATCH.format(video.youtube_id), video.labels,
                                 video.kind, skip=id_problem(video.youtube_id)) for video in videos]
    else:
        if source.duet_index_url:
            raise StageError(f"{where}.duet_index_url: vggsound_csv has no duet list; set it to \"\"")
        clips = sorted(read_vggsound_csv(index), key=lambda clip: clip.split != "test")
        requests = [VideoRequest(clip.video_id, YOUTUBE_WATCH.format(clip.youtube_id), [clip.label], "solo",
                                 float(clip.start_s), float(section_s), skip=id_problem(clip.youtube_id))
                    for clip in clips]
    # a malformed id is kept as a recorded skip (in the chosen classes), outside the per-class cap
    chosen = _select([request for request in requests if not request.skip], source.classes,
                     source.max_videos_per_class, where)
    skipped = [request for request in requests
               if request.skip and (not source.classes or set(request.labels) <= set(source.classes))]
    return chosen + skipped


def id_problem(youtube_id: str) -> str:
    """Why `youtube_id` is not a YouTube video id ("" when it is one): 11 characters of A-Z a-z 0-9 _ -."""
    if YOUTUBE_ID.fullmatch(youtube_id):
        return ""
    shown = repr(youtube_id if len(youtube_id) <= 40 else youtube_id[:40] + "...")
    return f"not a YouTube id ({len(youtube_id)} characters, {shown}): 11 of A-Z a-z 0-9 _ - expected"


# --------------------------------------------------------------------------- toy world over HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # yt-dlp's generic extractor reads only the head of a media URL and hangs up
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on a free loopback port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------- the stage


def run_download(params: Params, dataset_name: str, raw_root: Path = Path("data/raw"),
                 sleep: Callable[[float], None] = time.sleep) -> DownloadResult:
    """Fill `raw_root/<dataset>/` (videos, manifest.parquet, truth.parquet) for one dataset.

    Raises StageError when fewer than `download.min_ok` videos are ok, after
    writing the manifest, so that the failures can be read.
    """
    dataset: Dataset = params.datasets[dataset_name]
    settings = params.download
    raw_dir = Path(raw_root) / dataset_name
    if dataset.source == "toy":
        result = _download_toy(dataset, params.data_seed, dataset_name, settings, raw_dir, sleep)
    else:
        where = f"datasets.{dataset_name}.youtube"
        requests = youtube_requests(dataset.youtube, settings.section_seconds, raw_dir / "index", where)
        with YtDlpFetcher(settings, raw_dir / ".incoming") as fetcher:
            result = download_videos(requests, raw_dir, fetcher.fetch, settings,
                                     pace_s=settings.sleep_s, resume=True, sleep=sleep)
        write_table(toy.TRUTH_SCHEMA.empty_table(), raw_dir / "truth.parquet")
    require_min_ok(result, settings.min_ok, raw_dir / "manifest.parquet")
    return result


def require_min_ok(result: DownloadResult, min_ok: int, manifest: Path) -> None:
    """StageError naming the count and the first reasons when fewer than `min_ok` videos are ok."""
    if result.ok < min_ok:
        reasons = "; ".join(f"{row['video_id']}: {row['error']}" for row in result.failures[:3])
        raise StageError(f"{manifest}: only {result.ok} of {len(result.rows)} videos downloaded, "
                         f"download.min_ok is {min_ok} (first failures: {reasons or 'none'})")


def _download_toy(dataset: Dataset, seed: int, role: str, settings: Download, raw_dir: Path,
                  sleep: Callable[[float], None]) -> DownloadResult:
    """Render the toy world, then fetch it over loopback HTTP like any other video."""
    # Toy params may have changed since the last run, and rendering is cheap: start over.
    shutil.rmtree(raw_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="ier-toy-") as served:
        start = time.perf_counter()
        videos, truth = toy.render_world(dataset.toy, seed, role, Path(served))
        print(f"download@{role}: rendered {len(videos)} toy videos in {time.perf_counter() - start:.1f} s")
        with serve_folder(Path(served)) as base_url:
            # the port changes every run; without it, identical runs write identical manifests
            requests = [VideoRequest(video.video_id, f"{base_url}/{video.video_id}.mp4", list(video.labels),
                                     video.kind, manifest_url=f"{LOOPBACK}/{video.video_id}.mp4")
                        for video in videos]
            with YtDlpFetcher(settings, raw_dir / ".incoming") as fetcher:
                result = download_videos(requests, raw_dir, fetcher.fetch, settings,
                                         pace_s=0.0, resume=False, sleep=sleep)
    write_table(truth, raw_dir / "truth.parquet")
    return result
