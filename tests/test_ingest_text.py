"""ingest.text: the one CJK pattern, language detector and stemmer (shared by ingest and bot)."""

from __future__ import annotations

import pytest

from bot import engine, text
from ingest import chunking, loaders, terms
from ingest.text import CJK, WIDE, detect_language, stem


@pytest.mark.parametrize(("sample", "lang"), [
    ("12345 !!!", "en"),
    ("ファインチューニングしたモデルは感情分析に向いています。", "ja"),
    ("An English report that quotes one Japanese word, 感情分析 (sentiment analysis), in passing. " * 3, "en"),
    ("この章は LLM と BERT、RoBERTa、T5 の比較です。", "ja"),
    ("Remark 1は？", "ja"),  # one particle in a short question
    ("This long English section discusses sentiment analysis and models at length; " * 8 + "「感情分析」", "en"),
])
def test_detect_language_for_documents_and_questions(sample: str, lang: str) -> None:
    """Japanese letters must make up a real share of the text; a stray Japanese word does not flip English."""
    assert detect_language(sample) == lang


def test_patterns_cover_kana_han_and_wide_forms() -> None:
    assert all(CJK.match(c) for c in "あア感ｶ")
    assert not any(CJK.match(c) for c in "a1。（")
    assert all(WIDE.match(c) for c in "あ感。（Ａ")
    assert not WIDE.match("a")


@pytest.mark.parametrize(("word", "expected"), [
    ("models", "model"), ("summarizes", "summar"), ("summarization", "summar"), ("reasoning", "reason"),
    ("tuning", "tuning"), ("is", "is"), ("gpt", "gpt"),
])
def test_stem(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_one_of_each_is_shared() -> None:
    """bot and the loaders use these very objects: no second copy to drift."""
    assert text.detect_language is detect_language and loaders.detect_language is detect_language
    assert engine.stem is stem and terms.stem is stem  # ingest.terms: the BM25 tokenizer for ingest and bot
    assert chunking.WIDE is WIDE and engine.CJK is CJK and terms.CJK is CJK
    assert text.tokenize is terms.tokenize
