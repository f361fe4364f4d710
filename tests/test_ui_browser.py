"""The UI in a real browser: Debian's chromium driven by Playwright (sync API), against the real service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ui import Q_EN, Q_JA, launch, shared_service

from bot.service import AnswerService
from ingest.embeddings import Embedder

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium "
                                                    "(`make browser` installs it)"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Records, in the page, when the send button was pressed, when the newest bot message first shows text, and
# when the verdict card (filled in with the last streamed line) shows a verdict for the given language.
TIMER_JS = """lang => {
  const t = window.__dotchi = {submit: null, first: null, full: null};
  const bots = () => [...document.querySelectorAll('#chat .message.bot')];
  const before = bots().length;
  document.querySelector('#send').addEventListener('click', () => { t.submit ??= performance.now(); },
                                                   {capture: true, once: true});
  const check = () => {
    if (t.submit === null) return;
    const all = bots();
    if (t.first === null && all.length > before && all[all.length - 1].innerText.trim()) t.first = performance.now();
    if (t.full === null && document.querySelector(`#verdict-card [data-verdict][lang="${lang}"]`)) {
      t.full = performance.now();
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true});
}"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder,
       model_cache_dir: Path) -> Iterator[tuple[AnswerService, str]]:
    service = shared_service(tmp_path_factory, embedder, model_cache_dir)
    app, url = launch(service)
    try:
        yield service, url
    finally:
        app.close()


@pytest.fixture(scope="module")
def page(ui) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000}, locale="ja-JP")
            yield context.new_page()
        finally:
            browser.close()


def ask(page, question: str, lang: str) -> dict[str, float]:
    """Type a question, press send, wait for the full answer; returns seconds to first text and to the end."""
    page.evaluate(TIMER_JS, lang)
    page.fill("#question textarea", question)
    page.click("#send")
    page.wait_for_function("() => window.__dotchi.full !== null", timeout=60_000)
    t = page.evaluate("() => window.__dotchi")
    return {"first": (t["first"] - t["submit"]) / 1000, "full": (t["full"] - t["submit"]) / 1000}


def test_browser_japanese_then_english(ui, page, capsys: pytest.CaptureFixture[str]) -> None:
    service, url = ui
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(url)
    page.wait_for_selector("#flow-svg svg")
    assert page.inner_text("#send").strip() == "送信"

    timing = ask(page, Q_JA, "ja")
    expected = service.ask(Q_JA)
    label = service.flow.outcomes[expected.verdict].label["ja"]
    assert label in page.inner_text("#verdict-card")
    assert page.locator("#flow-svg svg .on-path").count() > 0
    assert page.locator("#flow-svg svg .deciding").count() == 1
    deciding_step = page.locator("#flow-svg svg g.cond:has(.deciding)").get_attribute("data-step")
    assert deciding_step == str(expected.deciding_step)
    assert page.locator("#sources-panel summary").first.inner_text().startswith("[1]")
    assert page.locator("#sources-panel details").count() == len(expected.citations)
    bot_text = page.locator("#chat .message.bot").last.inner_text()
    assert "結論" in bot_text and "出典" in bot_text
    page.locator("#sources-panel summary").first.click()  # a source expands to show its highlighted text
    assert page.locator("#sources-panel details").first.get_attribute("open") is not None
    assert page.locator("#sources-panel details[open] mark").count() > 0
    page.screenshot(path=str(ARTIFACTS / "ui_ja.png"), full_page=True)

    page.get_by_label("English").check()
    page.wait_for_function("() => document.querySelector('#send').innerText.trim() === 'Send'")
    assert page.inner_text("#clear").strip() == "Clear"
    assert "an LLM, or a fine-tuned model?" in page.inner_text("#header")
    assert label in page.inner_text("#verdict-card")  # the card keeps the answer's language
    timing_en = ask(page, Q_EN, "en")
    assert service.flow.outcomes[service.ask(Q_EN).verdict].label["en"] in page.inner_text("#verdict-card")
    page.locator("#sources-panel summary").first.click()
    page.screenshot(path=str(ARTIFACTS / "ui_en.png"), full_page=True)

    with capsys.disabled():
        for name, t in (("ja", timing), ("en", timing_en)):
            print(f"\n[ui timing {name}] submit -> first streamed text {t['first']:.2f} s, "
                  f"-> full answer {t['full']:.2f} s", end="")
        print()
