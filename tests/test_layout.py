"""The package's architecture, checked: imports flow one way between the role packages, ipywidgets only in
``interactive``, every package lists its public names, no module grows past ~500 lines, code cites files that exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"
LAYERS = ["cli", "interactive", "experiments", "findings", "training", "evaluation", "losses", "scores", "models",
          "data", "base"]
"""Top to bottom: a module may import from its own layer and the layers below it (README, "Layout")."""
BASE = {"checks", "io", "device", "distributed", "__init__", "__main__", "__version__"}
ONE_CLASS_MODULES = {"scores/store.py"}  # one cohesive class (the teacher-score store) with its SQLite helpers


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "workbench" or len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def workbench_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``from workbench... import`` in a file, function-level imports included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            names = ["workbench." + a.name for a in node.names] if node.module == "workbench" else [node.module]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("workbench")]
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_imports_flow_one_way():
    bad = []
    for path in modules():
        me = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for line, module in workbench_imports(path):
            other = layer(module)
            if module == "workbench" or (me, other) == ("base", "cli") and path.name == "__main__.py":
                continue
            if LAYERS.index(other) < LAYERS.index(me):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {module} ({other})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_layer_checker_can_fail(tmp_path):
    """A positive control: an upward import is caught."""
    bad = tmp_path / "x.py"
    bad.write_text("from workbench.experiments import train_run\n")
    assert layer(workbench_imports(bad)[0][1]) == "experiments"
    assert LAYERS.index("experiments") < LAYERS.index("training")


def test_ipywidgets_only_in_interactive():
    users = [p.relative_to(PACKAGE).as_posix() for p in modules() if re.search(r"^\s*import ipywidgets|^\s*from "
                                                                                r"ipywidgets", p.read_text(), re.M)]
    assert users and all(u.startswith("interactive/") for u in users), users


@pytest.mark.parametrize("package", ["evaluation", "findings", "experiments", "interactive", "losses", "models.hf"])
def test_packages_list_their_public_names(package):
    module = importlib.import_module(f"workbench.{package}")
    assert module.__doc__ and module.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"workbench.{package}.__all__ names {missing} that it does not define"


def test_no_module_over_500_lines():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in modules() if (n := len(p.read_text().splitlines())) > 500}
    assert set(long) <= ONE_CLASS_MODULES, long


def test_cited_repository_files_exist():
    """Docstrings and comments cite files inside the repository only, and those files exist."""
    cited = re.compile(r"\b((?:docs|workbench|notebooks|benchmarks|tests)/[\w./-]+\.(?:md|py|json))")
    missing = []
    for path in modules() + sorted((ROOT / "notebooks").glob("*.py")):
        for ref in cited.findall(path.read_text()):
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)} cites {ref}")
    assert not missing, "\n".join(missing)
    assert not [p for p in modules() if "DESIGN.md" in p.read_text()], "code cites a design file outside the repo"
