"""A real browser: JupyterLab on 127.0.0.1 with a token, Debian's Chromium driven by playwright, notebook 04.

The test generates the ``.ipynb`` files from the jupytext sources into a temporary root, starts JupyterLab there
(smoke mode for its kernels, settings and workspaces isolated), opens ``04_loss_playground.ipynb``, waits for the
kernel to be idle, runs all cells, drags the λ slider of the loss playground, and checks that the displayed loss
value changed. The screenshot ``loss_playground_browser.png`` goes to the test's temporary folder, or to
``$WORKBENCH_SCREENSHOT_DIR`` when set (``make figures`` sets it to ``figures/`` to refresh the committed one); an
attempt that fails leaves ``loss_playground_browser_failure<N>.png`` there and is retried once.

Needs ``/usr/bin/chromium`` (``.ci/run`` installs it with apt-get when missing); skipped, saying so, without it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = "04_loss_playground"
SCREENSHOT = "loss_playground_browser.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_TIMEOUT_MS = 180_000  # running every cell of notebook 04 in smoke mode (~20 s on an idle 2-core CPU)
LAB_SETTINGS = {  # no news or update checks; render every cell (no windowing) so all prompts are in the DOM
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_root(tmp: Path) -> Path:
    """A temp copy of the generated notebooks, plus isolated JupyterLab settings and workspaces."""
    root = tmp / "root"
    root.mkdir()
    for source in sorted((ROOT / "notebooks").glob("[0-9]*.py")):
        jupytext.write(jupytext.read(source), root / f"{source.stem}.ipynb")
    for name, values in LAB_SETTINGS.items():
        path = tmp / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return root


def lab_env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "WORKBENCH_SMOKE": "1", "WORKBENCH_OUT": str(tmp / "out"), "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1", "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def playwright_api():
    """playwright's sync API, once Chromium is known to be there (else the test skips, saying how to get it)."""
    api = pytest.importorskip("playwright.sync_api", reason="python playwright is missing: pip install -e .[dev]")
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "(.ci/run does so when apt-get can reach Debian's packages)")
    return api


@pytest.fixture
def lab(tmp_path: Path, playwright_api) -> Iterator[tuple[str, Path]]:
    """(base URL with token query, server log) of a JupyterLab serving a temp copy of the notebooks."""
    root, port, token = lab_root(tmp_path), free_port(), secrets.token_hex(16)
    log = tmp_path / "lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--allow-root"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=lab_env(tmp_path), cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield f"{base}/lab/tree/{NOTEBOOK}.ipynb?token={token}", log
    finally:
        with suppress(OSError):  # shuts the kernels down with the server
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"),
                                   timeout=5)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------ driving


KERNEL_IDLE = """() => {
    const status = document.querySelector('[title^="Change kernel for"]');  // status bar: "<kernel> | <status>"
    const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
    return status !== null && /\\| Idle$/.test(status.textContent.trim()) && !status.textContent.startsWith('No Kernel')
        && indicator !== null && indicator.dataset.status === 'idle';
}"""


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the status bar reads "<kernel> | Idle" (a kernel is connected) and the toolbar indicator agrees."""
    page.wait_for_function(KERNEL_IDLE, timeout=timeout_ms)


def run_all(page) -> None:
    """Run > Run All Cells; accept the kernel dialog should JupyterLab still ask which kernel to use."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    with suppress(Exception):
        dialog.wait_for(timeout=2_000)
        dialog.locator(".jp-mod-accept").click()


def wait_all_executed(page, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until every code cell shows an execution count (none "[*]" or empty) and the kernel is idle; fail
    fast, with the traceback's last lines, when a cell raised."""
    end = time.monotonic() + timeout_ms / 1000
    prompts: list[str] = []
    while time.monotonic() < end:
        stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        for text in stderr.all_inner_texts():
            if "Traceback" in text:
                raise AssertionError(f"a cell raised in the browser:\n{text[-1500:]}")
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        if prompts and all(re.fullmatch(r"\s*\[\d+\]:\s*", p) for p in prompts):
            wait_idle(page)
            return
        time.sleep(1.0)
    raise TimeoutError(f"cells still running or not run after {timeout_ms / 1000:.0f} s: {prompts}")


def loss_text(page) -> str:
    return page.locator(".wb-loss-total").first.inner_text()


def drag_slider(page, label: str, dx: float) -> None:
    """Drag the handle of the ipywidgets slider described by ``label`` by ``dx`` pixels (release = change)."""
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(f"^{label}$")))
    handle = slider.first.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx / 2, y, steps=5)
    page.mouse.move(x + dx, y, steps=5)
    page.mouse.up()


def attempt(browser, url: str, shots: Path) -> tuple[str, str]:
    """One full pass; returns (loss before, loss after) and leaves the screenshot in ``shots``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    try:
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        wait_idle(page)
        run_all(page)
        wait_all_executed(page)
        page.wait_for_selector(".wb-loss-total", timeout=30_000)
        pngs = page.locator(".jp-OutputArea-output[data-mime-type='image/png'] img")
        assert pngs.count() >= 1, "the figure cell (show_figure) shows no image/png output in the browser"
        before = loss_text(page)
        drag_slider(page, "λ", 60)
        page.wait_for_function(
            "before => document.querySelector('.wb-loss-total').innerText !== before", arg=before, timeout=30_000)
        after = loss_text(page)
        page.evaluate("document.querySelector('.wb-loss').scrollIntoView({block: 'start'})")
        page.mouse.wheel(0, -260)  # bring the sliders above the loss line into view too
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / SCREENSHOT))
        return before, after
    except Exception:
        failures = len(list(shots.glob("loss_playground_browser_failure*.png")))
        with suppress(Exception):
            page.screenshot(path=str(shots / f"loss_playground_browser_failure{failures + 1}.png"), full_page=True)
        raise
    finally:
        page.close()


def test_loss_playground_in_jupyterlab_and_chromium(lab, playwright_api, tmp_path):
    url, log = lab
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOT_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("loss_playground_browser_failure*.png"):
        old.unlink()
    errors: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for n in (1, 2):  # retry once
                try:
                    before, after = attempt(browser, url, shots)
                    break
                except Exception as err:  # noqa: BLE001  (any failure of the attempt is retried once)
                    errors.append(f"attempt {n}: {type(err).__name__}: {err}")
            else:
                pytest.fail("\n".join(errors) + f"\nscreenshots: {shots}/loss_playground_browser_failure*.png\n"
                            f"server log tail:\n{log.read_text()[-2000:]}")
        finally:
            browser.close()
    assert float(before) != float(after), f"the loss value did not change: {before} -> {after}"
    assert (shots / SCREENSHOT).stat().st_size > 10_000
