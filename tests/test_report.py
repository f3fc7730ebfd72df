"""The report page, built from tiny hand-made reports folders: tables, figures, messages, atomic writing."""
from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import report
from pipeline.report import audio_bars, build_report, markdown_to_html
from pipeline.stage import StageError
from tools.screenshot import find_chromium

CLASSES = ["violin", "flute", "cello"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "tools" / "screenshot.py"
SIDE = 16  # image side of the test examples
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_SOURCE = re.compile(r'<img src="([^"]*)" alt="([^"]*)">')

GROUNDED_KEYS = ("iou30", "auc", "sounding_recall", "silent_false_alarm", "heard_map", "heard_precision",
                 "heard_recall", "empty")


def grounded(iou30, reliance, silence_empty, recall, false_alarm, heard_map):
    """One set of the audio-grounded protocol for one method, its controls included, as evaluate writes it."""
    true = dict(zip(GROUNDED_KEYS, (iou30, 0.5, recall, false_alarm, heard_map, 0.5, 0.5, 0.0)))
    return {**true, "deranged": {**true, "iou30": iou30 - reliance}, "silence": {**true, "empty": silence_empty},
            "reliance": reliance, "silence_empty": silence_empty}


MUSIC_METRICS = {
    "source": "toy", "split": "test", "thresholds_split": "val", "boxes": "truth",
    "single": {"iou50": 0.5, "auc": 0.4321},
    "syn": {"ciou30": 0.4567, "auc": 0.39, "nsa": 0.812},
    "un": {"ciou30": 0.25, "auc": 0.2, "nsa": None},
    "duet": {"ciou30": 0.6, "auc": 0.55, "nsa": 0.7},
    "stage1": {"nmi": 0.3884, "map": 0.537, "precision": 0.6088, "recall": 0.2456},
    "detector": {"map50": 0.7012},
    "baselines": {"avol": {"single": {"iou50": 0.625, "auc": 0.4},
                           "syn": {"ciou30": 0.1234, "auc": 0.11, "nsa": 0.3},
                           "un": {"ciou30": 0.1, "auc": 0.09, "nsa": None},
                           "duet": {"ciou30": 0.2, "auc": 0.15, "nsa": 0.2},
                           "grounded": {"single": grounded(0.5, 0.0, 0.0, 0.6, None, None),
                                        "syn": grounded(0.2, 0.0, 0.0, 0.6, 0.1, None),
                                        "un": grounded(0.1, 0.0, 0.0, 0.5, 0.2, None),
                                        "duet": grounded(0.3, 0.0, 0.0, 0.7, None, None)}},
                  # a method that only the grounded protocol scores: its DSOL columns are dashes
                  "oracle": {"grounded": {"syn": grounded(1.0, 1.0, 1.0, 1.0, 0.0, 1.0)}}},
    "grounded": {"thresholds": {"map": 0.3125, "heard": 0.5},
                 "single": grounded(0.61, 0.02, 0.0, 0.9, None, 0.7),
                 "syn": grounded(0.42, -0.031, 0.0, 0.95, 0.8, 0.55),
                 "un": grounded(0.3, 0.01, 0.0, 0.9, 0.85, 0.5),
                 "duet": grounded(0.5, 0.0, 0.0, 0.97, None, 0.6)},
    "detector_boxes": {"single": {"iou50": 0.4, "auc": 0.3}, "syn": {"ciou30": 0.3333, "auc": 0.3, "nsa": 0.8},
                       "un": {"ciou30": 0.2, "auc": 0.2, "nsa": None}, "duet": {"ciou30": 0.5, "auc": 0.5, "nsa": 0.7},
                       "grounded": {"syn": grounded(0.377, 0.0, 0.0, 0.9, 0.8, 0.55)},
                       "baselines": {"avol": {"syn": {"ciou30": 0.111, "auc": 0.1, "nsa": 0.3},
                                              "grounded": {"syn": grounded(0.188, 0.0, 0.0, 0.6, 0.1, None)}}}},
}
VGGSOUND_METRICS = {  # no duet, as for VGGSound; written before the audio-grounded protocol
    "source": "youtube",
    "single": {"iou50": 0.3, "auc": 0.3},
    "syn": {"ciou30": 0.2, "auc": 0.2, "nsa": 0.5},
    "un": {"ciou30": 0.15, "auc": 0.15, "nsa": 0.4},
    "stage1": {"nmi": 0.6812, "map": 0.5, "precision": 0.5, "recall": 0.5},
    "detector": {"map50": 0.71},
    "baselines": {"avol": {"single": {"iou50": 0.2, "auc": 0.2}, "syn": {"ciou30": 0.1, "auc": 0.1, "nsa": 0.1},
                           "un": {"ciou30": 0.1, "auc": 0.1, "nsa": 0.1}}},
}


def box(name, x0, y0, x1, y1, sounding):
    return {"class": name, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "sounding": sounding}


# Example 0: one sounding, one silent instrument and a silent person (no map of its own), a cello off-screen:
# 2 map panels. Example 1: a duet of two sounding instruments: 2 map panels.
SAMPLES = [
    {"sample_id": "syn-0", "set": "syn", "sounding": ["violin"], "silent": ["flute", "person"],
     "offscreen": ["cello"], "objects": [box("violin", 0, 0, 0.5, 0.5, True), box("flute", 0.5, 0, 1, 0.5, False),
                                         box("person", 0, 0.5, 0.5, 1, False)],
     "audio_distribution": {"violin": 0.6, "flute": 0.1, "cello": 0.3}},
    {"sample_id": "duet-0", "set": "duet", "sounding": ["violin", "cello"], "silent": [], "offscreen": [],
     "objects": [box("violin", 0, 0, 0.5, 1, True), box("cello", 0.5, 0, 1, 1, True)],
     "audio_distribution": {"violin": 0.5, "flute": 0.0, "cello": 0.5}},
]
FIGURES_PER_EXAMPLE = [1 + 2 + 1, 1 + 2 + 1]  # input, the class maps, the audio bars
CONTROL_FIGURES = 3  # IEr's own region under true audio, deranged audio, silence (newer example files only)
# What newer example files add to each example: the region's threshold, what IEr heard and lit per condition.
# Example 0: the true audio lights the sounding violin, the deranged audio (syn-9's) the silent flute.
CONTROLS = [
    {"threshold": 0.5, "conditions": ["true", "deranged", "silence"], "deranged_from": "syn-9",
     "lit": {"true": [0], "deranged": [1], "silence": []},
     "heard": {"true": ["violin", "cello"], "deranged": ["flute"], "silence": []}},
    {"threshold": 0.5, "conditions": ["true", "deranged", "silence"], "deranged_from": "duet-3",
     "lit": {"true": [0, 1], "deranged": [0], "silence": []},
     "heard": {"true": ["violin", "cello"], "deranged": ["cello"], "silence": []}},
]
SEEDS = {
    "seeds": [0, 1, 2], "commit": "0123456789abcdef0123", "machine": "2-core test box",
    "datasets": {
        "music": {
            "grounded.syn.reliance": {"ier": {"n": 3, "mean": -0.01, "std": 0.02, "ci95": [-0.05, 0.03],
                                              "values": [-0.03, -0.01, 0.01]},
                                      "avol": {"n": 1, "mean": 0.0, "std": None, "ci95": None, "values": [0.0]}},
            "single.iou50": {"ier": {"n": 3, "mean": 0.5, "std": 0.02, "ci95": [0.45, 0.55],
                                     "values": [0.48, 0.5, 0.52]},
                             "avol": {"n": 3, "mean": 0.2, "std": 0.01, "ci95": [0.18, 0.22],
                                      "values": [0.19, 0.2, 0.21]}},
            "syn.nsa": {"ier": {"n": 3, "mean": 0.9, "std": 0.0, "ci95": [0.9, 0.9], "values": [0.9] * 3}},
        },
        "vggsound": {"un.ciou30": {"ier": {"n": 3, "mean": 0.25, "std": 0.01, "ci95": [0.23, 0.27],
                                           "values": [0.24, 0.25, 0.26]}}},
    },
}
TABLE_ROW = re.compile(r'<tr><th scope="row">(.*?)</th>(.*?)</tr>')
ABLATIONS = "# Ablations\n\n| variant | un CIoU |\n| --- | --- |\n| full | **25.0** |\n| no AII | 20.1 |\n"


def write_tsv(path, name, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{step}\t{value}\n" for step, value in enumerate(values)))


def example_regions():
    """(N, 3, SIDE, SIDE): example 0 hot over the violin (true audio), over the flute (deranged), cold (silence);
    example 1 hot over the left half (true), a small hot corner (deranged), cold (silence)."""
    regions = np.zeros((len(SAMPLES), 3, SIDE, SIDE), dtype=np.float32)
    half = SIDE // 2
    regions[0, 0, :half, :half] = 0.9
    regions[0, 1, :half, half:] = 0.8
    regions[1, 0, :, :half] = 0.7
    regions[1, 1, :4, :4] = 0.6
    return regions


def write_dataset(folder, metrics, live_folders, controls=False):
    """metrics.json, the examples (with `regions` and the control fields when `controls`) and dvclive TSVs."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(SAMPLES), SIDE, SIDE, 3), dtype=np.uint8)
    maps = rng.random((len(SAMPLES), len(CLASSES), SIDE, SIDE), dtype=np.float32)
    extra = {"regions": example_regions()} if controls else {}
    np.savez(folder / "examples.npz", images=images, maps=maps, classes=np.array(CLASSES), **extra)
    samples = [sample | control for sample, control in zip(SAMPLES, CONTROLS)] if controls else SAMPLES
    (folder / "examples.json").write_text(json.dumps(samples))
    for live, names in live_folders.items():
        for name in names:
            write_tsv(folder / live / "plots" / "metrics" / f"{name}.tsv", name, [1.0, 0.5, 0.25])


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory):
    """music in the new layout (grounded protocol, detector boxes, control examples) with both training-curve
    folders (3 TSVs); vggsound in the old layout without stage2-live (1 TSV); ablations.md and seeds.json."""
    reports = tmp_path_factory.mktemp("repo") / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {"stage1-live": ["av_loss", "aii_loss"],
                                                     "stage2-live": ["un_loss"]}, controls=True)
    write_dataset(reports / "vggsound", VGGSOUND_METRICS, {"stage1-live": ["av_loss"]})
    (reports / "ablations.md").write_text(ABLATIONS)
    (reports / "seeds.json").write_text(json.dumps(SEEDS))
    return reports


@pytest.fixture(scope="module")
def page(reports_dir):
    build_report(reports_dir, reports_dir / "index.html")
    return (reports_dir / "index.html").read_text()


def section(page_html, anchor):
    return page_html.split(f'<section id="{anchor}">')[1].split("</section>")[0]


def table_rows(table_html):
    """{row header: [its cells' HTML]} of every body row in `table_html`."""
    return {header: re.findall(r"<td>(.*?)</td>", cells) for header, cells in TABLE_ROW.findall(table_html)}


def subsection(section_html, heading):
    """The part of a section from its `<h3>heading</h3>` to the next h3."""
    return section_html.split(f"<h3>{heading}</h3>")[1].split("<h3>")[0]


def test_table1_has_both_methods_percentages_and_bold_best(page):
    table1 = section(page, "table1")
    assert "<th scope=\"row\">IEr</th>" in table1 and "<th scope=\"row\">AVOL</th>" in table1
    assert "<b>45.7</b>" in table1 and ">12.3<" in table1  # music Syn CIoU@0.3: IEr 0.4567 beats AVOL 0.1234
    assert "<b>62.5</b>" in table1 and ">50.0<" in table1  # music single IoU@0.5: AVOL is the better one
    assert "<b>50.0</b>" not in table1
    assert "DSOL's protocol (the true sounding classes are given to the metric)" in page
    truth_table, detector_table = table1.split("<table>")[1:]
    assert truth_table.count("Duet") == 1  # a music column only
    rows = table_rows(truth_table)
    # IEr first, then the keys of `baselines` in their order, none hard-coded
    assert list(rows) == ["IEr", "AVOL", "Oracle (true labels)"]
    assert set(rows["Oracle (true labels)"]) == {"&ndash;"}  # scored only under the grounded protocol
    # the detector-box table: music only (vggsound has no detector_boxes), its own numbers
    assert "scored against the detector's boxes" in table1 and detector_table.count("Duet") == 1
    assert "<b>33.3</b>" in detector_table and ">11.1<" in detector_table and "45.7" not in detector_table
    assert "toy" in page and "youtube" in page  # the sources in the header
    assert "scored on the test split, thresholds chosen on the val split" in page


def test_nsa_and_table2(page):
    nsa = section(page, "nsa")
    assert "<b>81.2</b>" in nsa and "&ndash;" in nsa  # a null NSA shows as a dash
    table2 = section(page, "table2")
    for value in ("38.8", "53.7", "60.9", "24.6", "70.1", "68.1", "71.0"):
        assert f">{value}<" in table2


def test_every_figure_is_an_embedded_png_with_alt_text(page):
    images = IMG_SOURCE.findall(page)
    assert page.count("<img") == len(images)
    # examples of both datasets (music's with the control panels), then the TSVs
    expected = 2 * sum(FIGURES_PER_EXAMPLE) + CONTROL_FIGURES * len(SAMPLES) + 3 + 1
    assert len(images) == expected
    for source, alt in images:
        assert source.startswith("data:image/png;base64,") and alt
        assert base64.b64decode(source.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    assert sum("IEr map of flute (silent)" in alt for _, alt in images) == 2  # one per dataset
    assert not any("person" in alt for _, alt in images)  # no map of its own: its box is on the input only
    assert sum("IEr&#x27;s own region under" in alt for _, alt in images) == CONTROL_FIGURES * len(SAMPLES)


def test_grounded_tables_per_dataset(page):
    grounded_section = section(page, "grounded")
    explanation = grounded_section.split("<h3>")[0]
    assert "reliance 0 and silence empty 0" in explanation and "val split" in explanation
    music = subsection(grounded_section, "music")
    truth_table, detector_table = music.split("<table>")[1:]
    sets = re.findall(r'<th colspan="6">(.*?)</th>', truth_table)
    assert sets == ["Single-source", "Synthetic", "Unconstrained", "Duet"]
    assert truth_table.count("<th>reliance</th>") == 4 and truth_table.count("<th>heard mAP</th>") == 4
    rows = table_rows(truth_table)
    assert list(rows) == ["IEr", "AVOL", "Oracle (true labels)"]
    ier, avol, oracle = rows["IEr"], rows["AVOL"], rows["Oracle (true labels)"]
    assert len(ier) == 24
    syn = slice(6, 12)  # iou30, reliance, silence_empty, sounding_recall, silent_false_alarm, heard_map
    # the oracle is a ceiling: shown, never bold, and the methods are ranked among themselves (the lowest silent
    # false alarm is the best; a column with one method's number has no bold)
    assert oracle[syn] == ["100.0", "100.0", "100.0", "100.0", "0.0", "100.0"]
    assert ier[syn] == ["<b>42.0</b>", "-3.1", "<b>0.0</b>", "<b>95.0</b>", "80.0", "55.0"]
    assert avol[syn][:5] == ["20.0", "<b>0.0</b>", "<b>0.0</b>", "60.0", "<b>10.0</b>"]
    assert ier[4] == "&ndash;" and avol[5] == "&ndash;"  # no silent objects in single-source; AVOL hears nothing
    assert oracle[0] == "&ndash;" and ier[0] == "<b>61.0</b>"  # a set a method was not scored on
    assert "0.312" in truth_table and "true boxes" in truth_table  # the val thresholds and the boxes named
    assert re.findall(r'<th colspan="6">(.*?)</th>', detector_table) == ["Synthetic"]
    assert "the detector's boxes" in detector_table
    assert table_rows(detector_table)["IEr"][0] == "<b>37.7</b>" and table_rows(detector_table)["AVOL"][0] == "18.8"
    vggsound = subsection(grounded_section, "vggsound")
    assert "Not measured" in vggsound and "<table>" not in vggsound  # an old metrics.json still renders


def test_examples_show_the_region_under_each_audio_condition(page):
    music, vggsound = section(page, "examples-music"), section(page, "examples-vggsound")
    alts = [html.unescape(alt) for _, alt in IMG_SOURCE.findall(music)]
    for condition in ("true audio", "deranged audio (the audio of syn-9)", "digital silence"):
        assert f"music sample syn-0: IEr's own region under {condition}" in alts
    first = music.split('<figure class="example">')[1]
    assert "Heard</b> &mdash; true audio: violin, cello; deranged audio (the audio of syn-9): flute; " \
           "digital silence: none" in first
    assert "Lit silent objects</b> &mdash; true audio: none; deranged audio: flute; digital silence: none" in first
    assert "0.5, the threshold chosen on val" in first and "lit (silent)" in first
    assert "own region" not in vggsound and "Heard</b>" not in vggsound  # old files: the new panels skipped


def test_missing_curves_and_ablations_and_contents(page):
    curves = section(page, "curves-vggsound")
    assert re.search(r"No training curves: \S*vggsound/stage2-live/plots/metrics is missing", curves)
    assert "missing" not in section(page, "curves-music")
    assert "<th>variant</th>" in section(page, "ablations") and "<b>25.0</b>" in section(page, "ablations")
    for anchor in ("table1", "nsa", "table2", "ablations", "examples-music", "curves-vggsound"):
        assert f'href="#{anchor}"' in page


def test_a_dataset_without_metrics_is_left_out(tmp_path):
    reports = tmp_path / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {})
    build_report(reports, reports / "index.html")
    page_html = (reports / "index.html").read_text()
    assert "vggsound: no " in page_html and "left out" in page_html
    assert "examples-vggsound" not in page_html and "<b>45.7</b>" in page_html
    # no seeds.json: the section says which command writes it, and the page is still built
    assert "<code>make seeds</code> writes" in section(page_html, "seeds") and "<table>" not in section(page_html,
                                                                                                       "seeds")


def test_seeds_table_puts_methods_side_by_side(page):
    seeds = section(page, "seeds")
    assert '<a href="seeds.md">seeds.md</a>' in seeds and "0123456789ab" in seeds and "2-core test box" in seeds
    music = subsection(seeds, "music")
    assert re.findall(r"<th>(.*?)</th>", music) == ["Metric", "IEr", "AVOL"]
    rows = table_rows(music)
    assert list(rows) == ["<code>single.iou50</code>", "<code>grounded.syn.reliance</code>"]  # headline keys only
    assert rows["<code>single.iou50</code>"] == ["50.0 &plusmn; 5.0", "20.0 &plusmn; 2.0"]
    assert rows["<code>grounded.syn.reliance</code>"] == ["-1.0 &plusmn; 4.0", "0.0"]  # one seed: no interval
    vggsound = table_rows(subsection(seeds, "vggsound"))
    assert vggsound == {"<code>un.ciou30</code>": ["25.0 &plusmn; 2.0"]}


def test_a_malformed_seeds_file_is_a_one_line_error(tmp_path):
    reports = tmp_path / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {})
    (reports / "seeds.json").write_text(json.dumps({"seeds": [0], "datasets": {"music": {"syn.ciou30": 0.5}}}))
    with pytest.raises(StageError) as err:
        build_report(reports, reports / "index.html")
    assert "seeds.json: datasets.music" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda arrays, samples: (arrays | {"regions": arrays["regions"][:, :, :8]}, samples),
     r"examples.npz: regions are \(2, 3, 8, 16\)"),
    (lambda arrays, samples: (arrays, [{k: v for k, v in samples[0].items() if k != "threshold"}, samples[1]]),
     "examples.json: example 0 has no numeric threshold"),
    (lambda arrays, samples: (arrays, [samples[0] | {"conditions": ["true", "silence"]}, samples[1]]),
     "examples.json: example 0 names 2 conditions, but examples.npz regions have 3"),
])
def test_control_examples_that_disagree_with_their_arrays_are_an_error(tmp_path, change, message):
    reports = tmp_path / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {}, controls=True)
    folder = reports / "music"
    arrays, samples = change(dict(np.load(folder / "examples.npz")), json.loads((folder / "examples.json").read_text()))
    np.savez(folder / "examples.npz", **arrays)
    (folder / "examples.json").write_text(json.dumps(samples))
    with pytest.raises(StageError, match=message):
        build_report(reports, reports / "index.html")


def test_region_panel_marks_lit_silent_objects_and_outlines_any_region():
    objects = SAMPLES[0]["objects"]  # violin sounding, flute and person silent
    figure = report.new_figure(2, 2)
    axes = report.show_image(figure, np.zeros((SIDE, SIDE, 3), dtype=np.uint8))
    report.draw_lit_boxes(axes, objects, {0, 1}, SIDE, SIDE)
    violin, flute, person = axes.patches
    assert violin.get_linestyle() == "-" and flute.get_linestyle() == "-" and person.get_linestyle() == "--"
    assert flute.get_linewidth() > violin.get_linewidth() == person.get_linewidth()
    assert flute.get_edgecolor() == person.get_edgecolor() != violin.get_edgecolor()
    assert [text.get_text() for text in axes.texts] == ["lit (silent)"]  # only the lit silent flute
    for region in (np.zeros((SIDE, SIDE)), np.ones((SIDE, SIDE)), example_regions()[0, 0]):  # empty, all, part
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            png = report.region_figure(np.zeros((SIDE, SIDE, 3), dtype=np.uint8), region.astype(np.float32), 0.5,
                                       1.0, objects, {0}, "true audio")
        assert png.startswith(PNG_MAGIC)


def test_no_metrics_at_all_is_a_one_line_error(tmp_path):
    (tmp_path / "reports").mkdir()
    with pytest.raises(StageError) as err:
        build_report(tmp_path / "reports", tmp_path / "reports" / "index.html")
    assert "music/metrics.json" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "reports" / "index.html").exists()


def test_stage_script_prints_one_line_and_exits_2(tmp_path, stage_env):
    (tmp_path / "reports").mkdir()
    result = subprocess.run([sys.executable, "-m", "stages.report"], cwd=tmp_path, env=stage_env,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("report: error: reports/music/metrics.json")


def test_a_failing_figure_leaves_the_old_page(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {})
    (reports / "index.html").write_text("old page")

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report, "class_map_figure", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        build_report(reports, reports / "index.html")
    assert (reports / "index.html").read_text() == "old page"
    assert sorted(path.name for path in reports.iterdir()) == ["index.html", "music"]  # no temporary left


def test_examples_that_disagree_with_their_arrays_are_an_error(tmp_path):
    reports = tmp_path / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {})
    (reports / "music" / "examples.json").write_text(json.dumps(SAMPLES[:1]))
    with pytest.raises(StageError, match="examples.json: 1 examples, but examples.npz has 2"):
        build_report(reports, reports / "index.html")


def test_pickled_class_names_are_refused(tmp_path):
    reports = tmp_path / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {})
    arrays = dict(np.load(reports / "music" / "examples.npz"))
    np.savez(reports / "music" / "examples.npz", **(arrays | {"classes": np.array(CLASSES, dtype=object)}))
    with pytest.raises(StageError, match="examples.npz: cannot read"):
        build_report(reports, reports / "index.html")


def test_audio_bars_colour_by_kind_and_keep_the_example_classes():
    classes = [f"class{index}" for index in range(30)]
    distribution = {name: index / 100 for index, name in enumerate(classes)}
    sample = {"sounding": ["class0"], "silent": ["class1", "class2"], "offscreen": ["class2", "class3"]}
    bars = audio_bars(distribution, classes, sample)
    assert len(bars) == report.MAX_BARS
    kinds = {name: kind for name, _, kind in bars}
    assert kinds["class0"] == "sounding" and kinds["class1"] == "silent" and kinds["class3"] == "offscreen"
    assert kinds["class2"] == "offscreen"  # silent in the scene but heard off-screen: it is in the audio
    assert bars[0][0] == "class29" and "class4" not in kinds  # the likeliest first; the least likely others cut
    assert [probability for _, probability, _ in bars] == sorted((p for _, p, _ in bars), reverse=True)


def test_markdown_tables_become_html():
    converted = markdown_to_html("Intro `x` & y\n\n| a | b \\| c |\n|:--|--:|\n| 1 | **2** |\n")
    assert "<p>Intro <code>x</code> &amp; y</p>" in converted
    assert "<th>a</th><th>b | c</th>" in converted
    assert '<th scope="row">1</th><td><b>2</b></td>' in converted


@pytest.mark.skipif(find_chromium() is None,
                    reason="needs headless Chromium: `apt-get install chromium` (Debian), or set IER_CHROMIUM")
def test_chromium_shows_the_page(page, reports_dir, tmp_path):
    shot = tmp_path / "page.png"
    subprocess.run([sys.executable, str(SCREENSHOT), str(reports_dir / "index.html"), str(shot),
                    "--size", "1000x1500"], check=True, capture_output=True, timeout=180)
    with Image.open(shot) as image:
        assert image.size == (1000, 1500)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10  # text, tables and heatmaps, not a blank page
