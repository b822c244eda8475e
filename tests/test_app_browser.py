"""The explorer in a real browser: ``streamlit run`` on a free localhost port, headless
Chromium (Debian's ``chromium``, driven by Playwright), a sentence typed into the page, and
the coloured tokens asserted on the rendered page.

``EXPLORER_SCREENSHOT=docs/explorer.png`` saves the page (the README's screenshot).
Skipped, with the reason printed, only where no browser or no Playwright can be had.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from app_support import APP_FILE, KEY, AppTree, app_tree  # noqa: F401

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SENTENCE = "the music was awful but the book was great"
START_TIMEOUT = 60.0


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    reason = "no Chromium on PATH (.ci/run installs Debian's `chromium`)"
    print(f"SKIP browser test: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"streamlit did not answer in {START_TIMEOUT:.0f} s:\n{log.read_text()}")


@pytest.fixture
def server(app_tree: AppTree, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """``streamlit run`` of the explorer on the fixture tree; yields its URL."""
    port = _free_port()
    log = tmp_path / "streamlit.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP_FILE),
        "--server.headless", "true", "--server.address", "127.0.0.1",
        "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
        "--", "--root", str(app_tree.root),
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def _chromium_page() -> Iterator[Any]:
    """A Playwright page in headless Chromium (skips where there is none)."""
    executable = _browser()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIP browser test: playwright is not installed (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def test_typing_a_sentence_colours_its_tokens_in_chromium(server: str, tmp_path: Path) -> None:
    url = f"{server}/?page=Sentence&model={KEY.model}&task={KEY.task}&seed={KEY.seed}"
    with _chromium_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        box = page.get_by_label("Sentence (Enter to run)")
        box.wait_for(timeout=90_000)
        box.fill(SENTENCE)
        box.press("Enter")
        heading = page.get_by_text("ft_L1 · feature", exact=False).first
        heading.wait_for(timeout=90_000)
        # The heading and the token strip are separate elements, drawn in either order: wait
        # for the strip's last token before reading it.
        tokens = page.locator("span[title]")
        tokens.filter(has_text="[SEP]").first.wait_for(timeout=90_000)
        spans = tokens.all_inner_texts()
        screenshot = os.environ.get("EXPLORER_SCREENSHOT")
        if screenshot:
            page.wait_for_timeout(1500)  # let the charts draw
            page.screenshot(path=screenshot, full_page=False)
    words = SENTENCE.split()
    assert ["[CLS]", *words, "[SEP]"] == spans[: len(words) + 2]


def test_a_crosscoder_card_link_renders_without_error_in_chromium(server: str) -> None:
    query = f"model={KEY.model}&task={KEY.task}&seed={KEY.seed}&cc_layer=1&latent=0"
    with _chromium_page() as page:
        page.goto(f"{server}/?page=Crosscoders&{query}", wait_until="domcontentloaded")
        page.get_by_text("crosscoder L1 · latent 0 of", exact=False).first.wait_for(timeout=90_000)
        page.get_by_text("Relative decoder norm r of alive latents").first.wait_for()
        page.locator("span[title]").first.wait_for(timeout=90_000)  # the top texts, drawn last
        errors = page.locator('[data-testid="stException"]').count()
    assert errors == 0
