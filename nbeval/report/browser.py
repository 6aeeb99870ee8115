"""Open the report in a real headless browser (Debian's chromium through Playwright): it must
render and every image must load; the full-page screenshot goes to the MLflow run beside it."""

from __future__ import annotations

import shutil
from pathlib import Path


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_check(html: Path, screenshot: Path) -> dict[str, int]:
    """{"images": n, "broken": images that did not decode}; writes the screenshot."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(html.resolve().as_uri(), wait_until="load")
            sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"images": len(sizes), "broken": sum(1 for w in sizes if not w)}
