"""The Gradio UI over HTTP: a real store built from the corpus cards, the real service, gradio_client calls."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import bot.ui as ui  # first: sets GRADIO_ANALYTICS_ENABLED before gradio is imported
from bot.knowledge import VERDICTS
from bot.service import AnswerService
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


def test_chat_streams_answer_and_panels(client, service: AnswerService) -> None:
    history, _box, card, figure, sources = client.predict(Q_JA, [], "ja", api_name="/chat")
    expected = service.ask(Q_JA)
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert text_of(history[1]) == expected.answer
    assert f'data-verdict="{expected.verdict}"' in card
    assert service.flow.outcomes[expected.verdict].label["ja"] in card
    assert figure.count('class="box') == len(service.flow.conditions) == 10
    assert figure.count("on-path") > len(expected.flow_path) and figure.count(" deciding") == 1
    assert sources.count("<details") == len(expected.citations)
    assert "[1]</span>" in sources and "<mark>" in sources


def test_chat_follow_up_keeps_history(client, service: AnswerService) -> None:
    first, *_ = client.predict(Q_JA, [], "ja", api_name="/chat")
    history, _box, card, _figure, sources = client.predict(Q_FOLLOW, first, "ja", api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert [text_of(m) for m in history[:2]] == [text_of(m) for m in first]
    assert text_of(history[2]) == Q_FOLLOW
    follow = text_of(history[3])
    assert follow and follow != text_of(first[1])
    for n in re.findall(r"\[(\d+)\]", follow):
        assert f'data-n="{n}"' in sources
    if "history" not in inspect.signature(service.ask).parameters:  # today's service answers it afresh
        expected = service.ask(Q_FOLLOW)
        assert follow == expected.answer
        assert f'data-verdict="{expected.verdict or ""}"' in card


def test_chat_empty_input_is_polite(client) -> None:
    history, *_ = client.predict("   ", [], "en", api_name="/chat")
    assert len(history) == 1 and history[0]["role"] == "assistant"
    assert text_of(history[0]).startswith("Please type a question")


def test_chat_long_question_is_cut_with_notice(client, service: AnswerService) -> None:
    limit = service.settings.max_question_chars
    question = Q_EN + " Some more detail about the data." * (limit // 20)
    history, *_ = client.predict(question, [], "en", api_name="/chat")
    assert len(text_of(history[0])) < len(question)  # shown shortened in the chat
    assert text_of(history[1]).startswith(f"⚠️ Your question was longer than {limit} characters")


def test_panels_escape_store_text(service: AnswerService) -> None:
    data = service.ask(Q_JA).to_json()
    data["citations"][0] |= {"text": "<script>alert(1)</script> 感情分析", "title": "<b>x</b>",
                             "url": "javascript:alert(1)"}
    html = ui.render_sources(data, "ja")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "javascript:" not in html
    assert "<mark>感情分析</mark>" in html


def test_flow_without_answer_has_no_path(service: AnswerService) -> None:
    for lang in ("ja", "en"):
        svg = ui.render_flow(service.flow, None, lang)
        assert svg.count('class="box') == 10 and "on-path" not in svg and " deciding" not in svg
        assert service.flow.conditions[0].name[lang] in svg
