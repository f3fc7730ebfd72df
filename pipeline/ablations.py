"""The ablations of IEr's Tables 3, 4, 7 and 9, and other named variants, as DVC experiments, and
`reports/ablations.md` from their metrics.

python -m pipeline.ablations [--only no-cmr,un-3-3-2] [--table-only]   (`make ablations` runs it;
`make variant NAME=from-scratch` runs `--only from-scratch`)

The variants are data: `presets/NAME.yaml`, one file per DVC experiment NAME, read in file-name order. A file
holds what differs from params.yaml and nothing else, each line with a comment giving its reason:

    label: w/o AII          # the row's name in the tables
    table: components       # components (Tables 3, 4, 7) | levels (Table 9) | variants (named settings outside
                            # the paper: their own table; run only when named with --only)
    overrides:              # params.yaml's dotted leaf key -> its value, in YAML types
      aii.enabled: false    # why

Loading checks every file against params.yaml and stops at the first problem with one line naming the file and
key: a top-level key other than these three, a missing label or overrides, an unknown table, an override key that
is not a single value of params.yaml, or a value that params.yaml's validation (pipeline/config.py) rejects once
DVC has written it there. Each override becomes one `-S KEY=VALUE` of `dvc exp run`, VALUE in the Hydra override
grammar DVC parses (`render`); the check applies those arguments with DVC's own code to a copy of params.yaml and
reads them back, so a value that would not reach the stage as written fails here instead. A Table 9 level needs
as many distinct classes as its Unconstrained mosaic holds objects (sounding + silent + off-screen): it runs for the
toy roles that have them (its experiment reproduces only their `evaluate@<ds>` and what that needs), and its cells
of the other roles say why they are empty.

1. Queue one DVC experiment per selected preset (default: the components and levels, the paper's ablations) on
   the committed workspace (HEAD): `dvc exp run --queue -n NAME -S KEY=VALUE ...`; an older experiment of the
   same name is removed first, so a rerun replaces it.
2. Run the queue, one experiment at a time (`dvc exp run --run-all`).
3. Read every experiment of HEAD from `dvc exp show --json` and write `reports/ablations.md`: Tables 3/4/7
   (IEr, w/o AII, w/o CMR, w/o each filter) per dataset role under DSOL's protocol and under the audio-grounded
   one, Table 9 (the Unconstrained set's interference levels, IEr, DSOL and AVOL) and the named variants per
   dataset role. The full IEr row is HEAD's committed metrics. Then each component and variant paired with IEr
   mosaic by mosaic (their `samples.csv` in git): which differences exceed the test sets' noise.
4. Rebuild `reports/index.html` through DVC (`dvc repro --single-item --force report`), so that the page
   shows the new tables and dvc.lock records the page it holds. Then, if an experiment failed, exit with
   one line naming it.

Nothing is applied to the workspace: params.yaml ends as it started.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.stats import binomtest

from pipeline.config import ConfigError, load_params
from pipeline.report import CLASS_AWARE_METRICS, GROUNDED_METRICS, GROUNDED_SETS, SET_TITLES, STAGE1_METRICS
from pipeline.shards import atomic_path

COMPONENTS = "components"  # Tables 3, 4 and 7: IEr with one part taken out
LEVELS = "levels"  # Table 9: the Unconstrained test set at more sources of interference
VARIANTS = "variants"  # other named settings (e.g. from-scratch): their own table, run only when named
TABLES = (COMPONENTS, LEVELS, VARIANTS)
PAPER_TABLES = (COMPONENTS, LEVELS)  # what runs without --only
PAIRED_TABLES = (COMPONENTS, VARIANTS)  # rows on the same test mosaics as full IEr: paired mosaic by mosaic
MISSING = "–"
PRESETS = Path(__file__).resolve().parents[1] / "presets"  # the presets of this code's repo
PARAMS = PRESETS.parent / "params.yaml"
PRESET_KEYS = ("label", "table", "overrides")
LEVEL_KEYS = ("sounding", "silent", "offscreen")  # synth.un: a level's objects per Unconstrained mosaic
REPORT = Path("reports") / "ablations.md"
# What a git-clean workspace may differ in: this command's own outputs (the table, and the report stage's
# lock entry after step 4), so that a rerun needs no commit in between.
OWN_OUTPUTS = {"dvc.lock", REPORT.as_posix()}


class AblationError(RuntimeError):
    """The ablations cannot go on; the message is one line naming the experiment, file or key."""


@dataclass(frozen=True)
class Ablation:
    name: str  # DVC experiment name
    label: str  # the row's name in the table
    overrides: tuple[str, ...]  # `dvc exp run -S` arguments
    table: str  # COMPONENTS, LEVELS or VARIANTS (pipeline.seeds: its own)
    classes_needed: int = 0  # LEVELS: distinct classes one Unconstrained mosaic takes


# --------------------------------------------------------------------------- the presets


def render(value: Any) -> str:
    """A YAML value as the VALUE of `dvc exp run -S KEY=VALUE`, which DVC parses with Hydra's override grammar
    (dvc/utils/hydra.py: apply_overrides -> to_hydra_overrides -> hydra's OverridesParser), not as YAML.

    Strings are always single-quoted, so that none reads as another type (`'true'`, `'10'`, `'null'`) or as a
    sweep (`'a,b'`), and the empty string is `''` (Hydra's quote escapes: `\\'` for a quote, backslashes doubled
    only before a quote or the closing one). Booleans are true / false, numbers Python's repr (a float keeps its
    dot or exponent, so it stays a float), lists [a,b].
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
    if isinstance(value, list):
        return "[" + ",".join(render(item) for item in value) + "]"
    raise TypeError(f"no -S form for a {type(value).__name__}")


def shown(path: Path) -> str:
    """`path` relative to the working directory where it lies under it: what error lines name."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def through_dvc(params_path: Path, overrides: dict[str, Any], where: str) -> tuple[tuple[str, ...], dict]:
    """The `-S` arguments of `overrides` (dotted leaf key -> YAML value), and params.yaml as a stage reads it after
    `dvc exp run` of them: DVC's own code (dvc/utils/hydra.py: apply_overrides) applies them to a copy, which must
    read back the preset's values and pass params.yaml's validation. AblationError in one line naming `where`."""
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    arguments = tuple(f"{key}={render(value)}" for key, value in overrides.items())
    for argument in arguments:
        try:
            parsed = to_hydra_overrides([argument])
        except Exception as err:  # hydra's OverrideParseException, whose message spans lines
            raise AblationError(f"{where}: `-S {argument}` is not valid for DVC "
                                f"({str(err).strip().splitlines()[0]})") from None
        if parsed[0].is_sweep_override():
            raise AblationError(f"{where}: `-S {argument}` is a sweep for DVC, not one value")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "params.yaml"
        copy.write_bytes(params_path.read_bytes())
        try:
            apply_overrides(copy, list(arguments))
        except Exception as err:  # DVC's InvalidArgumentError (its cause says why), omegaconf's errors
            cause = err.__cause__ or err
            raise AblationError(f"{where}: DVC cannot apply {' '.join(arguments)} "
                                f"({str(cause).strip().splitlines()[0]})") from None
        applied = yaml.safe_load(copy.read_text())
        for key, value in overrides.items():  # e.g. 1e-06: DVC writes `1e-06`, which PyYAML reads as a string
            read = value_at(applied, *key.split("."))
            if (type(read), read) != (type(value), value):
                raise AblationError(f"{where}: overrides.{key}: DVC writes {value!r} so that params.yaml reads "
                                    f"back {read!r}: not passable as `dvc exp run -S`")
        try:
            load_params(copy)
        except ConfigError as err:  # "<copy>: key: why" -> "overrides.key: why" for an overridden key
            why = str(err).removeprefix(f"{copy}: ")
            named = any(why.startswith(f"{key}:") or why.startswith(f"{key}[") for key in overrides)
            raise AblationError(f"{where}: {'overrides.' if named else ''}{why} "
                                f"({shown(params_path)} with the overrides applied)") from None
    return arguments, applied


def load_preset(path: Path, params_path: Path, params: dict) -> Ablation:
    """One `presets/NAME.yaml` checked against params.yaml (`params`: the same file read); AblationError in one line."""
    where = shown(path)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", path.stem):
        raise AblationError(f"{where}: the file name is the experiment name: letters, digits, - and _ only")
    try:
        preset = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise AblationError(f"{where}: cannot read ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(preset, dict):
        raise AblationError(f"{where}: must be a mapping of {', '.join(PRESET_KEYS)}")
    unknown = [str(key) for key in preset if key not in PRESET_KEYS]
    if unknown:
        raise AblationError(f"{where}: {unknown[0]}: unknown key (have {', '.join(PRESET_KEYS)})")
    missing = [key for key in PRESET_KEYS if preset.get(key) in (None, "", {})]
    if missing:
        raise AblationError(f"{where}: {missing[0]}: missing")
    label, table, overrides = (preset[key] for key in PRESET_KEYS)
    if not isinstance(label, str):
        raise AblationError(f"{where}: label: must be a string, got {label!r}")
    if table not in TABLES:
        raise AblationError(f"{where}: table: must be one of {' | '.join(TABLES)}, got {table!r}")
    if not isinstance(overrides, dict):
        raise AblationError(f"{where}: overrides: must be a mapping of params.yaml keys to values")
    for key, value in overrides.items():
        parent = value_at(params, *str(key).split(".")[:-1])
        if not isinstance(parent, dict) or str(key).split(".")[-1] not in parent:
            raise AblationError(f"{where}: overrides.{key}: not a key of {shown(params_path)}")
        if isinstance(parent[str(key).split(".")[-1]], dict):
            raise AblationError(f"{where}: overrides.{key}: a section of {shown(params_path)}, not one value: "
                                "name its keys")
        if isinstance(value, dict):
            raise AblationError(f"{where}: overrides.{key}: must be one value, got a mapping")
    arguments, applied = through_dvc(params_path, {str(key): value for key, value in overrides.items()}, where)
    classes = sum(value_at(applied, "synth", "un", key) for key in LEVEL_KEYS) if table == LEVELS else 0
    return Ablation(path.stem, label, tuple(arguments), table, classes)


def load_presets(folder: Path = PRESETS, params_path: Path = PARAMS) -> tuple[Ablation, ...]:
    """Every `folder/*.yaml`, by file name, checked against `params_path`; AblationError in one line."""
    try:
        load_params(params_path)
    except ConfigError as err:
        raise AblationError(str(err)) from None
    params = yaml.safe_load(Path(params_path).read_text())
    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        raise AblationError(f"{shown(folder)}: no presets (*.yaml)")
    return tuple(load_preset(path, Path(params_path), params) for path in files)


@functools.cache
def registry() -> tuple[Ablation, ...]:
    """This repo's presets against its params.yaml, loaded once (on first use, not on import)."""
    return load_presets()


def __getattr__(name: str):
    """`ABLATIONS`: the registry, read from presets/ when first asked for (pipeline.seeds never asks)."""
    if name == "ABLATIONS":
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


GROUNDED = "grounded"  # metrics.json's group of the audio-grounded protocol
GROUNDED_IOU = "grounded_iou_true"  # samples.csv's grounded IoU of a mosaic with its true audio
# Columns of Tables 3/4/7 per dataset role: (metrics.json keys, header). A column no row has is left out.
COMPONENT_COLUMNS = tuple(
    [((group, key), f"{SET_TITLES[group]} {title}") for group in ("syn", "un", "duet")
     for key, title in (*CLASS_AWARE_METRICS, ("nsa", "NSA"))]
    + [(("stage1", key), f"Stage 1 {title}") for key, title in STAGE1_METRICS])
# The same rows under the audio-grounded protocol (no true class given: what the model hears and where)
GROUNDED_COLUMNS = tuple(((GROUNDED, group, key), f"{SET_TITLES[group]} {title}") for group in GROUNDED_SETS
                         for key, title in GROUNDED_METRICS)
# methods of Table 9, each with CLASS_AWARE_METRICS on `un`
LEVEL_COLUMNS = (("ier", "IEr"), ("dsol", "DSOL"), ("avol", "AVOL"))
PAIRED_SETS = ("syn", "un", "duet")  # the class-aware sets whose samples.csv rows are paired
BOOTSTRAP_DRAWS = 2000  # resamples of the mosaics for the NSA difference's 95 % interval


@dataclass(frozen=True)
class Run:
    """One row of `dvc exp show --json`: HEAD's or one experiment's params and metrics."""

    name: str  # experiment name, or the branch (or short commit) for HEAD
    rev: str  # git commit
    state: str  # success | failed | queued | running
    params: dict  # params.yaml
    metrics: dict  # dataset role -> its reports/<ds>/metrics.json
    log: str | None = None  # the queue's log file of an experiment


# --------------------------------------------------------------------------- reading `dvc exp show --json`


def parse_run(entry: dict, state: str, log: str | None = None) -> Run:
    data = entry.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = {}
    for path, content in (data.get("metrics") or {}).items():
        parts = Path(path).parts  # reports/<ds>/metrics.json; the other metric files repeat groups of it
        if len(parts) == 3 and parts[0] == "reports" and parts[2] == "metrics.json" and "data" in content:
            metrics[parts[1]] = content["data"]
    return Run(entry.get("name") or entry["rev"][:7], entry["rev"], state, params, metrics, log)


def parse_exp_show(show: list) -> tuple[Run, dict[str, Run]]:
    """HEAD's row and HEAD's experiments by name, from `dvc exp show --json` (run without `-A` / `-n`)."""
    baselines = [entry for entry in show if entry.get("rev") != "workspace"]
    if not baselines:
        raise AblationError("`dvc exp show --json` lists no commit: commit the pipeline and its outputs first")
    head = baselines[0]
    experiments = {}
    for experiment in head.get("experiments") or []:
        executor = experiment.get("executor") or {}  # none once the queue forgot the task: a finished experiment
        first = experiment["revs"][0]
        state = "failed" if first.get("error") else executor.get("state") or "success"
        run = parse_run(first, state, (executor.get("local") or {}).get("log"))
        experiments[experiment.get("name") or run.name] = run  # unnamed: its short commit
    return parse_run(head, "success"), experiments


# --------------------------------------------------------------------------- the tables


def cell(value) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


def value_at(metrics: dict, *keys: str):
    for key in keys:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def experiment_cell(ablation: Ablation, run: Run | None, skipped: dict[str, dict[str, str]]) -> str:
    """The experiment's name, and why its row, or a dataset role's part of it, is empty."""
    short = skipped.get(ablation.name) or {}
    why = "not run" if run is None else None if run.state == "success" else run.state
    if short:
        why = "; ".join([*([why] if why and why != "not run" else []), *(f"{dataset}: {reason}"
                                                                         for dataset, reason in short.items())])
    return f"`{ablation.name}`" + (f" ({why})" if why else "")


def component_table(dataset: str, baseline: Run, experiments: dict[str, Run], table: str = COMPONENTS,
                    ablations: tuple[Ablation, ...] | None = None,
                    columns: tuple[tuple[tuple[str, ...], str], ...] = COMPONENT_COLUMNS) -> list[str]:
    """Tables 3, 4 and 7 for one dataset role (or, `table` VARIANTS, the named variants): IEr, then each of the
    table's presets, by metric column (`columns`: DSOL's protocol, or GROUNDED_COLUMNS)."""
    rows = [("IEr (full)", "HEAD", baseline)] + [
        (ablation.label, experiment_cell(ablation, experiments.get(ablation.name), {}), experiments.get(ablation.name))
        for ablation in (registry() if ablations is None else ablations) if ablation.table == table]
    metrics = [run.metrics.get(dataset, {}) if run and run.state == "success" else {} for _, _, run in rows]
    shown = [column for column in columns if any(value_at(m, *column[0]) is not None for m in metrics)]
    body = [[label, experiment] + [cell(value_at(m, *keys)) for keys, _ in shown]
            for (label, experiment, _), m in zip(rows, metrics)]
    return markdown_table(["variant", "experiment"] + [header for _, header in shown], body)


def level_label(params: dict) -> str:
    un = value_at(params, "synth", "un") or {}
    return f"({un.get('sounding', '?')}, {un.get('silent', '?')}, {un.get('offscreen', '?')})"


def level_table(datasets: list[str], baseline: Run, experiments: dict[str, Run], skipped: dict[str, dict[str, str]],
                ablations: tuple[Ablation, ...] | None = None) -> list[str]:
    """Table 9: CIoU@0.3 and AUC on the Unconstrained set of IEr, DSOL and AVOL, one row per interference level;
    a dataset role the level did not run for (`skipped`: name -> role -> why) has empty cells."""
    rows = [(level_label(baseline.params), "HEAD", baseline, set())] + [
        (ablation.label, experiment_cell(ablation, experiments.get(ablation.name), skipped),
         experiments.get(ablation.name), set(skipped.get(ablation.name) or {}))
        for ablation in (registry() if ablations is None else ablations) if ablation.table == LEVELS]
    head = ["(sounding, silent, off-screen)", "experiment"] + [
        f"{dataset} {method_title} {title}" for dataset in datasets for _, method_title in LEVEL_COLUMNS
        for _, title in CLASS_AWARE_METRICS]
    body = []
    for label, experiment, run, short in rows:
        metrics = run.metrics if run and run.state == "success" else {}
        body.append([label, experiment] + [
            MISSING if dataset in short else
            cell(value_at(metrics, dataset, "un", key) if method == "ier"
                 else value_at(metrics, dataset, "baselines", method, "un", key))
            for dataset in datasets for method, _ in LEVEL_COLUMNS for key, _ in CLASS_AWARE_METRICS])
    return markdown_table(head, body)


def paired(full: pd.DataFrame, variant: pd.DataFrame, success: float, seed: int = 0,
           grounded_success: float | None = None) -> dict:
    """Full IEr and a variant on the same mosaics: samples.csv rows (sample_id, iou, nsa, and where evaluate wrote
    it grounded_iou_true) of one set and method.

    better / worse: mosaics whose CIoU reaches `success` with the variant only / with IEr only; p: the two-sided
    sign test of those counts (1.0 when there are none); nsa: the mean NSA difference (variant - IEr) over the
    mosaics where both have one, with its 95 % bootstrap interval (nsa_low, nsa_high; resampled mosaics).
    grounded_better / grounded_worse / grounded_p: the same for the grounded IoU against `grounded_success`
    (None when either run has no grounded IoUs or no level is given).
    Raises ValueError when the two do not hold the same mosaics.
    """
    full, variant = full.set_index("sample_id"), variant.set_index("sample_id")
    if set(full.index) != set(variant.index):
        raise ValueError(f"the two runs scored different mosaics ({len(full)} and {len(variant)})")
    variant = variant.loc[full.index]
    better, worse = reached_by_one(variant["iou"], full["iou"], success)
    differences = (pd.to_numeric(variant["nsa"], errors="coerce") - pd.to_numeric(full["nsa"], errors="coerce"))
    differences = differences.dropna().to_numpy()
    p_value = sign_test(better, worse)
    result = {"better": better, "worse": worse, "p": p_value, "nsa": None, "nsa_low": None, "nsa_high": None,
              "grounded_better": None, "grounded_worse": None, "grounded_p": None}
    if grounded_success is not None and GROUNDED_IOU in full and GROUNDED_IOU in variant:
        better, worse = reached_by_one(variant[GROUNDED_IOU], full[GROUNDED_IOU], grounded_success)
        result.update(grounded_better=better, grounded_worse=worse, grounded_p=sign_test(better, worse))
    if len(differences):
        draws = np.random.default_rng(seed).integers(0, len(differences), (BOOTSTRAP_DRAWS, len(differences)))
        low, high = np.percentile(differences[draws].mean(axis=1), [2.5, 97.5])
        result.update(nsa=float(differences.mean()), nsa_low=float(low), nsa_high=float(high))
    return result


def reached_by_one(first: pd.Series, second: pd.Series, level: float) -> tuple[int, int]:
    """Two runs' scores of the same samples, aligned: how many reach `level` with the first only, and with the
    second only (a missing or non-numeric score reaches nothing)."""
    first_hit = pd.to_numeric(first, errors="coerce").to_numpy() >= level
    second_hit = pd.to_numeric(second, errors="coerce").to_numpy() >= level
    return int((first_hit & ~second_hit).sum()), int((second_hit & ~first_hit).sum())


def sign_test(first: int, second: int) -> float:
    """Two-sided sign test of two counts of discordant pairs (1.0 when there are none)."""
    return binomtest(first, first + second).pvalue if first + second else 1.0


SamplesReader = Callable[[str, str], "pd.DataFrame | None"]  # (git commit, dataset role) -> samples.csv or None


def paired_table(datasets: list[str], baseline: Run, experiments: dict[str, Run], samples: SamplesReader,
                 ablations: tuple[Ablation, ...] | None = None) -> list[str]:
    """Each Tables 3/4/7 variant and named variant paired with full IEr on every class-aware set (rows where both
    samples exist). Table 9's levels score other test mosaics: not paired."""
    success = value_at(baseline.params, "evaluate", "ciou_success") or 0.3
    grounded_success = value_at(baseline.params, "evaluate", "grounded_success") or 0.3
    body = []
    for ablation in registry() if ablations is None else ablations:
        run = experiments.get(ablation.name)
        if ablation.table not in PAIRED_TABLES or run is None or run.state != "success":
            continue
        for dataset in datasets:
            full, variant = samples(baseline.rev, dataset), samples(run.rev, dataset)
            if full is None or variant is None:
                continue
            for name in PAIRED_SETS:
                full_rows = full[(full["set"] == name) & (full["method"] == "ier")]
                variant_rows = variant[(variant["set"] == name) & (variant["method"] == "ier")]
                if full_rows.empty or variant_rows.empty:
                    continue
                try:
                    result = paired(full_rows, variant_rows, success, grounded_success=grounded_success)
                except ValueError as err:  # e.g. a variant that changed the test set: nothing to pair
                    body.append([ablation.label, dataset, SET_TITLES[name], *[MISSING] * 6, f"not paired: {err}"])
                    continue
                nsa = (MISSING if result["nsa"] is None else
                       f"{100 * result['nsa']:+.1f} [{100 * result['nsa_low']:+.1f}, {100 * result['nsa_high']:+.1f}]")
                grounded = ([MISSING] * 3 if result["grounded_p"] is None else
                            [str(result["grounded_better"]), str(result["grounded_worse"]),
                             f"{result['grounded_p']:.3f}"])
                body.append([ablation.label, dataset, SET_TITLES[name], str(result["better"]), str(result["worse"]),
                             f"{result['p']:.3f}", *grounded, nsa])
    return markdown_table(["variant", "dataset", "set", f"CIoU@{success:g} only with the variant",
                           f"CIoU@{success:g} only with IEr", "sign test p",
                           f"grounded IoU@{grounded_success:g} only with the variant",
                           f"grounded IoU@{grounded_success:g} only with IEr", "grounded sign test p",
                           "NSA difference [95 % interval]"], body)


PAPER = {COMPONENTS: "Tables 3, 4, 7", LEVELS: "Table 9", VARIANTS: "named variant"}  # the overrides' last column


def ablations_markdown(baseline: Run, experiments: dict[str, Run], skipped: dict[str, dict[str, str]] | None = None,
                       samples: SamplesReader | None = None, ablations: tuple[Ablation, ...] | None = None) -> str:
    """reports/ablations.md: how each row was made, then Tables 3/4/7 per dataset role, Table 9, the named
    variants per dataset role (when there are any), and (with `samples`) each variant paired with full IEr
    mosaic by mosaic.

    `experiments`: runs by experiment name (an ablation without one, or whose run failed, prints as –);
    `skipped`: ablation name -> dataset role -> why it cannot run there; `samples`: reads a run's samples.csv;
    `ablations`: the rows (default: presets/).
    """
    ablations = registry() if ablations is None else tuple(ablations)
    skipped = skipped or {}
    datasets = list(baseline.metrics) or sorted({d for run in experiments.values() for d in run.metrics})
    lines = [
        "# Ablations",
        "",
        f"From `dvc exp show --json` on commit `{baseline.rev[:7]}` ({baseline.name}): the full IEr row is that "
        "commit's metrics, every other row a DVC experiment on it with the overrides below (`presets/NAME.yaml`, "
        f"each with its reasons). Percentages, one decimal; {MISSING}: not reported (or the experiment did not "
        "run). Rerun the paper's: `make ablations`; a named variant: `make variant NAME=...`; any of them: "
        "`python -m pipeline.ablations --only NAME[,NAME]`.",
        "",
    ]
    lines += markdown_table(["experiment", "overrides (`-S`)", "paper"], [
        [f"`{ablation.name}`", " ".join(f"`{override}`" for override in ablation.overrides), PAPER[ablation.table]]
        for ablation in ablations])
    for dataset in datasets:
        lines += ["", f"## Tables 3, 4 and 7: {dataset}", ""]
        lines += component_table(dataset, baseline, experiments, COMPONENTS, ablations)
    for dataset in datasets:
        lines += ["", f"## Tables 3, 4 and 7, audio-grounded: {dataset}", "",
                  "The same rows under the audio-grounded protocol (no true class given; thresholds chosen on val; "
                  "the README's table explains each column). Silent false alarm: lower is better.", ""]
        lines += component_table(dataset, baseline, experiments, COMPONENTS, ablations, GROUNDED_COLUMNS)
    lines += ["", "## Table 9: interference levels of the Unconstrained set", ""]
    lines += level_table(datasets, baseline, experiments, skipped, ablations)
    if any(ablation.table == VARIANTS for ablation in ablations):
        for dataset in datasets:
            lines += ["", f"## Named variants: {dataset}", ""]
            lines += component_table(dataset, baseline, experiments, VARIANTS, ablations)
            lines += ["", f"## Named variants, audio-grounded: {dataset}", ""]
            lines += component_table(dataset, baseline, experiments, VARIANTS, ablations, GROUNDED_COLUMNS)
    if samples is not None:
        lines += ["", "## Each variant against full IEr, mosaic by mosaic", "",
                  "The same test mosaics scored by full IEr and by the variant (`reports/<ds>/samples.csv` of both "
                  "commits): how many reach the CIoU level (DSOL's protocol) and the grounded IoU level with one of "
                  "them only, the two-sided sign test of each pair of counts, and the mean NSA difference (variant "
                  "- IEr, points) with its 95 % bootstrap interval. "
                  "A p above 0.05 and an interval across 0: the two rows differ by no more than the test set's "
                  "noise. `python -m pipeline.diagnose <ds>` shows what each term of the class maps does "
                  "(docs/decisions.md).", ""]
        lines += paired_table(datasets, baseline, experiments, samples, ablations)
    return "\n".join(lines) + "\n"


def git_samples(repo: Path) -> SamplesReader:
    """Reads reports/<ds>/samples.csv of a commit (an experiment's too) from git; None where it has none."""
    def read(rev: str, dataset: str) -> pd.DataFrame | None:
        shown = subprocess.run(["git", "show", f"{rev}:reports/{dataset}/samples.csv"], cwd=repo, text=True,
                               capture_output=True)
        return pd.read_csv(io.StringIO(shown.stdout)) if shown.returncode == 0 else None
    return read


# --------------------------------------------------------------------------- running DVC


def dvc(repo: Path, *args: str, capture: bool = True) -> str:
    """Run `dvc ARGS` in `repo`; a failure raises with DVC's (last) ERROR line."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, text=True,
                          capture_output=capture)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout or "").strip().splitlines() if capture else []
        reason = ([line for line in lines if line.startswith("ERROR")] or lines)[-1:]  # DVC's advice may follow
        raise AblationError(f"`dvc {' '.join(args)}` failed" + (f": {reason[0].strip()}" if reason else ""))
    return done.stdout or ""


def exp_show(repo: Path) -> tuple[Run, dict[str, Run]]:
    try:
        return parse_exp_show(json.loads(dvc(repo, "exp", "show", "--json")))
    except ValueError as err:
        raise AblationError(f"`dvc exp show --json` printed no JSON ({err})") from err


def select(only: str | None, ablations: tuple[Ablation, ...] | None = None) -> list[Ablation]:
    """The presets named in `only` (comma-separated), in that order; without names the paper's (PAPER_TABLES)."""
    ablations = registry() if ablations is None else ablations
    if not only:
        return [ablation for ablation in ablations if ablation.table in PAPER_TABLES]
    known = {ablation.name: ablation for ablation in ablations}
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise AblationError(f"--only: unknown ablation {', '.join(unknown) or '(none given)'} "
                            f"(have {', '.join(known)}: presets/NAME.yaml)")
    return [known[name] for name in names]


def check_overrides(ablations: list[Ablation], params: dict) -> None:
    """Every override names an existing key: DVC would add a misspelt one, and the stage fail much later."""
    for ablation in ablations:
        for override in ablation.overrides:
            key = override.split("=", 1)[0]
            parent = value_at(params, *key.split(".")[:-1])
            if not isinstance(parent, dict) or key.split(".")[-1] not in parent:
                raise AblationError(f"{ablation.name}: {key} is not a key of params.yaml")


def unrunnable(ablations: list[Ablation], params: dict) -> dict[str, dict[str, str]]:
    """Name -> dataset role -> why, for interference levels that need more distinct classes than a toy role has."""
    toy_classes = {dataset: len(value_at(settings, "toy", "classes") or [])
                   for dataset, settings in (params.get("datasets") or {}).items() if settings.get("source") == "toy"}
    why = {}
    for ablation in ablations:
        short = {dataset: f"not run: needs {ablation.classes_needed} distinct classes, "
                          f"datasets.{dataset}.toy.classes has {count}"
                 for dataset, count in toy_classes.items() if count < ablation.classes_needed}
        if short:
            why[ablation.name] = short
    return why


def queue_targets(ablations: list[Ablation], skipped: dict[str, dict[str, str]],
                  datasets: list[str]) -> dict[str, list[str]]:
    """Name -> the `dvc exp run` targets of each ablation: `evaluate@<ds>` of each role it can run for (DVC adds
    what those need) where some role is `skipped`, [] (the whole pipeline) where none is. An ablation that runs
    for no role is left out."""
    targets = {}
    for ablation in ablations:
        runnable = [dataset for dataset in datasets if dataset not in skipped.get(ablation.name, {})]
        if runnable:
            targets[ablation.name] = [] if len(runnable) == len(datasets) else [f"evaluate@{d}" for d in runnable]
    return targets


def check_committed(repo: Path, own_outputs: set[str] = OWN_OUTPUTS) -> None:
    """The experiments run on HEAD plus the workspace's changes, the full row is HEAD: they must agree.

    `own_outputs`: the files the calling command writes itself, which may differ from HEAD.
    """
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, text=True,
                            capture_output=True)
    if status.returncode != 0:
        raise AblationError(f"{repo}: not a git repository ({status.stderr.strip()})")
    changed = [line[3:] for line in status.stdout.splitlines() if line[3:] not in own_outputs]
    if changed:
        raise AblationError(f"uncommitted changes in {', '.join(changed[:5])}: commit them first, so that the "
                            "experiments and the full IEr row (HEAD) share one baseline")


def run_experiments(repo: Path, ablations: list[Ablation], targets: dict[str, list[str]] | None = None) -> list[str]:
    """Queue one experiment per ablation (replacing any of the same name; `targets`: name -> its `dvc exp run`
    targets, none = the whole pipeline) and run the queue; return what failed."""
    if shutil.which("dvc") is None:
        raise AblationError("`dvc` is not on PATH (the queue's workers run it): activate .venv or use make")
    _, experiments = exp_show(repo)
    busy = [name for name, run in experiments.items() if run.state in ("queued", "running")]
    if busy:
        raise AblationError(f"the DVC queue already holds {', '.join(busy)}: let it finish or clear it "
                            "(`dvc queue status`, `dvc queue remove`)")
    stale = [ablation.name for ablation in ablations if ablation.name in experiments]
    if stale:
        dvc(repo, "exp", "remove", *stale)
    for ablation in ablations:
        dvc(repo, "exp", "run", "--queue", "-n", ablation.name,
            *[argument for override in ablation.overrides for argument in ("-S", override)],
            *(targets or {}).get(ablation.name, []))
    # One worker: a job at a time. `--run-all` follows the logs and exits 0 even when one fails: checked below.
    dvc(repo, "exp", "run", "--run-all", "--jobs", "1", capture=False)
    _, experiments = exp_show(repo)
    failed = []
    for ablation in ablations:
        run = experiments.get(ablation.name)
        if run is None or run.state != "success":
            why = f"{run.state}{last_error(run.log)}" if run else "is missing"
            failed.append(f"{ablation.name} {why}, its log: `dvc queue logs {ablation.name}`")
    return failed


def last_error(log: str | None) -> str:
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if "ERROR" in line]
    except (OSError, TypeError):
        return ""
    return f" ({lines[-1]})" if lines else ""


def run_ablations(repo: Path, ablations: list[Ablation], run: bool = True,
                  every: tuple[Ablation, ...] | None = None) -> Path:
    """Run `ablations` as DVC experiments (unless `run` is false), then write the table of `every` preset
    (default: presets/) and rebuild the report."""
    every = registry() if every is None else every
    try:
        params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise AblationError(f"{repo / 'params.yaml'}: cannot read ({err})") from err
    check_overrides(ablations, params)
    skipped = unrunnable(every, params)
    failed = []
    if run:
        check_committed(repo)
        for name, short in skipped.items():
            if any(ablation.name == name for ablation in ablations):
                for dataset, why in short.items():
                    print(f"ablations: {name}: {dataset}: {why}", flush=True)
        targets = queue_targets(ablations, skipped, list(params.get("datasets") or {}))
        failed = run_experiments(repo, [ablation for ablation in ablations if ablation.name in targets], targets)
    baseline, experiments = exp_show(repo)
    if not baseline.metrics:
        raise AblationError(f"commit {baseline.rev[:7]} has no reports/<ds>/metrics.json: run and commit the "
                            "pipeline first (`make repro`)")
    with atomic_path(repo / REPORT) as tmp:
        tmp.write_text(ablations_markdown(baseline, experiments, skipped, git_samples(repo), every), encoding="utf-8")
    # Through DVC rather than calling build_report: the page is a DVC output, so dvc.lock then records the
    # page that is in the workspace (and the cache), and `dvc status` stays clean.
    dvc(repo, "repro", "--single-item", "--force", "report", capture=False)
    if failed:  # after the table: the rows that did run are not lost
        raise AblationError(f"experiment {'; '.join(failed)} (table written without it)")
    return repo / REPORT


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ablations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated preset names, presets/NAME.yaml (default: every "
                        f"{' and '.join(PAPER_TABLES)} preset, the paper's ablations; variants run only when named)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: rewrite the table from the experiments DVC already has, and the report")
    args = parser.parse_args()
    try:
        every = load_presets(PRESETS, Path.cwd() / "params.yaml")  # against the params the experiments change
        path = run_ablations(Path.cwd(), select(args.only, every), run=not args.table_only, every=every)
    except AblationError as err:
        print(f"ablations: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"ablations: wrote {path}", flush=True)


if __name__ == "__main__":
    main()
