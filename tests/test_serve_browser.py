"""The chat page in a real browser: headless Chromium (Debian's `chromium` package, which
.ci/run installs) driven by Playwright loads `/`, sends a message, sees the answer stream in
piece by piece, resets, and takes a screenshot: into the test's temporary directory, and
into docs/serving_chat.png when MYLM_UPDATE_SCREENSHOT=1 (so a test run leaves the tracked
file alone).

Skipped, with the reason, where Playwright's Python package or the chromium binary is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serve_helpers import own_server, server, shared_run

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e \".[serve]\"")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MYLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "docs" / "serving_chat.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; "
                                                         ".ci/run does it where it can)")


def test_the_chat_page_streams_an_answer_in_chromium(tmp_path_factory):
    url, _ = server(shared_run(tmp_path_factory))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Record the answer's text each time it changes: streaming shows several states.
            page.expose_function("record", lambda text: states.append(text))
            states: list[str] = []
            page.goto(url + "/")
            sync_api.expect(page.locator("#model")).to_contain_text("tiny")
            page.fill("#max_tokens", "40")
            page.fill("#temperature", "0")
            page.evaluate("""() => new MutationObserver(() => {
                const answers = document.querySelectorAll('.msg.assistant');
                if (answers.length) window.record(answers[answers.length - 1].textContent);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true})""")
            page.fill("#input", "Are you resolved?")
            page.press("#input", "Enter")
            sync_api.expect(page.locator(".msg.user")).to_have_text("Are you resolved?")
            sync_api.expect(page.locator(".msg.assistant.streaming")).to_have_count(0, timeout=60_000)
            sync_api.expect(page.locator("#send")).to_be_enabled()
            answer = page.locator(".msg.assistant").inner_text()
            assert answer and not errors, errors
            growing = [s for s in dict.fromkeys(states) if s]
            assert len(growing) > 1 and growing[-1] == page.locator(".msg.assistant").text_content()
            assert all(b.startswith(a) for a, b in zip(growing, growing[1:]))  # it grew piece by piece
            assert "pieces in" in page.locator("#stats").inner_text()
            update = os.environ.get("MYLM_UPDATE_SCREENSHOT") == "1"
            shot = SCREENSHOT if update else tmp_path_factory.mktemp("shot") / SCREENSHOT.name
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            page.click("#reset")
            sync_api.expect(page.locator(".msg")).to_have_count(0)
        finally:
            browser.close()


def test_the_chat_page_asks_for_and_sends_the_api_key(tmp_path_factory):
    """A server started with --api-key: the page says it needs one, and with the key typed in
    its settings it loads the model and gets an answer (Authorization: Bearer, as OpenAI's)."""
    background, _ = own_server(shared_run(tmp_path_factory), api_key="page-key")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(background.url + "/")
            sync_api.expect(page.locator("#model")).to_contain_text("needs an API key")
            page.fill("#api_key", "page-key")
            page.dispatch_event("#api_key", "change")
            sync_api.expect(page.locator("#model")).to_contain_text("tiny")
            page.fill("#max_tokens", "40")
            page.fill("#temperature", "0")
            page.fill("#input", "Are you resolved?")
            page.press("#input", "Enter")
            sync_api.expect(page.locator(".msg.assistant.streaming")).to_have_count(0, timeout=60_000)
            assert page.locator(".msg.error").count() == 0 and page.locator(".msg.assistant").inner_text()
        finally:
            browser.close()
            background.stop()
