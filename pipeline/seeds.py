"""Seeds of the training and evaluation stages as DVC experiments, and statistics of every metric over them.

python -m pipeline.seeds [--seeds N] [--table-only]   (`make seeds` runs it)

1. Seeds 0..N-1. The params key `seed` drives only training and evaluation (stage1, stage2, dsol, oracle, evaluate,
   report); the data stages and the pretrained trunk follow `data_seed`, so `-S seed=K` reruns none of them.
   The seed equal to HEAD's committed `seed` is HEAD's committed metrics; every other seed K is a DVC
   experiment `seed-K` (`dvc exp run --queue -n seed-K -S seed=K`, an older one of that name removed first),
   and the queue runs one experiment at a time (`dvc exp run --run-all`), as `pipeline.ablations` does.
2. From `dvc exp show --json`, for every dataset role and every method (IEr, each baseline; the same scored
   against the detector's boxes under the prefix `detector_boxes.`): every numeric metric's n, mean,
   standard deviation and 95 % Student-t interval over the seeds -> `reports/seeds.json` and
   `reports/seeds.md`, and the README's results table (between its `results:start` / `results:end` lines).
   With them, IEr paired with each baseline on the same test mosaics (each run's samples.csv from git): the
   mosaics that reach the level with one of the two only, and the sign test, per seed and pooled.
3. Rebuild `reports/index.html` through DVC (`dvc repro --single-item --force report`).

`--table-only` runs nothing: it rewrites seeds.json, seeds.md and the README's table from the experiments
DVC already has. Nothing is applied to the workspace: params.yaml ends as it started.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from scipy.stats import t as student_t

from pipeline.ablations import (OWN_OUTPUTS, Ablation, AblationError, Run, SamplesReader, check_committed,
                                check_overrides, dvc, exp_show, git_samples, markdown_table, reached_by_one,
                                run_experiments, sign_test, value_at)
from pipeline.report import CEILINGS, SET_TITLES
from pipeline.shards import atomic_path, write_json

SEEDS_JSON = Path("reports") / "seeds.json"
SEEDS_MD = Path("reports") / "seeds.md"
README = Path("README.md")
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
# What a rerun may find changed since HEAD: this command's own outputs (ablations' too: a shared dvc.lock).
SEEDS_OUTPUTS = OWN_OUTPUTS | {SEEDS_JSON.as_posix(), SEEDS_MD.as_posix(), README.as_posix()}
# The stages `seed` may drive: a seed experiment reruns these and nothing else.
SEEDED_STAGES = ("stage1", "stage2", "dsol", "oracle", "evaluate", "report")
IER = "ier"
METHOD_TITLES = {IER: "IEr", "avol": "AVOL", "dsol": "DSOL", "oracle": "Oracle (true labels)"}  # others: their key
DETECTOR_BOXES = "detector_boxes"  # metrics.json's group of the same numbers scored against the detector's boxes
VAL = "val"  # metrics.json's group of the grounded numbers on the val sets (what settings are chosen by)
PREFIXED_GROUPS = (DETECTOR_BOXES, VAL)  # groups shaped like metrics.json itself, their keys kept prefixed
CONFIDENCE = 0.95
MISSING = "–"
SETS = ("single", "syn", "un", "duet")
# seeds.md's full list: DSOL's sets, the grounded protocol, run-level numbers, then the detector's boxes.
KEY_ORDER = (*SETS, "grounded", "stage1", "detector", DETECTOR_BOXES, VAL)
# seeds.md's headline table: (dotted key, row title).
HEADLINE = (
    [("single.iou50", "DSOL protocol: Single-source IoU@0.5")]
    + [(f"{name}.ciou30", f"DSOL protocol: {SET_TITLES[name]} CIoU@0.3") for name in ("syn", "un", "duet")]
    + [(f"grounded.{name}.{key}", f"grounded: {SET_TITLES[name]} {title}") for name in SETS
       for key, title in (("iou30", "IoU@0.3"), ("reliance", "reliance"), ("silence_empty", "silence empty"),
                          ("silent_false_alarm", "silent false alarm"), ("heard_map", "heard mAP"))])
# The README's table, per dataset and set: (column title, key of the set's metric; {set} is the set's name).
# The headline columns measure what the model hears (grounded, reliance); DSOL's protocol, on which a model that
# ignores the audio can score well, comes last, for comparison with the paper.
README_COLUMNS = (("grounded IoU@0.3", "grounded.{set}.iou30"), ("reliance", "grounded.{set}.reliance"),
                  ("DSOL protocol", "{set}.{dsol}"))
DSOL_HEADLINE = {"single": "iou50"}  # DSOL's headline metric of a set: ciou30 but for single-source
# IEr against each baseline on the same test mosaics (issue 23's targets; Table 1): (set, samples.csv column,
# params.yaml key of the success level, title). The oracle is a ceiling, not a baseline: left out.
COMPARISONS = (("un", "grounded_iou_true", ("evaluate", "grounded_success"), "grounded IoU@{level:g}"),
               ("syn", "grounded_iou_true", ("evaluate", "grounded_success"), "grounded IoU@{level:g}"),
               ("single", "iou", ("evaluate", "iou_success"), "DSOL protocol IoU@{level:g}"))


class SeedsError(AblationError):
    """The seeds cannot go on; the message is one line naming the experiment, file or key."""


# --------------------------------------------------------------------------- metrics.json -> methods


def numeric_leaves(tree: dict, prefix: str = "") -> dict[str, float | None]:
    """Every number of a nested dict by dotted key; nulls kept as None (a metric undefined on this run).

    Strings (source, split, boxes) and lists are facts about the run, not results: left out.
    """
    leaves = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            leaves.update(numeric_leaves(value, dotted + "."))
        elif value is None:
            leaves[dotted] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            leaves[dotted] = float(value)
    return leaves


def method_metrics(metrics: dict) -> dict[str, dict[str, float | None]]:
    """One reports/<ds>/metrics.json as method -> {dotted key: value}.

    IEr is the top level without `baselines`, `detector_boxes` and `val` (its stage1.* and detector.* are run-level
    numbers, listed under IEr); each key of `baselines` is a method of the same layout; `detector_boxes` (scored
    against the detector's boxes) and `val` (the val sets) hold both again: their keys keep the group as prefix.
    """
    methods = {IER: numeric_leaves({key: value for key, value in metrics.items()
                                    if key not in ("baselines", *PREFIXED_GROUPS)})}
    for name, tree in (metrics.get("baselines") or {}).items():
        methods[name] = numeric_leaves(tree if isinstance(tree, dict) else {})
    for group in PREFIXED_GROUPS:
        if isinstance(metrics.get(group), dict):
            for name, leaves in method_metrics(metrics[group]).items():
                methods.setdefault(name, {}).update({f"{group}.{key}": value for key, value in leaves.items()})
    return {name: leaves for name, leaves in methods.items() if leaves}


# --------------------------------------------------------------------------- statistics


def summarise(values: list[float | None]) -> dict:
    """n, mean, std (ddof 1) and the 95 % Student-t interval of the mean over the values present.

    `values` (one per seed, None where the run has no number) are kept as they are; with one value there
    is no std and no interval, with none no mean either.
    """
    present = [value for value in values if value is not None]
    n = len(present)
    mean = math.fsum(present) / n if n else None
    std = half = None
    if n >= 2:
        std = math.sqrt(math.fsum((value - mean) ** 2 for value in present) / (n - 1))
        half = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": rounded(mean), "std": rounded(std),
            "ci95": None if half is None else [rounded(mean - half), rounded(mean + half)], "values": values}


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)  # metrics.json's precision: reruns give the same bytes


def seed_statistics(runs: dict[int, Run]) -> dict:
    """datasets -> dotted key -> method -> summarise() over the runs' seeds (in the order of `runs`)."""
    per_run = {seed: {dataset: method_metrics(metrics) for dataset, metrics in run.metrics.items()}
               for seed, run in runs.items()}
    datasets = {}
    for by_dataset in per_run.values():
        for dataset, methods in by_dataset.items():
            keys = datasets.setdefault(dataset, {})
            for method, leaves in methods.items():
                for key in leaves:
                    keys.setdefault(key, {}).setdefault(method, None)
    return {dataset: {key: {method: summarise([per_run[seed].get(dataset, {}).get(method, {}).get(key)
                                               for seed in runs]) for method in methods}
                      for key, methods in keys.items()}
            for dataset, keys in datasets.items()}


def facts(runs: dict[int, Run]) -> dict[str, dict[str, str]]:
    """The string values of each dataset's metrics.json (source, split, thresholds_split, boxes), first run's."""
    found = {}
    for run in runs.values():
        for dataset, metrics in run.metrics.items():
            found.setdefault(dataset, {key: value for key, value in metrics.items() if isinstance(value, str)})
    return found


def method_pairs(samples: pd.DataFrame, set_name: str, column: str, level: float) -> dict[str, dict]:
    """IEr against every other method but the oracle on one set of one run's samples.csv: baseline -> the
    mosaics that reach `level` in `column` with IEr only (`ier`) and with the baseline only (`other`)."""
    rows = samples[samples["set"] == set_name]
    ier = rows[rows["method"] == IER].set_index("sample_id")[column]
    pairs = {}
    for method in dict.fromkeys(rows["method"]):
        if method in (IER, *CEILINGS):
            continue
        other = rows[rows["method"] == method].set_index("sample_id")[column]
        common = ier.index.intersection(other.index)
        ier_only, other_only = reached_by_one(ier.loc[common], other.loc[common], level)
        pairs[method] = {"ier": ier_only, "other": other_only, "mosaics": len(common)}
    return pairs


def comparisons(runs: dict[int, Run], samples: SamplesReader) -> dict:
    """dataset -> "set:column" -> baseline -> per seed and pooled over the seeds: IEr-only and baseline-only
    successes and the two-sided sign test of the two counts. The pooled test counts every (seed, mosaic) pair
    once: the seeds score the same mosaics, so it asks whether IEr wins more pairs over training's randomness,
    and the per-seed tests say whether each seed alone shows it."""
    found: dict = {}
    for seed, run in runs.items():
        for dataset in run.metrics:
            table = samples(run.rev, dataset)
            if table is None:
                continue
            for set_name, column, level_key, heading in COMPARISONS:
                level = value_at(run.params, *level_key)
                if not isinstance(level, (int, float)) or column not in table.columns:
                    continue
                entry = found.setdefault(dataset, {}).setdefault(f"{set_name}:{column}", {
                    "set": set_name, "title": heading.format(level=level), "methods": {}})
                for method, counts in method_pairs(table, set_name, column, level).items():
                    entry["methods"].setdefault(method, {"seeds": {}})["seeds"][str(seed)] = {
                        **counts, "p": rounded(sign_test(counts["ier"], counts["other"]))}
    for by_set in found.values():
        for entry in by_set.values():
            for method in entry["methods"].values():
                ier = sum(seed["ier"] for seed in method["seeds"].values())
                other = sum(seed["other"] for seed in method["seeds"].values())
                method["pooled"] = {"ier": ier, "other": other, "p": rounded(sign_test(ier, other))}
    return found


# --------------------------------------------------------------------------- the pages


def key_order(key: str) -> tuple:
    """Sort key of a dotted metric: each part by its place in KEY_ORDER, the rest alphabetically."""
    return tuple((KEY_ORDER.index(part) if part in KEY_ORDER else len(KEY_ORDER), part) for part in key.split("."))


def seeds_phrase(seeds: list[int]) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def formatted(stats: dict | None, seeds: int | None = None) -> str:
    """`0.805 ± 0.041`: the mean ± the half-width of its 95 % interval; no ± from one value; `(n 2)` where
    fewer than `seeds` runs have the number."""
    if not stats or stats["mean"] is None:
        return MISSING
    text = f"{stats['mean']:.3f}"
    if stats["ci95"] is not None:
        text += f" ± {(stats['ci95'][1] - stats['ci95'][0]) / 2:.3f}"
    if seeds is not None and stats["n"] < seeds:
        text += f" (n {stats['n']})"
    return text


def method_order(keys: dict) -> list[str]:
    """IEr first, then the baselines in the order they first appear."""
    methods = list(dict.fromkeys(method for by_method in keys.values() for method in by_method))
    return sorted(methods, key=lambda method: method != IER)


def title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


def seeds_caption(seeds_json: dict) -> str:
    """One line saying what the numbers are: seeds, commit, machine, split and where thresholds come from."""
    seeds = seeds_json["seeds"]
    splits = {(fact.get("split"), fact.get("thresholds_split")) for fact in seeds_json.get("facts", {}).values()}
    split, thresholds = splits.pop() if len(splits) == 1 else (None, None)
    where = (f"measured on the {split} split, thresholds chosen on the {thresholds} split" if split and thresholds
             else "metrics.json does not record the splits")  # files from before the validation split
    return (f"Mean ± half-width of the 95 % Student-t interval over {seeds_phrase(seeds)} of the training and "
            "evaluation stages (data, boxes and the pretrained trunk fixed), commit "
            f"`{seeds_json['commit'][:7]}`, {seeds_json['machine']}; {where}.")


def seeds_markdown(seeds_json: dict) -> str:
    """reports/seeds.md: per dataset, the headline metrics with the methods side by side, then every metric."""
    seeds = seeds_json["seeds"]
    lines = ["# Seeds", "", seeds_caption(seeds_json), "",
             f"`a ± b`: a is the mean over the seeds, b the half-width of the 95 % interval of that mean "
             "(Student t with n - 1 degrees of freedom, standard deviation with ddof 1); "
             "no ± where one seed has the number; (n k): only k seeds have it (a null is not a number); "
             f"{MISSING}: not reported. Each seed other than the commit's own is the DVC experiment `seed-K` "
             "(`dvc exp show`); every per-seed value is in `reports/seeds.json`. Rerun: `make seeds SEEDS=N`.",
             ""]
    for dataset, keys in sorted(seeds_json["datasets"].items()):
        methods = method_order(keys)
        head = ["metric"] + [title(method) for method in methods]
        lines += [f"## {dataset}: headline metrics", ""]
        lines += markdown_table(head, [[name] + [formatted(keys[key].get(method), len(seeds)) for method in methods]
                                       for key, name in HEADLINE if key in keys])
        lines += comparison_lines(dataset, seeds_json.get("comparisons", {}).get(dataset, {}))
        lines += ["", f"## {dataset}: every metric", "",
                  f"`{DETECTOR_BOXES}.*`: the same metrics scored against the detector's boxes; `{VAL}.*`: the "
                  "numbers of the val split (what settings are chosen by); `stage1.*`, `detector.*`: numbers "
                  "of the run, listed under IEr.", ""]
        lines += markdown_table(head, [[f"`{key}`"] + [formatted(keys[key].get(method), len(seeds))
                                                         for method in methods] for key in sorted(keys, key=key_order)])
        lines.append("")
    return "\n".join(lines)


def comparison_lines(dataset: str, by_set: dict) -> list[str]:
    """seeds.md's paired tests of IEr against each baseline on one dataset ([] without any)."""
    if not by_set:
        return []
    rows = []
    for entry in by_set.values():
        for method, result in entry["methods"].items():
            per_seed = "; ".join(f"{seed}: {counts['ier']} / {counts['other']}, p {counts['p']:.3f}"
                                 for seed, counts in result["seeds"].items())
            pooled = result["pooled"]
            rows.append([f"{SET_TITLES[entry['set']]} {entry['title']}", f"IEr vs {title(method)}",
                         f"{pooled['ier']} / {pooled['other']}", f"{pooled['p']:.3f}", per_seed])
    return ["", f"## {dataset}: IEr against each baseline, mosaic by mosaic", "",
            "The same test mosaics scored by IEr and by the baseline in each seed (`reports/<ds>/samples.csv` of "
            "each run): how many reach the level with IEr only / with the baseline only, and the two-sided sign "
            "test of those two counts, pooled over the seeds and per seed. p < 0.05 with more IEr-only mosaics: "
            "IEr ahead beyond the test set's noise.", ""] + markdown_table(
        ["set and metric", "pair", "IEr only / baseline only (all seeds)", "sign test p (all seeds)",
         "per seed: IEr only / baseline only, p"], rows)


def readme_table(seeds_json: dict) -> list[str]:
    """The README's results table: a row per dataset and set, IEr and every baseline side by side."""
    datasets = seeds_json["datasets"]
    methods = list(dict.fromkeys(method for keys in datasets.values() for method in method_order(keys)))
    seeds = len(seeds_json["seeds"])
    head = ["dataset", "set"] + [f"{title(method)} {column}" for column, _ in README_COLUMNS for method in methods]
    rows = []
    for dataset, keys in sorted(datasets.items()):
        for name in SETS:
            cells = [formatted(keys.get(pattern.format(set=name, dsol=DSOL_HEADLINE.get(name, "ciou30")), {})
                               .get(method), seeds) for _, pattern in README_COLUMNS for method in methods]
            if any(value != MISSING for value in cells):
                rows.append([dataset, SET_TITLES[name]] + cells)
    return [
        seeds_caption(seeds_json) + " Grounded: the model's own sounding region, no true classes; reliance: "
        "grounded IoU@0.3 with the true audio minus with another image's audio (0: the model ignores the audio); "
        "DSOL protocol: CIoU@0.3 (Single-source: IoU@0.5) with the true sounding classes given, as in the paper "
        "(a model that ignores the audio can score well on it). "
        "Generated by `make seeds` from [`reports/seeds.json`](reports/seeds.json) "
        "([every metric](reports/seeds.md)): do not edit by hand.",
        "",
    ] + markdown_table(head, rows)


def replace_block(text: str, block: list[str], path: Path = README) -> str:
    """`text` with the lines between its RESULTS_START and RESULTS_END lines replaced by `block`."""
    lines = text.splitlines()
    starts = [number for number, line in enumerate(lines) if line.strip() == RESULTS_START]
    ends = [number for number, line in enumerate(lines) if line.strip() == RESULTS_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise SeedsError(f"{path}: needs one `{RESULTS_START}` line and, after it, one `{RESULTS_END}` line "
                         "around the results table (found "
                         f"{len(starts)} and {len(ends)})")
    kept = lines[:starts[0] + 1] + block + lines[ends[0]:]
    return "\n".join(kept) + ("\n" if text.endswith("\n") else "")


# --------------------------------------------------------------------------- runs


def seed_of(run: Run) -> int | None:
    seed = run.params.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def experiment_name(seed: int) -> str:
    return f"seed-{seed}"


def seed_runs(seeds: list[int], baseline: Run, experiments: dict[str, Run]) -> dict[int, Run]:
    """Seed -> its run: HEAD for HEAD's own seed, else the successful experiment `seed-K` with params seed K."""
    if seed_of(baseline) is None:
        raise SeedsError(f"params.yaml of commit {baseline.rev[:7]} has no integer `seed`")
    if not baseline.metrics:
        raise SeedsError(f"commit {baseline.rev[:7]} has no reports/<ds>/metrics.json: run and commit the "
                         "pipeline first (`make repro`)")
    runs = {}
    for seed in seeds:
        if seed == seed_of(baseline):
            runs[seed] = baseline
            continue
        name = experiment_name(seed)
        run = experiments.get(name)
        if run is None:
            raise SeedsError(f"experiment {name}: not in `dvc exp show` of commit {baseline.rev[:7]}: run "
                             "`make seeds` first")
        if run.state != "success":
            raise SeedsError(f"experiment {name}: {run.state}, its log: `dvc queue logs {name}`")
        if seed_of(run) != seed:
            raise SeedsError(f"experiment {name}: its params.yaml has seed {run.params.get('seed')}, not {seed}")
        if not run.metrics:
            raise SeedsError(f"experiment {name}: no reports/<ds>/metrics.json")
        runs[seed] = run
    return runs


def seeds_document(runs: dict[int, Run], baseline: Run, machine: str, samples: SamplesReader | None = None) -> dict:
    """reports/seeds.json's content; with `samples` (reads a run's samples.csv) also IEr paired with each
    baseline mosaic by mosaic."""
    return {"seeds": list(runs), "commit": baseline.rev, "machine": machine,
            "runs": {str(seed): "HEAD" if run is baseline else experiment_name(seed) for seed, run in runs.items()},
            "facts": facts(runs), "datasets": seed_statistics(runs),
            **({"comparisons": comparisons(runs, samples)} if samples is not None else {})}


def machine_description() -> str:
    """The CPU's model name and torch's thread count: both change a run's numbers (docs/decisions.md)."""
    import torch  # here: the command's statistics need no torch, and tests of them load faster without it

    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    return f"{cpu or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def check_data_stages_unseeded(repo: Path) -> None:
    """A seed experiment must rerun no data stage: only SEEDED_STAGES may list `seed` among their params."""
    try:
        stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as err:
        raise SeedsError(f"{repo / 'dvc.yaml'}: cannot read ({err})") from err
    for name, stage in stages.items():
        stage = stage.get("do", stage) if isinstance(stage, dict) else {}
        params = stage.get("params") or []
        # An entry is a key of params.yaml or {file: [keys]}: another file's `seed` is not this one.
        keys = [key for entry in params for key in ([entry] if isinstance(entry, str) else
                                                     (entry.get("params.yaml") or []))]
        if "seed" in keys and name not in SEEDED_STAGES:
            raise SeedsError(f"dvc.yaml: stage {name} depends on params `seed`, so every seed would rerun it: "
                             f"only {', '.join(SEEDED_STAGES)} may (the data stages follow `data_seed`)")


def write_outputs(repo: Path, seeds_json: dict) -> None:
    """seeds.json, seeds.md and the README's results table, each in one rename."""
    readme = repo / README
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as err:
        raise SeedsError(f"{readme}: cannot read ({err})") from err
    text = replace_block(text, readme_table(seeds_json), readme)
    write_json(seeds_json, repo / SEEDS_JSON)
    with atomic_path(repo / SEEDS_MD) as tmp:
        tmp.write_text(seeds_markdown(seeds_json), encoding="utf-8")
    with atomic_path(readme) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run_seeds(repo: Path, count: int, run: bool = True, machine: str | None = None) -> Path:
    """Run seeds 0..count-1 as DVC experiments (unless `run` is false), then write the statistics and pages."""
    if count < 1:
        raise SeedsError(f"--seeds {count}: need at least 1")
    seeds = list(range(count))
    try:
        params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SeedsError(f"{repo / 'params.yaml'}: cannot read ({err})") from err
    if run:
        check_committed(repo, SEEDS_OUTPUTS)
        check_data_stages_unseeded(repo)
        head_seed = params.get("seed")
        experiments = [Ablation(experiment_name(seed), f"seed {seed}", (f"seed={seed}",), "seeds")
                       for seed in seeds if seed != head_seed]
        check_overrides(experiments, params)
        started = time.monotonic()
        failed = run_experiments(repo, experiments) if experiments else []
        if failed:
            raise SeedsError(f"experiment {'; '.join(failed)}")
        print(f"seeds: {len(experiments)} experiments ran in {time.monotonic() - started:.0f} s", flush=True)
    baseline, experiments = exp_show(repo)
    seeds_json = seeds_document(seed_runs(seeds, baseline, experiments), baseline,
                                machine or machine_description(), git_samples(repo))
    write_outputs(repo, seeds_json)
    if run:
        # Through DVC, as the ablations do: dvc.lock then records the page in the workspace.
        dvc(repo, "repro", "--single-item", "--force", "report", capture=False)
    return repo / SEEDS_MD


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1 (default 3)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: rewrite seeds.json, seeds.md and the README's table from the "
                             "experiments DVC already has")
    args = parser.parse_args()
    try:
        path = run_seeds(Path.cwd(), args.seeds, run=not args.table_only)
    except AblationError as err:
        print(f"seeds: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"seeds: wrote {path}, {SEEDS_JSON} and the results table in {README}", flush=True)
    if args.table_only:
        print("seeds: the report page is as it was; `dvc repro --single-item --force report` rebuilds it", flush=True)


if __name__ == "__main__":
    main()
