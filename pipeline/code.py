"""Which of the project's own modules a module runs: the transitive closure of its `pipeline.*` imports.

Read from the source (every `import` statement, also those inside functions), not from `sys.modules`, so
the answer does not depend on what else a process imported. Two users: a training checkpoint's
fingerprint hashes the code its stage runs (`pipeline/train/checkpoints.py`), and the DVC-contract test
checks that each stage's `deps` in dvc.yaml list exactly these files.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: `pipeline/` and `stages/` live here
PACKAGES = ("pipeline", "stages")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module `name` (`a.b` -> a/b.py or a/b/__init__.py), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path) -> set[str]:
    """Module names that `path` imports from the project's packages (candidates: `from a import b` may name
    a module `a.b` or a name in `a`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def imported_files(name: str, root: Path = ROOT) -> list[Path]:
    """The files of `name` and of every project module it imports, directly or not, sorted. Package
    `__init__.py` files count only where they hold more than a docstring."""
    start = module_file(name, root)
    if start is None:
        raise ValueError(f"{name}: no such module under {root}")
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for imported in _imported_names(path):
            found = module_file(imported, root)
            if found is not None and found not in seen:
                todo.append(found)
    return sorted(path for path in seen if path.name != "__init__.py" or _has_code(path))


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)
