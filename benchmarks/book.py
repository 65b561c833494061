"""``make book``: execute the notebooks and write a static HTML site of them (figures included) with an index.

    python benchmarks/book.py --out runs/book                      # every notebook, full mode (what make book runs)
    WORKBENCH_SMOKE=1 python benchmarks/book.py --out runs/book    # smoke mode: seconds, numbers meaningless
    python benchmarks/book.py --out DIR --only 00_quickstart       # some notebooks

Each notebook runs in a fresh kernel from its jupytext source (``notebooks/NN_name.py``), in ``notebooks/`` as
``make lab`` runs it, with its runs and figures under ``runs/`` (``WORKBENCH_OUT``, default ``runs/book/runs``).
``DIR/NN_name.html`` is the executed notebook; ``DIR/index.html`` lists them with the measured run time of each.
A notebook that fails is still written (with its error) and makes the command exit 1.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 1800  # seconds; full mode's longest cell trains a few students on a 2-core CPU


def execute(source: Path, timeout: int = CELL_TIMEOUT) -> tuple[object, float, str]:
    """(executed notebook, seconds, error text or "") of one jupytext source, run in ``notebooks/``."""
    nb = jupytext.read(source)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    start, error = time.monotonic(), ""
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).splitlines()[-1] if str(err) else type(err).__name__
    return nb, time.monotonic() - start, error


WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("interactive widget: it needs a running kernel. Open this notebook in JupyterLab "
               "(<code>make lab</code>, README \"Reading group\") to use it; the cells below drive it and show what "
               "it draws.")


def static_widgets(nb) -> int:
    """Replace every widget output of ``nb`` (blank in a static page: no kernel behind it) by a note saying where
    it works; return how many were replaced."""
    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET in data:
                output["data"] = {"text/html": f"<p style='border-left: 3px solid #888; padding-left: 8px'>"
                                               f"<em>{WIDGET_NOTE}</em></p>", "text/plain": "[interactive widget]"}
                count += 1
    return count


def write_page(nb: object, path: Path) -> None:
    """The executed notebook as one self-contained HTML page (figures embedded as PNG; widgets replaced by a note,
    :func:`static_widgets`)."""
    static_widgets(nb)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")


def index_html(rows: list[tuple[str, float, str]], smoke: bool) -> str:
    """The site's index: one link per notebook, its title, run time and status."""
    mode = "SMOKE MODE: numbers only show that the code runs" if smoke else "full mode"
    items = "\n".join(
        f"<tr><td><a href='{html.escape(name)}.html'>{html.escape(name)}</a></td><td>{seconds:.0f} s</td>"
        f"<td>{'ok' if not error else 'FAILED: ' + html.escape(error)}</td></tr>" for name, seconds, error in rows)
    return (f"<!doctype html><meta charset='utf-8'><title>CPRD Workbench notebooks</title>"
            f"<h1>CPRD Workbench notebooks</h1><p>Executed by <code>make book</code> ({mode}) on "
            f"{time.strftime('%Y-%m-%d %H:%M')}.</p><table border=1 cellpadding=4>"
            f"<tr><th>notebook</th><th>run time</th><th>status</th></tr>\n{items}\n</table>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/book.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "book", help="the site's folder")
    parser.add_argument("--only", nargs="*", default=None, help="notebook names (stems); default: all")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WORKBENCH_OUT", str(out / "runs"))
    sources = sorted(NOTEBOOKS.glob("[0-9]*.py"))
    if args.only:
        unknown = sorted(set(args.only) - {s.stem for s in sources})
        if unknown:
            parser.error(f"--only: unknown notebook(s) {unknown}; known: {[s.stem for s in sources]}")
        sources = [s for s in sources if s.stem in args.only]
    rows = []
    for source in sources:
        nb, seconds, error = execute(source)
        write_page(nb, out / f"{source.stem}.html")
        rows.append((source.stem, seconds, error))
        print(f"{source.stem}: {seconds:.0f} s {'ok' if not error else 'FAILED: ' + error}", flush=True)
    (out / "index.html").write_text(index_html(rows, os.environ.get("WORKBENCH_SMOKE") == "1"), encoding="utf-8")
    print(f"wrote {out / 'index.html'}")
    return 1 if any(error for _, _, error in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
