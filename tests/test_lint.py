"""`make lint`'s import-linter contract: it holds for the package, and an import that points up a layer breaks it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def copy_of_the_package(tmp_path: Path) -> Path:
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_layers_hold(tmp_path):
    result = lint_imports(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_up_a_layer_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    with open(root / "pipeline" / "models" / "files.py", "a") as file:
        file.write("\nfrom pipeline.train.stage1 import run_stage1  # noqa: E402\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "pipeline.models is not allowed to import pipeline.train.stage1" in result.stdout


def test_a_module_outside_every_layer_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    (root / "pipeline" / "helpers.py").write_text("VALUE = 1\n")
    result = lint_imports(root)
    assert result.returncode != 0 and "pipeline.helpers" in result.stdout


def test_importing_a_stage_script_from_the_package_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    with open(root / "pipeline" / "report.py", "a") as file:
        file.write("\nimport stages.report  # noqa: E402,F401\n")
    result = lint_imports(root)
    assert result.returncode != 0 and "stage scripts sit on top" in result.stdout


def test_no_function_in_the_package_runs_past_80_lines():
    # Long functions were where flags switched phases and blocks were copied; a reader follows 80 lines top to bottom.
    import ast

    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((REPO / "pipeline").rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80]
    assert long == []
