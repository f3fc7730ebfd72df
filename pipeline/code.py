"""Which of the project's own modules a module runs: the transitive closure of its `pipeline.*` / `stages.*`
imports, from grimp's import graph (the library import-linter checks the layers with).

grimp reads the source (every `import` statement, also those inside functions), not `sys.modules`, so the
answer does not depend on what else a process imported. Two users: a training checkpoint's fingerprint hashes
the code its stage runs (`pipeline/train/checkpoints.py`), and the DVC-contract test checks that each stage's
`deps` in dvc.yaml list exactly these files.
"""
from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: `pipeline/` and `stages/` live here
PACKAGES = ("pipeline", "stages")


@functools.cache
def _graph():
    import grimp

    return grimp.build_graph(*PACKAGES, cache_dir=None)


def module_file(name: str) -> Path:
    """The source file of project module `name` (`a.b` -> a/b.py or a/b/__init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def imported_files(name: str) -> list[Path]:
    """The files of module `name` and of every project module it imports, directly or not, sorted."""
    graph = _graph()
    if name not in graph.modules:
        raise ValueError(f"{name}: no such module under {ROOT}")
    return sorted(module_file(module) for module in graph.find_upstream_modules(name) | {name})
