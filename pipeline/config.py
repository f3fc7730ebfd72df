"""Load params.yaml into typed, validated, frozen objects.

Every knob of the pipeline is a field of one of the dataclasses below, grouped
as params.yaml groups them. Loading rejects unknown keys, missing keys, wrong
types and out-of-range values with one line that names the key, e.g.

    params.yaml: clips.frame_size: must be >= 16, got 8

Ranges live in the field metadata (`lo`, `hi`, `choices`) so that the check is
declared next to the knob it guards. Numbers must be finite (`.nan`, `.inf` are rejected), a key may
appear once per mapping, and a few rules that tie two keys together are checked after the fields.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params file problem, already phrased as one line naming the key."""


def knob(lo: float | None = None, hi: float | None = None, **extra: Any) -> Any:
    """A required field with an optional inclusive range, checked on load."""
    return field(metadata={"lo": lo, "hi": hi, **extra})


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class ToyWorld:
    """The procedurally generated stand-in for a dataset (docs/data.md)."""

    classes: list[str]  # sounding classes, each with a glyph and a sound
    solo_videos_per_class: int = knob(lo=3)
    duet_videos: int = knob(lo=0)  # videos with two sounding objects (music role)
    seconds_per_video: int = knob(lo=1, hi=600)
    image_size: int = knob(lo=32, hi=1024)  # rendered frame side in pixels
    fps: int = knob(lo=1, hi=60)
    object_scale: list[float] = knob(lo=0.05, hi=1.0)  # [min, max] object side / frame side
    motion: float = knob(lo=0.0, hi=1.0)  # max drift over a video, share of frame side
    distractors: list[int] = knob(lo=0, hi=8)  # [min, max] silent objects per video
    clutter: int = knob(lo=0, hi=100)  # background shapes per frame
    loudness_ratio_db: float = knob(lo=0.0, hi=40.0)  # max level gap between sources of a duet
    ambience_db: float = knob(lo=-80.0, hi=0.0)  # background ambience level vs the sources
    ambience: Literal["room", "street"]  # kind of background ambience
    distractor_classes: list[str]  # silent glyph classes drawn as distractors
    max_overlap: float = knob(lo=0.0, hi=1.0)  # share of a sounding object others may cover
    rotation_deg: float = knob(lo=0.0, hi=180.0)  # max tilt of a glyph, either way
    new_background_each_second: bool = knob()  # a fresh backdrop every second (a camera cut), not one per video
    new_view_each_second: bool = knob()  # at each cut the objects are also seen anew (size, tilt, place)
    new_glyph_each_view: bool = knob()  # each new view also draws the object's glyph variant anew


@dataclass(frozen=True)
class YoutubeSource:
    """Where the real dataset's index lives and which part of it to fetch."""

    index_format: Literal["music_json", "vggsound_csv"]
    index_url: str  # downloaded once; a local path is also accepted
    index_sha256: str  # pinned checksum of the index file ("" skips the check)
    duet_index_url: str  # MUSIC duet list ("" when the dataset has none)
    duet_index_sha256: str
    classes: list[str]  # keep only these labels ([] keeps all)
    max_videos_per_class: int = knob(lo=0)  # 0 = no limit
    reference_boxes: list[str]  # local files of human-checked boxes in DSOL's format (evaluation; [] = none)


@dataclass(frozen=True)
class Dataset:
    source: Literal["toy", "youtube"]
    test_videos_per_class: int = knob(lo=1)  # solo videos per class held out for evaluation
    val_videos_per_class: int = knob(lo=1)  # solo videos per class held out for choosing thresholds (val)
    duet_test_videos_per_pair: int = knob(lo=0)  # duet videos per class pair held out (music)
    duet_val_videos_per_pair: int = knob(lo=0)  # duet videos per class pair for val (music)
    toy: ToyWorld = knob()
    youtube: YoutubeSource = knob()


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Download:
    retries: int = knob(lo=0, hi=20)  # attempts per video after the first one
    sleep_s: float = knob(lo=0.0)  # pause between two YouTube downloads (rate limit)
    rate_limit_backoff_s: float = knob(lo=0.0)  # wait after a rate-limit answer, doubled each time
    max_rate_limit_waits: int = knob(lo=0)  # give up the stage after this many waits in a row
    format: str = knob()  # yt-dlp format selector
    section_seconds: int = knob(lo=1)  # VGGSound window length from start_seconds
    min_ok: int = knob(lo=1)  # fail the stage when fewer videos than this download
    cookies: str = knob()  # youtube: Netscape cookies file of a logged-in session ("" = guest)


@dataclass(frozen=True)
class Clips:
    clip_seconds: float = knob(lo=0.1)  # length of one non-overlapping clip
    sample_rate: int = knob(lo=8000, hi=48000)  # mono audio rate
    frame_size: int = knob(lo=16, hi=1024)  # frames are resized to frame_size x frame_size
    frames_per_clip: int = knob(lo=1, hi=30)  # frames kept per clip, evenly spaced
    jpeg_quality: int = knob(lo=10, hi=100)
    max_clips_per_video: int = knob(lo=0)  # 0 = no limit
    min_ok_videos: int = knob(lo=1)  # fail the stage when fewer videos than this give clips
    workers: int = knob(lo=1, hi=64)  # videos cut in parallel


@dataclass(frozen=True)
class Features:
    n_mels: int = knob(lo=8, hi=256)
    f_max: float = knob(lo=1000.0)  # top of the mel scale, Hz
    win_length: int = knob(lo=16)  # samples (DSOL: 160 samples = 10 ms at 16 kHz)
    hop_length: int = knob(lo=8)  # samples (DSOL: 80)
    n_fft: int = knob(lo=64)  # large enough that no mel filter is empty
    top_db: float = knob(lo=10.0, hi=200.0)  # dynamic range kept by the dB conversion
    shard_rows: int = knob(lo=1)  # rows per Parquet shard
    row_group_rows: int = knob(lo=1)  # rows per row group: the reader's unit of shuffling and work split
    store_pixels: bool = knob()  # also store frame 0 decoded, so training reads skip JPEG decoding


@dataclass(frozen=True)
class MixSet:
    """One synthesised set: how many samples and how many objects of each kind."""

    count: int = knob(lo=0)
    sounding: int = knob(lo=1, hi=16)  # visible and audible
    silent: int = knob(lo=0, hi=16)  # visible, not audible
    offscreen: int = knob(lo=0, hi=16)  # audible, not visible


@dataclass(frozen=True)
class Synth:
    syn: MixSet = knob()  # MUSIC-Synthetic / VGG-Synthetic test mosaics
    un: MixSet = knob()  # Unconstrained test set
    train: MixSet = knob()  # stage-2 training set, made from train_mix
    val_count: int = knob(lo=1)  # mosaics of each val set (val_syn, val_un: the syn / un recipes on the val clips)
    volume_jitter_db: float = knob(lo=0.0, hi=40.0)  # each member's gain is drawn in +-this
    jpeg_quality: int = knob(lo=10, hi=100)  # of the mosaic images
    shard_rows: int = knob(lo=1)
    row_group_rows: int = knob(lo=1)  # rows per row group: the reader's unit of shuffling and work split


@dataclass(frozen=True)
class Detect:
    model: str = knob()  # toy: architecture yaml trained from scratch; youtube: weights file
    image_size: int = knob(lo=32, hi=1280)
    epochs: int = knob(lo=1)
    batch: int = knob(lo=1)
    max_train_images: int = knob(lo=1)
    confidence: float = knob(lo=0.0, hi=1.0)  # keep predicted boxes above this score
    class_map: dict[str, str] = knob()  # youtube: detector class -> dataset class
    mosaic: float = knob(lo=0.0, hi=1.0)  # toy training: probability of mosaic augmentation
    close_mosaic: int = knob(lo=0)  # toy training: last epochs trained without mosaic
    optimizer: Literal["SGD", "Adam", "AdamW", "auto"]  # toy training optimiser
    lr0: float = knob(lo=0.0, hi=1.0)  # toy training: initial learning rate (ignored by optimizer auto)


@dataclass(frozen=True)
class Pretrain:
    """Toy ImageNet: labelled stills of the toy glyphs that pretrain the visual trunk (pipeline/pretrain.py)."""

    classes: list[str] = knob()  # label set ([]: every glyph class of the toy world)
    artwork: Literal["twemoji", "openmoji"]  # the stills' design (openmoji: the videos' own artwork)
    images_per_class: int = knob(lo=1)  # training stills per class
    val_images_per_class: int = knob(lo=1)  # held-out stills per class (the report's accuracy)
    object_scale: list[float] = knob(lo=0.02, hi=1.0)  # the glyph's longer side / image side, [min, max]
    rotation_deg: float = knob(lo=0.0, hi=180.0)  # glyphs are tilted up to this many degrees either way
    clutter: int = knob(lo=0)  # random shapes on each still's backdrop
    epochs: int = knob(lo=1)  # passes over the training stills
    batch_size: int = knob(lo=1)  # stills per step
    lr: float = knob(lo=0.0, hi=1.0)  # AdamW learning rate
    weight_decay: float = knob(lo=0.0, hi=1.0)  # AdamW weight decay
    flip: bool = knob()  # random horizontal flips
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available


@dataclass(frozen=True)
class Model:
    """The IEr networks (pipeline/models): shared by stage 1 and stage 2."""

    width: int = knob(lo=1, hi=128)  # ResNet-18 base width (paper 64; toy 16 so CPU training fits)
    dim: int = knob(lo=8)  # embedding size of f^v, f^a, prototypes (paper 128)
    hidden: int = knob(lo=8)  # hidden size of the projection heads (paper 128)
    image_size: int = knob(lo=32, hi=1024)  # visual input side; stored frames are resized when it differs
    visual_pretrained: str = knob()  # local state dict for the visual trunk ("" = from scratch)
    audio_pretrained: str = knob()  # local state dict for the audio trunk ("" = from scratch)
    audio_mid_stages: list[int] = knob(lo=1, hi=4)  # ResNet stages whose pooled maps feed the AII
    head_init_scale: float = knob(lo=0.0)  # correspondence head: initial scale on the cosine map
    head_init_bias: float = knob()  # correspondence head: initial bias
    similarity_temperature: float = knob(lo=1e-4)  # prototype similarity: sigmoid((cos - center) / temperature)
    similarity_center: float = knob(lo=-1.0, hi=1.0)  # the cosine that reads as probability 0.5
    channels_last: bool = knob()  # channels_last memory format for training, on CUDA and on the CPU
    cpu_precision: Literal["auto", "bf16", "fp32"]  # CPU autocast: auto = bf16 where the CPU has it natively


@dataclass(frozen=True)
class Stage1:
    batch_size: int = knob(lo=2)  # clips per step (a batch needs 2 videos for negatives)
    lr: float = knob(lo=0.0, hi=1.0)  # AdamW learning rate
    weight_decay: float = knob(lo=0.0, hi=1.0)  # AdamW weight decay
    av_epochs: int = knob(lo=1)  # epochs of the correspondence phase (Eq. 1) before clustering
    class_epochs: int = knob(lo=0)  # DSOL's cluster-classify alternation after Eq. 1's phase (0: cluster once)
    class_weight: float = knob(lo=0.0)  # weight of the pseudo-class cross-entropies next to Eq. 1 in those epochs
    clusters: int = knob(lo=2)  # K of the visual k-means (more than the true classes)
    kmeans_niter: int = knob(lo=1)  # k-means iterations
    kmeans_init: Literal["k-means++", "random"]  # k-means seeding
    cluster_features: Literal["visual", "audiovisual"]  # what k-means sees: object f^v, or object f^v with f^a
    cluster_pass: Literal["eval", "epoch"]  # k-means features: a separate eval-mode pass, or the epoch's own steps
    object_ratio: float = knob(lo=0.0, hi=1.0)  # object pooling: positions this far from min to max of the map
    negatives: Literal["roll", "all"]  # Eq. 1 negatives: the next clip's audio, or every other video's in the batch
    flip: bool = knob()  # random horizontal flips of the training images
    crop_scale: float = knob(lo=0.1, hi=1.0)  # random square crops of at least this share of the side (1: none)
    canvas: int = knob(lo=1, hi=4)  # Eq. 1 images are canvas x canvas grids of clips (1: each clip alone)
    eval_mixtures: int = knob(lo=1)  # test mixtures of 2..4 clips for the multi-label metrics
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available


@dataclass(frozen=True)
class Aii:
    enabled: bool = knob()  # the distinguishing steps of the Audio-Instance-Identifier (false: the ablation)
    epochs: int = knob(lo=0)  # epochs of the AII phase (single clips + mixtures) after clustering
    curriculum: bool = knob()  # mixture share and members rise over the phase (false: end values throughout)
    p_start: float = knob(lo=0.0, hi=1.0)  # share of mixtures in a batch at the start
    p_end: float = knob(lo=0.0, hi=1.0)  # share of mixtures in a batch at the end
    min_mix: int = knob(lo=2, hi=16)  # clips per mixture at the start
    max_mix: int = knob(lo=2, hi=16)  # clips per mixture at the end
    av_loss_weight: float = knob(lo=0.0)  # weight of Eq. 1 on the single clips during the AII phase
    # AII targets: other prototypes whose P^a lies this close to a member's are left out (1: none)
    sibling_cos: float = knob(lo=0.0, hi=1.0)
    # weight of the zero-step target on single clips: their F^a_n = f^a, as at evaluation (0: steps on mixtures only)
    single_step_weight: float = knob(lo=0.0)
    no_source_share: float = knob(lo=0.0, hi=1.0)  # inputs without a source added per batch, share of its clips
    no_source_dbfs: list[float] = knob(lo=-140.0, hi=0.0)  # [min, max] RMS level of those inputs, dBFS


@dataclass(frozen=True)
class Cmr:
    """Stage 2, the Cross-modal Referrer."""

    epochs: int = knob(lo=0)  # training epochs on the stage-2 mosaics (0: the stage-1 networks, "w/o CMR")
    batch_size: int = knob(lo=2)  # mosaics per step
    lr: float = knob(lo=0.0, hi=1.0)  # AdamW learning rate
    weight_decay: float = knob(lo=0.0, hi=1.0)  # AdamW weight decay
    temperature: float = knob(lo=1e-4)  # divides the GAP values and Eq. 4's shares before the softmaxes (Eqs. 3, 5)
    silent_filter: bool = knob()  # L^av_k = l(f^v, F^a_k) . L^v_k (false: the ablation, no visual class maps)
    offscreen_filter: bool = knob()  # p^av weighs p^a by the seen area of each class (false: the ablation)
    seen_mask: Literal["batch_mean", "class_share"]  # how the seen area GAP(m_k) of Eq. 4 is measured
    class_share: float = knob(lo=0.0, hi=1.0)  # class_share mask: seen where the class's softmax share is above this
    av_loss_weight: float = knob(lo=0.0)  # weight of Eq. 1 on the mosaics next to L_u (0: L_u alone)
    flip: bool = knob()  # random horizontal flips of the training mosaics
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available


@dataclass(frozen=True)
class Oracle:
    """The ceiling: IEr's networks trained with the true labels (pipeline/oracle.py)."""

    epochs: int = knob(lo=1)  # passes over train_single (the audio side trains in every one)
    visual_epochs: int = knob(lo=1)  # the first this many passes also train the visual side
    batch_size: int = knob(lo=1)  # clips per step (whole canvases)
    lr: float = knob(lo=0.0, hi=1.0)  # AdamW learning rate
    weight_decay: float = knob(lo=0.0, hi=1.0)  # AdamW weight decay
    canvas: int = knob(lo=1, hi=4)  # visual class maps learnt on canvas x canvas grids of clips
    mix_share: float = knob(lo=0.0, hi=4.0)  # mixtures per step / clips per step
    max_mix: int = knob(lo=2)  # a step's mixtures have 2..max_mix clips of distinct classes
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available


@dataclass(frozen=True)
class Evaluate:
    """The evaluation protocol (docs/architecture.md)."""

    map_size: int = knob(lo=8, hi=1024)  # maps are bilinearly resized to this side before thresholding (224)
    single_threshold: float = knob(lo=0.0, hi=1.0)  # single source: predicted region above this x max (0.1)
    class_threshold: float = knob(lo=0.0, hi=1.0)  # Syn / Unconstrained: region above this x max (0.5)
    duet_threshold: float = knob(lo=0.0, hi=1.0)  # Duet: region above this x max (0.2)
    iou_success: float = knob(lo=0.0, hi=1.0)  # single source: a sample counts in iou50 at IoU >= this (0.5)
    ciou_success: float = knob(lo=0.0, hi=1.0)  # class-aware: an image counts in ciou30 at CIoU >= this (0.3)
    examples: int = knob(lo=0)  # test mosaics per set kept with their maps for the report
    boxes: Literal["auto", "truth", "detector"]  # the boxes metrics score against (auto: toy truth, youtube detector)
    lit_share: float = knob(lo=0.0, hi=1.0)  # an object is lit when at least this share of its box is predicted (0.3)
    grounded_success: float = knob(lo=0.0, hi=1.0)  # grounded iou30 counts images with IoU >= this (0.3)
    threshold_steps: int = knob(lo=2, hi=1000)  # candidate absolute thresholds tried on val, evenly in (0, 1)
    batch_size: int = knob(lo=1)  # images per forward pass
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available


@dataclass(frozen=True)
class Params:
    seed: int = knob(lo=0, hi=2**32 - 1)  # numpy and torch seeds
    data_seed: int = knob(lo=0, hi=2**32 - 1)
    datasets: dict[str, Dataset]
    download: Download
    clips: Clips
    features: Features
    synth: Synth
    detect: Detect
    pretrain: Pretrain
    model: Model
    stage1: Stage1
    aii: Aii
    cmr: Cmr
    oracle: Oracle
    evaluate: Evaluate


# --------------------------------------------------------------------------- loading


def _check_range(value: Any, meta: Any, where: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    for item in value if isinstance(value, list) else [value]:
        if lo is not None and item < lo:
            raise ConfigError(f"{where}: must be >= {lo}, got {item}")
        if hi is not None and item > hi:
            raise ConfigError(f"{where}: must be <= {hi}, got {item}")


def _build(hint: Any, value: Any, where: str) -> Any:
    """Turn plain YAML data into `hint`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(hint)
        fields = {f.name: f for f in dataclasses.fields(hint)}
        for key in value:
            if key not in fields:
                raise ConfigError(f"{where}.{key}: unknown key" if where else f"{key}: unknown key")
        built = {}
        for name, fld in fields.items():
            sub = f"{where}.{name}" if where else name
            if name not in value:
                raise ConfigError(f"{sub}: missing")
            built[name] = _build(hints[name], value[name], sub)
            _check_range(built[name], fld.metadata, sub)
        return hint(**built)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = " | ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"{where}: must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {type(value).__name__}")
        return [_build(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        key_hint, item_hint = typing.get_args(hint)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
        return {str(k): _build(item_hint, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{where}: unions are not supported in params")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type {hint}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file; errors start with the file name."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    try:
        params = _build(Params, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for name, dataset in params.datasets.items():
        _check_dataset(name, dataset, path)
    if params.aii.min_mix > params.aii.max_mix:
        raise ConfigError(f"{path}: aii.min_mix: must be <= aii.max_mix ({params.aii.max_mix}), "
                          f"got {params.aii.min_mix}")
    _check_pair(params.pretrain.object_scale, f"{path}: pretrain.object_scale")
    _check_pair(params.aii.no_source_dbfs, f"{path}: aii.no_source_dbfs")
    _check_order(params.aii.max_mix, "aii.max_mix", params.stage1.clusters, "stage1.clusters",
                 "a mixture's clips are of distinct pseudo-classes", path)
    _check_order(params.features.win_length, "features.win_length", params.features.n_fft, "features.n_fft",
                 "the window is zero-padded to the FFT size", path)
    _check_order(params.features.hop_length, "features.hop_length", params.features.win_length,
                 "features.win_length", "a larger hop skips samples between windows", path)
    return params


def _check_order(value: int, key: str, limit: int, limit_key: str, why: str, path: Path) -> None:
    if value > limit:
        raise ConfigError(f"{path}: {key}: must be <= {limit_key} ({limit}): {why}; got {value}")


def _check_pair(pair: list, where: str) -> None:
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ConfigError(f"{where}: must be [min, max] with min <= max, got {pair}")


def _check_dataset(name: str, dataset: Dataset, path: Path) -> None:
    """Cross-field rules that a single field's range cannot express."""
    where = f"{path}: datasets.{name}"
    toy = dataset.toy
    if len(toy.classes) < 2 or len(set(toy.classes)) != len(toy.classes):
        raise ConfigError(f"{where}.toy.classes: need at least 2 distinct classes")
    for key in ("object_scale", "distractors"):
        _check_pair(getattr(toy, key), f"{where}.toy.{key}")
    held_out = dataset.test_videos_per_class + dataset.val_videos_per_class
    if dataset.source == "toy" and held_out > toy.solo_videos_per_class - 2:
        raise ConfigError(
            f"{where}.test_videos_per_class + val_videos_per_class: must leave at least 2 training videos per "
            f"class (toy.solo_videos_per_class is {toy.solo_videos_per_class})"
        )
