"""README's "Add a loss", followed literally: the README's example file is written, under the name it gives, into
a copy of the package (in a temporary folder, so nothing is left in the checkout even if the test fails); with no
other file edited the loss is registered, the README's table command lists it, and its contract tests pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- add-a-loss:file (\S+) -->\n```python\n(.*?)\n```", re.S)


def readme_recipe() -> tuple[str, str, str]:
    """(path of the new file, its text, the loss name) as the README's "Add a loss" section gives them."""
    match = MARKER.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md lacks the '<!-- add-a-loss:file PATH -->' marker before its example loss file"
    path, text = match.group(1), match.group(2) + "\n"
    name = re.search(r'@register_loss\("(\w+)"', text).group(1)
    return path, text, name


def copy_with_new_file(tmp: Path, path: str, text: str) -> Path:
    """A copy of ``workbench/`` and README.md under ``tmp`` with the README's new loss file added to it."""
    shutil.copytree(ROOT / "workbench", tmp / "workbench", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "README.md", tmp / "README.md")
    target = tmp / path
    assert not target.exists(), f"{path} already exists in the package: the README's example must be a new file"
    target.write_text(text, encoding="utf-8")
    return target


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``python *args`` importing the copy (cwd = the copy, first on the path), one thread."""
    env = {**os.environ, "PYTHONPATH": str(tmp), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_readme_recipe_adds_a_loss_without_editing_another_file(tmp_path):
    path, text, name = readme_recipe()
    assert path == f"workbench/losses/{name}.py"
    copy_with_new_file(tmp_path, path, text)
    found = run(tmp_path, "-c", "import workbench, workbench.losses as L; "
                "print(workbench.__file__); print(L.loss_spec('" + name + "').source)")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(tmp_path / "workbench" / "__init__.py"), path]
    table = run(tmp_path, "-m", "workbench.losses.table", "--write", "README.md")  # the README's command
    assert table.returncode == 0, table.stderr
    assert f"| `{name}` | `{path}` |" in (tmp_path / "README.md").read_text(encoding="utf-8")
    assert run(tmp_path, "-m", "workbench.losses.table", "--check", "README.md").returncode == 0
    contract = run(tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   str(ROOT / "tests" / "test_losses_contract.py"), "-k", name)
    assert contract.returncode == 0, contract.stdout[-3000:] + contract.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", contract.stdout).group(1))
    assert passed >= 10 and " failed" not in contract.stdout
    assert not (ROOT / path).exists()
