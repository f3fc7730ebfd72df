"""The report page, built from tiny hand-made reports folders: tables, figures, messages, atomic writing."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
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

MUSIC_METRICS = {
    "source": "toy",
    "single": {"iou50": 0.5, "auc": 0.4321},
    "syn": {"ciou30": 0.4567, "auc": 0.39, "nsa": 0.812},
    "un": {"ciou30": 0.25, "auc": 0.2, "nsa": None},
    "duet": {"ciou30": 0.6, "auc": 0.55, "nsa": 0.7},
    "stage1": {"nmi": 0.3884, "map": 0.537, "precision": 0.6088, "recall": 0.2456},
    "detector": {"map50": 0.7012},
    "baselines": {"avol": {"single": {"iou50": 0.625, "auc": 0.4},
                           "syn": {"ciou30": 0.1234, "auc": 0.11, "nsa": 0.3},
                           "un": {"ciou30": 0.1, "auc": 0.09, "nsa": None},
                           "duet": {"ciou30": 0.2, "auc": 0.15, "nsa": 0.2}}},
}
VGGSOUND_METRICS = {  # no duet, as for VGGSound
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
ABLATIONS = "# Ablations\n\n| variant | un CIoU |\n| --- | --- |\n| full | **25.0** |\n| no AII | 20.1 |\n"


def write_tsv(path, name, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{name}\n" + "".join(f"{step}\t{value}\n" for step, value in enumerate(values)))


def write_dataset(folder, metrics, live_folders):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(SAMPLES), SIDE, SIDE, 3), dtype=np.uint8)
    maps = rng.random((len(SAMPLES), len(CLASSES), SIDE, SIDE), dtype=np.float32)
    np.savez(folder / "examples.npz", images=images, maps=maps, classes=np.array(CLASSES))
    (folder / "examples.json").write_text(json.dumps(SAMPLES))
    for live, names in live_folders.items():
        for name in names:
            write_tsv(folder / live / "plots" / "metrics" / f"{name}.tsv", name, [1.0, 0.5, 0.25])


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory):
    """music with both training-curve folders (3 TSVs); vggsound without stage2-live (1 TSV); ablations.md."""
    reports = tmp_path_factory.mktemp("repo") / "reports"
    write_dataset(reports / "music", MUSIC_METRICS, {"stage1-live": ["av_loss", "aii_loss"],
                                                     "stage2-live": ["un_loss"]})
    write_dataset(reports / "vggsound", VGGSOUND_METRICS, {"stage1-live": ["av_loss"]})
    (reports / "ablations.md").write_text(ABLATIONS)
    return reports


@pytest.fixture(scope="module")
def page(reports_dir):
    build_report(reports_dir, reports_dir / "index.html")
    return (reports_dir / "index.html").read_text()


def section(page_html, anchor):
    return page_html.split(f'<section id="{anchor}">')[1].split("</section>")[0]


def test_table1_has_both_methods_percentages_and_bold_best(page):
    table1 = section(page, "table1")
    assert "<th scope=\"row\">IEr</th>" in table1 and "<th scope=\"row\">AVOL</th>" in table1
    assert "<b>45.7</b>" in table1 and ">12.3<" in table1  # music Syn CIoU@0.3: IEr 0.4567 beats AVOL 0.1234
    assert "<b>62.5</b>" in table1 and ">50.0<" in table1  # music single IoU@0.5: AVOL is the better one
    assert "<b>50.0</b>" not in table1
    assert table1.count("Duet") == 1  # a music column only
    assert "toy" in page and "youtube" in page  # the sources in the header


def test_nsa_and_table2(page):
    nsa = section(page, "nsa")
    assert "<b>81.2</b>" in nsa and "&ndash;" in nsa  # a null NSA shows as a dash
    table2 = section(page, "table2")
    for value in ("38.8", "53.7", "60.9", "24.6", "70.1", "68.1", "71.0"):
        assert f">{value}<" in table2


def test_every_figure_is_an_embedded_png_with_alt_text(page):
    images = IMG_SOURCE.findall(page)
    assert page.count("<img") == len(images)
    expected = 2 * sum(FIGURES_PER_EXAMPLE) + 3 + 1  # examples of both datasets, then the TSVs
    assert len(images) == expected
    for source, alt in images:
        assert source.startswith("data:image/png;base64,") and alt
        assert base64.b64decode(source.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    assert sum("IEr map of flute (silent)" in alt for _, alt in images) == 2  # one per dataset
    assert not any("person" in alt for _, alt in images)  # no map of its own: its box is on the input only


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
