"""pipeline/seeds.py: the statistics, metrics.json's methods, the pages and the README's block, reading a faked
`dvc exp show --json`; slow: `python -m pipeline.seeds --seeds 2` on the tiny pipeline under real DVC."""
from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest

from pipeline.ablations import AblationError, Run, check_committed, parse_exp_show
from pipeline.seeds import (RESULTS_END, RESULTS_START, SEEDED_STAGES, SEEDS_OUTPUTS, SeedsError,
                            check_data_stages_unseeded, formatted, method_metrics, readme_table, replace_block,
                            run_seeds, seed_runs, seeds_document, seeds_markdown, summarise)
from tests.helpers import REPO
from tests.helpers.processes import DVC, dvc_environment, run, run_with_uncommitted_params

T_975_2 = 4.302652729911275  # Student t's 97.5 % quantile with 2 degrees of freedom (tables: 4.303)
T_975_1 = 12.706204736174707  # ... with 1 (tables: 12.706)


# --------------------------------------------------------------------------- statistics


def test_summarise_gives_the_mean_std_and_student_interval():
    stats = summarise([0.7, 0.8, 0.9])
    half = T_975_2 * 0.1 / math.sqrt(3)  # std 0.1 (ddof 1), n 3
    assert (stats["n"], stats["mean"], stats["std"]) == (3, pytest.approx(0.8), pytest.approx(0.1))
    assert stats["ci95"] == pytest.approx([0.8 - half, 0.8 + half], abs=1e-6)
    assert stats["values"] == [0.7, 0.8, 0.9]
    assert formatted(stats) == "0.800 ± 0.248"


def test_summarise_leaves_nulls_out_and_gives_no_interval_from_one_value():
    stats = summarise([0.5, None, 0.7])
    assert (stats["n"], stats["mean"]) == (2, pytest.approx(0.6))
    assert stats["std"] == pytest.approx(math.sqrt(0.02), abs=1e-6)  # rounded to 6 decimals
    half = T_975_1 * math.sqrt(0.02) / math.sqrt(2)
    assert stats["ci95"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-6)
    assert stats["values"] == [0.5, None, 0.7]  # one per seed, the null where it was
    assert formatted(stats, seeds=3) == f"0.600 ± {half:.3f} (n 2)"
    one = summarise([None, 0.4, None])
    assert (one["n"], one["mean"], one["std"], one["ci95"]) == (1, 0.4, None, None)
    assert formatted(one) == "0.400"
    assert summarise([None, None]) == {"n": 0, "mean": None, "std": None, "ci95": None, "values": [None, None]}
    assert formatted(summarise([None])) == formatted(None) == "–"


# --------------------------------------------------------------------------- metrics.json -> methods


def grounded(base: float) -> dict:
    """One set's audio-grounded metrics in the layout evaluate writes, with a null."""
    eight = {"iou30": base, "auc": base, "sounding_recall": base, "silent_false_alarm": None, "heard_map": base,
             "heard_precision": base, "heard_recall": base, "empty": base / 2}
    return eight | {"deranged": dict(eight), "silence": dict(eight, empty=1.0), "reliance": base / 4,
                    "silence_empty": 1.0}


def dsol_sets(base: float) -> dict:
    return {"single": {"iou50": base, "auc": base}, "syn": {"ciou30": base + 0.1, "auc": base, "nsa": base},
            "un": {"ciou30": base + 0.2, "auc": base, "nsa": base}}


def new_metrics(base: float) -> dict:
    """A reports/<ds>/metrics.json of the layout evaluate writes since issue 21."""
    ground = {"thresholds": {"map": 0.4, "heard": 0.5}, "syn": grounded(base), "un": grounded(base + 0.05)}
    avol = dsol_sets(base / 2) | {"grounded": {"syn": grounded(base / 2)}}
    return {"source": "toy", "split": "test", "thresholds_split": "val", "boxes": "truth", **dsol_sets(base),
            "grounded": ground, "baselines": {"avol": avol},
            "detector_boxes": {**dsol_sets(base - 0.1), "grounded": {"syn": grounded(base - 0.1)},
                               "baselines": {"avol": {"syn": {"ciou30": 0.01}}}},
            "stage1": {"nmi": 0.9, "map": 0.7, "precision": 0.6, "recall": 0.5}, "detector": {"map50": 0.8},
            "val": {"grounded": {"syn": grounded(base + 0.01)}, "stage1": {"nmi": 0.85},
                    "baselines": {"avol": {"grounded": {"syn": grounded(base / 2 + 0.01)}}}}}


def test_method_metrics_splits_ier_baselines_and_detector_boxes():
    methods = method_metrics(new_metrics(0.6))
    assert list(methods) == ["ier", "avol"]
    ier, avol = methods["ier"], methods["avol"]
    assert ier["syn.ciou30"] == pytest.approx(0.7) and ier["grounded.un.reliance"] == pytest.approx(0.1625)
    assert ier["grounded.syn.silence.empty"] == 1.0 and ier["grounded.syn.deranged.iou30"] == 0.6
    assert ier["grounded.thresholds.map"] == 0.4
    assert ier["grounded.syn.silent_false_alarm"] is None  # kept: a null is a seed without the number
    assert (ier["stage1.nmi"], ier["detector.map50"]) == (0.9, 0.8)  # run-level numbers, under IEr
    assert ier["detector_boxes.syn.ciou30"] == pytest.approx(0.6)
    assert ier["detector_boxes.grounded.syn.iou30"] == pytest.approx(0.5)
    assert not any(key.startswith(("source", "split", "boxes", "baselines", "thresholds_split")) for key in ier)
    assert not any(".baselines." in key or key.startswith("detector_boxes.baselines") for key in ier)
    # the val group: the same layout again, prefixed, each method's numbers under its method
    assert ier["val.grounded.syn.iou30"] == pytest.approx(0.61) and ier["val.stage1.nmi"] == 0.85
    assert avol["val.grounded.syn.iou30"] == pytest.approx(0.31)
    assert not any(key.startswith("val.baselines") for key in ier)
    assert avol["grounded.syn.reliance"] == pytest.approx(0.075) and avol["single.iou50"] == 0.3
    assert avol["detector_boxes.syn.ciou30"] == 0.01
    assert not any(key.startswith(("stage1", "detector.")) for key in avol)
    # The old layout (no grounded, no detector_boxes) and a further baseline: no method list is hard-coded.
    old = {"source": "toy", "syn": {"ciou30": 0.8}, "baselines": {"avol": {"syn": {"ciou30": 0.3}},
                                                                  "oracle": {"syn": {"ciou30": 1.0}}}}
    assert method_metrics(old) == {"ier": {"syn.ciou30": 0.8}, "avol": {"syn.ciou30": 0.3},
                                   "oracle": {"syn.ciou30": 1.0}}


# --------------------------------------------------------------------------- runs, the document and the pages


def seed_run(name: str, seed: int, base: float, state: str = "success") -> Run:
    music = new_metrics(base)
    music["duet"] = {"ciou30": base, "auc": base, "nsa": base}
    return Run(name, f"{name:0<40}"[:40], state, {"seed": seed, "data_seed": 0},
               {"music": music, "vggsound": new_metrics(base + 0.1)})


def three_seeds() -> tuple[dict[int, Run], Run]:
    head = seed_run("main", 0, 0.5)
    runs = {0: head, 1: seed_run("seed-1", 1, 0.6), 2: seed_run("seed-2", 2, 0.7)}
    runs[2].metrics["music"]["syn"]["ciou30"] = None  # one seed without the number
    return runs, head


def test_seeds_document_holds_every_metric_of_every_method():
    runs, head = three_seeds()
    document = seeds_document(runs, head, "Test CPU, 2 threads")
    assert (document["seeds"], document["commit"], document["machine"]) == ([0, 1, 2], head.rev, "Test CPU, 2 threads")
    assert document["runs"] == {"0": "HEAD", "1": "seed-1", "2": "seed-2"}
    assert document["facts"]["music"] == {"source": "toy", "split": "test", "thresholds_split": "val",
                                          "boxes": "truth"}
    music = document["datasets"]["music"]
    reliance = music["grounded.un.reliance"]["ier"]  # (base + 0.05) / 4 for base 0.5, 0.6, 0.7
    assert reliance["n"] == 3 and reliance["mean"] == pytest.approx(0.1625)
    assert reliance["std"] == pytest.approx(0.025) and reliance["values"] == pytest.approx([0.1375, 0.1625, 0.1875])
    syn = music["syn.ciou30"]
    assert (syn["ier"]["n"], syn["ier"]["values"]) == (2, [pytest.approx(0.6), pytest.approx(0.7), None])
    assert syn["avol"]["mean"] == pytest.approx(0.4)  # base / 2 + 0.1
    assert set(music["stage1.nmi"]) == {"ier"} and music["stage1.nmi"]["ier"]["std"] == 0.0
    assert music["grounded.syn.silent_false_alarm"]["ier"]["n"] == 0  # null in every seed
    assert "duet.ciou30" in music and "duet.ciou30" not in document["datasets"]["vggsound"]
    json.dumps(document, allow_nan=False)  # plain JSON


def test_seeds_markdown_shows_methods_side_by_side_and_says_what_plus_minus_means():
    runs, head = three_seeds()
    markdown = seeds_markdown(seeds_document(runs, head, "Test CPU, 2 threads"))
    assert "3 seeds (0, 1, 2)" in markdown and "half-width of the 95 % interval" in markdown
    lines = markdown.splitlines()
    headline = lines[lines.index("## music: headline metrics") + 2]
    assert headline == "| metric | IEr | AVOL |"
    reliance = next(line for line in lines if line.startswith("| grounded: Unconstrained reliance |"))
    half = T_975_2 * 0.025 / math.sqrt(3)
    assert reliance == f"| grounded: Unconstrained reliance | 0.163 ± {half:.3f} | – |"
    ier_half, avol_half = T_975_1 * math.sqrt(0.005) / math.sqrt(2), T_975_2 * 0.05 / math.sqrt(3)
    assert (f"| DSOL protocol: Synthetic CIoU@0.3 | 0.650 ± {ier_half:.3f} (n 2) | 0.400 ± {avol_half:.3f} |"
            in lines)
    assert "| `grounded.syn.deranged.heard_map` |" in markdown and "| `detector_boxes.syn.ciou30` |" in markdown
    assert "## vggsound: every metric" in markdown and "Duet CIoU" not in markdown.split("## vggsound")[1]


def mosaic_samples(ier_only: int, avol_only: int, both: int = 5, neither: int = 5) -> pd.DataFrame:
    """samples.csv rows of the Unconstrained set: IEr, AVOL and the oracle on the same mosaics, with grounded IoUs
    at or below 0.3 as asked; and two Single-source clips that only AVOL gets at IoU 0.5."""
    outcomes = [(0.6, 0.1)] * ier_only + [(0.1, 0.6)] * avol_only + [(0.3, 0.9)] * both + [(0.0, 0.29)] * neither
    rows = []
    for index, (ier, avol) in enumerate(outcomes):
        for method, value in (("ier", ier), ("avol", avol), ("oracle", 1.0)):
            rows.append({"set": "un", "sample_id": f"un_{index:06d}", "method": method, "iou": 0.5, "nsa": 0.5,
                         "grounded_iou_true": value})
    for index in range(2):
        for method, value in (("ier", 0.2), ("avol", 0.7)):
            rows.append({"set": "single", "sample_id": f"clip_{index}", "method": method, "iou": value, "nsa": None,
                         "grounded_iou_true": value})
    return pd.DataFrame(rows)


def test_seeds_document_pairs_ier_with_each_baseline_mosaic_by_mosaic():
    runs, head = three_seeds()
    for each in runs.values():
        each.params["evaluate"] = {"grounded_success": 0.3, "iou_success": 0.5}
    tables = {(runs[0].rev, "music"): mosaic_samples(9, 1), (runs[1].rev, "music"): mosaic_samples(6, 2),
              (runs[2].rev, "music"): mosaic_samples(0, 0)}  # vggsound: no samples.csv
    document = seeds_document(runs, head, "Test CPU", lambda rev, dataset: tables.get((rev, dataset)))
    un = document["comparisons"]["music"]["un:grounded_iou_true"]
    assert un["title"] == "grounded IoU@0.3" and set(un["methods"]) == {"avol"}  # the oracle is no baseline
    avol = un["methods"]["avol"]
    assert avol["seeds"]["0"] == {"ier": 9, "other": 1, "mosaics": 20, "p": pytest.approx(binomtest(9, 10).pvalue,
                                                                                             abs=1e-6)}
    assert avol["seeds"]["2"] == {"ier": 0, "other": 0, "mosaics": 10, "p": 1.0}
    assert avol["pooled"] == {"ier": 15, "other": 3, "p": pytest.approx(binomtest(15, 18).pvalue, abs=1e-6)}
    single = document["comparisons"]["music"]["single:iou"]
    assert single["title"] == "DSOL protocol IoU@0.5" and single["methods"]["avol"]["pooled"]["other"] == 6
    assert "vggsound" not in document["comparisons"]
    markdown = seeds_markdown(document)
    assert "## music: IEr against each baseline, mosaic by mosaic" in markdown
    assert f"| Unconstrained grounded IoU@0.3 | IEr vs AVOL | 15 / 3 | {binomtest(15, 18).pvalue:.3f} |" in markdown
    assert "0: 9 / 1, p 0.021" in markdown
    json.dumps(document, allow_nan=False)
    assert "comparisons" not in seeds_document(runs, head, "Test CPU")  # no samples reader: no pairs


def test_readme_table_has_a_row_per_dataset_and_set():
    runs, head = three_seeds()
    block = readme_table(seeds_document(runs, head, "Test CPU, 2 threads"))
    caption, table = block[0], block[2:]
    for words in ("3 seeds (0, 1, 2)", "measured on the test split, thresholds chosen on the val split",
                  "commit `main000`", "Test CPU, 2 threads", "reports/seeds.json"):
        assert words in caption, words
    old = {0: Run("main", "b" * 40, "success", {"seed": 0}, {"music": {"source": "toy", "syn": {"ciou30": 0.8}}})}
    old_caption = readme_table(seeds_document(old, old[0], "Test CPU"))[0]
    assert "1 seed (0)" in old_caption and "metrics.json does not record the splits" in old_caption
    assert table[0] == ("| dataset | set | IEr grounded IoU@0.3 | AVOL grounded IoU@0.3 | IEr reliance | "
                        "AVOL reliance | IEr DSOL protocol | AVOL DSOL protocol |")
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in table[2:]}
    assert list(rows) == [("music", "Single-source"), ("music", "Synthetic"), ("music", "Unconstrained"),
                          ("music", "Duet"), ("vggsound", "Single-source"), ("vggsound", "Synthetic"),
                          ("vggsound", "Unconstrained")]
    single = [cell.strip() for cell in rows[("music", "Single-source")].strip("|").split("|")]
    assert single[6] == f"0.600 ± {T_975_2 * 0.1 / math.sqrt(3):.3f}"  # single-source: iou50
    assert single[2:6] == ["–"] * 4  # no grounded single-source set in these files


# --------------------------------------------------------------------------- the README's block


def test_replace_block_rewrites_only_between_the_markers_and_is_idempotent():
    text = f"# Title\n\nintro\n\n{RESULTS_START}\nold table\n| a |\n{RESULTS_END}\n\nrest\n"
    once = replace_block(text, ["new caption", "", "| b |"])
    assert once == f"# Title\n\nintro\n\n{RESULTS_START}\nnew caption\n\n| b |\n{RESULTS_END}\n\nrest\n"
    assert replace_block(once, ["new caption", "", "| b |"]) == once
    for broken in ("# no markers\n", f"{RESULTS_END}\n{RESULTS_START}\n",
                   f"{RESULTS_START}\n{RESULTS_START}\n{RESULTS_END}\n"):
        with pytest.raises(SeedsError, match="README.md: needs one `<!-- results:start -->` line"):
            replace_block(broken, ["x"])


def test_the_repo_readme_has_the_markers():
    text = (REPO / "README.md").read_text()
    assert replace_block(text, []).count(RESULTS_START) == 1


# --------------------------------------------------------------------------- reading `dvc exp show --json`


def show_entry(rev: str, name: str | None, seed: int, metrics: dict, error=None) -> dict:
    files = {f"reports/{dataset}/metrics.json": {"data": data} for dataset, data in metrics.items()}
    files["reports/music/stage1.json"] = {"data": {"nmi": 0.99}}  # another metric file: not a dataset's
    return {"rev": rev, "name": name, "error": error, "experiments": None,
            "data": {"rev": rev, "params": {"params.yaml": {"data": {"seed": seed, "data_seed": 0}}},
                     "metrics": files}}


def fake_exp_show(states: dict[str, tuple[int, str | None]]) -> list:
    """`dvc exp show --json` of HEAD (seed 0) with experiments name -> (params seed, executor state)."""
    def experiment(name, seed, state):
        error = {"msg": "Experiment run failed", "type": ""} if state == "failed" else None
        entry = show_entry(f"{name:x<40}", name, seed, {"music": new_metrics(0.1 * (seed + 5))}, error)
        return {"name": name, "revs": [entry],
                "executor": None if state is None else {"state": state, "local": {"log": f"/logs/{name}.out"}}}

    head = show_entry("a" * 40, "main", 0, {"music": new_metrics(0.5)})
    head["experiments"] = [experiment(name, seed, state) for name, (seed, state) in states.items()]
    return [show_entry("workspace", None, 0, {"music": new_metrics(0.9)}), head]


def test_seed_runs_reads_head_and_the_seed_experiments():
    baseline, experiments = parse_exp_show(fake_exp_show({"seed-1": (1, None), "seed-2": (2, "success"),
                                                          "no-aii": (0, None)}))
    runs = seed_runs([0, 1, 2], baseline, experiments)
    assert [run.name for run in runs.values()] == ["main", "seed-1", "seed-2"]
    assert runs[2].metrics["music"]["syn"]["ciou30"] == pytest.approx(0.8)
    assert list(seed_runs([0], baseline, experiments)) == [0]  # one seed: HEAD alone, nothing else needed


@pytest.mark.parametrize("states, seeds, message", [
    ({"seed-1": (1, None)}, [0, 1, 2], "experiment seed-2: not in `dvc exp show` of commit aaaaaaa"),
    ({"seed-1": (1, "failed")}, [0, 1], "experiment seed-1: failed, its log: `dvc queue logs seed-1`"),
    ({"seed-1": (1, "queued")}, [0, 1], "experiment seed-1: queued"),
    ({"seed-1": (3, None)}, [0, 1], "experiment seed-1: its params.yaml has seed 3, not 1"),
])
def test_seed_runs_names_the_experiment_that_is_missing_or_wrong(states, seeds, message):
    baseline, experiments = parse_exp_show(fake_exp_show(states))
    with pytest.raises(SeedsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        seed_runs(seeds, baseline, experiments)


def test_table_only_writes_the_files_from_dvc_experiments(tmp_path, monkeypatch):
    show = fake_exp_show({"seed-1": (1, None), "seed-2": (2, None)})
    monkeypatch.setattr("pipeline.seeds.exp_show", lambda repo: parse_exp_show(show))
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    readme = f"# README\n\nintro\n{RESULTS_START}\n{RESULTS_END}\n\n## Using it\n"
    (tmp_path / "README.md").write_text(readme)
    run_seeds(tmp_path, 3, run=False, machine="Test CPU, 2 threads")
    document = json.loads((tmp_path / "reports" / "seeds.json").read_text())
    assert document["datasets"]["music"]["un.ciou30"]["ier"]["values"] == pytest.approx([0.7, 0.8, 0.9])
    assert "## music: headline metrics" in (tmp_path / "reports" / "seeds.md").read_text()
    written = (tmp_path / "README.md").read_text()
    assert written.startswith(f"# README\n\nintro\n{RESULTS_START}\nMean ± ")
    assert "| music | Unconstrained |" in written
    assert written.endswith(f"{RESULTS_END}\n\n## Using it\n")
    run_seeds(tmp_path, 3, run=False, machine="Test CPU, 2 threads")
    assert (tmp_path / "README.md").read_text() == written  # idempotent
    (tmp_path / "README.md").write_text("# README without markers\n")
    with pytest.raises(SeedsError, match="README.md: needs one"):
        run_seeds(tmp_path, 3, run=False, machine="Test CPU")
    with pytest.raises(SeedsError, match="--seeds 0: need at least 1"):
        run_seeds(tmp_path, 0, run=False)


# --------------------------------------------------------------------------- checks before running


def test_only_the_training_stages_may_depend_on_seed(tmp_path):
    stages = {"synth": {"foreach": "${datasets}", "do": {"cmd": "x", "params": ["data_seed", "synth"]}},
              "pretrain": {"cmd": "x", "params": ["data_seed", {"other.yaml": ["seed"]}]},
              **{name: {"cmd": "x", "params": ["seed"]} for name in SEEDED_STAGES}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    check_data_stages_unseeded(tmp_path)
    stages["synth"]["do"]["params"].append("seed")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(SeedsError, match="dvc.yaml: stage synth depends on params `seed`"):
        check_data_stages_unseeded(tmp_path)


def test_the_repo_pipeline_reruns_no_data_stage_for_a_seed():
    check_data_stages_unseeded(REPO)


def test_check_committed_lets_the_seed_outputs_differ(tmp_path):
    env = dvc_environment()
    for name in ("params.yaml", "README.md", "dvc.lock", "reports/seeds.md", "reports/seeds.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    run(["git", "init", "-q"], tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "x"], tmp_path, env)
    for name in ("README.md", "dvc.lock", "reports/seeds.md", "reports/seeds.json"):
        (tmp_path / name).write_text("rewritten\n")
    check_committed(tmp_path, SEEDS_OUTPUTS)
    (tmp_path / "params.yaml").write_text("a: 2\n")
    with pytest.raises(AblationError, match="uncommitted changes in params.yaml"):
        check_committed(tmp_path, SEEDS_OUTPUTS)


def test_seeds_command_fails_in_one_line(tmp_path):
    done = run_with_uncommitted_params(tmp_path, "seed: 0\n", [sys.executable, "-m", "pipeline.seeds", "--seeds", "2"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "seeds: error: uncommitted changes in params.yaml: commit them first, so that the experiments and the "
        "full IEr row (HEAD) share one baseline"]


# --------------------------------------------------------------------------- the command under real DVC


@pytest.mark.slow
def test_seeds_command_on_the_tiny_pipeline(tiny_repo):
    env = dvc_environment()
    params_before = (tiny_repo / "params.yaml").read_bytes()
    run([sys.executable, "-m", "pipeline.seeds", "--seeds", "2"], tiny_repo, env, timeout=1200)

    document = json.loads((tiny_repo / "reports" / "seeds.json").read_text())
    assert document["seeds"] == [0, 1] and document["runs"] == {"0": "HEAD", "1": "seed-1"}
    for dataset in ("music", "vggsound"):
        ciou = document["datasets"][dataset]["syn.ciou30"]["ier"]
        assert ciou["n"] == 2 and len(ciou["values"]) == 2
        assert "avol" in document["datasets"][dataset]["syn.ciou30"]
    show = json.loads(run(DVC + ["exp", "show", "--json"], tiny_repo, env))
    head = next(entry for entry in show if entry["rev"] != "workspace")
    [experiment] = [e["revs"][0] for e in head["experiments"] or [] if e["name"] == "seed-1"]
    assert experiment["data"]["params"]["params.yaml"]["data"]["seed"] == 1

    def lock(rev: str) -> dict:
        return yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], tiny_repo, env))["stages"]

    head_lock, experiment_lock = lock(head["rev"]), lock(experiment["rev"])
    data_stages = [name for name in head_lock if name.split("@")[0] not in SEEDED_STAGES]
    assert data_stages and all(experiment_lock[name] == head_lock[name] for name in data_stages), \
        [name for name in data_stages if experiment_lock[name] != head_lock[name]]  # no data stage reran
    assert experiment_lock["stage1@music"] != head_lock["stage1@music"]  # ... and training did
    readme = (tiny_repo / "README.md").read_text()
    assert "over 2 seeds (0, 1)" in readme and "| music | Synthetic |" in readme
    assert (tiny_repo / "params.yaml").read_bytes() == params_before  # nothing applied to the workspace
    assert "up to date" in run(DVC + ["status"], tiny_repo, env)  # the report page rebuilt through DVC
