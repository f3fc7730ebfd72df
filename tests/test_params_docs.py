"""params.yaml and the docs stay in step: every leaf of params.yaml carries a comment, every decision title that
the code cites is a `###` heading of docs/decisions.md, and every link to a docs anchor resolves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
DOCS = REPO / "docs"
DECISIONS = DOCS / "decisions.md"

# Where titles and anchors are cited: the code, the tests, the presets and the docs themselves.
CITING_DIRS = ("pipeline", "stages", "tests", "bench", "tools", "presets", "docs")
CITING_FILES = ("params.yaml", "dvc.yaml", "Makefile", "README.md", "pyproject.toml")
CITING_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml"}

# A citation by title: `decisions.md, "Title"` (also `decisions.md), "A", "B"` in Markdown links). A title may wrap
# onto the next line of a docstring or a comment.
CITATION = re.compile(r'decisions\.md\)?((?:,\s*"[^"]+")+)')
QUOTED = re.compile(r'"([^"]+)"')
# A link to an anchor of a file in docs/: `decisions.md#anchor`, `docs/experiments.md#anchor`, ...
ANCHOR_LINK = re.compile(r"\b([a-z]+)\.md#([\w-]+)")


# --------------------------------------------------------------------------- every leaf of params.yaml has a comment


def leaf_paths(node: yaml.Node, prefix: str = ""):
    """(dotted key path, key node, value node) of every leaf: a value that is not a non-empty mapping."""
    for key, value in node.value:
        path = f"{prefix}{key.value}"
        if isinstance(value, yaml.MappingNode) and value.value:
            yield from leaf_paths(value, path + ".")
        else:
            yield path, key, value


def has_comment(lines: list[str], key: yaml.Node, value: yaml.Node) -> bool:
    """A `#` right after the value on its last line, or a comment line directly above the key (no blank line)."""
    end = value.end_mark
    if end.line < len(lines) and lines[end.line][end.column:].lstrip().startswith("#"):
        return True
    above = key.start_mark.line - 1
    return above >= 0 and lines[above].lstrip().startswith("#")


def uncommented_leaves(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    return [name for name, key, value in leaf_paths(yaml.compose(text)) if not has_comment(lines, key, value)]


def loaded_leaves(data: dict, prefix: str = "") -> set[str]:
    leaves = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            leaves |= loaded_leaves(value, f"{prefix}{key}.")
        else:
            leaves.add(f"{prefix}{key}")
    return leaves


def test_the_walk_finds_every_leaf_that_yaml_loads():
    text = PARAMS.read_text()
    walked = [name for name, _, _ in leaf_paths(yaml.compose(text))]
    assert set(walked) == loaded_leaves(yaml.safe_load(text))
    assert "datasets.music.toy.clutter" in walked and "datasets.vggsound.youtube.reference_boxes" in walked


def test_every_leaf_of_params_yaml_has_a_comment():
    missing = uncommented_leaves(PARAMS)
    assert not missing, f"params.yaml: leaves without a comment on their line or directly above: {missing}"


def strip_comment_of(text: str, line_start: str) -> str:
    """The line that starts (after indentation) with `line_start`, without its trailing comment."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.lstrip().startswith(line_start)]
    assert hits, line_start
    line = lines[hits[0]]
    lines[hits[0]] = line[:line.index("  #")] + "\n"
    return "".join(lines)


def test_a_leaf_without_its_comment_is_named(tmp_path):
    copy = tmp_path / "params.yaml"
    copy.write_text(strip_comment_of(PARAMS.read_text(), "clutter: 8  #"))
    assert uncommented_leaves(copy) == ["datasets.music.toy.clutter"]


def test_a_comment_above_counts_only_directly_above(tmp_path):
    text = PARAMS.read_text()
    lines = text.splitlines(keepends=True)
    key = next(i for i, line in enumerate(lines) if line.lstrip().startswith("new_background_each_second: true\n"))
    assert lines[key - 1].lstrip().startswith("#")
    copy = tmp_path / "params.yaml"
    copy.write_text("".join(lines[:key] + ["\n"] + lines[key:]))  # a blank line between comment and key
    assert uncommented_leaves(copy) == ["datasets.music.toy.new_background_each_second"]
    start = key
    while lines[start - 1].lstrip().startswith("#"):
        start -= 1
    copy.write_text("".join(lines[:start] + lines[key:]))  # no comment above at all
    assert uncommented_leaves(copy) == ["datasets.music.toy.new_background_each_second"]


# --------------------------------------------------------------------------- titles and anchors of docs/


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def headings(path: Path, level: str | None = None) -> list[str]:
    """The headings' titles; only those of `level` ('###') when given. Fenced code blocks are skipped."""
    titles, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            marks, title = line.split(" ", 1)
            if level is None or marks == level:
                titles.append(title.strip())
    return titles


def anchors(path: Path, level: str | None = None) -> set[str]:
    """Anchors as GitHub numbers repeated ones (-1, -2, ...), counting every heading of the file."""
    seen: dict[str, int] = {}
    kept = set(headings(path, level))
    result = set()
    for title in headings(path):
        base = anchor(title)
        name = base if base not in seen else f"{base}-{seen[base]}"
        seen[base] = seen.get(base, 0) + 1
        if title in kept:
            result.add(name)
    return result


def citing_files() -> list[Path]:
    files = [REPO / name for name in CITING_FILES if (REPO / name).is_file()]
    for folder in CITING_DIRS:
        files += sorted(path for path in (REPO / folder).rglob("*")
                        if path.is_file() and path.suffix in CITING_SUFFIXES and "__pycache__" not in path.parts)
    return [path for path in files if path.resolve() != Path(__file__).resolve()]


def normalise(title: str) -> str:
    """One line: a title wrapped in a docstring or in `#` comments reads as the words it holds."""
    return re.sub(r"\s*\n\s*(#\s*)?", " ", title).strip()


def cited_titles() -> dict[str, list[str]]:
    """Decision title -> the files that cite it."""
    cited: dict[str, list[str]] = {}
    for path in citing_files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            for title in QUOTED.findall(match.group(1)):
                cited.setdefault(normalise(title), []).append(path.relative_to(REPO).as_posix())
    return cited


def test_the_citation_pattern_reads_wrapped_and_listed_titles():
    text = 'x (docs/decisions.md, "Why the\n    w/o AII row") and [d](docs/decisions.md), "A", "B c"'
    titles = [normalise(t) for m in CITATION.finditer(text) for t in QUOTED.findall(m.group(1))]
    assert titles == ["Why the w/o AII row", "A", "B c"]
    assert normalise('"Sibling\n  # prototypes"'.strip('"')) == "Sibling prototypes"
    assert anchor("Eq. 8 on f^a") == "eq-8-on-fa"
    assert anchor("Seeds (`make seeds`)") == "seeds-make-seeds"
    assert anchor("Stage 1's NMI depends on the seed") == "stage-1s-nmi-depends-on-the-seed"


def test_every_cited_decision_title_is_a_heading():
    cited = cited_titles()
    assert "Toy ImageNet" in cited  # the pattern still finds what the code cites
    titles = set(headings(DECISIONS, "###"))
    missing = {title: files for title, files in cited.items() if title not in titles}
    assert not missing, f"docs/decisions.md has no `### Title` for these citations: {missing}"


@pytest.mark.parametrize("source", ["params.yaml", "README.md", "docs", "presets"])
def test_every_link_to_a_docs_anchor_resolves(source):
    paths = [REPO / source] if (REPO / source).is_file() else sorted((REPO / source).rglob("*.*"))
    broken = []
    for path in paths:
        for doc, name in ANCHOR_LINK.findall(path.read_text(errors="replace")):
            target = DOCS / f"{doc}.md"
            if not target.is_file():
                continue  # e.g. reports/seeds.md: not a docs page
            # decision records are `###` headings; other pages may link any heading
            if name not in anchors(target, "###" if doc == "decisions" else None):
                broken.append(f"{path.relative_to(REPO)}: {doc}.md#{name}")
    assert not broken, f"links to no heading: {broken}"
