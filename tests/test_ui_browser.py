"""The UI in a real browser: Debian's chromium driven by Playwright (sync API), against the real service.

Screenshots go to tests/artifacts/: ui_desktop_1440.png (the first screen at 1440×900 after an answer),
ui_lang_switch.png (the same answer after switching the UI to English), ui_offtopic_cleared.png (an off-topic turn
after a verdict), ui_phone_390.png / ui_phone_390_full.png (390×844 after an answer: first screen / whole page),
ui_ja.png and ui_en.png (whole pages with a source opened).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ui import Q_EN, Q_JA, Q_OFF_AFTER, launch, shared_service

import bot.ui as ui_module
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
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
USER_ROWS = "#chat .message-row.user-row"
BOT_ROWS = "#chat .message-row.bot-row"
# Records, in the page, when the send button was pressed, when the newest bot message first shows text, and
# when the answer is complete (streamed, panels drawn in the given language, chat scrolled: dotchiAfterAnswer ran).
TIMER_JS = """lang => {
  const t = window.__dotchi = {submit: null, first: null, full: null};
  const bots = () => [...document.querySelectorAll('#chat .message.bot')];
  const before = bots().length, answered = window.dotchiInput.answered;
  document.querySelector('#send').addEventListener('click', () => { t.submit ??= performance.now(); },
                                                   {capture: true, once: true});
  const check = () => {
    if (t.submit === null) return;
    const all = bots();
    if (t.first === null && all.length > before && all[all.length - 1].innerText.trim()) t.first = performance.now();
    if (t.full === null && window.dotchiInput.answered > answered &&
        document.querySelector(`#verdict-card [data-verdict][lang="${lang}"]`)) {
      t.full = performance.now();
      clearInterval(timer);
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true});
  const timer = setInterval(check, 10);
}"""
# Rectangles (viewport px) of the parts the layout promises to show.
RECTS_JS = """() => {
  const rect = sel => { const r = document.querySelector(sel)?.getBoundingClientRect();
                        return r ? {top: r.top, bottom: r.bottom, left: r.left, right: r.right} : null; };
  const rows = document.querySelectorAll('#chat .message-row.bot-row');
  const last = rows[rows.length - 1]?.getBoundingClientRect();
  return {input: rect('#question textarea'), card: rect('#verdict-card'), chat: rect('#chat'),
          scroller: rect('#chat .bubble-wrap'), answer: last ? {top: last.top, bottom: last.bottom} : null,
          composer: rect('#composer'), scrollY: window.scrollY};
}"""
# Rendered size (px) of every label of the visible flow drawing: CSS font size times the drawing's scale.
LABEL_SIZES_JS = """() => {
  const svg = [...document.querySelectorAll('#flow-svg svg.flow')].find(s => s.getBoundingClientRect().width > 0);
  const scale = svg.getScreenCTM().a;
  return {layout: svg.classList.contains('tall') ? 'tall' : 'wide', scale,
          sizes: [...svg.querySelectorAll('text')].map(t => parseFloat(getComputedStyle(t).fontSize) * scale),
          svgRight: svg.getBoundingClientRect().right,
          panelRight: document.querySelector('#flow-svg .panel').getBoundingClientRect().right};
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


def chromium() -> Iterator[object]:
    """Debian's chromium through Playwright, headless; closed when the generator ends."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser(ui) -> Iterator[object]:
    yield from chromium()


def open_page(browser, url: str, viewport: dict[str, int] = DESKTOP, mobile: bool = False):
    """A fresh page (own context) on the app, once the input handling is installed."""
    context = browser.new_context(viewport=viewport, locale="ja-JP", is_mobile=mobile, has_touch=mobile)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#flow-svg svg.wide", state="attached")
    page.wait_for_function("() => window.dotchiInput && window.dotchiAfterAnswer")
    return page


@pytest.fixture
def page(browser, ui) -> Iterator[object]:
    page = open_page(browser, ui[1])
    try:
        yield page
    finally:
        page.context.close()


def answered(page) -> int:
    return page.evaluate("() => window.dotchiInput.answered")


def wait_answer(page, before: int) -> None:
    """Until the answer after ``before`` answers is complete (streamed, panels drawn, chat scrolled)."""
    page.wait_for_function("n => window.dotchiInput.answered > n", arg=before, timeout=60_000)


def ask(page, question: str, lang: str) -> dict[str, float]:
    """Type a question, press send, wait for the full answer; returns seconds to first text and to the end."""
    page.evaluate(TIMER_JS, lang)
    page.fill("#question textarea", question)
    page.click("#send")
    page.wait_for_function("() => window.__dotchi.full !== null", timeout=60_000)
    t = page.evaluate("() => window.__dotchi")
    return {"first": (t["first"] - t["submit"]) / 1000, "full": (t["full"] - t["submit"]) / 1000}


def ask_with_enter(page, question: str) -> None:
    before = answered(page)
    page.click("#question textarea")
    page.fill("#question textarea", question)
    page.keyboard.press("Enter")
    wait_answer(page, before)


def assert_nothing_sent(page, users: int) -> None:
    page.wait_for_timeout(600)  # a send would show the question in the chat well within this
    assert page.locator(USER_ROWS).count() == users


def test_browser_japanese_then_english(ui, browser, capsys: pytest.CaptureFixture[str]) -> None:
    service, url = ui
    page = open_page(browser, url)
    assert page.inner_text("#send").strip() == "送信"

    timing = ask(page, Q_JA, "ja")
    expected = service.ask(Q_JA)
    label = service.flow.outcomes[expected.verdict].label["ja"]
    assert label in page.inner_text("#verdict-card")
    assert page.locator("#flow-svg svg.wide .on-path").count() > 0
    assert page.locator("#flow-svg svg.wide .deciding").count() == 1
    deciding_step = page.locator("#flow-svg svg.wide g.cond:has(.deciding)").get_attribute("data-step")
    assert deciding_step == str(expected.deciding_step)
    assert page.locator("#sources-panel .source summary").first.inner_text().startswith("[1]")
    assert page.locator("#sources-panel details.source").count() == len(expected.citations)
    bot_text = page.locator("#chat .message.bot").last.inner_text()
    assert "結論" in bot_text and "出典" in bot_text

    # 1440×900: the input and the verdict fit in the first screen, and the chat shows the answer's start.
    r = page.evaluate(RECTS_JS)
    assert r["scrollY"] == 0
    assert r["input"]["top"] >= 0 and r["input"]["bottom"] <= DESKTOP["height"], r
    assert r["card"]["top"] >= 0 and r["card"]["bottom"] <= DESKTOP["height"], r
    assert 0 <= r["answer"]["top"] - r["scroller"]["top"] <= 40, r
    assert r["answer"]["bottom"] > r["scroller"]["bottom"]  # a long answer: its end is further down
    page.screenshot(path=str(ARTIFACTS / "ui_desktop_1440.png"))

    page.locator("#sources-panel .source summary").first.click()  # a source expands to show its highlighted text
    assert page.locator("#sources-panel details.source").first.get_attribute("open") is not None
    assert page.locator("#sources-panel details.source[open] mark").count() > 0
    page.screenshot(path=str(ARTIFACTS / "ui_ja.png"), full_page=True)

    # Switching the UI language re-renders the card, the flow and the panels in English.
    page.get_by_label("English").check()
    page.wait_for_function("() => document.querySelector('#send').innerText.trim() === 'Send'")
    assert page.inner_text("#clear").strip() == "Clear"
    assert "an LLM, or a fine-tuned model?" in page.inner_text("#header")
    page.wait_for_selector('#verdict-card .card[lang="en"]')
    card = page.inner_text("#verdict-card")
    assert service.flow.outcomes[expected.verdict].label["en"] in card and label not in card
    assert page.locator('#flow-svg .panel[lang="en"]').count() == 1
    flow_text = page.inner_text("#flow-svg")
    assert service.flow.conditions[0].name["en"] in flow_text and service.flow.conditions[0].name["ja"] not in flow_text
    assert page.locator("#flow-svg svg.wide .deciding").count() == 1  # the path is kept
    assert "Sources" in page.inner_text("#sources-panel summary.ptitle")
    assert page.locator("#sources-panel details.source").count() == len(expected.citations)
    assert "Enter sends" in page.inner_text("#input-hint")
    assert "Example questions" in page.inner_text("#examples-label")
    assert "結論" in page.locator("#chat .message.bot").last.inner_text()  # the chat keeps the answer's language
    page.screenshot(path=str(ARTIFACTS / "ui_lang_switch.png"))

    timing_en = ask(page, Q_EN, "en")
    assert service.flow.outcomes[service.ask(Q_EN).verdict].label["en"] in page.inner_text("#verdict-card")
    page.locator("#sources-panel .source summary").first.click()
    page.screenshot(path=str(ARTIFACTS / "ui_en.png"), full_page=True)
    page.context.close()

    with capsys.disabled():
        for name, t in (("ja", timing), ("en", timing_en)):
            print(f"\n[ui timing {name}] submit -> first streamed text {t['first']:.2f} s, "
                  f"-> full answer {t['full']:.2f} s", end="")
        print()


def test_browser_enter_sends_shift_enter_newlines_ime_never_sends(ui, page) -> None:
    service, _url = ui
    box = "#question textarea"
    hint = page.locator("#input-hint .hint")
    assert "Enter で送信" in hint.inner_text() and "Shift+Enter で改行" in hint.inner_text()

    page.click(box)
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value(box) == "first line\nsecond line"
    assert_nothing_sent(page, 0)

    # A real IME composition (CDP): the Enter that confirms it comes with isComposing and must not send.
    page.fill(box, "")
    page.evaluate("""() => { window.__keys = [];
      window.addEventListener('keydown', e => window.__keys.push([e.key, e.isComposing, e.keyCode]), true); }""")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "かんじ", "selectionStart": 3, "selectionEnd": 3})
    page.keyboard.press("Enter")
    cdp.send("Input.insertText", {"text": "漢字"})
    assert ["Enter", True, 13] in page.evaluate("() => window.__keys")
    assert "漢字" in page.input_value(box)
    assert_nothing_sent(page, 0)

    # The same with dispatched events: a keydown Enter with keyCode 229 (Safari's confirming Enter), then
    # compositionstart followed by a real Enter.
    page.fill(box, Q_JA)
    enter_229 = page.evaluate("""() => {
      const e = new KeyboardEvent('keydown', {key: 'Enter', code: 'Enter', bubbles: true, cancelable: true});
      Object.defineProperty(e, 'keyCode', {get: () => 229});
      document.querySelector('#question textarea').dispatchEvent(e);
      return [e.keyCode, e.isComposing, e.defaultPrevented]; }""")
    assert enter_229 == [229, False, False]  # reached the handler, which left it to the IME
    assert_nothing_sent(page, 0)
    page.dispatch_event(box, "compositionstart", {"data": ""})
    page.keyboard.press("Enter")
    page.dispatch_event(box, "compositionend", {"data": ""})
    assert_nothing_sent(page, 0)
    assert page.input_value(box).startswith(Q_JA)

    # Once the conversion is confirmed, Enter sends (and the box empties).
    before = answered(page)
    page.fill(box, Q_JA)
    page.keyboard.press("Enter")
    wait_answer(page, before)
    assert page.locator(USER_ROWS).count() == 1
    assert page.locator(USER_ROWS).last.inner_text().strip() == Q_JA
    assert page.input_value(box) == ""
    assert service.flow.outcomes[service.ask(Q_JA).verdict].label["ja"] in page.inner_text("#verdict-card")

    # An empty send shows a hint and nothing else.
    assert "is-empty" not in hint.get_attribute("class")
    page.click(box)
    page.keyboard.press("Enter")
    page.click("#send")
    assert_nothing_sent(page, 1)
    assert "is-empty" in hint.get_attribute("class")
    assert page.locator("#input-hint .empty").is_visible()
    assert page.inner_text("#input-hint .empty") == ui_module.UI["ja"]["empty_hint"]
    page.keyboard.type("a")
    assert "is-empty" not in hint.get_attribute("class")

    # The counter, and over the limit a notice before sending.
    limit = service.settings.max_question_chars
    page.fill(box, "x" * 100)
    assert page.inner_text("#input-hint .count") == f"100 / {limit:,} 文字"
    assert not page.locator("#input-hint .over").is_visible()
    long = "背景の説明です。" * 300 + Q_JA
    page.fill(box, long)
    over = page.inner_text("#input-hint .over")
    _clipped, cut = ui_module.clip_question(long, limit)
    assert page.locator("#input-hint .over").is_visible()
    assert f"{limit:,} 文字を超えています" in over and f"途中の {cut:,} 文字を省きます" in over
    assert_nothing_sent(page, 1)
    page.fill(box, "")


def test_browser_examples_ask_and_show_whole_questions(ui, page) -> None:
    service, _url = ui
    buttons = page.locator("#examples button.example")
    assert buttons.count() == len(ui_module.EXAMPLES)
    for i, question in enumerate(ui_module.EXAMPLES):
        button = buttons.nth(i)
        assert button.inner_text().strip() == question
        fits = button.evaluate("b => b.scrollWidth <= b.clientWidth + 1 && b.scrollHeight <= b.clientHeight + 1")
        assert fits, f"example {i} is cut off"
    before = answered(page)
    buttons.nth(3).click()
    wait_answer(page, before)
    assert page.locator(USER_ROWS).last.inner_text().strip() == ui_module.EXAMPLES[3]
    expected = service.ask(ui_module.EXAMPLES[3])
    assert f'data-verdict="{expected.verdict}"' in page.inner_html("#verdict-card")


def test_browser_off_topic_after_verdict_clears_panels(ui, page) -> None:
    service, _url = ui
    ask_with_enter(page, Q_JA)
    assert page.locator("#verdict-card .card[data-verdict='']").count() == 0
    assert page.locator("#flow-svg svg.wide .on-path").count() > 0
    assert page.locator("#sources-panel details.source").count() > 0

    ask_with_enter(page, Q_OFF_AFTER)
    assert page.locator(USER_ROWS).count() == 2
    assert page.locator(BOT_ROWS).last.inner_text().strip() == service.ask(Q_OFF_AFTER).answer.strip()
    card = page.inner_text("#verdict-card")
    assert ui_module.CARD["ja"]["abstain"] in card
    assert all(o.label["ja"] not in card for o in service.flow.outcomes.values())
    assert page.locator("#verdict-card .card.v-abstain[data-verdict='']").count() == 1
    assert page.locator("#flow-svg .on-path, #flow-svg .deciding, #flow-svg .has-path").count() == 0
    assert page.locator("#sources-panel details.source").count() == 0
    page.screenshot(path=str(ARTIFACTS / "ui_offtopic_cleared.png"))


def test_browser_phone_390(ui, browser, capsys: pytest.CaptureFixture[str]) -> None:
    """390×844: after an answer the verdict card is in the first screen, above the answer; the flow is drawn
    vertically with labels of at least 12 px; the sources are folded; the input stays reachable."""
    service, url = ui
    page = open_page(browser, url, PHONE, mobile=True)
    try:
        ask_with_enter(page, Q_JA)
        expected = service.ask(Q_JA)
        r = page.evaluate(RECTS_JS)
        height = PHONE["height"]
        assert r["card"]["top"] >= 0 and r["card"]["bottom"] <= height, r
        assert r["card"]["bottom"] <= r["chat"]["top"] and r["answer"]["top"] < height, r  # card, then the answer
        assert 0 <= r["answer"]["top"] - r["scroller"]["top"] <= 40, r
        assert r["input"]["top"] >= 0 and r["input"]["bottom"] <= height, r
        assert service.flow.outcomes[expected.verdict].label["ja"] in page.inner_text("#verdict-card")
        page.screenshot(path=str(ARTIFACTS / "ui_phone_390.png"))

        page.locator("#flow-svg").scroll_into_view_if_needed()
        labels = page.evaluate(LABEL_SIZES_JS)
        assert labels["layout"] == "tall" and labels["scale"] == pytest.approx(1.0)
        assert labels["sizes"] and min(labels["sizes"]) >= 12, labels["sizes"]
        assert labels["svgRight"] <= labels["panelRight"]  # the whole drawing is on the screen
        assert page.locator("#flow-svg svg.tall .deciding").count() == 1
        r = page.evaluate(RECTS_JS)
        assert r["input"]["top"] >= 0 and r["input"]["bottom"] <= height, r  # still in reach further down

        sources = page.locator("#sources-panel details.sbox")
        assert sources.get_attribute("open") is None  # folded on a phone
        page.click("#sources-panel summary.ptitle")
        assert sources.get_attribute("open") is not None
        assert page.locator("#sources-panel details.source").count() == len(expected.citations)
        page.screenshot(path=str(ARTIFACTS / "ui_phone_390_full.png"), full_page=True)
        with capsys.disabled():
            print(f"\n[ui phone] flow labels {min(labels['sizes']):.1f}-{max(labels['sizes']):.1f} px "
                  f"({labels['layout']} layout, scale {labels['scale']:.2f})")
    finally:
        page.context.close()
