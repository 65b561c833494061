"""``make book`` (benchmarks/book.py) on one notebook in smoke mode: an executed HTML page with its figures as
embedded PNGs, and an index.html linking it with its measured run time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_writes_an_executed_html_page_and_an_index(tmp_path):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "WORKBENCH_SMOKE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
           "WORKBENCH_OUT": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "book.py"), "--out", str(tmp_path / "book"),
                          "--only", "04_loss_playground"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    page = (tmp_path / "book" / "04_loss_playground.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in page and "SMOKE MODE" in page and "Traceback" not in page
    assert "interactive widget: it needs a running kernel" in page  # the playground, not a blank output
    assert '<script type="application/vnd.jupyter.widget-view+json">' not in page
    index = (tmp_path / "book" / "index.html").read_text(encoding="utf-8")
    assert "href='04_loss_playground.html'" in index and " s</td><td>ok" in index
    assert not (ROOT / "notebooks" / "runs").exists()
