"""The package boundaries of the design: workers never import the driver, few modules import Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The checkpoint bridge and the data-parallel launcher import Ray; trainables, score, models,
# data and loops go through the bridge or do without.
RAY_ALLOWED = {"trainables/tune_bridge.py", "trainables/parallel.py"}
# The Ray Tune trainables reach Ray only through the bridge; everything else runs without Ray.
TRAINABLES = {"trainables/pretrain.py", "trainables/finetune.py", "trainables/replay.py"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_trainables_never_imports_search() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _modules("trainables") if "search" in _imported_roots(p)]
    assert offenders == []


def test_only_trainable_modules_import_ray() -> None:
    importing = {str(p.relative_to(REPO)) for p in _modules("trainables") if "ray" in _imported_roots(p)}
    assert importing <= RAY_ALLOWED, importing - RAY_ALLOWED


def test_importing_every_worker_module_loads_neither_search_nor_ray() -> None:
    modules = [
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in _modules("trainables")
        if str(p.relative_to(REPO)) not in RAY_ALLOWED | TRAINABLES
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'search', 'ray'}))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert output.stdout.strip() == "[]"


def test_configs_folder_holds_yaml_only() -> None:
    files = [p for p in (REPO / "configs").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".yaml", ".yml") for p in files)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    marker = "<!-- test-command -->"
    assert marker in readme, "the README marks its test command"
    command = readme.split(marker, 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    assert command in (REPO / ".ci" / "run").read_text()
