"""The bench's own measurements on the real service (the full ``python -m bot bench`` takes ~15 minutes and is run by
hand; these check that its pieces measure what they say)."""

from __future__ import annotations

from bot.bench import _dense_modes, _reader_latency
from bot.text import normalize_question

QUESTIONS = ["Sentiment analysis with 200k labels: LLM or fine-tune?", "感情分析でラベルは3万件。どっち？"]


def test_dense_modes_compare_the_retrievers_lists_with_filtered_queries(bot_service) -> None:
    """On the small default store the retriever's lists hold (nearly) every chunk a filtered query per language
    finds; both timings are positive."""
    vectors = [bot_service.retriever.embed_query(normalize_question(q)) for q in QUESTIONS]
    report = _dense_modes(bot_service.retriever, vectors, per_list=10)
    assert report["filtered_per_language_p50_ms"] > 0 and report["retriever_p50_ms"] > 0
    assert 0.95 <= report["retriever_recall_of_filtered"] <= 1.0


def test_reader_latency_times_reading_only(bot_service) -> None:
    p50, p95 = _reader_latency(bot_service, QUESTIONS)
    assert 0 < p50 <= p95
