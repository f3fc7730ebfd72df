"""The results page: the paper's tables, Figure-4-style examples and the training curves in one static HTML file.

`build_report` reads what the evaluation and training stages wrote for each dataset role that has a
`reports/<ds>/metrics.json` (a role without one is left out):

- `metrics.json`: IEr's and the baselines' localisation metrics under DSOL's protocol and under the
  audio-grounded protocol (with its deranged-audio and silence controls), the same scored against the
  detector's boxes where present, stage 1's NMI and audio multi-label scores and the detector's mAP50
  (docs/architecture.md);
- `examples.npz` and `examples.json`: a few evaluation images with IEr's class-aware map of every class,
  their objects and the model's perceived audio distribution, and (newer files) IEr's own "where is the
  sound" map under the true audio, deranged audio and digital silence, with the objects it lit;
- `stage1-live/plots/metrics/*.tsv`, `stage2-live/plots/metrics/*.tsv`: dvclive's per-step values;

and, when they exist, `reports/ablations.md` (a Markdown table) and `reports/seeds.json` (`make seeds`:
statistics over seeds). It writes `reports/index.html`, one file that a browser opens without a server or
JavaScript: every figure is a PNG drawn by matplotlib (Agg) and embedded as a base64 data URI. The table
layout follows the paper (IEr, AAAI 2022): Table 1 (single-source and class-aware localisation under DSOL's
protocol, percentages with one decimal, best per column in bold), Table 2 (stage 1's clustering and audio
multi-label scores), Figure 4 (class-aware maps over the image, with the perceived audio distribution
beside them); the audio-grounded tables, the control panels of the examples and the seeds table are this
project's additions (issue 21).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from pipeline.shards import atomic_path
from pipeline.stage import StageError

DATASETS = ("music", "vggsound")
SET_TITLES = {"single": "Single-source", "syn": "Synthetic", "duet": "Duet", "un": "Unconstrained"}
# Table 1's columns for each dataset role, in the paper's order; Duet exists for MUSIC only.
TABLE1_SETS = {"music": ("single", "syn", "duet", "un"), "vggsound": ("single", "syn", "un")}
SET_METRICS = {"single": (("iou50", "IoU@0.5"), ("auc", "AUC"))}
CLASS_AWARE_METRICS = (("ciou30", "CIoU@0.3"), ("auc", "AUC"))
METHOD_NAMES = {"ier": "IEr", "avol": "AVOL", "dsol": "DSOL", "oracle": "Oracle (true labels)"}
CEILINGS = {"oracle"}  # rows shown as the ceiling of the architecture, never ranked against the methods
STAGE1_METRICS = (("nmi", "NMI"), ("map", "mAP"), ("precision", "Precision"), ("recall", "Recall"))
CURVE_FOLDERS = ("stage1-live", "stage2-live")
MISSING = "&ndash;"

# The audio-grounded protocol: its sets in the order (a set no method reports is left out) and its
# columns. Reliance is a difference in [-1, 1], shown like the rest as percentage points.
GROUNDED_SETS = ("single", "syn", "un", "duet")
GROUNDED_METRICS = (("iou30", "IoU@0.3"), ("reliance", "reliance"), ("silence_empty", "silence empty"),
                    ("sounding_recall", "sounding recall"), ("silent_false_alarm", "silent false alarm"),
                    ("heard_map", "heard mAP"))
LOWER_IS_BETTER = {"silent_false_alarm"}  # lighting silent objects is the error the protocol exists to catch
BOXES_TITLES = {"truth": "the generator's true boxes", "detector": "the detector's boxes"}

# The examples' audio conditions, in the order of examples.npz `regions` axis 1 unless examples.json says.
CONDITIONS = ("true", "deranged", "silence")
CONDITION_TITLES = {"true": "true audio", "deranged": "deranged audio", "silence": "digital silence"}
LIT_FRACTION = 0.3  # evaluate's rule for "lit", quoted in the captions

# The seeds table: DSOL's headline column of each set, then the grounded protocol's headline numbers.
SEEDS_FILE = "seeds.json"
SEED_HEADLINE_KEYS = ("single.iou50", "syn.ciou30", "un.ciou30", "duet.ciou30",
                      *(f"grounded.{set_name}.{key}" for set_name in GROUNDED_SETS
                        for key in ("iou30", "reliance", "silence_empty")))

# Colours of Figure 4: boxes and bars say whether a class sounds in the scene, is silent there, or is heard
# off-screen; the bars of all other classes are light grey.
KIND_COLOURS = {"sounding": "#2ca02c", "silent": "#d62728", "offscreen": "#7f7f7f", "other": "#d3d3d3"}
KIND_LABELS = {"sounding": "sounding in scene", "silent": "silent in scene", "offscreen": "off-screen",
               "other": "other classes"}
MAP_ALPHA = 0.5
PANEL_INCHES = 2.0
DPI = 100
MAX_BARS = 20  # a real VGGSound distribution has 221 classes: show the example's own and the likeliest others

PAGE_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: center; }
th[scope=row] { text-align: left; }
caption { caption-side: bottom; font-size: 0.85em; color: #555; padding-top: 4px; text-align: left; }
figure.example { margin: 0 0 1.5em; padding: 0.5em; border: 1px solid #ddd; }
.panels { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.missing { color: #a00; }
p.conditions { font-size: 0.85em; color: #444; max-width: 60em; }
"""


@dataclass(frozen=True)
class Examples:
    """What evaluation wrote to show: N images, IEr's map of each of C classes for each, and their truth."""

    images: np.ndarray  # (N, H, W, 3) uint8
    maps: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    classes: list[str]  # (C,): the classes along the maps' axis 1
    samples: list[dict]  # (N,): examples.json
    # (N, K, H, W) float32: IEr's own map under K audio conditions (examples.json `conditions`), on an absolute
    # scale; None for example files written before the audio-grounded protocol.
    regions: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetReport:
    name: str
    folder: Path  # reports/<name>
    metrics: dict
    examples: Examples | None  # None: evaluation wrote no examples


# --------------------------------------------------------------------------- reading


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: cannot read ({err})") from err


def read_arrays(path: Path, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[np.ndarray | None]:
    """The arrays `names` (each required) then `optional` (None where absent), in that order."""
    # No pickles: class names are a plain str array, and a report reader should not run code from a file.
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in names if name not in arrays.files]
            if missing:
                raise StageError(f"{path}: no array {', '.join(missing)}")
            return [arrays[name] if name in arrays.files else None for name in (*names, *optional)]
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: cannot read ({err})") from err


def check_regions(regions: np.ndarray, images: np.ndarray, samples: list, arrays_path: Path,
                  samples_path: Path) -> None:
    """`regions` is (N, K, H, W) like the images, and every example names K conditions and its threshold."""
    if regions.ndim != 4 or regions.shape[0] != len(images) or regions.shape[2:] != images.shape[1:3]:
        raise StageError(f"{arrays_path}: regions are {regions.shape}, expected (N, conditions, H, W) with "
                         f"N, H, W = {len(images)}, {images.shape[1]}, {images.shape[2]}")
    for index, sample in enumerate(samples):
        conditions = sample.get("conditions", CONDITIONS)
        if len(conditions) != regions.shape[1]:
            raise StageError(f"{samples_path}: example {index} names {len(conditions)} conditions, but "
                             f"{arrays_path.name} regions have {regions.shape[1]}")
        if not isinstance(sample.get("threshold"), (int, float)):
            raise StageError(f"{samples_path}: example {index} has no numeric threshold "
                             f"({arrays_path.name} has regions)")


def read_examples(folder: Path) -> Examples | None:
    """`examples.npz` and `examples.json` of one dataset role, their shapes checked against each other."""
    arrays_path, samples_path = folder / "examples.npz", folder / "examples.json"
    if not arrays_path.exists() and not samples_path.exists():
        return None
    for path in (arrays_path, samples_path):
        if not path.exists():
            raise StageError(f"{path}: missing, but its partner {arrays_path.name}/{samples_path.name} exists")
    images, maps, classes, regions = read_arrays(arrays_path, ("images", "maps", "classes"), ("regions",))
    maps = maps.astype(np.float32)
    samples = read_json(samples_path)
    if images.ndim != 4 or images.shape[3] != 3:
        raise StageError(f"{arrays_path}: images are {images.shape}, expected (N, H, W, 3)")
    expected = (len(images), len(classes), *images.shape[1:3])
    if maps.shape != expected:
        raise StageError(f"{arrays_path}: maps are {maps.shape}, expected (N, C, H, W) = {expected}")
    if len(samples) != len(images):
        raise StageError(f"{samples_path}: {len(samples)} examples, but {arrays_path.name} has {len(images)}")
    if regions is not None:
        regions = regions.astype(np.float32)
        check_regions(regions, images, samples, arrays_path, samples_path)
    return Examples(images=images, maps=maps, classes=[str(name) for name in classes], samples=samples,
                    regions=regions)


def read_reports(reports_dir: Path) -> list[DatasetReport]:
    """The dataset roles that have a metrics.json, in DATASETS order; none at all is an error."""
    reports = []
    for name in DATASETS:
        folder = reports_dir / name
        if (folder / "metrics.json").exists():
            reports.append(DatasetReport(name=name, folder=folder, metrics=read_json(folder / "metrics.json"),
                                         examples=read_examples(folder)))
    if not reports:
        wanted = ", ".join(str(reports_dir / name / "metrics.json") for name in DATASETS)
        raise StageError(f"{wanted}: none exists (run the evaluation stages first)")
    return reports


def read_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    """dvclive's TSV: a header row of column names, then one row of numbers per step."""
    with path.open(newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))
    if not rows:
        raise StageError(f"{path}: empty (expected a header row)")
    try:
        values = np.array(rows[1:], dtype=np.float64).reshape(len(rows) - 1, len(rows[0]))
    except ValueError as err:
        raise StageError(f"{path}: not a table of numbers under its header ({err})") from err
    return rows[0], values


# --------------------------------------------------------------------------- figures


def new_figure(width_inches: float, height_inches: float) -> Figure:
    # A bare Figure, not pyplot: no global figure list to leak into, and it renders with Agg on any machine.
    return Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" stamp: the same inputs give the same page bytes whatever matplotlib wrote them.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def show_image(figure: Figure, image: np.ndarray):
    """An axes showing `image` in pixel coordinates (x right, y down), so box corners are `x * width`."""
    axes = figure.add_subplot()
    height, width = image.shape[:2]
    axes.imshow(image, extent=(0, width, height, 0))
    axes.set_axis_off()
    return axes


def draw_boxes(axes, objects: list[dict], width: int, height: int, classes: list[str], labels: bool) -> None:
    """Boxes in green (sounding) or red (silent); objects of a class without a map count as silent."""
    for obj in objects:
        sounding = bool(obj["sounding"]) and obj["class"] in classes
        colour = KIND_COLOURS["sounding" if sounding else "silent"]
        x0, y0 = obj["x0"] * width, obj["y0"] * height
        box_width, box_height = (obj["x1"] - obj["x0"]) * width, (obj["y1"] - obj["y0"]) * height
        axes.add_patch(Rectangle((x0, y0), box_width, box_height, fill=False, edgecolor=colour, linewidth=1.5))
        if labels:
            axes.text(x0, y0, obj["class"], fontsize=6, color="white", va="top",
                      bbox=dict(facecolor=colour, edgecolor="none", pad=1))


def image_figure(image: np.ndarray, objects: list[dict], classes: list[str]) -> bytes:
    figure = new_figure(PANEL_INCHES, PANEL_INCHES)
    axes = show_image(figure, image)
    draw_boxes(axes, objects, image.shape[1], image.shape[0], classes, labels=True)
    axes.set_title("input", fontsize=9)
    return png_bytes(figure)


def class_map_figure(image: np.ndarray, class_map: np.ndarray, name: str, objects: list[dict],
                     sounding: bool) -> bytes:
    """IEr's map of one class over the image, on the fixed scale [0, 1] so a silenced class looks cold."""
    figure = new_figure(PANEL_INCHES, PANEL_INCHES)
    axes = show_image(figure, image)
    height, width = class_map.shape
    axes.imshow(class_map, cmap="jet", alpha=MAP_ALPHA, vmin=0.0, vmax=1.0, extent=(0, width, height, 0))
    own_boxes = [obj for obj in objects if obj["class"] == name]
    draw_boxes(axes, own_boxes, width, height, [name], labels=False)
    kind = "sounding" if sounding else "silent"
    axes.set_title(f"{name} ({kind})", fontsize=9, color=KIND_COLOURS[kind])
    return png_bytes(figure)


def region_outline(axes, region: np.ndarray) -> None:
    """The outline of `region` (a boolean mask) in white, closed along the image border too."""
    if not region.any():
        return
    height, width = region.shape
    # Padded with False so a region touching the border still gets a closed outline; pixel i's centre is at
    # i + 0.5, as imshow's extent (0, width, height, 0) places it.
    padded = np.pad(region, 1).astype(np.float32)
    xs, ys = np.arange(-1, width + 1) + 0.5, np.arange(-1, height + 1) + 0.5
    axes.contour(xs, ys, padded, levels=[0.5], colors="white", linewidths=1.5)
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)


def draw_lit_boxes(axes, objects: list[dict], lit: set[int], width: int, height: int) -> None:
    """Sounding boxes green, silent ones red; solid when lit, dashed when not; a lit silent box thick and labelled."""
    for index, obj in enumerate(objects):
        sounding, is_lit = bool(obj.get("sounding")), index in lit
        colour = KIND_COLOURS["sounding" if sounding else "silent"]
        x0, y0 = obj["x0"] * width, obj["y0"] * height
        box_width, box_height = (obj["x1"] - obj["x0"]) * width, (obj["y1"] - obj["y0"]) * height
        false_alarm = is_lit and not sounding
        axes.add_patch(Rectangle((x0, y0), box_width, box_height, fill=False, edgecolor=colour,
                                 linewidth=3.5 if false_alarm else 1.5, linestyle="-" if is_lit else "--"))
        if false_alarm:
            axes.text(x0, y0, "lit (silent)", fontsize=7, fontweight="bold", color="white", va="top",
                      bbox=dict(facecolor=colour, edgecolor="none", pad=1))


def region_figure(image: np.ndarray, region: np.ndarray, threshold: float, vmax: float, objects: list[dict],
                  lit: set[int], title: str) -> bytes:
    """IEr's own map under one audio condition as a heat overlay, its region (> threshold) outlined, the boxes.

    `vmax` is shared by an example's conditions, so a condition that quietens the map looks colder.
    """
    figure = new_figure(PANEL_INCHES, PANEL_INCHES)
    axes = show_image(figure, image)
    height, width = region.shape
    axes.imshow(region, cmap="jet", alpha=MAP_ALPHA, vmin=0.0, vmax=vmax, extent=(0, width, height, 0))
    inside = region > threshold
    region_outline(axes, inside)
    draw_lit_boxes(axes, objects, lit, width, height)
    share = f"region {100 * inside.mean():.0f} %" if inside.any() else "region empty"
    axes.set_title(f"{title}\n{share}", fontsize=9)
    return png_bytes(figure)


def audio_kind(name: str, sample: dict) -> str:
    # A class heard at all is coloured by how it is heard: in-scene sounding first, then off-screen.
    for kind in ("sounding", "offscreen", "silent"):
        if name in sample.get(kind, []):
            return kind
    return "other"


def audio_bars(distribution: dict, classes: list[str], sample: dict) -> list[tuple[str, float, str]]:
    """(class, probability, kind) of the example's own classes and the likeliest others, likeliest first."""
    bars = [(name, float(distribution.get(name, 0.0)), audio_kind(name, sample)) for name in classes]
    own = [bar for bar in bars if bar[2] != "other"]
    others = sorted((bar for bar in bars if bar[2] == "other"), key=lambda bar: -bar[1])
    shown = own + others[:max(0, MAX_BARS - len(own))]
    return sorted(shown, key=lambda bar: -bar[1])


def audio_figure(distribution: dict, classes: list[str], sample: dict) -> bytes:
    bars = audio_bars(distribution, classes, sample)
    figure = new_figure(PANEL_INCHES * 1.5, max(PANEL_INCHES, 0.9 + 0.16 * len(bars)))
    axes = figure.add_subplot()
    positions = np.arange(len(bars))
    axes.barh(positions, [bar[1] for bar in bars], color=[KIND_COLOURS[bar[2]] for bar in bars])
    axes.set_yticks(positions, [bar[0] for bar in bars], fontsize=7)
    axes.invert_yaxis()  # likeliest on top
    axes.set_xlim(0.0, 1.0)
    axes.tick_params(axis="x", labelsize=7)
    shown = "" if len(bars) == len(classes) else f" (top {len(bars)} of {len(classes)})"
    axes.set_title(f"perceived audio{shown}", fontsize=9)
    legend = [Patch(color=colour, label=KIND_LABELS[kind]) for kind, colour in KIND_COLOURS.items()]
    axes.legend(handles=legend, fontsize=6, loc="lower right")
    return png_bytes(figure)


def curve_figure(path: Path) -> bytes:
    """Every column of one dvclive TSV against its `step` column (or the row number)."""
    header, values = read_tsv(path)
    steps = values[:, header.index("step")] if "step" in header else np.arange(len(values))
    figure = new_figure(PANEL_INCHES * 1.5, PANEL_INCHES)
    axes = figure.add_subplot()
    plotted = [(column, name) for column, name in enumerate(header) if name not in ("step", "timestamp")]
    for column, name in plotted:
        axes.plot(steps, values[:, column], marker="." if len(values) < 30 else None, label=name)
    if len(plotted) > 1:
        axes.legend(fontsize=6)
    axes.set_title(path.stem, fontsize=9)
    axes.set_xlabel("step", fontsize=8)
    axes.tick_params(labelsize=7)
    return png_bytes(figure)


# --------------------------------------------------------------------------- HTML pieces


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def percent(value) -> str | None:
    return None if value is None else f"{100 * value:.1f}"


def best_in_bold(values: list, lower_is_better: bool = False, ranked: list[bool] | None = None) -> list[str]:
    """One column's cells: percentages, the best (highest as shown, or lowest) in bold when there are two or more.
    Only the rows `ranked` marks compete (default: all); the others (a ceiling) are shown, never bold."""
    shown = [percent(value) for value in values]
    ranked = ranked if ranked is not None else [True] * len(shown)
    numbers = [float(text) for text, competes in zip(shown, ranked) if text is not None and competes]
    best = (min if lower_is_better else max)(numbers) if len(numbers) > 1 else None
    return [MISSING if text is None else f"<b>{text}</b>" if competes and float(text) == best else text
            for text, competes in zip(shown, ranked)]


def ranked(methods: list[str]) -> list[bool]:
    """Which rows compete for bold: every method but the ceilings."""
    return [method not in CEILINGS for method in methods]


def row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{cell}</{tag}>" for cell in cells) + "</tr>"


def table(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    """`head`: finished <tr> rows; `rows`: each row's cells as HTML, the first one the row's header."""
    body = "".join(f'<tr><th scope="row">{cells[0]}</th>' + "".join(f"<td>{cell}</td>" for cell in cells[1:])
                   + "</tr>" for cells in rows)
    caption_html = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{caption_html}<thead>{''.join(head)}</thead><tbody>{body}</tbody></table>"


def transpose(columns: list[list[str]]) -> list[list[str]]:
    return [list(cells) for cells in zip(*columns)]


def method_keys(reports: list[DatasetReport]) -> list[str]:
    """IEr, then every baseline any dataset role reports, in the order they first appear."""
    baselines = itertools.chain.from_iterable(report.metrics.get("baselines", {}) for report in reports)
    return ["ier", *dict.fromkeys(baselines)]


def method_metrics(report: DatasetReport, method: str) -> dict:
    return report.metrics if method == "ier" else report.metrics.get("baselines", {}).get(method, {})


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, html.escape(method))


def metric(group: dict, set_name: str, key: str):
    return (group.get(set_name) or {}).get(key)


def detector_reports(reports: list[DatasetReport]) -> list[DatasetReport]:
    """The dataset roles that also scored against the detector's boxes, their metrics replaced by those scores.

    `detector_boxes` has the shape of metrics.json itself (sets, grounded, baselines), so every table reads it
    as it reads the truth-box numbers.
    """
    return [replace(report, metrics=report.metrics["detector_boxes"]) for report in reports
            if report.metrics.get("detector_boxes")]


# --------------------------------------------------------------------------- sections


def provenance(metrics: dict) -> str:
    """Where a dataset role's numbers come from: its source, and (newer metrics) split, threshold split, boxes."""
    facts = [html.escape(str(metrics.get("source", "?")))]
    if "split" in metrics:
        facts.append(f"scored on the {html.escape(str(metrics['split']))} split")
    if "thresholds_split" in metrics:
        facts.append(f"thresholds chosen on the {html.escape(str(metrics['thresholds_split']))} split")
    if "boxes" in metrics:
        boxes = str(metrics["boxes"])
        facts.append(f"boxes: {BOXES_TITLES.get(boxes, html.escape(boxes))}")
    return ", ".join(facts)


def summary_html(reports: list[DatasetReport], reports_dir: Path) -> str:
    present = {report.name for report in reports}
    sources = "; ".join(f"<b>{report.name}</b>: {provenance(report.metrics)}" for report in reports)
    left_out = "".join(f'<p class="missing">{name}: no {reports_dir / name / "metrics.json"}, left out.</p>'
                       for name in DATASETS if name not in present)
    return (f"<p>Data sources: {sources}.</p>{left_out}"
            "<p>All scores are percentages with one decimal, as in the paper; &ndash; marks a score that was "
            "not measured.</p>")


def table1_html(reports: list[DatasetReport]) -> str:
    methods = method_keys(reports)
    dataset_head = ['<th rowspan="3">Method</th>'] + [
        f'<th colspan="{2 * len(TABLE1_SETS[report.name])}">{report.name}</th>' for report in reports]
    set_head, metric_head, columns = [], [], []
    for report in reports:
        for set_name in TABLE1_SETS[report.name]:
            set_head.append(f'<th colspan="2">{SET_TITLES[set_name]}</th>')
            for key, title in SET_METRICS.get(set_name, CLASS_AWARE_METRICS):
                metric_head.append(f"<th>{title}</th>")
                columns.append(best_in_bold([metric(method_metrics(report, method), set_name, key)
                                             for method in methods], ranked=ranked(methods)))
    head = ["<tr>" + "".join(cells) + "</tr>" for cells in (dataset_head, set_head, metric_head)]
    rows = [[method_name(method), *cells] for method, cells in zip(methods, transpose(columns))]
    caption = ("DSOL's protocol: the true sounding classes are given to the metric, which scores only their maps, "
               "each thresholded relative to its own maximum. Single-source: share of images with IoU &ge; 0.5 "
               "and the AUC of that share over IoU thresholds; class-aware sets: the same with CIoU &ge; 0.3. "
               "Bold: the best method in each column (the oracle, trained with the true labels, is a ceiling and "
               "not ranked).")
    return table(head, rows, caption)


def table1_section(reports: list[DatasetReport]) -> str:
    """Table 1 against the boxes the evaluation defaults to, then against the detector's boxes where scored."""
    parts = [table1_html(reports)]
    detected = detector_reports(reports)
    if detected:
        parts += [f"<h3>Table 1 scored against {BOXES_TITLES['detector']}</h3>",
                  "<p>The same protocol with the detector's boxes as the reference (the paper's setting for real "
                  "video); the gap to the table above is how much detector boxes move the numbers.</p>",
                  table1_html(detected)]
    return "".join(parts)


def nsa_html(reports: list[DatasetReport]) -> str:
    methods = method_keys(reports)
    dataset_head, set_head, columns = ['<th rowspan="2">Method</th>'], [], []
    for report in reports:
        sets = [set_name for set_name in TABLE1_SETS[report.name] if set_name != "single"]
        dataset_head.append(f'<th colspan="{len(sets)}">{report.name}</th>')
        for set_name in sets:
            set_head.append(f"<th>{SET_TITLES[set_name]}</th>")
            columns.append(best_in_bold([metric(method_metrics(report, method), set_name, "nsa")
                                         for method in methods], ranked=ranked(methods)))
    head = ["<tr>" + "".join(cells) + "</tr>" for cells in (dataset_head, set_head)]
    rows = [[method_name(method), *cells] for method, cells in zip(methods, transpose(columns))]
    caption = ("Non-sounding area (DSOL's protocol, the true silent classes given): for the silent classes of an "
               "image, the share of their map at or below 0.2; higher is better. Bold: the best method in each "
               "column.")
    return table(head, rows, caption)


def table2_html(reports: list[DatasetReport]) -> str:
    titles = [title for _, title in STAGE1_METRICS] + ["Detector mAP50"]
    head = [row(["Dataset", *titles], "th")]
    rows = []
    for report in reports:
        stage1 = report.metrics.get("stage1") or {}
        detector = report.metrics.get("detector") or {}
        values = [stage1.get(key) for key, _ in STAGE1_METRICS] + [detector.get("map50")]
        rows.append([report.name, *(percent(value) or MISSING for value in values)])
    caption = ("Stage 1: NMI of the clusters against the true classes on the test clips; mAP, precision and "
               "recall (at 0.5) of the audio multi-label task on mixtures of 2-4 test clips. Detector: mAP50 "
               "against the truth boxes.")
    return table(head, rows, caption)


GROUNDED_EXPLANATION = (
    "<p>Here no true class is given to the metric. Each method's own &ldquo;where is the sound&rdquo; map (IEr: "
    "its class maps gated by its own heard/silent decisions; AVOL: its audio-visual map), on one absolute scale, "
    "is cut at one threshold chosen on the val split, so a method may predict an empty region; every number is "
    "measured on the test split. <b>IoU@0.3</b>: share of images whose region has IoU &ge; 0.3 with the union of "
    "the sounding boxes. <b>Reliance</b>: IoU@0.3 with the true audio minus IoU@0.3 with deranged audio (each "
    "image paired with another image's audio). <b>Silence empty</b>: share of images whose region is empty under "
    "digital silence. <b>Sounding recall</b> and <b>silent false alarm</b>: share of sounding and of silent "
    "objects that are lit (&ge; 30 % of the box inside the region). <b>Heard mAP</b>: mean average precision of "
    "the per-class heard scores against the classes audible in the mixture. A model that ignores the audio "
    "scores reliance 0 and silence empty 0 however high its IoU@0.3, and lights silent objects as readily as "
    "sounding ones; a model that listens has reliance close to its IoU@0.3 and silence empty close to 100.</p>")


def grounded_sets(report: DatasetReport, methods: list[str]) -> list[str]:
    """The sets of GROUNDED_SETS that at least one method scored under the grounded protocol."""
    return [set_name for set_name in GROUNDED_SETS
            if any((method_metrics(report, method).get("grounded") or {}).get(set_name) for method in methods)]


def grounded_table(report: DatasetReport, boxes: str) -> str:
    """Rows: IEr and every baseline; columns: each grounded set's metrics; None when nothing was scored."""
    methods = method_keys([report])
    sets = grounded_sets(report, methods)
    if not sets:
        return ""
    set_head = "".join(f'<th colspan="{len(GROUNDED_METRICS)}">{SET_TITLES[name]}</th>' for name in sets)
    head = [f'<tr><th rowspan="2">Method</th>{set_head}</tr>',
            row([title for _, title in GROUNDED_METRICS] * len(sets), "th")]
    columns = [best_in_bold([metric(method_metrics(report, method).get("grounded") or {}, set_name, key)
                             for method in methods], lower_is_better=key in LOWER_IS_BETTER,
                            ranked=ranked(methods))
               for set_name in sets for key, _ in GROUNDED_METRICS]
    rows = [[method_name(method), *cells] for method, cells in zip(methods, transpose(columns))]
    thresholds = report.metrics.get("grounded", {}).get("thresholds") or {}
    chosen = ", ".join(f"{html.escape(str(key))} {value:.3g}" for key, value in thresholds.items()
                       if isinstance(value, (int, float)))
    caption = (f"{report.name}, test split, scored against {BOXES_TITLES[boxes]}"
               + (f"; IEr's thresholds chosen on val: {chosen}" if chosen else "")
               + ". Bold: the best method in each column (lowest for silent false alarm; the oracle, trained with "
                 "the true labels, is a ceiling and not ranked).")
    return table(head, rows, caption)


def grounded_html(reports: list[DatasetReport]) -> str:
    """The explanation, then per dataset role its table (and the same against the detector's boxes)."""
    parts = [GROUNDED_EXPLANATION]
    detected = {report.name: report for report in detector_reports(reports)}
    for report in reports:
        parts.append(f"<h3>{report.name}</h3>")
        truth = grounded_table(report, "truth")
        if not truth:
            parts.append(f'<p class="missing">Not measured: {report.folder / "metrics.json"} has no '
                         '"grounded" group (written before the audio-grounded protocol).</p>')
            continue
        parts.append(truth)
        if report.name in detected:
            parts.append(grounded_table(detected[report.name], "detector"))
    return "".join(parts)


def seeds_cell(stats) -> str:
    """`mean ± half-width of the 95 % interval` in percentage points; the mean alone without an interval."""
    if not isinstance(stats, dict) or stats.get("mean") is None:
        return MISSING
    interval = stats.get("ci95")
    mean = percent(stats["mean"])
    if not interval or None in interval:
        return mean
    return f"{mean} &plusmn; {100 * (interval[1] - interval[0]) / 2:.1f}"


def seeds_table(name: str, dataset: dict, path: Path) -> str:
    """Rows: the headline keys this dataset role has; columns: IEr then every other method, side by side."""
    if not isinstance(dataset, dict) or not all(isinstance(by_method, dict) for by_method in dataset.values()):
        raise StageError(f"{path}: datasets.{name} is not a mapping of metric key to {{method: statistics}}")
    keys = [key for key in SEED_HEADLINE_KEYS if key in dataset]
    methods = list(dict.fromkeys(["ier", *itertools.chain.from_iterable(dataset[key] for key in keys)]))
    head = [row(["Metric", *(method_name(method) for method in methods)], "th")]
    rows = [[f"<code>{html.escape(key)}</code>", *(seeds_cell(dataset[key].get(method)) for method in methods)]
            for key in keys]
    return table(head, rows, f"{html.escape(name)}: mean &plusmn; half-width of the 95 % interval over seeds, "
                             "in percentage points; <code>grounded.*</code> keys are the audio-grounded protocol.")


def seeds_html(reports_dir: Path) -> str:
    """The headline numbers over seeds from `reports/seeds.json`, or a sentence on how to get them."""
    path = reports_dir / SEEDS_FILE
    if not path.exists():
        return (f"<p>No statistics over seeds yet: <code>make seeds</code> writes {path} and "
                f"{reports_dir / 'seeds.md'} (mean, standard deviation and 95 % interval of every metric).</p>")
    seeds = read_json(path)
    datasets = seeds.get("datasets") if isinstance(seeds, dict) else None
    if not isinstance(datasets, dict):
        raise StageError(f"{path}: no \"datasets\" mapping")
    runs = seeds.get("seeds") or []
    facts = (f"<p>{len(runs)} seeds ({html.escape(', '.join(map(str, runs)))}) of commit "
             f"<code>{html.escape(str(seeds.get('commit', '?'))[:12])}</code> on "
             f"{html.escape(str(seeds.get('machine', '?')))}; every metric with its standard deviation: "
             '<a href="seeds.md">seeds.md</a>.</p>')
    ordered = [name for name in DATASETS if name in datasets] + [name for name in datasets if name not in DATASETS]
    tables = "".join(f"<h3>{html.escape(name)}</h3>{seeds_table(name, datasets[name], path)}" for name in ordered)
    return facts + tables


def example_html(dataset: str, examples: Examples, index: int) -> str:
    """One Figure-4 row: the image with its boxes, the map of each sounding and silent class, the audio."""
    sample, image = examples.samples[index], examples.images[index]
    objects = sample.get("objects", [])
    sounding = [name for name in sample.get("sounding", []) if name in examples.classes]
    silent = [name for name in sample.get("silent", []) if name in examples.classes and name not in sounding]
    label = f"{dataset} sample {sample.get('sample_id', index)}"
    panels = [img(image_figure(image, objects, examples.classes),
                  f"{label}: input image with its boxes (green sounding, red silent)")]
    for name in dict.fromkeys(sounding + silent):
        is_sounding = name in sounding
        class_map = examples.maps[index, examples.classes.index(name)]
        panels.append(img(class_map_figure(image, class_map, name, objects, is_sounding),
                          f"{label}: IEr map of {name} ({'sounding' if is_sounding else 'silent'})"))
    panels.append(img(audio_figure(sample.get("audio_distribution", {}), examples.classes, sample),
                      f"{label}: perceived audio distribution over the classes"))
    facts = "; ".join(f"{title}: {html.escape(', '.join(sample.get(key, [])) or 'none')}"
                      for key, title in (("sounding", "sounding"), ("silent", "silent"), ("offscreen", "off-screen")))
    caption = f"<b>{html.escape(str(sample.get('sample_id', index)))}</b> &mdash; {facts}"
    controls = "" if examples.regions is None else conditions_html(label, examples, index)
    return (f'<figure class="example"><figcaption>{caption}</figcaption>'
            f'<div class="panels">{"".join(panels)}</div>{controls}</figure>')


def condition_title(condition: str, sample: dict) -> str:
    """'deranged audio (the audio of sample X)' names whose audio the control used; the others as they are."""
    title = CONDITION_TITLES.get(condition, condition)
    if condition == "deranged" and sample.get("deranged_from") is not None:
        title += f" (the audio of {sample['deranged_from']})"
    return title


def names(items) -> str:
    return html.escape(", ".join(map(str, items)) or "none")


def lit_silent(objects: list[dict], lit: set[int]) -> list[str]:
    """The classes of the silent objects among the lit object indices, in object order."""
    return [obj["class"] for index, obj in enumerate(objects) if index in lit and not obj.get("sounding")]


def conditions_html(label: str, examples: Examples, index: int) -> str:
    """IEr's own region of one example under each audio condition, and a caption of what it heard and lit."""
    sample, image = examples.samples[index], examples.images[index]
    objects, threshold = sample.get("objects", []), float(sample["threshold"])
    regions = examples.regions[index]
    # One colour scale for the example's conditions, so silence that quietens the map shows as a colder map.
    vmax = max(float(regions.max()), threshold, 1e-6)
    conditions = list(sample.get("conditions", CONDITIONS))
    lit = {condition: set(sample.get("lit", {}).get(condition, [])) for condition in conditions}
    panels = [img(region_figure(image, regions[position], threshold, vmax, objects, lit[condition],
                                CONDITION_TITLES.get(condition, condition)),
                  f"{label}: IEr's own region under {condition_title(condition, sample)}")
              for position, condition in enumerate(conditions)]
    heard = "; ".join(f"{html.escape(condition_title(condition, sample))}: "
                      f"{names(sample.get('heard', {}).get(condition, []))}" for condition in conditions)
    false_alarms = "; ".join(f"{html.escape(CONDITION_TITLES.get(condition, condition))}: "
                             f"{names(lit_silent(objects, lit[condition]))}" for condition in conditions)
    caption = (f"IEr's own &ldquo;where is the sound&rdquo; map under each audio condition, the region (map &gt; "
               f"{threshold:.3g}, the threshold chosen on val) outlined in white; boxes green sounding, red silent, "
               f"solid when lit (&ge; {100 * LIT_FRACTION:.0f} % of the box inside the region), dashed when not; "
               f"a thick red box marked &ldquo;lit (silent)&rdquo; is a silent object lit. "
               f"<b>Heard</b> &mdash; {heard}. <b>Lit silent objects</b> &mdash; {false_alarms}.")
    return f'<p class="conditions">{caption}</p><div class="panels">{"".join(panels)}</div>'


def examples_html(report: DatasetReport) -> str:
    examples = report.examples
    if examples is None or not examples.samples:
        return f'<p class="missing">No examples: {report.folder / "examples.npz"} is missing or empty.</p>'
    sets = dict.fromkeys(["syn", "duet", "un", *(sample.get("set", "?") for sample in examples.samples)])
    parts = []
    for set_name in sets:
        indices = [index for index, sample in enumerate(examples.samples) if sample.get("set", "?") == set_name]
        if indices:
            parts.append(f"<h3>{SET_TITLES.get(set_name, html.escape(set_name))}</h3>")
            parts.extend(example_html(report.name, examples, index) for index in indices)
    return "".join(parts)


def curves_html(report: DatasetReport) -> str:
    parts = []
    for stage in CURVE_FOLDERS:
        folder = report.folder / stage / "plots" / "metrics"
        parts.append(f"<h3>{stage}</h3>")
        tsvs = sorted(folder.glob("*.tsv")) if folder.is_dir() else []
        if not tsvs:
            reason = "has no TSV files" if folder.is_dir() else "is missing"
            parts.append(f'<p class="missing">No training curves: {folder} {reason}.</p>')
            continue
        images = "".join(img(curve_figure(path), f"{report.name} {stage}: {path.stem} by step") for path in tsvs)
        parts.append(f'<div class="panels">{images}</div>')
    return "".join(parts)


# --------------------------------------------------------------------------- Markdown tables


TABLE_RULE = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def inline_markdown(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_cells(line: str) -> list[str]:
    line = line.strip().removeprefix("|")
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [inline_markdown(cell.strip().replace("\\|", "|")) for cell in UNESCAPED_PIPE.split(line)]


def markdown_to_html(text: str) -> str:
    """Just enough Markdown for a results file: pipe tables, headings (as h3), paragraphs, **bold**, `code`."""
    parts = []
    lines = [line.strip() for line in text.splitlines()]
    for is_table, group in itertools.groupby(lines, key=lambda line: line.startswith("|")):
        group = list(group)
        if is_table and len(group) >= 2 and TABLE_RULE.match(group[1]):
            rows = [markdown_cells(line) for line in group[2:]]
            parts.append(table([row(markdown_cells(group[0]), "th")], rows))
            continue
        for line in filter(None, group):
            heading = line.startswith("#")
            parts.append(f"<h3>{inline_markdown(line.lstrip('#').strip())}</h3>" if heading
                         else f"<p>{inline_markdown(line)}</p>")
    return "".join(parts)


# --------------------------------------------------------------------------- the page


def page_sections(reports: list[DatasetReport], reports_dir: Path) -> list[tuple[str, str, str]]:
    """(anchor, title, HTML) of every section, in page order."""
    sections = [
        ("table1", "Table 1: localisation, DSOL's protocol (the true sounding classes are given to the metric)",
         table1_section(reports)),
        ("nsa", "Non-sounding area, DSOL's protocol", nsa_html(reports)),
        ("grounded", "Audio-grounded protocol (the model's own map, thresholds chosen on val, test split)",
         grounded_html(reports)),
        ("seeds", "Seeds", seeds_html(reports_dir)),
        ("table2", "Table 2: stage 1 and the detector", table2_html(reports)),
    ]
    ablations = reports_dir / "ablations.md"
    if ablations.exists():
        sections.append(("ablations", "Ablations", markdown_to_html(ablations.read_text())))
    sections += [(f"examples-{report.name}", f"Examples: {report.name}", examples_html(report)) for report in reports]
    sections += [(f"curves-{report.name}", f"Training curves: {report.name}", curves_html(report))
                 for report in reports]
    return sections


def render_page(reports: list[DatasetReport], reports_dir: Path) -> str:
    sections = page_sections(reports, reports_dir)
    contents = "".join(f'<li><a href="#{anchor}">{title}</a></li>' for anchor, title, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{title}</h2>{content}</section>'
                   for anchor, title, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Interference Eraser (IEr): results</title>"
            f"<style>{PAGE_STYLE}</style></head><body>"
            "<h1>Interference Eraser (IEr): results</h1>"
            f"{summary_html(reports, reports_dir)}<nav><h2>Contents</h2><ul>{contents}</ul></nav>"
            f"{body}</body></html>\n")


def build_report(reports_dir: Path, out_path: Path) -> None:
    """Read everything under `reports_dir`, then write the page to `out_path` in one rename."""
    reports_dir, out_path = Path(reports_dir), Path(out_path)
    page = render_page(read_reports(reports_dir), reports_dir)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
