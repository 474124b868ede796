"""Headless Chromium (Debian's ``chromium``) driven by playwright, for the HTML report tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

#: without the background-networking flags Chromium waits on a network that is not there
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# every token dot of the page: the renderers the HTML report names token-dots / prefill-dots
COUNT_DOTS = """() => {
  let n = 0;
  for (const m of Bokeh.documents[0]._all_models.values()) {
    if (m.type === 'GlyphRenderer' && (m.name === 'token-dots' || m.name === 'prefill-dots'))
      n += m.data_source.get_length();
  }
  return n;
}"""

READY = """() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.index
  && Object.keys(Bokeh.index).length > 0 && Bokeh.documents[0].is_idle"""


def chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def open_page(path: str, screenshot: str, js: str = COUNT_DOTS) -> dict[str, Any]:
    """Open ``path`` (a file) headless, wait for bokeh to draw, run ``js``, take a full-page
    screenshot; returns ``{"value", "console", "errors", "requests"}``."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    assert exe, "chromium not found (apt-get install chromium; CI's .ci/run installs it)"
    console: list[tuple[str, str]] = []
    errors: list[str] = []
    requests: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=exe,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = ctx.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto("file://" + os.path.abspath(path))
            page.wait_for_function(READY, timeout=120_000)
            value = page.evaluate(js)
            page.screenshot(path=screenshot, full_page=True)
        finally:
            ctx.close()
    return {"value": value, "console": console, "errors": errors, "requests": requests}
