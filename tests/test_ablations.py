"""pipeline/ablations.py: the presets (presets/*.yaml) and their `-S` arguments, reading `dvc exp show --json`, the
Markdown tables, the checks before anything runs; slow: the DVC queue on a one-stage pipeline, and the command on
the tiny pipeline under real DVC."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import yaml

from pipeline.ablations import (ABLATIONS, COMPONENTS, LEVELS, MISSING, VARIANTS, Ablation, AblationError, Run,
                                ablations_markdown, check_committed, check_overrides, exp_show, load_presets, paired,
                                parse_exp_show, queue_targets, render, run_experiments, select,
                                unrunnable)
from tests.helpers import REPO
from tests.helpers.params import load_repo_params
from tests.helpers.processes import DVC, dvc_environment, run, run_with_uncommitted_params

HEAD_PARAMS = {"synth": {"un": {"sounding": 2, "silent": 2, "offscreen": 1}}}


def class_aware(ciou30, auc, nsa=None) -> dict:
    return {"ciou30": ciou30, "auc": auc} | ({} if nsa is None else {"nsa": nsa})


def metrics_json(base: float, duet: bool = True) -> dict:
    """A metrics.json whose every value differs: base + a fixed offset per metric."""
    metrics = {"source": "toy", "syn": class_aware(base + 0.01, base + 0.02, base + 0.03),
               "un": class_aware(base + 0.04, base + 0.05, base + 0.06),
               "stage1": {"nmi": base + 0.07, "map": base + 0.08, "precision": base + 0.09, "recall": base + 0.10},
               "baselines": {"avol": {"un": class_aware(base + 0.11, base + 0.12)},
                             "dsol": {"un": class_aware(base + 0.16, base + 0.17)}},
               "grounded": {"syn": {"iou30": base + 0.18, "heard_map": base + 0.19},
                            "un": {"iou30": base + 0.20, "silent_false_alarm": base + 0.21}}}
    if duet:
        metrics["duet"] = class_aware(base + 0.13, base + 0.14, base + 0.15)
    return metrics


def make_run(name: str, base: float, state: str = "success", params: dict | None = None) -> Run:
    return Run(name, f"{name:0<40}"[:40], state, params or HEAD_PARAMS,
               {"music": metrics_json(base), "vggsound": metrics_json(base + 0.5, duet=False)})


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each `## heading`'s table as a list of rows, a row as {header: cell}; the unheaded first one as ''."""
    found, heading, lines = {}, "", markdown.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("## "):
            heading = line[3:]
        if line.startswith("| ") and "".join(lines[number + 1:number + 2]).startswith("| ---"):
            head = [cell.strip() for cell in line.strip("|").split("|")]
            found[heading] = []
            for row in lines[number + 2:]:
                if not row.startswith("|"):
                    break
                found[heading].append(dict(zip(head, (cell.strip() for cell in row.strip("|").split("|")))))
    return found


def row_of(table: list[dict[str, str]], first_cell: str) -> dict[str, str]:
    matches = [row for row in table if next(iter(row.values())) == first_cell]
    assert len(matches) == 1, (first_cell, table)
    return matches[0]


# --------------------------------------------------------------------------- the presets

PRESETS, PARAMS = REPO / "presets", REPO / "params.yaml"


def test_every_preset_of_the_repo_loads_against_its_params():
    """presets/*.yaml, checked against params.yaml (through DVC and pipeline.config): the paper's ablations as the
    hard-coded registry had them, and the from-scratch variant."""
    loaded = load_presets(PRESETS, PARAMS)
    assert loaded == ABLATIONS  # the module's registry is the same files
    assert {ablation.name: (ablation.label, ablation.overrides, ablation.table, ablation.classes_needed)
            for ablation in loaded} == {
        "no-aii": ("w/o AII", ("aii.enabled=false",), COMPONENTS, 0),
        "no-cmr": ("w/o CMR (stage-1 networks)", ("cmr.epochs=0",), COMPONENTS, 0),
        "no-silent-filter": ("w/o silent object filter", ("cmr.silent_filter=false",), COMPONENTS, 0),
        "no-offscreen-filter": ("w/o off-screen noise filter", ("cmr.offscreen_filter=false",), COMPONENTS, 0),
        "un-3-3-2": ("(3, 3, 2)", ("synth.un.sounding=3", "synth.un.silent=3", "synth.un.offscreen=2"), LEVELS, 8),
        "un-4-4-3": ("(4, 4, 3)", ("synth.un.sounding=4", "synth.un.silent=4", "synth.un.offscreen=3"), LEVELS, 11),
        "from-scratch": ("from scratch (no pretrained visual trunk)",
                         ("model.visual_pretrained=''", "stage1.av_epochs=30", "stage1.class_epochs=20",
                          "aii.epochs=10", "aii.sibling_cos=0.9"), VARIANTS, 0),
        "paper-aii-loss": ("paper's AII loss (steps on mixtures only)",
                           ("aii.single_step_weight=0.0", "aii.no_source_share=0.0"), VARIANTS, 0)}
    assert [ablation.name for ablation in loaded] == sorted(ablation.name for ablation in loaded)  # file-name order
    for path in sorted(PRESETS.glob("*.yaml")):  # every line says why: the file's head, and each override
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# "), path
        overrides = lines[[line.rstrip() for line in lines].index("overrides:") + 1:]
        assert overrides and all(" # " in line for line in overrides), path


def test_from_scratch_reaches_the_stages_as_its_file_says(tmp_path):
    """Its `-S` arguments, applied by DVC's own code (what `dvc exp run --queue -S` does to params.yaml), give the
    preset's YAML values, the empty string included; params.yaml's validation accepts the result."""
    from dvc.utils.hydra import apply_overrides

    from pipeline.config import load_params

    [scratch] = [ablation for ablation in load_presets(PRESETS, PARAMS) if ablation.name == "from-scratch"]
    assert scratch.overrides == ("model.visual_pretrained=''", "stage1.av_epochs=30", "stage1.class_epochs=20",
                                 "aii.epochs=10", "aii.sibling_cos=0.9")
    (tmp_path / "params.yaml").write_bytes(PARAMS.read_bytes())
    apply_overrides(tmp_path / "params.yaml", list(scratch.overrides))
    params = load_params(tmp_path / "params.yaml")
    assert (params.model.visual_pretrained, params.stage1.av_epochs, params.stage1.class_epochs, params.aii.epochs,
            params.aii.sibling_cos) == ("", 30, 20, 10, 0.9)
    assert params.model.audio_pretrained == "" and params.aii.enabled is True  # the rest as params.yaml has it


def test_render_round_trips_through_dvcs_parser(tmp_path):
    """Values that DVC's Hydra grammar would read as another type, a sweep or an escape, once rendered."""
    from dvc.utils.hydra import apply_overrides

    values = {"empty": "", "quote": "it's", "backslash": "a\\b", "trailing": "a\\", "both": "x'y\\'",
              "comma": "a,b", "word_true": "true", "word_null": "null", "digits": "10", "plus": "k-means++",
              "path": "models/pretrain/visual.pt", "enabled": True, "disabled": False, "count": 30, "zero": 0,
              "share": 0.9, "whole": 10.0, "small": 0.0001, "pair": [0.22, 0.6], "names": ["dog", "it's", "a,b"],
              "none": []}
    assert [render(values[key]) for key in ("empty", "quote", "enabled", "count", "share", "whole", "pair")] == [
        "''", "'it\\'s'", "true", "30", "0.9", "10.0", "[0.22,0.6]"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({key: "placeholder" for key in values}))
    apply_overrides(tmp_path / "params.yaml", [f"{key}={render(value)}" for key, value in values.items()])
    read = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert {key: (type(value), value) for key, value in read.items()} == {
        key: (type(value), value) for key, value in values.items()}


GOOD = "label: x  # why\ntable: variants  # why\noverrides:\n  aii.enabled: false  # why\n"


@pytest.mark.parametrize("text, error", [
    (GOOD + "reason: y\n", "reason: unknown key (have label, table, overrides)"),
    ("table: variants\noverrides:\n  aii.enabled: false\n", "label: missing"),
    ("label: x\ntable: variants\n", "overrides: missing"),
    (GOOD.replace("table: variants", "table: paper"),
     "table: must be one of components | levels | variants, got 'paper'"),
    (GOOD.replace("aii.enabled", "aii.enable"), "overrides.aii.enable: not a key of {params}"),
    (GOOD.replace("aii.enabled: false", "aii: {enabled: false}"),
     "overrides.aii: a section of {params}, not one value: name its keys"),
    (GOOD.replace("aii.enabled: false", "aii.enabled: 0"),
     "overrides.aii.enabled: must be true or false, got 0 ({params} with the overrides applied)"),
    (GOOD.replace("aii.enabled: false", "stage1.av_epochs: '30'"),
     "overrides.stage1.av_epochs: must be an integer, got '30' ({params} with the overrides applied)"),
    (GOOD.replace("aii.enabled: false", "model.visual_pretrained: 0"),
     "overrides.model.visual_pretrained: must be a string, got 0 ({params} with the overrides applied)"),
    # DVC writes a float below 1e-4 as `1e-06`, which PyYAML (YAML 1.1) reads as a string: caught here, not in a stage
    (GOOD.replace("aii.enabled: false", "cmr.lr: 0.000001"),
     "overrides.cmr.lr: DVC writes 1e-06 so that params.yaml reads back '1e-06': not passable as `dvc exp run -S`"),
])
def test_a_bad_preset_fails_in_one_line_naming_the_file_and_key(tmp_path, monkeypatch, text, error):
    monkeypatch.chdir(REPO)  # files are named relative to the working directory where they lie under it
    (tmp_path / "a-good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(AblationError) as raised:
        load_presets(tmp_path, PARAMS)
    message = str(raised.value)
    assert "\n" not in message
    assert message == f"{tmp_path / 'bad.yaml'}: " + error.format(params="params.yaml"), message


def test_a_preset_folder_without_presets_or_with_bad_params_fails_in_one_line(tmp_path):
    with pytest.raises(AblationError, match=r"no presets \(\*\.yaml\)$"):
        load_presets(tmp_path, PARAMS)
    (tmp_path / "params.yaml").write_text(PARAMS.read_text().replace("seed: 0", "seed: zero", 1))
    with pytest.raises(AblationError, match=r"params.yaml: seed: must be an integer, got 'zero'$"):
        load_presets(PRESETS, tmp_path / "params.yaml")


# --------------------------------------------------------------------------- pairing with full IEr


def samples_of(ious: list[float], nsas: list, set_name: str = "syn", method: str = "ier",
               grounded: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"set": set_name, "sample_id": [f"m{i}" for i in range(len(ious))], "method": method,
                         "iou": ious, "nsa": nsas, **({} if grounded is None else {"grounded_iou_true": grounded})})


def test_paired_counts_the_mosaics_each_run_alone_gets_right():
    full = samples_of([0.5, 0.5, 0.1, 0.3, 0.6], [0.8, 0.8, 0.8, 0.8, ""])
    # Shuffled rows: mosaics are matched by sample_id, not by position.
    variant = samples_of([0.1, 0.5, 0.4, 0.29, 0.2], [0.9, 0.9, 0.9, 0.9, ""]).iloc[::-1]
    result = paired(full, variant, success=0.3)
    assert (result["better"], result["worse"]) == (1, 3)  # m2 only with the variant; m0, m3 (0.29), m4 only with IEr
    assert result["p"] == pytest.approx(0.625)  # two-sided sign test of 1 against 3: 2 * (1 + 4) / 16
    # Every mosaic with an NSA moved by +0.1: the mean and both ends of the interval are +0.1.
    assert (result["nsa"], result["nsa_low"], result["nsa_high"]) == pytest.approx((0.1, 0.1, 0.1))


def test_paired_sign_test_of_one_sided_counts_and_of_no_difference():
    full = samples_of([0.9] * 6, [""] * 6)
    assert paired(full, samples_of([0.0] * 6, [""] * 6), 0.3)["p"] == pytest.approx(2 / 64)
    same = paired(full, full.copy(), 0.3)
    assert (same["better"], same["worse"], same["p"], same["nsa"]) == (0, 0, 1.0, None)
    with pytest.raises(ValueError, match="different mosaics"):
        paired(full, full.iloc[:5], 0.3)


def test_paired_also_counts_the_grounded_successes_where_both_runs_have_them():
    full = samples_of([0.5] * 4, [""] * 4, grounded=[0.6, 0.6, 0.6, 0.1])
    variant = samples_of([0.5] * 4, [""] * 4, grounded=[0.1, 0.1, 0.29, 0.3])
    result = paired(full, variant, 0.3, grounded_success=0.3)
    assert (result["better"], result["worse"]) == (0, 0)  # DSOL's protocol sees no difference
    assert (result["grounded_better"], result["grounded_worse"]) == (1, 3)  # 0.3 reaches the level, 0.29 does not
    assert result["grounded_p"] == pytest.approx(0.625)
    assert paired(full, samples_of([0.5] * 4, [""] * 4), 0.3, grounded_success=0.3)["grounded_p"] is None
    assert paired(full, variant, 0.3)["grounded_p"] is None  # no level given


def test_markdown_pairs_each_variant_that_ran_with_full_ier():
    baseline, no_aii = make_run("main", 0.1), make_run("no-aii", 0.2)
    tables_by_rev = {
        baseline.rev: pd.concat([samples_of([0.5, 0.5, 0.5], [0.7, 0.7, 0.7]), samples_of([0.5], [0.5], "un"),
                                 samples_of([0.0], [0.9], "syn", method="avol")]),
        no_aii.rev: pd.concat([samples_of([0.1, 0.1, 0.5], [0.8, 0.8, 0.8]), samples_of([0.5], [0.5], "un"),
                               samples_of([0.9], [0.1], "syn", method="avol")])}

    def read(rev: str, dataset: str):
        return tables_by_rev.get(rev) if dataset == "music" else None  # vggsound: no samples -> no rows

    found = tables(ablations_markdown(baseline, {"no-aii": no_aii, "no-cmr": make_run("no-cmr", 0.3, "failed")},
                                      samples=read))["Each variant against full IEr, mosaic by mosaic"]
    assert [(row["variant"], row["dataset"], row["set"]) for row in found] == [
        ("w/o AII", "music", "Synthetic"), ("w/o AII", "music", "Unconstrained")]
    syn = found[0]
    counts = (syn["CIoU@0.3 only with the variant"], syn["CIoU@0.3 only with IEr"], syn["sign test p"])
    assert counts == ("0", "2", "0.500")
    assert syn["NSA difference [95 % interval]"] == "+10.0 [+10.0, +10.0]"  # AVOL's rows are not paired
    assert "mosaic by mosaic" not in ablations_markdown(baseline, {"no-aii": no_aii})  # no reader, no section
    tables_by_rev[no_aii.rev] = samples_of([0.1, 0.1], [0.8, 0.8])  # other mosaics than HEAD's: said, not paired
    found = tables(ablations_markdown(baseline, {"no-aii": no_aii}, samples=read))
    [syn] = found["Each variant against full IEr, mosaic by mosaic"]
    assert syn["sign test p"] == MISSING and syn["NSA difference [95 % interval]"].startswith("not paired: ")


# --------------------------------------------------------------------------- tables


def test_component_tables_put_each_number_in_its_row_and_column():
    no_cmr = make_run("no-cmr", 0.2)
    del no_cmr.metrics["music"]["syn"]["nsa"]  # one metric the experiment did not report
    experiments = {"no-aii": make_run("no-aii", 0.1), "no-cmr": no_cmr,
                   "no-silent-filter": make_run("no-silent-filter", 0.3, state="failed")}  # no-offscreen-filter: absent
    found = tables(ablations_markdown(make_run("main", 0.0), experiments))

    music, vggsound = found["Tables 3, 4 and 7: music"], found["Tables 3, 4 and 7: vggsound"]
    full, no_aii = row_of(music, "IEr (full)"), row_of(music, "w/o AII")
    assert (full["experiment"], full["Synthetic CIoU@0.3"], full["Unconstrained AUC"], full["Duet NSA"],
            full["Stage 1 Recall"]) == ("HEAD", "1.0", "5.0", "15.0", "10.0")
    assert (no_aii["experiment"], no_aii["Synthetic AUC"], no_aii["Unconstrained NSA"], no_aii["Duet CIoU@0.3"],
            no_aii["Stage 1 NMI"], no_aii["Stage 1 mAP"]) == ("`no-aii`", "12.0", "16.0", "23.0", "17.0", "18.0")
    cmr = row_of(music, "w/o CMR (stage-1 networks)")
    assert cmr["Synthetic NSA"] == MISSING and cmr["Synthetic AUC"] == "22.0"
    for label, experiment in (("w/o silent object filter", "`no-silent-filter` (failed)"),
                              ("w/o off-screen noise filter", "`no-offscreen-filter` (not run)")):
        row = row_of(music, label)
        assert row["experiment"] == experiment
        assert [row[header] for header in list(row)[2:]] == [MISSING] * (len(row) - 2), row
    assert "Duet AUC" not in vggsound[0]  # no row has a duet set
    assert row_of(vggsound, "w/o AII")["Unconstrained CIoU@0.3"] == "64.0"
    assert row_of(vggsound, "IEr (full)")["Stage 1 Precision"] == "59.0"
    grounded = found["Tables 3, 4 and 7, audio-grounded: music"]
    assert list(grounded[0]) == ["variant", "experiment", "Synthetic IoU@0.3", "Synthetic heard mAP",
                                 "Unconstrained IoU@0.3", "Unconstrained silent false alarm"]  # the columns reported
    assert (row_of(grounded, "IEr (full)")["Synthetic IoU@0.3"], row_of(grounded, "w/o AII")["Synthetic heard mAP"],
            row_of(grounded, "w/o CMR (stage-1 networks)")["Unconstrained silent false alarm"]) == ("18.0", "29.0",
                                                                                                  "41.0")
    assert row_of(found["Tables 3, 4 and 7, audio-grounded: vggsound"], "w/o AII")["Unconstrained IoU@0.3"] == "80.0"


def test_level_table_has_ier_dsol_and_avol_per_dataset_and_says_why_a_level_did_not_run():
    level = make_run("un-3-3-2", 0.2, params={"synth": {"un": {"sounding": 3, "silent": 3, "offscreen": 2}}})
    both_short = {"music": "not run: needs 11 classes", "vggsound": "not run: needs 11 classes"}
    found = tables(ablations_markdown(make_run("main", 0.0), {"un-3-3-2": level}, skipped={"un-4-4-3": both_short}))
    table9 = found["Table 9: interference levels of the Unconstrained set"]
    default, harder = row_of(table9, "(2, 2, 1)"), row_of(table9, "(3, 3, 2)")
    assert (default["experiment"], default["music IEr CIoU@0.3"], default["music AVOL AUC"],
            default["music DSOL CIoU@0.3"], default["vggsound IEr AUC"]) == ("HEAD", "4.0", "12.0", "16.0", "55.0")
    assert (harder["experiment"], harder["music IEr AUC"], harder["music AVOL CIoU@0.3"],
            harder["vggsound AVOL AUC"], harder["vggsound IEr CIoU@0.3"],
            harder["vggsound DSOL AUC"]) == ("`un-3-3-2`", "25.0", "31.0", "82.0", "74.0", "87.0")
    hardest = row_of(table9, "(4, 4, 3)")
    assert hardest["experiment"] == ("`un-4-4-3` (music: not run: needs 11 classes; "
                                     "vggsound: not run: needs 11 classes)")
    assert set(list(hardest.values())[2:]) == {MISSING}

    # A level that ran for one role: the other role's cells are empty, not the full row's numbers it carries.
    level = make_run("un-4-4-3", 0.3, params={"synth": {"un": {"sounding": 4, "silent": 4, "offscreen": 3}}})
    found = tables(ablations_markdown(make_run("main", 0.0), {"un-4-4-3": level},
                                      skipped={"un-4-4-3": {"music": "not run: needs 11 classes"}}))
    hardest = row_of(found["Table 9: interference levels of the Unconstrained set"], "(4, 4, 3)")
    assert hardest["experiment"] == "`un-4-4-3` (music: not run: needs 11 classes)"
    assert {hardest[f"music {method} {metric}"] for method in ("IEr", "DSOL", "AVOL")
            for metric in ("CIoU@0.3", "AUC")} == {MISSING}
    assert (hardest["vggsound IEr CIoU@0.3"], hardest["vggsound DSOL AUC"]) == ("84.0", "97.0")


def test_markdown_names_the_commit_and_every_override():
    markdown = ablations_markdown(make_run("main", 0.0), {})
    assert "`main000" in markdown and "(main)" in markdown
    rows = {row["experiment"].strip("`"): row for row in tables(markdown)[""]}
    overrides = {name: row["overrides (`-S`)"] for name, row in rows.items()}
    assert overrides["no-aii"] == "`aii.enabled=false`"
    assert overrides["un-4-4-3"] == "`synth.un.sounding=4` `synth.un.silent=4` `synth.un.offscreen=3`"
    assert overrides["from-scratch"].startswith("`model.visual_pretrained=''` `stage1.av_epochs=30`")
    assert set(overrides) == {ablation.name for ablation in ABLATIONS}
    assert (rows["no-cmr"]["paper"], rows["un-3-3-2"]["paper"], rows["from-scratch"]["paper"]) == (
        "Tables 3, 4, 7", "Table 9", "named variant")


def test_named_variants_have_their_own_table_per_dataset_and_are_paired():
    baseline, scratch = make_run("main", 0.1), make_run("from-scratch", 0.2)
    samples = {baseline.rev: samples_of([0.5, 0.5], [0.7, 0.7]), scratch.rev: samples_of([0.1, 0.5], [0.8, 0.8])}
    found = tables(ablations_markdown(baseline, {"from-scratch": scratch, "no-aii": make_run("no-aii", 0.3)},
                                      samples=lambda rev, dataset: samples.get(rev) if dataset == "music" else None))
    music, vggsound = found["Named variants: music"], found["Named variants: vggsound"]
    assert [row["variant"] for row in music] == ["IEr (full)", "from scratch (no pretrained visual trunk)",
                                                 "paper's AII loss (steps on mixtures only)"]  # the last not run
    variant = row_of(music, "from scratch (no pretrained visual trunk)")
    assert (variant["experiment"], variant["Synthetic CIoU@0.3"], variant["Stage 1 NMI"]) == (
        "`from-scratch`", "21.0", "27.0")  # the same columns as Tables 3, 4 and 7
    assert row_of(vggsound, "from scratch (no pretrained visual trunk)")["Unconstrained AUC"] == "75.0"
    assert "from scratch (no pretrained visual trunk)" not in {
        row["variant"] for row in found["Tables 3, 4 and 7: music"]}  # not a row of the paper's tables
    pairs = found["Each variant against full IEr, mosaic by mosaic"]
    [pair] = [row for row in pairs if row["variant"] == "from scratch (no pretrained visual trunk)"]
    assert (pair["dataset"], pair["CIoU@0.3 only with IEr"]) == ("music", "1")
    # Without a variant, no such section; an experiment of it not run yet prints as not run.
    paper = tuple(ablation for ablation in ABLATIONS if ablation.table != VARIANTS)
    assert "Named variants" not in ablations_markdown(baseline, {}, ablations=paper)
    assert row_of(tables(ablations_markdown(baseline, {}))["Named variants: music"],
                  "from scratch (no pretrained visual trunk)")["experiment"] == "`from-scratch` (not run)"


# --------------------------------------------------------------------------- reading `dvc exp show --json`


def show_entry(rev: str, name: str | None, metrics: dict, error=None, **extra) -> dict:
    files = {f"reports/{dataset}/metrics.json": {"data": data} for dataset, data in metrics.items()}
    files["reports/music/stage1.json"] = {"data": {"nmi": 0.99}}  # another metric file: not a dataset's table
    return {"rev": rev, "name": name, "error": error, "experiments": None,
            "data": {"rev": rev, "params": {"params.yaml": {"data": {"cmr": {"epochs": 0}}}}, "metrics": files},
            **extra}


def test_parse_exp_show_reads_head_and_each_experiments_state():
    def experiment(name, state, metrics, error=None):
        return {"name": name, "revs": [show_entry(f"{name:x<40}", name, metrics, error)],
                "executor": None if state is None else {"state": state, "local": {"log": f"/logs/{name}.out"}}}

    show = [show_entry("workspace", None, {"music": {"un": {"auc": 0.9}}}),
            show_entry("a" * 40, "main", {"music": {"un": {"auc": 0.1}}, "vggsound": {"un": {"auc": 0.2}}},
                       experiments=[experiment("no-cmr", "success", {"music": {"un": {"auc": 0.3}}}),
                                    experiment("no-aii", "failed", {"music": {"un": {"auc": 0.1}}},
                                               error={"msg": "Experiment run failed", "type": ""}),
                                    experiment("un-3-3-2", "queued", {}),
                                    experiment("old", None, {"music": {"un": {"auc": 0.4}}}),
                                    experiment("broken", None, {}, error={"msg": "Experiment run failed"})])]
    baseline, experiments = parse_exp_show(show)
    assert (baseline.name, baseline.rev, baseline.state) == ("main", "a" * 40, "success")
    assert baseline.metrics == {"music": {"un": {"auc": 0.1}}, "vggsound": {"un": {"auc": 0.2}}}
    assert {name: run.state for name, run in experiments.items()} == {
        "no-cmr": "success", "no-aii": "failed", "un-3-3-2": "queued", "old": "success", "broken": "failed"}
    assert experiments["no-cmr"].metrics == {"music": {"un": {"auc": 0.3}}}
    assert experiments["no-cmr"].params == {"cmr": {"epochs": 0}}
    assert experiments["no-aii"].log == "/logs/no-aii.out"
    with pytest.raises(AblationError, match="no commit"):
        parse_exp_show([show_entry("workspace", None, {})])


# --------------------------------------------------------------------------- checks before running


def test_select_and_overrides_name_what_is_wrong():
    assert [ablation.name for ablation in select("no-cmr, un-3-3-2")] == ["no-cmr", "un-3-3-2"]
    # Without names: the paper's ablations (Tables 3, 4, 7, 9); a named variant runs only when named.
    assert select(None) == [ablation for ablation in ABLATIONS if ablation.table in (COMPONENTS, LEVELS)]
    assert len(select(None)) == 6 and [ablation.name for ablation in select("from-scratch")] == ["from-scratch"]
    with pytest.raises(AblationError, match="unknown ablation no-such") as raised:
        select("no-cmr,no-such")
    assert str(raised.value) == ("--only: unknown ablation no-such (have from-scratch, no-aii, no-cmr, "
                                 "no-offscreen-filter, no-silent-filter, paper-aii-loss, un-3-3-2, un-4-4-3: "
                                 "presets/NAME.yaml)")
    params = load_repo_params()
    check_overrides(list(ABLATIONS), params)  # every override of the real list names a real key
    del params["cmr"]["silent_filter"]
    with pytest.raises(AblationError, match="no-silent-filter: cmr.silent_filter is not a key of params.yaml"):
        check_overrides(list(ABLATIONS), params)


def test_levels_needing_more_classes_than_a_toy_dataset_has_are_skipped():
    params = load_repo_params()
    params["datasets"]["music"]["toy"]["classes"] = params["datasets"]["music"]["toy"]["classes"][:8]
    params["datasets"]["vggsound"]["toy"]["classes"] = ["dog"] * 11
    skipped = unrunnable(list(ABLATIONS), params)
    assert skipped == {"un-4-4-3": {"music": "not run: needs 11 distinct classes, datasets.music.toy.classes has 8"}}
    # the level runs for vggsound alone: its experiment reproduces vggsound's evaluation and what it needs
    levels = [ablation for ablation in ABLATIONS if ablation.name in ("un-3-3-2", "un-4-4-3")]
    assert queue_targets(levels, skipped, ["music", "vggsound"]) == {"un-3-3-2": [], "un-4-4-3": ["evaluate@vggsound"]}
    params["datasets"]["vggsound"]["toy"]["classes"] = ["dog"] * 10
    skipped = unrunnable(list(ABLATIONS), params)
    assert set(skipped["un-4-4-3"]) == {"music", "vggsound"}
    assert queue_targets(levels, skipped, ["music", "vggsound"]) == {"un-3-3-2": []}  # no role: not queued
    params["datasets"]["music"]["source"] = params["datasets"]["vggsound"]["source"] = "youtube"
    assert unrunnable(list(ABLATIONS), params) == {}  # a real dataset's classes are not counted here


def test_check_committed_allows_only_its_own_outputs_to_differ(tmp_path):
    env = dvc_environment()
    for name in ("params.yaml", "dvc.lock", "reports/ablations.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    run(["git", "init", "-q"], tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "x"], tmp_path, env)
    (tmp_path / "dvc.lock").write_text("changed by the report refresh\n")
    (tmp_path / "reports" / "ablations.md").write_text("a new table\n")
    (tmp_path / "untracked.txt").write_text("not in git: not the experiments' business\n")
    check_committed(tmp_path)
    (tmp_path / "params.yaml").write_text("a: 2\n")
    with pytest.raises(AblationError, match="uncommitted changes in params.yaml"):
        check_committed(tmp_path)


# --------------------------------------------------------------------------- the command under real DVC


def experiment_in_show(show: list, name: str) -> list[dict]:
    """Every experiment called `name` among HEAD's in `dvc exp show --json`, read without pipeline.ablations."""
    head = next(entry for entry in show if entry["rev"] != "workspace")
    return [experiment["revs"][0]["data"] for experiment in head["experiments"] or [] if experiment["name"] == name]


def percent_of(data: dict, dataset: str, *keys: str) -> str:
    value = data["metrics"][f"reports/{dataset}/metrics.json"]["data"]
    for key in keys:
        value = value[key]
    return f"{100 * value:.1f}"


@pytest.mark.slow
def test_ablation_command_on_the_tiny_pipeline(tiny_repo):
    env = dvc_environment()
    params_before = (tiny_repo / "params.yaml").read_bytes()
    # An experiment of that name from an earlier run (HEAD's params saved under it): the command replaces it.
    run(DVC + ["exp", "save", "-n", "no-offscreen-filter"], tiny_repo, env)
    command = [sys.executable, "-m", "pipeline.ablations", "--only", "no-offscreen-filter,un-3-3-2"]
    run(command, tiny_repo, env, timeout=1200)

    show = json.loads(run(DVC + ["exp", "show", "--json"], tiny_repo, env))
    # One experiment of each name (unpacking fails on two), with the ablation's overrides
    [no_filter], [level] = experiment_in_show(show, "no-offscreen-filter"), experiment_in_show(show, "un-3-3-2")
    assert no_filter["params"]["params.yaml"]["data"]["cmr"]["offscreen_filter"] is False
    assert level["params"]["params.yaml"]["data"]["synth"]["un"] == {"count": 16, "sounding": 3, "silent": 3,
                                                                      "offscreen": 2}
    found = tables((tiny_repo / "reports" / "ablations.md").read_text())
    for dataset in ("music", "vggsound"):
        row = row_of(found[f"Tables 3, 4 and 7: {dataset}"], "w/o off-screen noise filter")
        for header, keys in {"Synthetic AUC": ("syn", "auc"), "Unconstrained CIoU@0.3": ("un", "ciou30"),
                             "Unconstrained AUC": ("un", "auc"), "Unconstrained NSA": ("un", "nsa"),
                             "Stage 1 NMI": ("stage1", "nmi")}.items():
            assert row[header] == percent_of(no_filter, dataset, *keys), (dataset, header, row)
        assert set(list(row_of(found[f"Tables 3, 4 and 7: {dataset}"], "w/o AII").values())[2:]) == {MISSING}
        head = next(entry for entry in show if entry["rev"] != "workspace")["data"]
        full = row_of(found[f"Tables 3, 4 and 7: {dataset}"], "IEr (full)")
        assert (full["Unconstrained AUC"], full["Stage 1 NMI"]) == (percent_of(head, dataset, "un", "auc"),
                                                                     percent_of(head, dataset, "stage1", "nmi"))
        harder = row_of(found["Table 9: interference levels of the Unconstrained set"], "(3, 3, 2)")
        assert harder[f"{dataset} IEr AUC"] == percent_of(level, dataset, "un", "auc")
        assert harder[f"{dataset} AVOL CIoU@0.3"] == percent_of(level, dataset, "baselines", "avol", "un", "ciou30")
    assert row_of(found["Tables 3, 4 and 7: music"], "w/o off-screen noise filter")["Duet AUC"] == percent_of(
        no_filter, "music", "duet", "auc")
    pairs = found["Each variant against full IEr, mosaic by mosaic"]  # samples.csv of HEAD and the experiment, from git
    assert {(row["variant"], row["dataset"], row["set"]) for row in pairs} >= {
        ("w/o off-screen noise filter", "music", "Synthetic"),
        ("w/o off-screen noise filter", "vggsound", "Unconstrained")}
    assert (tiny_repo / "params.yaml").read_bytes() == params_before  # nothing applied to the workspace
    assert '<section id="ablations">' in (tiny_repo / "reports" / "index.html").read_text()  # the page shows it
    assert "up to date" in run(DVC + ["status"], tiny_repo, env)  # ... through DVC: dvc.lock knows the new page


@pytest.mark.parametrize("only", ["no-cmr", "from-scratch"])  # `make variant NAME=from-scratch`: the same path
def test_ablation_command_fails_in_one_line_on_uncommitted_params(tmp_path, only):
    done = run_with_uncommitted_params(tmp_path, (REPO / "params.yaml").read_text(),
                                       [sys.executable, "-m", "pipeline.ablations", "--only", only])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ablations: error: uncommitted changes in params.yaml: commit them first, so that the experiments and the "
        "full IEr row (HEAD) share one baseline"]


def test_ablation_command_names_the_known_presets_for_an_unknown_one(tmp_path):
    done = run_with_uncommitted_params(tmp_path, (REPO / "params.yaml").read_text(),
                                       [sys.executable, "-m", "pipeline.ablations", "--only", "from-scratc"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ablations: error: --only: unknown ablation from-scratc (have from-scratch, no-aii, no-cmr, "
        "no-offscreen-filter, no-silent-filter, paper-aii-loss, un-3-3-2, un-4-4-3: presets/NAME.yaml)"]


# --------------------------------------------------------------------------- the DVC queue, on a one-stage pipeline

ONE_STAGE = {
    "params.yaml": "a: 1\nok: true\n",
    "stage.py": ("import json, sys, yaml\nparams = yaml.safe_load(open('params.yaml'))\n"
                 "sys.exit('stage: refused') if not params['ok'] else None\n"
                 "json.dump({'un': {'auc': params['a'] / 10}}, open('reports/music/metrics.json', 'w'))\n"),
    "dvc.yaml": ("stages:\n  s:\n    cmd: python stage.py\n    deps: [stage.py]\n    params: [a, ok]\n"
                 "    metrics:\n      - reports/music/metrics.json:\n          cache: false\n"),
}


@pytest.mark.slow
def test_run_experiments_replaces_same_names_and_reports_failures(tmp_path, monkeypatch):
    """The queue mechanics on a one-stage pipeline (seconds, not minutes): a failing experiment is named with its
    log's error, a rerun replaces the experiment of the same name, the workspace params stay as they were."""
    env = dvc_environment()
    monkeypatch.setenv("PATH", env["PATH"])  # the queue's workers run `dvc` and the stage `python` from PATH
    for name, text in ONE_STAGE.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "reports" / "music").mkdir(parents=True)
    run(["git", "init", "-q"], tmp_path, env)
    run(DVC + ["init", "-q"], tmp_path, env)
    run(DVC + ["repro", "-q"], tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "one stage"], tmp_path, env)
    good, bad = Ablation("good", "good", ("a=3",), COMPONENTS), Ablation("bad", "bad", ("ok=false",), COMPONENTS)

    failed = run_experiments(tmp_path, [good, bad], {"good": ["s"]})  # `good` with its target named
    assert len(failed) == 1 and failed[0].startswith("bad failed (ERROR: failed to reproduce 's'"), failed
    assert failed[0].endswith("its log: `dvc queue logs bad`")
    baseline, experiments = exp_show(tmp_path)
    assert experiments["good"].metrics == {"music": {"un": {"auc": 0.3}}}
    assert baseline.metrics == {"music": {"un": {"auc": 0.1}}}

    # Same names again, `good` now with another value: one experiment per name, the new one.
    assert run_experiments(tmp_path, [Ablation("good", "good", ("a=5",), COMPONENTS), bad])[0].startswith("bad")
    show = json.loads(run(DVC + ["exp", "show", "--json"], tmp_path, env))
    assert [len(experiment_in_show(show, name)) for name in ("good", "bad")] == [1, 1]
    assert exp_show(tmp_path)[1]["good"].metrics == {"music": {"un": {"auc": 0.5}}}
    assert (tmp_path / "params.yaml").read_text() == ONE_STAGE["params.yaml"]
