"""bot.text: language detection, question normalisation and the Sudachi/Latin BM25 tokenizer."""

from __future__ import annotations

import pytest

from bot.text import EN_STOPWORDS, detect_language, normalize_question, tokenize, tokenize_cached


@pytest.mark.parametrize(("text", "lang"), [
    ("感情分析", "ja"),  # Han only, no kana
    ("LLMとファインチューニング、どっち？", "ja"),
    ("BERTで感情分析", "ja"),  # one kana is enough
    ("NER vs 固有表現", "ja"),  # Han outweighs the Latin letters
    ("ｶﾀｶﾅ", "ja"),  # half-width katakana
    ("LLM?", "en"),
    ("Sentiment analysis with 200k labels: LLM or fine-tuning?", "en"),
    ("Sentiment analysis of product reviews, 感情", "en"),  # a stray Han word in English text
    ("", "en"),
    ("   ", "en"),
    ("😀🙂🎉", "en"),
    ("🙂 ok", "en"),
    ("123 456", "en"),
])
def test_detect_language(text: str, lang: str) -> None:
    """Short, mixed, emoji-only and empty text get a definite language."""
    assert detect_language(text) == lang


def test_detect_language_emoji_does_not_hide_japanese() -> None:
    """Emoji around a Japanese question do not change its language."""
    assert detect_language("🙂感情分析したい🎉") == "ja"


def test_normalize_question() -> None:
    """NFKC, control/format characters become spaces, whitespace collapses, ends are stripped."""
    assert normalize_question("  a\x00b\tc\n\u200bd   e\r\n") == "a b c d e"
    assert normalize_question("ＬＬＭ？") == "LLM?"
    assert normalize_question("") == ""


def test_tokenize_japanese_gives_sudachi_terms() -> None:
    """Japanese is split by Sudachi (mode A): 感情分析 → 感情 + 分析; particles are dropped."""
    terms = tokenize("感情分析でラベル付きデータを使う")
    assert "感情" in terms and "分析" in terms
    assert "で" not in terms and "を" not in terms


@pytest.mark.parametrize(("variant", "normal"), [("附属", "付属"), ("打合せ", "打ち合わせ"), ("サーバ", "サーバー"),
                                                 ("ｽﾏﾎ", "スマホ")])
def test_tokenize_uses_normalized_forms(variant: str, normal: str) -> None:
    """Spelling variants map to one normalised term, so BM25 matches them."""
    assert tokenize(variant) == tokenize(normal)


def test_tokenize_english_words() -> None:
    """English: lower-cased words, stop words dropped, stemmed by the one stemmer (ingest.text.stem)."""
    terms = tokenize("The Fine-tuned Models are reasoning better for NER tasks")
    assert terms == ["fine", "tuned", "model", "reason", "bett", "ner", "task"]
    assert tokenize("reasons") == tokenize("reasoning") == ["reason"]
    assert not set(terms) & EN_STOPWORDS


def test_tokenize_mixed_script() -> None:
    """Latin words inside Japanese text are tokenised as English words."""
    terms = tokenize("BERTで感情分析を行うモデル")
    assert "bert" in terms and "感情" in terms and "分析" in terms


def test_tokenize_empty_and_symbols() -> None:
    """Empty, whitespace, punctuation-only and emoji-only text give no terms."""
    for text in ("", "   ", "!!! ???", "。、「」", "😀🙂"):
        assert tokenize(text) == [], text


@pytest.mark.parametrize("text", [
    "感情分析" * 25_000,  # 100k characters of Japanese without a sentence break
    "感情分析をします。" * 11_112,  # 100k characters, many sentences
    "sentiment analysis " * 5_264,  # 100k characters of English
    ("ラベル付きデータ label " * 7_143)[:100_000],  # mixed scripts
])
def test_tokenize_long_text(text: str) -> None:
    """100k characters tokenise without Sudachi's input-size error and keep the content terms."""
    assert len(text) >= 99_990
    terms = tokenize(text)
    assert len(terms) > 1000
    assert {"感情", "sentiment", "ラベル", "label"} & set(terms)


def test_tokenize_cached_matches_tokenize() -> None:
    """The cached variant returns the same terms as a tuple."""
    text = "固有表現抽出にはLLMとファインチューニング、どっち？"
    assert tokenize_cached(text) == tuple(tokenize(text))
