"""A headless Chromium driven by Playwright, for the tests that use a host's own web UI as a user does
(tests/test_comfyui_browser.py, tests/test_forge_browser.py).

Needs, and those tests skip visibly without: the `playwright` package in the test's Python (`pip install
playwright`; its own browser download is not used) and a Chromium or Chrome binary: ARCATTN_CHROMIUM, else
`chromium`, `chromium-browser` or `google-chrome` on PATH (Debian: `apt-get install chromium`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil

# Chromium on a machine without a network or a display: no sandbox (tests may run as root), no GPU, and none of
# its background connections, which a closed network refuses at every start
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    named = os.environ.get("ARCATTN_CHROMIUM")
    if named:
        return named if os.path.exists(named) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def skip_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "no playwright in this Python (pip install playwright) to drive the host's web UI"
    if chromium() is None:
        return ("no Chromium for the host's web UI: set ARCATTN_CHROMIUM, or put chromium on PATH "
                "(Debian: apt-get install chromium)")
    return None


def unexpected(errors: list, *known: str) -> list:
    """The page errors other than those containing one of `known` (a host's own, seen with or without arcattn)."""
    return [e for e in errors if not any(k in e for k in known)]


@contextlib.contextmanager
def page_at(url: str, shots_dir):
    """A page of a fresh headless Chromium opened at `url`; yields (page, errors), errors being the uncaught
    script errors of the page as they come. On the way out a screenshot goes to shots_dir/last.png, so that a
    failure can be looked at."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=120_000)
            try:
                yield page, errors
            finally:
                with contextlib.suppress(Exception):
                    page.screenshot(path=os.path.join(shots_dir, "last.png"))
        finally:
            browser.close()
