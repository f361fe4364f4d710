"""The Gradio UI over HTTP: a real store built from the corpus cards, the real service, gradio_client calls."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import bot.ui as ui  # first: sets GRADIO_ANALYTICS_ENABLED before gradio is imported
from bot.knowledge import VERDICTS
from bot.service import AnswerService
from bot.text import normalize_question
from ingest.config import Settings
from ingest.embeddings import Embedder
from ingest.pipeline import run_ingest

if TYPE_CHECKING:
    import gradio as gr

REPO_ROOT = Path(__file__).resolve().parents[1]
Q_JA = "感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？"
Q_EN = "Named entity recognition with 50k labelled sentences: should I use an LLM or fine-tune a model?"
Q_OFF = "明日の天気は？"
Q_FOLLOW = "ラベル付きデータが30件しかなかったら、LLMとファインチューニング、どっち？"
Q_OFF_AFTER = "ちなみに今日のランチのおすすめは？"  # off-topic, asked right after a verdict
_SERVICE: dict[str, AnswerService] = {}
# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def shared_service(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder,
                   model_cache_dir: Path) -> AnswerService:
    """The UI tests' AnswerService over a tmp store of the corpus cards, ingested once per test session."""
    if "service" not in _SERVICE:
        with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test env cleanup
            for name in [n for n in os.environ if n.startswith("DOTCHI_")]:
                mp.delenv(name)
            settings = Settings(_env_file=None, store_path=tmp_path_factory.mktemp("ui") / "store",
                                collection="uitest", corpus_dir=REPO_ROOT / "corpus", model_cache_dir=model_cache_dir)
        report = run_ingest(settings, [REPO_ROOT / "corpus" / "cards"], embedder=embedder, quiet=True)
        assert report.failed_files == 0 and report.chunks_total > 100, report.summary()
        _SERVICE["service"] = AnswerService(settings, embedder=embedder)
    return _SERVICE["service"]


def launch(service: AnswerService) -> tuple[gr.Blocks, str]:
    """Start build_app(service) on 127.0.0.1 and a free port; returns (app, url)."""
    from conftest import free_port

    app = ui.build_app(service)
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    return app, app.local_url


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, model_cache_dir: Path) -> AnswerService:
    return shared_service(tmp_path_factory, embedder, model_cache_dir)


@pytest.fixture(scope="module")
def client(service: AnswerService) -> Iterator[object]:
    from gradio_client import Client

    app, url = launch(service)
    try:
        yield Client(url, verbose=False)
    finally:
        app.close()


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


def assert_citations_used(data: dict) -> None:
    numbers = [c["n"] for c in data["citations"]]
    assert numbers == list(range(1, len(numbers) + 1))
    for n in numbers:
        assert f"[{n}]" in data["answer"], f"[{n}] is listed but not used in the answer"


def test_api_ask_japanese(client, service: AnswerService) -> None:
    data = client.predict(Q_JA, api_name="/ask")
    assert data == service.ask(Q_JA).to_json()  # the same contract as `python -m bot ask --json`
    assert data["language"] == "ja"
    assert data["verdict"] in VERDICTS and not data["abstained"]
    assert data["citations"]
    assert_citations_used(data)
    assert {"n", "doc_id", "title", "section", "url", "text", "chunk_id", "lang"} <= set(data["citations"][0])


def test_api_ask_english(client) -> None:
    data = client.predict(Q_EN, api_name="/ask")
    assert data["language"] == "en"
    assert data["verdict"] in VERDICTS and not data["abstained"]
    assert data["flow_path"] and data["deciding_step"] is not None
    assert_citations_used(data)


def test_api_ask_off_topic(client) -> None:
    data = client.predict(Q_OFF, api_name="/ask")
    assert data["abstained"] is True
    assert data["citations"] == []
    assert data["verdict"] is None


def test_api_ask_takes_chat_history(client, service: AnswerService) -> None:
    """The `ask` API's optional history (chat messages) means what the chat means: a follow-up keeps the earlier
    facts, an off-topic turn abstains; and the chat answers a second turn exactly as the API does."""
    first, *_ = client.predict(Q_JA, [], "ja", api_name="/chat")
    history = [{"role": m["role"], "content": text_of(m)} for m in first]
    data = client.predict(Q_FOLLOW, history, api_name="/ask")
    assert data == service.ask(Q_FOLLOW, history=history).to_json()
    assert data["follow_up"] is True and data["language"] == "ja"
    chat, *_ = client.predict(Q_FOLLOW, first, "ja", api_name="/chat")
    assert text_of(chat[-1]) == data["answer"]
    off = client.predict(Q_OFF_AFTER, history, api_name="/ask")
    assert off["abstained"] is True and off["verdict"] is None and off["follow_up"] is False
    assert client.predict(Q_JA, [], api_name="/ask") == client.predict(Q_JA, api_name="/ask")


def svgs(figure: str) -> dict[str, str]:
    """The flow panel's two drawings of Figure 2 by layout: {"wide": <svg ...>, "tall": <svg ...>}."""
    found = {layout: svg for svg, layout in re.findall(r'(<svg class="flow (wide|tall)[^"]*".*?</svg>)', figure, re.S)}
    assert set(found) == {"wide", "tall"}
    return found


def test_chat_streams_answer_and_panels(client, service: AnswerService) -> None:
    history, _box, card, figure, sources, _hint = client.predict(Q_JA, [], "ja", api_name="/chat")
    expected = service.ask(Q_JA)
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert text_of(history[1]) == expected.answer
    assert f'data-verdict="{expected.verdict}"' in card
    assert service.flow.outcomes[expected.verdict].label["ja"] in card
    for layout, svg in svgs(figure).items():
        assert svg.count('class="box') == len(service.flow.conditions) == 10, layout
        assert svg.count("on-path") > len(expected.flow_path) and svg.count(" deciding") == 1, layout
    assert sources.count('<details class="source"') == len(expected.citations)
    assert "[1]</span>" in sources
    # every cited chunk marks the sentence that supports the line citing it
    assert sources.count('<mark class="support">') == len(expected.citations)


def test_chat_follow_up_keeps_history(client, service: AnswerService) -> None:
    first, *_ = client.predict(Q_JA, [], "ja", api_name="/chat")
    history, _box, card, _figure, sources, _hint = client.predict(Q_FOLLOW, first, "ja", api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert [text_of(m) for m in history[:2]] == [text_of(m) for m in first]
    assert text_of(history[2]) == Q_FOLLOW
    follow = text_of(history[3])
    assert follow and follow != text_of(first[1])
    for n in re.findall(r"\[(\d+)\]", follow):
        assert f'data-n="{n}"' in sources
    prior = [{"role": m["role"], "content": text_of(m)} for m in first]
    expected = service.ask(Q_FOLLOW, history=prior)
    assert follow == expected.answer
    assert f'data-verdict="{expected.verdict or ""}"' in card


def test_chat_off_topic_after_verdict_clears_panels(client, service: AnswerService) -> None:
    first, _box, card, *_ = client.predict(Q_JA, [], "ja", api_name="/chat")
    assert 'data-verdict=""' not in card
    history, _box, card, figure, sources, _hint = client.predict(Q_OFF_AFTER, first, "ja", api_name="/chat")
    assert text_of(history[-1]) == service.ask(Q_OFF_AFTER).answer  # the refusal
    assert 'data-verdict=""' in card and "v-abstain" in card
    assert all(service.flow.outcomes[v].label["ja"] not in card for v in service.flow.outcomes)
    assert "on-path" not in figure and " deciding" not in figure and "has-path" not in figure
    assert '<details class="source"' not in sources and ui.UI["ja"]["sources_none"] in sources


def test_chat_empty_input_only_hints(client) -> None:
    history, _box, _card, _figure, _sources, hint = client.predict("   ", [], "en", api_name="/chat")
    assert history == []  # nothing appears in the chat
    assert 'class="hint is-empty"' in hint and ui.UI["en"]["empty_hint"] in hint
    assert "Enter sends" in hint


def test_chat_long_question_keeps_beginning_and_end(client, service: AnswerService) -> None:
    """Over the limit, the chat keeps the beginning and the end of the question (where the ask usually is), says
    so, and the service answers the ask."""
    limit = service.settings.max_question_chars
    question = "Some background about our data and team. " * (limit // 30) + Q_EN
    clipped, cut = ui.clip_question(question, limit)
    assert clipped.startswith("Some background") and clipped.endswith(Q_EN) and ui.CLIP_SEP in clipped
    assert cut > 0 and len(normalize_question(clipped)) <= limit
    history, _box, card, *_ = client.predict(question, [], "en", api_name="/chat")
    assert text_of(history[0]) == clipped
    notice = f"⚠️ Your question was longer than {limit:,} characters: its beginning and end were kept and {cut:,}"
    assert text_of(history[1]).startswith(notice)
    expected = service.ask(clipped)
    assert expected.notice is None and expected.verdict is not None and expected.task == "ner"
    assert text_of(history[1]).endswith(expected.answer)
    assert f'data-verdict="{expected.verdict}"' in card


def test_clip_question_counts_like_the_service() -> None:
    assert ui.clip_question("short question?", 50) == ("short question?", 0)
    spaced = "word   " * 20  # 140 characters, 99 once whitespace is collapsed
    assert ui.clip_question(spaced, 100) == (spaced, 0)
    for text in ("a" * 300 + " ASK?", "…" * 300 + " ASK?", "感情分析" * 80 + "。どっち？"):
        clipped, cut = ui.clip_question(text, 100)
        size = len(normalize_question(clipped))
        assert size <= 100 and clipped.endswith(text[-5:]) and clipped.startswith(text[:3])
        assert cut == len(normalize_question(text)) - (size - ui.CLIP_SEP_LEN)


def test_panels_escape_store_text(service: AnswerService) -> None:
    data = service.ask(Q_JA).to_json()
    data["citations"][0] |= {"text": "<script>alert(1)</script> 感情分析", "title": "<b>x</b>",
                             "url": "javascript:alert(1)"}
    html = ui.render_sources(data, "ja")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "javascript:" not in html
    assert "<mark>感情分析</mark>" in html


def test_sources_mark_the_supporting_sentence(service: AnswerService) -> None:
    data = service.ask(Q_JA).to_json()
    cited = data["citations"][0]
    sentence = "この文が主張を支えます。"
    cited |= {"text": f"前置き <b>感情分析</b>。{sentence}後の文。", "support": sentence}
    html = ui.render_sources(data, "ja")
    assert f'<mark class="support">{sentence}</mark>' in html
    assert "<mark>" not in html.split('data-n="2"')[0]  # no question words marked in that chunk
    assert "&lt;b&gt;" in html
    cited["support"] = "not in the text"
    assert '<mark class="support">' not in ui.render_sources(data, "ja").split('data-n="2"')[0]


def test_flow_without_answer_has_no_path(service: AnswerService) -> None:
    for lang in ("ja", "en"):
        for layout, svg in svgs(ui.render_flow(service.flow, None, lang)).items():
            assert svg.count('class="box') == 10 and "on-path" not in svg and " deciding" not in svg, layout
            assert service.flow.conditions[0].name[lang] in svg


def test_tall_flow_fits_a_phone_at_full_size(service: AnswerService) -> None:
    """The phone drawing is TALL_W px wide (drawn 1:1), long condition names wrap onto a second line, and every
    label of it is at least 12 px."""
    data = service.ask(Q_EN).to_json()
    tall = svgs(ui.render_flow(service.flow, data, "en"))["tall"]
    width = float(re.search(r'viewBox="0 0 ([\d.]+) ', tall).group(1))
    assert width == ui.TALL_W
    longest = max((c.name["en"] for c in service.flow.conditions), key=len)
    assert longest not in tall and all(w in tall for w in longest.split())  # wrapped
    for x, w in re.findall(r'<rect class="(?:box|outcome)[^"]*"(?: data-outcome="\w+")? x="([\d.]+)" y="[\d.]+" '
                           r'width="([\d.]+)"', tall):
        assert float(x) >= 0 and float(x) + float(w) <= width
    sizes = re.findall(r"\.(name|badge-t|elabel|otext) \{[^}]*font-size: ([\d.]+)px", ui.FLOW_CSS)
    tall_sizes = dict(re.findall(r"\.tall \.(name|otext) \{ font-size: ([\d.]+)px", ui.FLOW_CSS))
    assert {name for name, _ in sizes} == {"name", "badge-t", "elabel", "otext"}
    assert all(float(tall_sizes.get(name, size)) >= 12 for name, size in sizes)


def test_panels_follow_the_ui_language(service: AnswerService) -> None:
    """Card, flow and sources panel are drawn in the UI language, whatever the answer's language."""
    data = service.ask(Q_JA).to_json()
    outcome = service.flow.outcomes[data["verdict"]]
    for lang, other in (("ja", "en"), ("en", "ja")):
        card = ui.render_verdict(service.flow, data, lang)
        assert outcome.label[lang] in card and outcome.label[other] not in card and f'lang="{lang}"' in card
        figure = ui.render_flow(service.flow, data, lang)
        assert all(c.name[lang] in figure for c in service.flow.conditions)
        assert ui.UI[lang]["sources_h"] in ui.render_sources(data, lang)
        assert ui.UI[lang]["keys"] in ui.render_hint(lang, 2000)


CONCURRENT_QUESTIONS = [Q_JA, Q_EN, Q_OFF, Q_FOLLOW, "Summarising news articles: LLM or a fine-tuned model?"]


def test_fifty_chats_from_ten_threads(client, service: AnswerService) -> None:
    """The served app under load: 50 /ask calls from 10 threads (one gradio_client each) → no errors, and every
    answer equals the sequential answer to the same question (timing fields aside)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    def stable(data: dict) -> dict:
        return {k: v for k, v in data.items() if k != "seconds"}

    sequential = {q: stable(client.predict(q, api_name="/ask")) for q in CONCURRENT_QUESTIONS}
    url = client.src

    def worker(offset: int) -> list[tuple[str, dict]]:
        own = Client(url, verbose=False)
        asked = [CONCURRENT_QUESTIONS[(offset + i) % len(CONCURRENT_QUESTIONS)] for i in range(5)]
        return [(q, stable(own.predict(q, api_name="/ask"))) for q in asked]

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = [pair for batch in pool.map(worker, range(10)) for pair in batch]
    assert len(results) == 50
    mismatched = [q for q, data in results if data != sequential[q]]
    assert mismatched == []
