"""The UI with an LLM writer, in a real browser (Debian's chromium via Playwright):

- against a REAL llama.cpp server running SmolLM2-135M (``test_llm_server``'s fixture): streamed tokens arrive,
  the verdict card is drawn before the first token, and the note under the answer says which writer answered —
  after a fallback (the 135M model often cites nothing), why;
- against a STAND-IN streaming model (LangChain's ``GenericFakeChatModel``, slowed down; no generator LLM that
  reliably cites can run here): the cited answer is shown, the sources panel lists exactly its citations, and the
  first token reaches the browser well before the model finishes.

Screenshot: tests/artifacts/ui_llm_stream.png."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import cycle
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from test_llm_server import gguf, llm_server  # noqa: F401 (fixtures)
from test_ui import Q_EN, launch, shared_service
from test_ui_browser import ARTIFACTS, CHROMIUM, chromium, open_page

from bot.llm import make_chat_model
from bot.pipeline import Pipeline
from bot.ui import CARD
from ingest.config import Settings
from ingest.embeddings import Embedder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium "
                                                    "(`make browser` installs it)"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
]
STANDIN_REPLY = "A fine-tuned model fits this case [2], because labelled reviews are plentiful [1]."
CHUNK_DELAY_S = 0.15  # the stand-in model's pause between streamed words

# Records when the verdict card shows a verdict, when the newest bot message first has text, every distinct length
# of that text (streaming), and when the answer is complete (dotchiAfterAnswer ran).
TIMELINE_JS = """() => {
  const t = window.__tl = {card: null, first: null, lengths: [], full: null};
  const bots = () => [...document.querySelectorAll('#chat .message.bot')];
  const before = bots().length, answered = window.dotchiInput.answered;
  const check = () => {
    const now = performance.now();
    if (t.card === null && document.querySelector('#verdict-card [data-verdict]')) t.card = now;
    const all = bots();
    if (all.length > before) {
      const text = all[all.length - 1].innerText.trim();
      if (text && t.first === null) t.first = now;
      if (text && t.lengths[t.lengths.length - 1] !== text.length) t.lengths.push(text.length);
    }
    if (t.full === null && window.dotchiInput.answered > answered) { t.full = now; clearInterval(timer); }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true});
  const timer = setInterval(check, 5);
}"""


class SlowFake(GenericFakeChatModel):
    """GenericFakeChatModel streams word by word; this one pauses between words like a real model."""

    def _stream(self, *args, **kwargs):
        for chunk in super()._stream(*args, **kwargs):
            time.sleep(CHUNK_DELAY_S)
            yield chunk


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from chromium()


def ask_and_trace(browser, url: str, question: str) -> tuple[object, dict]:
    page = open_page(browser, url)
    page.evaluate(TIMELINE_JS)
    page.fill("#question textarea", question)
    page.click("#send")
    page.wait_for_function("() => window.__tl.full !== null", timeout=300_000)
    return page, page.evaluate("() => window.__tl")


def test_ui_streams_a_real_llama_cpp_model(llm_server: dict, browser, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                                           embedder: Embedder, model_cache_dir: Path) -> None:
    service = shared_service(tmp_path_factory, embedder, model_cache_dir)
    settings = Settings(_env_file=None, generator="llamacpp", llm_base_url=llm_server["base_url"],
                        llm_model="smollm2", llm_timeout_s=240, llm_max_tokens=160)
    pipeline = Pipeline(service, make_chat_model(settings))
    app, url = launch(pipeline)
    try:
        page, tl = ask_and_trace(browser, url, Q_EN)
        answer = page.locator("#chat .message.bot").last.inner_text()
        page.screenshot(path=str(ARTIFACTS / "ui_llm_stream.png"))
        page.context.close()
    finally:
        app.close()
    expected = pipeline.ask(Q_EN, writer="template")
    assert tl["card"] is not None and tl["first"] is not None
    assert tl["card"] <= tl["first"], tl  # the grounding's verdict card comes before the first token
    assert len(tl["lengths"]) >= 3, tl["lengths"]  # the text grew in several steps: streamed
    card = CARD["en"]
    fell_back = card["fell_back"].split("{reason}")[0]
    if fell_back in answer:  # the model cited nothing (or failed): the built-in answer and the reason
        assert "no citations" in answer or "error:" in answer
        assert expected.answer.split("\n")[0].strip("*") in answer  # the chat renders the markdown
        outcome = "fallback"
    else:
        assert card["by_llm"] in answer
        outcome = "llm"
    print(f"\n[UI + llama.cpp/SmolLM2] outcome={outcome} card→first token {tl['first'] - tl['card']:.0f} ms, "
          f"{len(tl['lengths'])} text updates, full {(tl['full'] - tl['card']) / 1000:.1f} s")


def test_ui_shows_a_citing_models_answer_and_exactly_its_sources(browser, tmp_path_factory: pytest.TempPathFactory,
                                                                 embedder: Embedder, model_cache_dir: Path) -> None:
    service = shared_service(tmp_path_factory, embedder, model_cache_dir)
    model = SlowFake(messages=cycle([AIMessage(STANDIN_REPLY)]))
    pipeline = Pipeline(service, model)
    sources = pipeline.service.ground(Q_EN).sources
    app, url = launch(pipeline)
    try:
        page, tl = ask_and_trace(browser, url, Q_EN)
        answer = page.locator("#chat .message.bot").last.inner_text()
        listed = page.eval_on_selector_all("#sources-panel details.source", "els => els.map(e => e.dataset.chunk)")
        page.context.close()
    finally:
        app.close()
    assert "A fine-tuned model fits this case [1], because labelled reviews are plentiful [2]." in answer
    assert CARD["en"]["by_llm"] in answer
    assert listed == [sources[1].id, sources[0].id]  # exactly the cited sources, renumbered in order of use
    words = len(STANDIN_REPLY.split())
    assert (tl["full"] - tl["first"]) / 1000 >= (words - 3) * CHUNK_DELAY_S, tl  # first token well before the end
    assert tl["card"] <= tl["first"]
