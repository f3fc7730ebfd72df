"""The DVC contract: dvc.yaml's outputs are pipeline/paths.py's paths, and each stage's deps list exactly the
project modules its script runs (transitively), so that DVC reruns a stage when, and only when, its code changes."""
from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import yaml

from pipeline import paths
from pipeline.code import ROOT, imported_files

DVC_YAML = ROOT / "dvc.yaml"


def expanded_stages(dvc_yaml: dict, datasets: list[str]) -> list[tuple[str, str | None, dict]]:
    """(stage, dataset or None, its definition with ${key} replaced) for every stage and dataset."""
    stages = []
    for name, stage in dvc_yaml["stages"].items():
        if "foreach" in stage:
            for dataset in datasets:
                text = yaml.safe_dump(stage["do"]).replace("${key}", dataset)
                stages.append((name, dataset, yaml.safe_load(text)))
        else:
            stages.append((name, None, stage))
    return stages


def entry_paths(entries: list) -> list[str]:
    """The paths of a `deps` / `outs` / `metrics` / `plots` list (an entry is a path or {path: options})."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []]


def contract_problems(dvc_yaml: dict, datasets: list[str]) -> list[str]:
    """Every way dvc.yaml breaks the contract, one line each (none: it holds)."""
    problems = []
    for name, dataset, stage in expanded_stages(dvc_yaml, datasets):
        where = f"{name}@{dataset}" if dataset else name
        written = {PurePosixPath(path.as_posix()) for path in paths.stage_outputs(name, dataset)}
        for key in ("outs", "metrics"):
            for path in entry_paths(stage.get(key)):
                if PurePosixPath(path) not in written:
                    problems.append(f"{where}: {key} {path} is not one of pipeline/paths.py's outputs of the stage")
        for path in entry_paths(stage.get("plots")):
            if not any(PurePosixPath(path).is_relative_to(output) for output in written):
                problems.append(f"{where}: plots {path} lies outside the stage's outputs")
        # dvclive's folders are declared through the plots inside them
        declared = [PurePosixPath(path) for key in ("outs", "metrics", "plots") for path in entry_paths(stage.get(key))]
        for output in sorted(written, key=str):
            if not any(path.is_relative_to(output) for path in declared):
                problems.append(f"{where}: writes {output}, which dvc.yaml does not declare")
        deps = entry_paths(stage.get("deps"))
        code_deps = {dep for dep in deps if dep.startswith(("pipeline/", "stages/")) and not dep.endswith(".yaml")}
        runs = {path.relative_to(ROOT).as_posix() for path in imported_files(f"stages.{name}")}
        problems += [f"{where}: runs {module} but does not depend on it" for module in sorted(runs - code_deps)]
        problems += [f"{where}: depends on {dep}, which it does not run" for dep in sorted(code_deps - runs)]
    return problems


@pytest.fixture(scope="module")
def contract():
    dvc_yaml = yaml.safe_load(DVC_YAML.read_text())
    datasets = list(yaml.safe_load((ROOT / "params.yaml").read_text())["datasets"])
    return dvc_yaml, datasets


def test_dvc_yaml_keeps_the_contract(contract):
    assert contract_problems(*contract) == []


def test_a_removed_dep_breaks_the_contract(contract):
    dvc_yaml, datasets = contract
    broken = yaml.safe_load(yaml.safe_dump(dvc_yaml))
    broken["stages"]["stage1"]["do"]["deps"].remove("pipeline/train/losses.py")
    assert contract_problems(broken, datasets) == [
        f"stage1@{dataset}: runs pipeline/train/losses.py but does not depend on it" for dataset in datasets]


def test_an_unused_dep_and_a_stray_output_break_the_contract(contract):
    dvc_yaml, datasets = contract
    broken = yaml.safe_load(yaml.safe_dump(dvc_yaml))
    broken["stages"]["pretrain"]["deps"].append("pipeline/train/stage1.py")
    broken["stages"]["report"]["outs"].append("reports/other.html")
    assert contract_problems(broken, datasets) == [
        "pretrain: depends on pipeline/train/stage1.py, which it does not run",
        "report: outs reports/other.html is not one of pipeline/paths.py's outputs of the stage"]


def test_imports_inside_functions_count():
    # evaluate imports DSOL's box reader inside a function (only the youtube path needs it): still a dependency
    assert ROOT / "pipeline/sources/dsol_boxes.py" in imported_files("stages.evaluate")
    assert ROOT / "pipeline/train/stage1.py" not in imported_files("stages.pretrain")
